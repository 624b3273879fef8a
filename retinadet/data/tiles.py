"""Tiled training: each epoch samples square tiles of the (large) training images anew.

An image gives one coverage of its area per epoch, ``ceil(h/T) * ceil(w/T)`` tiles of ``T`` original pixels
(the whole extent in a dimension smaller than ``T``). Of the tiles of images with objects, a share
``negatives`` is empty (windows holding no box, found by a few random tries), about 2/3 of the rest hold a
randomly chosen object at a random position and 1/3 are uniform windows; every tile of an image without
objects is a uniform window. A box cut by the tile edge is clipped and kept when at least
``min_visibility`` of it lies inside, else marked crowd (ignored by the matcher, never background).
The tile then goes through the ordinary augmentation and resize transform.

Which tiles an epoch holds, and their order, is a function of (seed, epoch) (:func:`epoch_tiles`); each
window is drawn from torch's CPU RNG, which the engine's loader seeds per (seed, epoch, index), so an
interrupted run resumes exactly. An epoch shuffles the images and lists each image's tiles consecutively, so
they share batches (and a worker's small cache of decoded images) instead of decoding a large file per tile.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from retinadet.data.images import read_image
from retinadet.data.loading import DetectionCollate, LoaderCounters, read_readable
from retinadet.data.records import DatasetRecords, ImageRecord
from retinadet.data.transforms import BoxStats, DetectionTransform
from retinadet.errors import ConfigError, DataError

OBJECT, RANDOM, NEGATIVE = "object", "random", "negative"
OBJECT_SHARE = 2 / 3  # of the tiles that are not negatives; the rest are uniform windows
NEGATIVE_TRIES = 8  # random windows tried for an empty one before taking the last as it is
CACHE_IMAGES = 4  # decoded images kept per worker: an image's tiles are consecutive, so a few suffice
_PLAN_STREAM = 0x711E


@dataclass(frozen=True)
class TileSampling:
    """How tiled training samples: ``size`` (original pixels, square), the share of empty tiles, and how much of a
    cut box must stay inside the tile for it to remain a target."""

    size: int
    negatives: float = 0.1
    min_visibility: float = 0.5


class TileSample(NamedTuple):
    image: int  # index into the records
    slot: int  # which of the image's tiles this epoch
    kind: str  # OBJECT, RANDOM or NEGATIVE


def tile_size(tile: int | str | None, preprocess: Any) -> int | None:
    """``tile`` as an int; ``"auto"``: the model's input canvas (``fixed_size``, else ``min_size``)."""
    if tile is None:
        return None
    if isinstance(tile, str) and tile.strip().lower() == "auto":
        return int(preprocess.fixed_size or preprocess.min_size)
    try:
        return int(tile)
    except (TypeError, ValueError):
        raise ConfigError(f"--tile must be a size in pixels or auto, got {tile!r}") from None


def tiles_per_image(height: int, width: int, size: int) -> int:
    """One coverage of the image's area (at least one tile; a size unknown from the annotations counts as one)."""
    return max(1, math.ceil(max(height, 0) / size) * math.ceil(max(width, 0) / size))


def tile_aspect(height: int, width: int, size: int) -> float:
    """w/h of the tiles of an image (a side below ``size`` stays whole), for aspect-ratio grouping."""
    if height <= 0 or width <= 0:
        return 1.0
    return min(width, size) / min(height, size)


def _has_targets(record: ImageRecord) -> bool:
    return bool(record.num_boxes) and not bool(record.crowd.all())


def epoch_tiles(records: Sequence[ImageRecord], sampling: TileSampling, seed: int, epoch: int) -> list[TileSample]:
    """The tiles of one epoch, in training order: the images shuffled, each image's tiles consecutive."""
    rng = np.random.default_rng([int(seed) & (2**64 - 1), int(epoch), _PLAN_STREAM])
    counts = [tiles_per_image(r.height, r.width, sampling.size) for r in records]
    order = rng.permutation(len(records)).tolist()
    images = [i for i in order for _ in range(counts[i])]
    slots = [s for i in order for s in range(counts[i])]
    kinds = [RANDOM] * len(images)
    # The shares are exact over the epoch's tiles of images with objects (an empty image's tiles are empty anyway).
    positions = [k for k, i in enumerate(images) if _has_targets(records[i])]
    n = len(positions)
    n_neg = int(sampling.negatives * n + 0.5)
    n_obj = int(OBJECT_SHARE * (n - n_neg) + 0.5)
    drawn = [NEGATIVE] * n_neg + [OBJECT] * n_obj + [RANDOM] * (n - n_neg - n_obj)
    for k, j in zip(positions, rng.permutation(n).tolist()):
        kinds[k] = drawn[j]
    return [TileSample(i, s, kind) for i, s, kind in zip(images, slots, kinds)]


