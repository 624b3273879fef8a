"""The canonical in-memory form every format is read into and written from.

One :class:`ImageRecord` per image (absolute xyxy pixel boxes, contiguous labels
0..K-1, crowd/ignore flags) and one :class:`DatasetRecords` per split (records,
class names, the original category ids, and every problem met while reading).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
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
    image: str = ""  # the image file it is about, when ``file`` is the annotation file that lists it

    def __str__(self) -> str:
        return f"[{self.severity}] {self.kind}: {self.file}: {self.message}"


@dataclass
class ImageRecord:
    path: Path
    # None: not in the annotations (a COCO json without sizes); read from the file's header on first use, so that
    # indexing a large dataset opens no image. 0: known to be unreadable.
    width: int | None
    height: int | None
    boxes: np.ndarray  # float32 [N, 4] xyxy, absolute pixels of the file
    labels: np.ndarray  # int64 [N], contiguous 0..K-1
    crowd: np.ndarray  # bool [N]; COCO iscrowd or VOC difficult: ignored in matching/eval
    image_id: int
    source: str = ""  # annotation file the record came from (for messages)

    def __post_init__(self) -> None:
        if not isinstance(self.path, Path):  # Path(a Path) parses it again: a real cost at 100k records
            self.path = Path(self.path)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.crowd = np.asarray(self.crowd, dtype=bool).reshape(-1)
        if not (len(self.boxes) == len(self.labels) == len(self.crowd)):
            raise ValueError(f"{self.path}: boxes/labels/crowd lengths differ")
        # Kept by copies (replaced): a size read from the header later was still never annotated.
        self.__dict__.setdefault("_size_from_header", not self.size_known)

    @property
    def num_boxes(self) -> int:
        return int(len(self.boxes))

    @property
    def size_known(self) -> bool:
        """The size is at hand without opening the file."""
        return self.__dict__["_width"] is not None and self.__dict__["_height"] is not None

    @property
    def size_from_header(self) -> bool:
        """The annotations gave no size: it is (or will be) read from the image header, and the boxes were not
        checked against the image bounds on load (``data check`` does that)."""
        return self.__dict__["_size_from_header"]

    def replaced(self, **changes) -> ImageRecord:
        """A copy with some fields changed that leaves a size not read yet unread (``dataclasses.replace`` and the
        constructor would read it, through ``width``)."""
        out = copy.copy(self)
        for name, value in changes.items():
            setattr(out, name, value)
        out.__post_init__()
        return out

    def _read_size(self) -> None:
        from retinadet.data.images import image_size  # the decoders' imports only when a size is really missing

        try:
            self.__dict__["_width"], self.__dict__["_height"] = image_size(self.path)
        except DataError:
            self.__dict__["_width"] = self.__dict__["_height"] = 0  # reported as missing/unreadable by check and the loader


def _side_property(name: str) -> property:
    key = f"_{name}"

    def get(self: ImageRecord) -> int:
        if not self.size_known:
            self._read_size()
        return self.__dict__[key]

    def set(self: ImageRecord, value: int | None) -> None:
        self.__dict__[key] = None if value is None else int(value)

    return property(get, set, doc=f"Image {name} in pixels (read from the header on first use when not annotated).")


# Set after the dataclass is built, so that its generated __init__ and fields stay the plain ones.
ImageRecord.width = _side_property("width")  # type: ignore[assignment]
ImageRecord.height = _side_property("height")  # type: ignore[assignment]


@dataclass
class BoxTable:
    """Every box of a list of records in one set of arrays (what dataset-wide statistics are computed on)."""

    boxes: np.ndarray  # float32 [N, 4] xyxy, file pixels
    labels: np.ndarray  # int64 [N]
    crowd: np.ndarray  # bool [N]
    image: np.ndarray  # int64 [N]: index of the box's record in the list

    @classmethod
    def of(cls, records: Sequence[ImageRecord]) -> BoxTable:
        counts = np.fromiter((len(r.boxes) for r in records), dtype=np.int64, count=len(records))
        if not counts.sum():
            return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), np.zeros(0, np.int64))
        return cls(np.concatenate([r.boxes for r in records]), np.concatenate([r.labels for r in records]),
                   np.concatenate([r.crowd for r in records]), np.repeat(np.arange(len(records)), counts))

    def __len__(self) -> int:
        return len(self.boxes)


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
        labels = BoxTable.of(self.records).labels
        counts = np.bincount(labels[labels < self.num_classes], minlength=self.num_classes)
        return {name: int(c) for name, c in zip(self.class_names, counts)}

    def num_negatives(self) -> int:
        return sum(1 for r in self.records if r.num_boxes == 0)


def default_category_ids(num_classes: int) -> list[int]:
    """Formats without their own ids export as COCO ids 1..K (0 is conventionally background)."""
    return list(range(1, num_classes + 1))


# Coordinates this close past an edge are the edge itself: normalised formats (YOLO) give 640.0000001 for a box
# that ends on a 640 px edge. Such boxes are clipped without a word; only a real overshoot is reported.
ROUNDING = 1e-3
# Normalised coordinates written with 6 decimals (Ultralytics, and our own YOLO writer) put an edge up to
# 0.75e-6 of the side off (half a unit of cx plus half of w/2): 3 ms of a pixel on a 4000 px scan, more than ROUNDING.
NORMALISED_ROUNDING = 1e-6

BoxNames = Sequence[str] | Callable[[int], str] | None


def sanitize_boxes(
    boxes: np.ndarray,
    width: int | np.ndarray,
    height: int | np.ndarray,
    file: str,
    problems: list[Problem],
    where: BoxNames = None,
    tolerance: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate boxes: returns (clipped boxes, keep-mask) and appends problems, in box order.

    * NaN/inf coordinates: error, dropped.
    * Reaching outside the image by more than ``tolerance`` px: error, clipped.
      Within ``tolerance`` (annotation tools often overshoot by a pixel): warning, clipped.
      Within ``ROUNDING`` px, or ``NORMALISED_ROUNDING`` of the side (rounding of an edge): clipped silently.
    * Zero or negative size (after clipping): warning, dropped.
    ``width``/``height`` are one image's, or one per box (a whole dataset checked at once); a box whose image
    size is unknown (<= 0) is only checked for NaN and size. ``where`` names each box (a list, or a function of the
    box's index, called only for boxes with a problem) for messages.
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)  # a copy: clipped in place
    n = len(boxes)
    w = np.broadcast_to(np.asarray(width, dtype=np.int64), (n,))
    h = np.broadcast_to(np.asarray(height, dtype=np.int64), (n,))
    finite = np.isfinite(boxes).all(axis=1)
    sized = finite & (w > 0) & (h > 0)
    x1, y1, x2, y2 = boxes.T
    round_x = np.maximum(ROUNDING, NORMALISED_ROUNDING * w)
    round_y = np.maximum(ROUNDING, NORMALISED_ROUNDING * h)
    with np.errstate(invalid="ignore"):  # NaN rows compare False and are masked out by `sized`
        outside = sized & ((x1 < -tolerance) | (y1 < -tolerance) | (x2 > w + tolerance) | (y2 > h + tolerance))
        over = sized & ~outside & ((x1 < -round_x) | (y1 < -round_y) | (x2 > w + round_x) | (y2 > h + round_y))
    reported = ~finite | outside | over
    original = boxes[reported]  # the boxes as annotated, for the messages
    boxes[sized, 0::2] = np.clip(boxes[sized, 0::2], 0, w[sized, None])
    boxes[sized, 1::2] = np.clip(boxes[sized, 1::2], 0, h[sized, None])
    zero = finite & ((boxes[:, 2] - boxes[:, 0] <= 0) | (boxes[:, 3] - boxes[:, 1] <= 0))
    keep = finite & ~zero
    row_of = np.cumsum(reported) - 1
    for i in np.flatnonzero(reported | zero).tolist():  # only boxes with a problem reach Python
        name = (where(i) if callable(where) else where[i]) if where is not None else f"box {i}"
        size = f"{int(w[i])}x{int(h[i])}"
        if not finite[i]:
            problems.append(Problem(file, f"{name}: non-finite coordinate {original[row_of[i]].tolist()}", "nan_box"))
            continue
        if outside[i]:
            problems.append(Problem(file, f"{name}: box {np.round(original[row_of[i]], 2).tolist()} outside image {size}; "
                                    "clipped", "box_outside_image"))
        elif over[i]:
            problems.append(Problem(file, f"{name}: box {np.round(original[row_of[i]], 2).tolist()} overshoots image {size} "
                                    f"by <= {tolerance:g} px; clipped", "box_clipped", "warning"))
        if zero[i]:
            problems.append(Problem(file, f"{name}: zero-size box {np.round(boxes[i], 2).tolist()}; dropped", "zero_size_box",
                                    "warning"))
    return boxes.astype(np.float32), keep


def check_unique_ids(records: list[ImageRecord], problems: list[Problem]) -> None:
    """Report duplicate image ids and duplicate image files (both break evaluation)."""
    if not records:
        return
    ids = np.fromiter((r.image_id for r in records), dtype=np.int64, count=len(records))
    _, first, inverse = np.unique(ids, return_index=True, return_inverse=True)
    for i in np.flatnonzero(first[inverse] != np.arange(len(ids))).tolist():
        r, earlier = records[i], records[first[inverse[i]]]
        problems.append(Problem(r.source or str(r.path), f"duplicate image id {r.image_id} ({earlier.path} and {r.path})",
                                "duplicate_id"))
    seen_paths: dict[str, int] = {}
    for r in records:
        # A normalised absolute path, not Path.resolve(): that is a syscall per path component, seconds for 100k images.
        key = os.path.normpath(os.path.abspath(r.path))
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
