"""The canonical in-memory form every format is read into and written from.

One :class:`ImageRecord` per image (absolute xyxy pixel boxes, contiguous labels
0..K-1, crowd/ignore flags) and one :class:`DatasetRecords` per split (records,
class names, the original category ids, and every problem met while reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from retinadet.errors import DataError


@dataclass
class Problem:
    """Something wrong with the input, tied to the file (and line/field) it came from.

    ``error`` problems make ``data check`` fail; ``warning`` ones are repaired on
    load (e.g. a zero-size box is dropped) and only reported.
    """

    file: str
    message: str
    kind: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind}: {self.file}: {self.message}"


@dataclass
class ImageRecord:
    path: Path
    width: int
    height: int
    boxes: np.ndarray  # float32 [N, 4] xyxy, absolute pixels of the file
    labels: np.ndarray  # int64 [N], contiguous 0..K-1
    crowd: np.ndarray  # bool [N]; COCO iscrowd or VOC difficult: ignored in matching/eval
    image_id: int
    source: str = ""  # annotation file the record came from (for messages)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.crowd)):
            raise ValueError(f"{self.path}: boxes/labels/crowd lengths differ")

    @property
    def num_boxes(self) -> int:
        return int(len(self.boxes))


@dataclass
class DatasetRecords:
    records: list[ImageRecord]
    class_names: list[str]
    # category_ids[label] = the id the source format used (COCO sparse ids; 1..K elsewhere).
    category_ids: list[int]
    problems: list[Problem] = field(default_factory=list)
    root: Path | None = None
    split: str | None = None
    format: str = ""

    def __post_init__(self) -> None:
        if len(self.class_names) != len(self.category_ids):
            raise ValueError("class_names and category_ids must have the same length")

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def boxes_per_class(self) -> dict[str, int]:
        counts = np.zeros(self.num_classes, dtype=np.int64)
        for r in self.records:
            if r.num_boxes:
                counts += np.bincount(r.labels, minlength=self.num_classes)[: self.num_classes]
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def num_negatives(self) -> int:
        return sum(1 for r in self.records if r.num_boxes == 0)


def default_category_ids(num_classes: int) -> list[int]:
    """Formats without their own ids export as COCO ids 1..K (0 is conventionally background)."""
    return list(range(1, num_classes + 1))


# Coordinates this close past an edge are the edge itself: normalised formats (YOLO) give 640.0000001 for a box
# that ends on a 640 px edge. Such boxes are clipped without a word; only a real overshoot is reported.
ROUNDING = 1e-3


def sanitize_boxes(
    boxes: np.ndarray,
    width: int,
    height: int,
    file: str,
    problems: list[Problem],
    where: list[str] | None = None,
    tolerance: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate boxes of one image: returns (clipped boxes, keep-mask) and appends problems.

    * NaN/inf coordinates: error, dropped.
    * Reaching outside the image by more than ``tolerance`` px: error, clipped.
      Within ``tolerance`` (annotation tools often overshoot by a pixel): warning, clipped.
      Within ``ROUNDING`` (floating-point rounding of an edge): clipped silently.
    * Zero or negative size (after clipping): warning, dropped.
    ``where`` names each box (line or annotation id) for messages.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.ones(len(boxes), dtype=bool)
    for i, box in enumerate(boxes):
        name = where[i] if where is not None else f"box {i}"
        if not np.all(np.isfinite(box)):
            problems.append(Problem(file, f"{name}: non-finite coordinate {box.tolist()}", "nan_box"))
            keep[i] = False
            continue
        x1, y1, x2, y2 = box
        if width > 0 and height > 0:
            if x1 < -tolerance or y1 < -tolerance or x2 > width + tolerance or y2 > height + tolerance:
                problems.append(
                    Problem(file, f"{name}: box {np.round(box, 2).tolist()} outside image {width}x{height}; clipped",
                            "box_outside_image")
                )
            elif x1 < -ROUNDING or y1 < -ROUNDING or x2 > width + ROUNDING or y2 > height + ROUNDING:
                problems.append(Problem(file, f"{name}: box {np.round(box, 2).tolist()} overshoots image {width}x{height} "
                                        f"by <= {tolerance:g} px; clipped", "box_clipped", "warning"))
            boxes[i] = [min(max(x1, 0), width), min(max(y1, 0), height), min(max(x2, 0), width), min(max(y2, 0), height)]
            x1, y1, x2, y2 = boxes[i]
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            problems.append(
                Problem(file, f"{name}: zero-size box {np.round(box, 2).tolist()}; dropped", "zero_size_box", "warning")
            )
            keep[i] = False
    return boxes.astype(np.float32), keep


def check_unique_ids(records: list[ImageRecord], problems: list[Problem]) -> None:
    """Report duplicate image ids and duplicate image files (both break evaluation)."""
    seen_ids: dict[int, Path] = {}
    seen_paths: dict[str, int] = {}
    for r in records:
        if r.image_id in seen_ids:
            problems.append(Problem(r.source or str(r.path), f"duplicate image id {r.image_id} ({seen_ids[r.image_id]} and {r.path})",
                                    "duplicate_id"))
        else:
            seen_ids[r.image_id] = r.path
        key = str(r.path.resolve()) if r.path.is_absolute() else str(r.path)
        if key in seen_paths:
            problems.append(Problem(r.source or str(r.path),
                                    f"duplicate image file {r.path} (image ids {seen_paths[key]} and {r.image_id})", "duplicate_file"))
        else:
            seen_paths[key] = r.image_id


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: {what} not found")
    return path
