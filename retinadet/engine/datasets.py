"""Splits for training: train / val (never test unless asked), carving a val split when missing."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from retinadet.data.discover import BUILTIN_DATASETS, load_splits, normalize_split
from retinadet.data.records import DatasetRecords
from retinadet.errors import DataError

VAL_FRACTION = 0.1


def data_spec(data: str | os.PathLike) -> str:
    """What to record in a checkpoint: a built-in name (``shapes``, ``shapes-large``) as is, a path made absolute."""
    s = os.fspath(data)
    if s in BUILTIN_DATASETS:
        return s
    if not os.path.exists(s):
        raise DataError(f"{s}: dataset path not found")
    return str(Path(s).resolve())


def _subset(ds: DatasetRecords, keep_ids: set[int], split: str) -> DatasetRecords:
    return replace(ds, records=[r for r in ds.records if int(r.image_id) in keep_ids], split=split)


def carve_ids(ds: DatasetRecords, seed: int, fraction: float = VAL_FRACTION) -> list[int]:
    """Image ids of a deterministic val carve-out (depends only on the ids and the seed)."""
    ids = np.array(sorted(int(r.image_id) for r in ds.records), dtype=np.int64)
    if len(ids) < 2:
        raise DataError(f"{ds.root}: {len(ids)} training image(s) and no val split: need >= 2 to carve a val split")
    n = max(1, int(round(fraction * len(ids))))
    rng = np.random.default_rng([int(seed), 0x5A1])
    return sorted(ids[rng.permutation(len(ids))[:n]].tolist())


def _require(ds: DatasetRecords, what: str) -> DatasetRecords:
    if len(ds) == 0:
        raise DataError(f"{ds.root}: {what} split is empty (no images)")
    return ds


def train_val_splits(data: str | os.PathLike, val_split: str | None = None, seed: int = 0
                     ) -> tuple[DatasetRecords, DatasetRecords, dict[str, Any]]:
    """(train, val, info). ``info`` is stored in checkpoints so ``val`` can rebuild the same split."""

    spec = data_spec(data)
    splits = load_splits(spec)
    train_key = "train" if "train" in splits else ("all" if "all" in splits else None)
    if train_key is None:
        raise DataError(f"{data}: no train split (found: {', '.join(splits) or 'none'})")
    train = _require(splits[train_key], "train")
    info: dict[str, Any] = {"path": spec, "train_split": train_key, "val_split": None, "carved_ids": None}
    wanted = normalize_split(val_split) if val_split else "val"
    if val_split and wanted not in splits:
        raise DataError(f"{data}: no split '{val_split}' for validation (available: {', '.join(splits)})")
    if wanted in splits and wanted != train_key:
        info["val_split"] = wanted
        return train, _require(splits[wanted], wanted), info
    ids = carve_ids(train, seed)
    chosen = set(ids)
    all_ids = {int(r.image_id) for r in train.records}
    info.update(val_split="carved", carved_ids=ids)
    return _subset(train, all_ids - chosen, "train"), _subset(train, chosen, "val"), info


def eval_split(info_or_data: dict | str | os.PathLike, split: str | None = None) -> DatasetRecords:
    """The records to evaluate on: from a checkpoint's data info (its val split, or the carved ids),
    or from a dataset path and split name (default ``val``)."""

    if isinstance(info_or_data, dict):
        info = info_or_data
        splits = load_splits(info["path"])
        if split is None or normalize_split(split) == "val":
            if info.get("val_split") == "carved":
                train = splits[info["train_split"]]
                return _require(_subset(train, set(info["carved_ids"]), "val"), "val")
            split = info["val_split"]
    else:
        splits = load_splits(data_spec(info_or_data))
    key = normalize_split(split or "val")
    if key not in splits:
        if len(splits) == 1 and "all" in splits and key == "val":
            key = "all"
        else:
            raise DataError(f"no split '{split or 'val'}' (available: {', '.join(splits)})")
    return _require(splits[key], key)
