"""Dataset, padded-batch collate, aspect-ratio grouped sampling and ``build_loader``.

Batch contract (the trainer and the model depend on it)::

    {"images": uint8 [B,3,H,W] zero-padded bottom-right, "image_sizes": int64 [B,2] (h,w after resize),
     "boxes": float32 [B,M,4] xyxy in resized pixels (padding rows zero), "labels": int64 [B,M] (-1 = padding),
     "crowd": bool [B,M], "image_ids": int64 [B], "orig_sizes": int64 [B,2] (h,w of the file), "paths": list[str]}

Workers cannot update counters in the main process, so each sample carries its
own box/skip stats; :class:`DetectionLoader` pops them off every batch and sums
them into :attr:`DetectionLoader.counters`, which the trainer reads and resets
once per epoch.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from retinadet.data.discover import load_dataset
from retinadet.data.images import read_image
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.data.transforms import BoxStats, DetectionTransform, TransformConfig, build_transform
from retinadet.errors import DataError
from retinadet.model import resolve_model_config


def read_readable(records: Sequence[ImageRecord], start: int, read: Callable[[str], torch.Tensor], strict: bool
                  ) -> tuple[torch.Tensor, ImageRecord, list[str]]:
    """The image of ``records[start]``, or, when it cannot be read, of the next readable record (each unreadable one
    warned about and listed; ``strict`` makes the first fatal): (image, its record, the paths skipped)."""
    skipped: list[str] = []
    for attempt in range(len(records)):
        record = records[(start + attempt) % len(records)]
        try:
            return read(str(record.path)), record, skipped
        except DataError as exc:
            if strict:
                raise
            warnings.warn(f"skipping unreadable image: {exc}", RuntimeWarning, stacklevel=3)
            skipped.append(str(record.path))
    raise DataError(f"no readable image in the dataset (last tried: {skipped[-1] if skipped else '?'})")


class DetectionDataset(Dataset):
    """(uint8 image [3,h,w], target) pairs from a :class:`DatasetRecords`.

    An unreadable image is skipped (the next readable one is returned instead),
    warned about and counted; with ``strict=True`` it raises :class:`DataError`.
    """

    def __init__(self, data: DatasetRecords, transform: DetectionTransform | None = None, strict: bool = False,
                 window: str | None = None):
        self.data = data
        self.records = data.records
        self.transform = transform
        self.strict = strict
        self.window = window  # the model's rule for images of more than 8 bits (preprocess.window)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def class_names(self) -> list[str]:
        return self.data.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.data.category_ids

    def aspect_ratios(self) -> list[float]:
        """w/h per image from the annotations (no decoding), for aspect-ratio grouping."""
        return [r.width / r.height if r.width > 0 and r.height > 0 else 1.0 for r in self.records]

    def __getitem__(self, index: int):
        image, record, skipped = read_readable(self.records, index, partial(read_image, window=self.window), self.strict)

        orig_h, orig_w = int(image.shape[-2]), int(image.shape[-1])
        boxes = torch.from_numpy(record.boxes.copy())
        labels = torch.from_numpy(record.labels.copy())
        crowd = torch.from_numpy(record.crowd.copy())
        if self.transform is not None:
            image, boxes, labels, crowd, stats = self.transform(image, boxes, labels, crowd)
        else:
            stats = BoxStats(boxes=int(boxes.shape[0]))
        target = {
            "boxes": boxes.float().reshape(-1, 4),
            "labels": labels.long(),
            "crowd": crowd.bool(),
            "image_id": int(record.image_id),
            "orig_size": (orig_h, orig_w),
            "path": str(record.path),
            "stats": stats,
            "skipped": skipped,
        }
        return image, target


def collate_detection(samples: Sequence[tuple[torch.Tensor, dict]], size_divisible: int = 32,
                      pad_to: int | None = None) -> dict:
    """Pad images bottom-right to a common size (a multiple of ``size_divisible``; at least
    ``pad_to`` square, for letterbox models) and targets to a common box count M >= 1."""
    if len(samples) == 0:
        raise ValueError("collate_detection got an empty batch")
    sizes = [img.shape[-2:] for img, _ in samples]
    H = max(int(s[0]) for s in sizes)
    W = max(int(s[1]) for s in sizes)
    if pad_to:
        H, W = max(H, pad_to), max(W, pad_to)
    d = max(1, int(size_divisible))
    H, W = int(math.ceil(H / d) * d), int(math.ceil(W / d) * d)
    B = len(samples)
    M = max(1, max(int(t["boxes"].shape[0]) for _, t in samples))
    # Windowed images of more than 8 bits are float in [0, 1]: a batch holding one is float, the 8-bit ones scaled.
    floating = any(img.is_floating_point() for img, _ in samples)
    images = torch.zeros((B, 3, H, W), dtype=torch.float32 if floating else torch.uint8)
    boxes = torch.zeros((B, M, 4), dtype=torch.float32)
    labels = torch.full((B, M), -1, dtype=torch.int64)
    crowd = torch.zeros((B, M), dtype=torch.bool)
    stats = BoxStats()
    skipped: list[str] = []
    for i, (img, t) in enumerate(samples):
        h, w = img.shape[-2:]
        images[i, :, :h, :w] = img / 255.0 if floating and img.dtype == torch.uint8 else img
        n = t["boxes"].shape[0]
        boxes[i, :n] = t["boxes"]
        labels[i, :n] = t["labels"]
        crowd[i, :n] = t["crowd"]
        if "stats" in t:
            stats.add(t["stats"])
        skipped += t.get("skipped", [])
    return {
        "images": images,
        "image_sizes": torch.tensor([[int(s[0]), int(s[1])] for s in sizes], dtype=torch.int64),
        "boxes": boxes,
        "labels": labels,
        "crowd": crowd,
        "image_ids": torch.tensor([t["image_id"] for _, t in samples], dtype=torch.int64),
        "orig_sizes": torch.tensor([list(t["orig_size"]) for _, t in samples], dtype=torch.int64),
        "paths": [t["path"] for _, t in samples],
        "stats": {"boxes": stats.boxes, "clipped": stats.clipped, "dropped": stats.dropped, "skipped": skipped},
    }


class DetectionCollate:
    """Picklable collate with its padding settings (workers need to pickle it)."""

    def __init__(self, size_divisible: int = 32, pad_to: int | None = None):
        self.size_divisible = size_divisible
        self.pad_to = pad_to

    def __call__(self, samples):
        return collate_detection(samples, self.size_divisible, self.pad_to)


def aspect_ratio_groups(aspect_ratios: Sequence[float], bins: Sequence[float] = (0.5, 0.75, 1.0, 1.33, 2.0)) -> list[int]:
    """Group id per image: images in one group have similar w/h, so batches waste little padding."""
    return [int(np.searchsorted(bins, ar, side="right")) for ar in aspect_ratios]


class GroupedBatchSampler(BatchSampler):
    """Batches drawn from one aspect-ratio group at a time, in the order of ``sampler``.

    Leftovers of all groups are batched together at the end so the epoch has exactly
    ceil(N / batch_size) batches (floor with ``drop_last``), like an ordinary sampler.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = int(batch_size)
        self.drop_last = drop_last

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = {}
        for idx in self.sampler:
            buf = buffers.setdefault(self.group_ids[idx], [])
            buf.append(idx)
            if len(buf) == self.batch_size:
                yield buf
                buffers[self.group_ids[idx]] = []
        rest = [i for buf in buffers.values() for i in buf]
        for start in range(0, len(rest), self.batch_size):
            batch = rest[start : start + self.batch_size]
            if len(batch) == self.batch_size or not self.drop_last:
                yield batch

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)