def _draw(lo: int, hi: int, generator: torch.Generator | None) -> int:
    return lo if hi <= lo else int(torch.randint(lo, hi + 1, (), generator=generator))


def _overlaps(boxes: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    x0, y0, x1, y1 = window
    return (np.minimum(boxes[:, 2], x1) > np.maximum(boxes[:, 0], x0)) & (np.minimum(boxes[:, 3], y1) > np.maximum(boxes[:, 1], y0))


def tile_window(height: int, width: int, boxes: np.ndarray, crowd: np.ndarray, kind: str, size: int,
                generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """The window (x0, y0, x1, y1), integer pixels, of one tile of an image with these boxes (xyxy)."""
    tw, th = min(size, width), min(size, height)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    def uniform() -> tuple[int, int, int, int]:
        x0, y0 = _draw(0, width - tw, generator), _draw(0, height - th, generator)
        return x0, y0, x0 + tw, y0 + th

    targets = boxes[~np.asarray(crowd, dtype=bool).reshape(-1)]
    if kind == OBJECT and len(targets):
        bx1, by1, bx2, by2 = targets[_draw(0, len(targets) - 1, generator)]
        origin = []
        for lo_edge, hi_edge, extent, side in ((bx1, bx2, width, tw), (by1, by2, height, th)):
            # Origins whose window holds the box; for a box larger than the tile, windows inside the box.
            a, b = sorted((math.ceil(hi_edge) - side, math.floor(lo_edge)))
            a, b = min(max(a, 0), extent - side), min(max(b, 0), extent - side)
            origin.append(_draw(a, b, generator))
        x0, y0 = origin
        return x0, y0, x0 + tw, y0 + th
    window = uniform()
    if kind == NEGATIVE:
        for _ in range(NEGATIVE_TRIES - 1):
            if not _overlaps(boxes, window).any():
                break
            window = uniform()
    return window


@dataclass
class TileCut:
    """Boxes cut by the tile edge: kept (clipped to the tile) and ignored (marked crowd, under min visibility)."""

    clipped: int = 0
    ignored: int = 0


def crop_tile(image: torch.Tensor, boxes: torch.Tensor, labels: torch.Tensor, crowd: torch.Tensor,
              window: tuple[int, int, int, int], min_visibility: float):
    """(tile, boxes in tile pixels, labels, crowd, TileCut): boxes outside the window removed, cut ones clipped,
    and those with less than ``min_visibility`` of their area inside marked crowd."""
    x0, y0, x1, y1 = (int(v) for v in window)
    # A copy, not a view: a view would keep the whole decoded image alive (and ship it from a worker).
    tile = image[:, y0:y1, x0:x1].clone()
    th, tw = int(tile.shape[-2]), int(tile.shape[-1])
    boxes = boxes.float().reshape(-1, 4)
    shifted = boxes - boxes.new_tensor([x0, y0, x0, y0])
    inside = torch.minimum(shifted.clamp(min=0), shifted.new_tensor([tw, th, tw, th]))

    def area(b: torch.Tensor) -> torch.Tensor:
        return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

    visible_area = area(inside)
    keep = visible_area > 0
    visible = visible_area / area(shifted).clamp(min=1e-12)
    cut = keep & ((inside - shifted).abs().amax(dim=1) > 1e-4)
    crowd = crowd.bool().reshape(-1)
    ignore = cut & ~crowd & (visible < min_visibility - 1e-6)
    stats = TileCut(clipped=int((cut & ~ignore).sum()), ignored=int(ignore.sum()))
    return tile, inside[keep], labels.reshape(-1)[keep], (crowd | ignore)[keep], stats


class TileDataset(Dataset):
    """The tiles of one epoch (call :meth:`epoch` for them): (uint8 tile [3,h,w] augmented and resized, target).

    Unreadable images are skipped as :class:`~retinadet.data.loading.DetectionDataset` does (the next readable
    image gives the tile, warned about and counted; ``strict`` raises)."""

    def __init__(self, data: DatasetRecords, transform: DetectionTransform | None, sampling: TileSampling,
                 strict: bool = False, window: str | None = None):
        self.data, self.records, self.transform = data, data.records, transform
        self.sampling, self.strict, self.window = sampling, strict, window
        self.samples: list[TileSample] = []
        self._cache: OrderedDict[str, torch.Tensor | DataError] = OrderedDict()

    def tile_counts(self) -> list[int]:
        return [tiles_per_image(r.height, r.width, self.sampling.size) for r in self.records]

    def image_aspect_ratios(self) -> list[float]:
        return [tile_aspect(r.height, r.width, self.sampling.size) for r in self.records]

    def epoch(self, seed: int, epoch: int) -> TileDataset:
        """This dataset with the tiles of ``epoch`` (its own, empty cache)."""
        view = copy.copy(self)
        view.samples = epoch_tiles(self.records, self.sampling, seed, epoch)
        view._cache = OrderedDict()
        return view

    def __getstate__(self) -> dict:
        # Workers start with an empty cache, not a pickled copy of the main process's decoded images.
        return {**self.__dict__, "_cache": OrderedDict()}

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, path: str) -> torch.Tensor:
        cached = self._cache.get(path)
        if cached is None:
            try:
                cached = read_image(path, self.window)
            except DataError as exc:
                cached = exc  # a broken file's tiles are skipped without reading it again for each
            self._cache[path] = cached
            while len(self._cache) > CACHE_IMAGES:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(path)
        if isinstance(cached, DataError):
            raise cached
        return cached

    def __getitem__(self, index: int):
        sample = self.samples[index]
        image, record, skipped = read_readable(self.records, sample.image, self._read, self.strict)

        h, w = int(image.shape[-2]), int(image.shape[-1])
        window = tile_window(h, w, record.boxes, record.crowd, sample.kind, self.sampling.size)
        tile, boxes, labels, crowd, cut = crop_tile(image, torch.from_numpy(record.boxes.copy()),
                                                    torch.from_numpy(record.labels.copy()), torch.from_numpy(record.crowd.copy()),
                                                    window, self.sampling.min_visibility)
        orig_size = (int(tile.shape[-2]), int(tile.shape[-1]))  # the tile is this sample's "file"
        if self.transform is not None:
            tile, boxes, labels, crowd, stats = self.transform(tile, boxes, labels, crowd)
        else:
            stats = BoxStats(boxes=int(boxes.shape[0]))
        target = {"boxes": boxes.float().reshape(-1, 4), "labels": labels.long(), "crowd": crowd.bool(),
                  "image_id": int(record.image_id), "orig_size": orig_size, "path": str(record.path), "stats": stats,
                  "skipped": skipped, "tile": cut, "window": window}
        return tile, target


class TileCollate(DetectionCollate):
    """The padded batch of :class:`DetectionCollate`, its stats adding the boxes cut by tile edges."""

    def __call__(self, samples):
        batch = super().__call__(samples)
        batch["stats"]["tile_clipped"] = sum(t["tile"].clipped for _, t in samples)
        batch["stats"]["tile_ignored"] = sum(t["tile"].ignored for _, t in samples)
        return batch


@dataclass
class TileCounters(LoaderCounters):
    """:class:`LoaderCounters` of a tiled loader: its samples are tiles, and tile edges cut boxes."""

    tile_clipped: int = 0
    tile_ignored: int = 0
    min_visibility: float = field(default=0.5, compare=False)

    def update(self, batch_size: int, stats: dict) -> None:
        super().update(batch_size, stats)
        self.tile_clipped += stats.get("tile_clipped", 0)
        self.tile_ignored += stats.get("tile_ignored", 0)

    def summary(self) -> str:
        text = (f"{self.images} tiles, {self.boxes} boxes: tile edges cut {self.tile_clipped + self.tile_ignored} "
                f"({self.tile_clipped} kept clipped, {self.tile_ignored} ignored as under {self.min_visibility:.0%} "
                f"inside); {self.boxes_clipped} clipped, {self.boxes_dropped} dropped by transforms; "
                f"{self.skipped_images} unreadable images skipped")
        if self.skipped_files:
            shown = sorted(set(self.skipped_files))
            text += " (" + ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else "") + ")"
        return text

    def reset(self) -> TileCounters:
        snap = TileCounters(**vars(super().reset()), tile_clipped=self.tile_clipped, tile_ignored=self.tile_ignored,
                            min_visibility=self.min_visibility)
        self.tile_clipped = self.tile_ignored = 0
        return snap


def describe_tiles(sampling: TileSampling, num_tiles: int, num_images: int) -> str:
    """The log line of tiled training."""
    return (f"tiled training: {num_tiles} tiles of {sampling.size} px an epoch from {num_images} images (one coverage "
            f"of each image's area, sampled anew each epoch: {sampling.negatives:.0%} empty, of the rest ~2/3 around an "
            f"object and ~1/3 at random); a box cut by a tile edge stays a target when >= {sampling.min_visibility:.0%} "
            "of it is inside, else it is ignored")
