"""Run folders ``<project>/<task>/<name>`` (auto-incremented) and atomic small-file writes."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def increment_run_dir(project: str | os.PathLike, task: str, name: str | None = None, exist_ok: bool = False) -> Path:
    """``project/task/name``; when it exists and not ``exist_ok``: ``name2``, ``name3``, ... (created)."""
    base = Path(project) / task
    name = name or "exp"
    path = base / name
    if exist_ok:
        path.mkdir(parents=True, exist_ok=True)
        return path
    n = 2
    while True:
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            path = base / f"{name}{n}"
            n += 1


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write to a temp file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=_jsonable) + "\n")


def write_yaml(path: str | os.PathLike, data: Any) -> Path:
    import yaml  # here, so the torch-free ONNX runner can use this module without pyyaml

    return atomic_write_text(path, yaml.safe_dump(_plain(data), sort_keys=False))


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    return (rows[0], rows[1:]) if rows else ([], [])


def _jsonable(obj: Any):
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _plain(obj: Any):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


class RunLog:
    """Prints a line and appends it to the run's log file (rank 0 only writes)."""

    def __init__(self, path: str | os.PathLike | None, echo: bool = True):
        self.path = Path(path) if path else None
        self.echo = echo
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, message: str) -> None:
        if self.echo:
            from tqdm import tqdm

            tqdm.write(message)
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(message + "\n")