@dataclass
class LoaderCounters:
    """What the loader repaired or skipped; read and reset once per epoch by the trainer."""

    images: int = 0
    boxes: int = 0
    boxes_clipped: int = 0
    boxes_dropped: int = 0
    skipped_images: int = 0
    skipped_files: list[str] = field(default_factory=list)

    def update(self, batch_size: int, stats: dict) -> None:
        self.images += batch_size
        self.boxes += stats["boxes"]
        self.boxes_clipped += stats["clipped"]
        self.boxes_dropped += stats["dropped"]
        self.skipped_images += len(stats["skipped"])
        self.skipped_files += stats["skipped"]

    def summary(self) -> str:
        text = (f"{self.images} images, {self.boxes} boxes: {self.boxes_clipped} clipped, "
                f"{self.boxes_dropped} dropped by transforms; {self.skipped_images} unreadable images skipped")
        if self.skipped_files:
            shown = sorted(set(self.skipped_files))
            text += " (" + ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") + ")"
        return text

    def reset(self) -> LoaderCounters:
        """Return a snapshot and zero the counters."""
        snap = LoaderCounters(self.images, self.boxes, self.boxes_clipped, self.boxes_dropped,
                              self.skipped_images, list(self.skipped_files))
        self.images = self.boxes = self.boxes_clipped = self.boxes_dropped = self.skipped_images = 0
        self.skipped_files = []
        return snap


class DetectionLoader:
    """A DataLoader plus per-epoch counters; iterate it like the DataLoader."""

    def __init__(self, loader: DataLoader, dataset: DetectionDataset, sampler: Sampler | None = None):
        self.loader = loader
        self.dataset = dataset
        self.sampler = sampler
        self.counters = LoaderCounters()

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[dict]:
        for batch in self.loader:
            stats = batch.pop("stats", None)
            if stats is not None:
                self.counters.update(len(batch["paths"]), stats)
            yield batch

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch under DistributedSampler (no-op otherwise)."""
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(epoch)

    @property
    def class_names(self) -> list[str]:
        return self.dataset.class_names

    @property
    def category_ids(self) -> list[int]:
        return self.dataset.category_ids


def _preprocess_of(model: Any):
    if model is None:
        return None
    if isinstance(model, str):

        return resolve_model_config(model).preprocess
    return getattr(model, "preprocess", model)


def build_loader(
    data: DatasetRecords | str | os.PathLike,
    split: str | None = None,
    *,
    batch_size: int = 8,
    train: bool = True,
    model: Any = "fast",
    augment: str | TransformConfig = "default",
    workers: int = 2,
    pin_memory: bool = False,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    aspect_grouping: bool = True,
    distributed: bool = False,
    num_replicas: int | None = None,
    rank: int | None = None,
    size_divisible: int | None = None,
    strict: bool = False,
    seed: int = 0,
    persistent_workers: bool = False,
    **transform_overrides: Any,
) -> DetectionLoader:
    """A loader of padded batches (see the module docstring for the contract).

    ``data``: a :class:`DatasetRecords` or anything :func:`load_dataset` accepts.
    ``model``: preset name, ``ModelConfig`` or ``PreprocessConfig`` giving the resize rule
    and ``size_divisible``. ``augment``: ``none``/``default``/``strong`` or a
    :class:`TransformConfig` (a preset name becomes ``none`` when ``train=False``);
    ``distributed``: shard with DistributedSampler (``num_replicas``/``rank`` default to the
    process group; call ``loader.set_epoch(e)`` each epoch);
    ``transform_overrides`` set single parts (e.g. ``rot90=0.5``).
    """
    if not isinstance(data, DatasetRecords):

        data = load_dataset(data, split=split)
    if len(data) == 0:
        raise DataError(f"{data.root}: split '{data.split}' has no images")
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    pre = _preprocess_of(model)
    if not train and not isinstance(augment, TransformConfig):
        augment = "none"
    transform = build_transform(augment, pre, **transform_overrides)
    dataset = DetectionDataset(data, transform, strict=strict, window=getattr(pre, "window", None))
    shuffle = train if shuffle is None else shuffle
    drop_last = False if drop_last is None else drop_last
    generator = torch.Generator().manual_seed(seed)
    if distributed:
        sampler: Sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed,
                                                   drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        sampler = SequentialSampler(dataset)
    if aspect_grouping:
        batch_sampler: BatchSampler = GroupedBatchSampler(sampler, aspect_ratio_groups(dataset.aspect_ratios()), batch_size, drop_last)
    else:
        batch_sampler = BatchSampler(sampler, batch_size, drop_last)
    divisible = size_divisible or (getattr(pre, "size_divisible", None) or 32)
    pad_to = getattr(pre, "fixed_size", None) if pre is not None else None
    loader = DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=workers,
        collate_fn=DetectionCollate(divisible, pad_to),
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and workers > 0,
        generator=generator,
    )
    return DetectionLoader(loader, dataset, sampler)
