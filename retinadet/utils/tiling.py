"""Sliced inference, torch-free: when to slice an image (from the scale the model was trained at), the
tile grid, which detections of a tile to keep at its seams, and how the tiles' detections merge.

Shared by the torch path (:mod:`retinadet.model.inference`) and the numpy ONNX runner, so both slice and
merge alike.

Seams: the grid's overlap means an object cut by one tile's inner edge lies whole in a neighbour
(when it is smaller than the overlap). A detection touching an inner edge of its tile is therefore
dropped when some other tile holds its box whole, and kept when none does (an object larger than the
overlap). The merge then only compares detections of *different* tiles, so touching objects that one
tile separated are never merged: the duplicates it removes are the copies of one object that two
tiles both saw whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from retinadet.errors import ConfigError
from retinadet.utils.resize import resize_scale, resized_size

TILE_MERGES = ("nms", "greedy-nmm")
TILE_MATCHES = ("iou", "ios")
MIN_TILE = 32
# A box ending this close to a tile's inner edge (network pixels) counts as cut by it: on 3x3 BCCD mosaics 4 px
# reached AP50 0.830, 2 px 0.813 and 8-20 px 0.824-0.826 (dropping a cut copy costs nothing when a whole one exists).
SEAM_MARGIN = 4


@dataclass(frozen=True)
class TileOptions:
    """How to slice. ``tile``: a size in original pixels (a square side, or (h, w)), ``"auto"`` (slice when the
    whole image would reach the network smaller than the model was trained at) or ``None`` (never slice)."""

    tile: int | tuple[int, int] | str | None = "auto"
    overlap: float = 0.2  # of the tile size
    merge: str = "nms"  # nms | greedy-nmm
    match: str = "iou"  # iou | ios (intersection over the smaller box)
    threshold: float | None = None  # None: the model's NMS IoU
    full_image: bool = False  # also run the whole image, for objects too large for a tile

    @classmethod
    def parse(cls, tile: int | str | None = "auto", overlap: float = 0.2, merge: str = "nms", match: str = "iou",
              threshold: float | None = None, full_image: bool = False) -> TileOptions:
        """Validated options; each bad value fails with one line naming its flag."""
        if isinstance(tile, str):
            text = tile.strip().lower()
            if text in ("auto", ""):
                tile = "auto"
            elif text in ("off", "none", "0"):
                tile = None
            elif text.isdigit():
                tile = int(text)
            elif "x" in text and all(p.strip().isdigit() for p in text.split("x", 1)):
                w, h = (int(p) for p in text.split("x", 1))  # WxH, as image sizes are written
                tile = (h, w)
            else:
                raise ConfigError(f"--tile must be a size in pixels (640, or WxH such as 640x480), auto or off, got '{tile}'")
        if isinstance(tile, (list, tuple)) and len(tile) == 2 and all(isinstance(v, int) for v in tile):
            tile = (int(tile[0]), int(tile[1])) if tile[0] != tile[1] else int(tile[0])
        if isinstance(tile, bool) or (tile is not None and tile != "auto" and not isinstance(tile, (int, tuple))):
            raise ConfigError(f"--tile must be a size in pixels (640, or WxH such as 640x480), auto or off, got {tile!r}")
        if isinstance(tile, int) and tile == 0:
            tile = None
        if tile is not None and tile != "auto" and min(_hw(tile)) < MIN_TILE:
            raise ConfigError(f"--tile must be at least {MIN_TILE} px a side, got {tile}")
        if not 0.0 <= float(overlap) < 1.0:
            raise ConfigError(f"--tile-overlap is a fraction of the tile in [0, 1), got {overlap}")
        if merge not in TILE_MERGES:
            raise ConfigError(f"--tile-merge must be one of {', '.join(TILE_MERGES)}, got '{merge}'")
        if match not in TILE_MATCHES:
            raise ConfigError(f"--tile-match must be one of {', '.join(TILE_MATCHES)}, got '{match}'")
        if threshold is not None and not 0.0 < float(threshold) <= 1.0:
            raise ConfigError(f"--tile-threshold must be in (0, 1], got {threshold}")
        return cls(tile, float(overlap), merge, match, None if threshold is None else float(threshold), bool(full_image))

    def to_dict(self) -> dict:
        return asdict(self)


def tile_options(tile: TileOptions | int | str | tuple | None = "auto", tile_overlap: float = 0.2, tile_merge: str = "nms",
                 tile_match: str = "iou", tile_threshold: float | None = None, full_image: bool = False) -> TileOptions:
    """``tile`` as given when it is already a :class:`TileOptions`, else the options parsed from the flags (named as
    the API's and the CLI's keywords)."""
    if isinstance(tile, TileOptions):
        return tile
    return TileOptions.parse(tile, tile_overlap, tile_merge, tile_match, tile_threshold, full_image)


@dataclass(frozen=True)
class TrainingScale:
    """The scale a model was trained at, as its checkpoint records it: how much training resized its
    inputs (original pixels -> network pixels) and how large its objects were."""

    resize_scale: float  # median resize factor of the training inputs
    scale_range: tuple[float, float] = (1.0, 1.0)  # the augmentation's scale jitter around it
    object_size: float | None = None  # median sqrt(area) of the training boxes, original pixels
    object_size_p95: float | None = None
    image_size: tuple[int, int] | None = None  # median (h, w) of the training images
    tile: int | None = None  # the tile size of tiled training, original pixels

    @classmethod
    def from_dict(cls, data: Mapping | None) -> TrainingScale | None:
        if not isinstance(data, Mapping) or not data.get("resize_scale"):
            return None
        def opt(key, kind):
            value = data.get(key)
            return None if value is None else kind(value)
        size = data.get("image_size")
        return cls(float(data["resize_scale"]), tuple(float(v) for v in data.get("scale_range") or (1.0, 1.0)),
                   opt("object_size", float), opt("object_size_p95", float),
                   tuple(int(v) for v in size) if size else None, opt("tile", int))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["scale_range"] = list(self.scale_range)
        d["image_size"] = list(self.image_size) if self.image_size else None
        return d

    def lowest(self) -> float:
        """The smallest scale the model saw in training (jitter included)."""
        return self.resize_scale * min(self.scale_range)

    def tile_for(self, min_size: float, max_size: float, fixed_size: float | None) -> tuple[int, int]:
        """The tile (h, w, original pixels) that the resize rule brings to the training scale, shaped like the
        training inputs: a network that only ever saw landscape inputs in a square letterbox never saw content
        in its bottom rows, and detects poorly there."""
        if self.image_size:
            h, w = resized_size(*self.image_size, min_size, max_size, fixed_size)
        else:
            h = w = fixed_size if fixed_size else min(min_size, max_size)
        return max(MIN_TILE, int(round(h / self.resize_scale))), max(MIN_TILE, int(round(w / self.resize_scale)))


@dataclass(frozen=True)
class TilePlan:
    """How one image is sliced: tiles of ``tile`` (h, w) px overlapping by ``overlap`` (h, w) px."""

    tile: tuple[int, int]
    overlap: tuple[int, int]
    reason: str = ""

    @classmethod
    def of(cls, tile: int | tuple[int, int], overlap: float, reason: str = "", min_overlap: float = 0) -> TilePlan:
        """Tiles overlapping by the fraction ``overlap``, and by at least ``min_overlap`` px (at most half a tile)."""
        h, w = _hw(tile)
        oh, ow = (min(max(int(round(side * overlap)), math.ceil(min_overlap)), side // 2) for side in (h, w))
        return cls((h, w), (max(oh, int(round(h * overlap))), max(ow, int(round(w * overlap)))), reason)

    def grid(self, height: int, width: int) -> np.ndarray:
        return tile_grid(height, width, self.tile, self.overlap)

    def text(self) -> str:
        h, w = self.tile
        return f"{w} px" if h == w else f"{w}x{h} px"


def _hw(tile: int | Sequence[int]) -> tuple[int, int]:
    return (int(tile), int(tile)) if isinstance(tile, int) else (int(tile[0]), int(tile[1]))


def plan_tiles(height: int, width: int, preprocess: Mapping | object, scale: TrainingScale | None,
               options: TileOptions) -> TilePlan | None:
    """The slicing of one image, or None for whole-image inference. ``preprocess``: the model's resize
    rule (``min_size``, ``max_size``, ``fixed_size``, as attributes or keys)."""
    if options.tile is None:
        return None
    if options.tile != "auto":
        h, w = _hw(options.tile)
        return TilePlan.of(options.tile, options.overlap, f"as asked (--tile {w if h == w else f'{w}x{h}'})")
    if scale is None:
        return None
    lo, hi, fixed = _rule(preprocess)
    whole = resize_scale(height, width, lo, hi, fixed)
    if whole >= 0.98 * scale.lowest():  # the network sees it at a scale it was trained on
        return None
    th, tw = scale.tile_for(lo, hi, fixed)
    if th >= height and tw >= width:
        return None
    reason = (f"whole, it would reach the network at {whole:.3g}x, below the {scale.resize_scale:.3g}x the model was "
              f"trained at")
    # The overlap holds whole the objects the model was trained on (95% of them), so a seam cuts none for good:
    # on 3x3 BCCD mosaics (cells up to 164 px) 0.35 of the tile reached AP50 0.838, 0.2 of it 0.830.
    return TilePlan.of((th, tw), options.overlap, reason, scale.object_size_p95 or 0)


def shrink_warning(height: int, width: int, preprocess: Mapping | object, scale: TrainingScale | None) -> str | None:
    """A warning when whole-image inference shows this image much smaller than the model was trained on."""
    if scale is None:
        return None
    lo, hi, fixed = _rule(preprocess)
    whole = resize_scale(height, width, lo, hi, fixed)
    if whole >= 0.98 * scale.lowest():
        return None
    return (f"a {width}x{height} image reaches the network at {whole:.3g}x, {scale.resize_scale / whole:.1f}x smaller than the "
            f"model was trained at ({scale.resize_scale:.3g}x): small objects may be missed (--tile auto slices it)")


def _rule(preprocess) -> tuple[float, float, float | None]:
    get = preprocess.get if isinstance(preprocess, Mapping) else lambda k: getattr(preprocess, k)
    return float(get("min_size")), float(get("max_size")), (float(get("fixed_size")) if get("fixed_size") else None)


def tile_starts(length: int, tile: int, overlap: int) -> np.ndarray:
    """Start offsets of tiles of ``tile`` px covering ``length`` px, spread evenly so that neighbours overlap
    by at least ``overlap`` px and the last tile ends on the border (one tile when it fits)."""
    if length <= tile:
        return np.zeros(1, dtype=np.int64)
    stride = max(1, tile - overlap)
    n = math.ceil((length - tile) / stride) + 1
    return np.floor(np.arange(n) * ((length - tile) / (n - 1)) + 0.5).astype(np.int64)


def tile_grid(height: int, width: int, tile: int | Sequence[int], overlap: int | Sequence[int]) -> np.ndarray:
    """Tiles [N, 4] int64 (x1, y1, x2, y2), row-major, covering the image; a tile never exceeds the image.
    ``tile`` and ``overlap``: a side, or (h, w)."""
    (th, tw), (oh, ow) = _hw(tile), _hw(overlap)
    ys, xs = tile_starts(height, th, oh), tile_starts(width, tw, ow)
    th, tw = min(th, height), min(tw, width)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    x1, y1 = xx.reshape(-1), yy.reshape(-1)
    return np.stack([x1, y1, x1 + tw, y1 + th], axis=1)


def seam_keep(boxes: np.ndarray, tile_index: np.ndarray, tiles: np.ndarray, height: int, width: int,
              margin: float) -> np.ndarray:
    """Which detections to keep (bool [D]): all but those cut by an inner edge of their tile whose box another
    tile holds whole. ``boxes`` [D, 4] in image pixels, ``tile_index`` [D] into ``tiles`` [N, 4]; ``margin``:
    how close to an inner edge (image pixels) a box must end to count as cut. Tile index -1: the whole-image
    pass, never cut."""
    d = len(boxes)
    if d == 0 or len(tiles) <= 1:
        return np.ones(d, dtype=bool)
    own = tiles[np.maximum(tile_index, 0)]
    inner_lo = own[:, :2] > 0
    inner_hi = own[:, 2:] < np.array([width, height])
    cut = ((inner_lo & (boxes[:, :2] <= own[:, :2] + margin)) | (inner_hi & (boxes[:, 2:] >= own[:, 2:] - margin))).any(1)
    cut &= tile_index >= 0
    if not cut.any():
        return np.ones(d, dtype=bool)
    whole = _whole_on_axis(boxes[:, 0], boxes[:, 2], np.unique(tiles[:, [0, 2]], axis=0), width, margin) \
        & _whole_on_axis(boxes[:, 1], boxes[:, 3], np.unique(tiles[:, [1, 3]], axis=0), height, margin)
    return ~(cut & whole)


def _whole_on_axis(lo: np.ndarray, hi: np.ndarray, spans: np.ndarray, length: int, margin: float) -> np.ndarray:
    """Whether some tile span [a, b] along one axis holds [lo, hi] clear of its inner edges."""
    a = np.where(spans[:, 0] > 0, spans[:, 0] + margin, -np.inf)[None, :]
    b = np.where(spans[:, 1] < length, spans[:, 1] - margin, np.inf)[None, :]
    return ((lo[:, None] > a) & (hi[:, None] < b)).any(1)


def pair_overlaps(boxes: np.ndarray, labels: np.ndarray, group: np.ndarray, match: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i, j), i < j, of boxes of one label from different groups (tiles) that intersect, with their IoU
    or IoS. A sweep over boxes sorted by x1 finds the candidates without an all-pairs matrix."""
    n = len(boxes)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, np.zeros(0)
    order = np.argsort(boxes[:, 0], kind="stable")
    x1s = boxes[order, 0]
    # For each box (in x1 order) the later boxes whose x1 lies before its x2.
    ends = np.searchsorted(x1s, boxes[order, 2], side="left")
    starts = np.arange(1, n + 1)
    counts = np.maximum(ends - starts, 0)
    if counts.sum() == 0:
        return empty, empty, np.zeros(0)
    a = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    b = np.repeat(starts, counts) + offsets
    i, j = order[a], order[b]
    keep = (labels[i] == labels[j]) & (group[i] != group[j])
    i, j = i[keep], j[keep]
    bi, bj = boxes[i], boxes[j]
    iw = np.minimum(bi[:, 2], bj[:, 2]) - np.maximum(bi[:, 0], bj[:, 0])
    ih = np.minimum(bi[:, 3], bj[:, 3]) - np.maximum(bi[:, 1], bj[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    area = lambda x: np.clip(x[:, 2] - x[:, 0], 0, None) * np.clip(x[:, 3] - x[:, 1], 0, None)  # noqa: E731
    ai, aj = area(bi), area(bj)
    denom = np.minimum(ai, aj) if match == "ios" else ai + aj - inter
    value = np.where(denom > 0, inter / np.where(denom > 0, denom, 1), 0.0)
    pos = inter > 0
    lo, hi = np.minimum(i, j)[pos], np.maximum(i, j)[pos]
    return lo, hi, value[pos]


def merge_detections(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, group: np.ndarray, *, method: str = "nms",
                     match: str = "iou", threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Merge the detections of overlapping tiles: (kept indices, best first; their boxes [K, 4]).

    ``nms``: of two detections of one class from different tiles matching above ``threshold``, the lower-scored
    is dropped. ``greedy-nmm`` (SAHI's greedy non-maximum merging): the best remaining detection absorbs those it
    matches, its box becoming their union. Detections of one tile are never compared with each other."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    i, j, value = pair_overlaps(boxes, np.asarray(labels), np.asarray(group), match)
    hit = value > threshold
    i, j = i[hit], j[hit]
    # Orient each pair best-first, then walk detections best-first over the sparse match graph.
    swap = rank[j] < rank[i]
    first, second = np.where(swap, j, i), np.where(swap, i, j)
    by_first = np.argsort(rank[first], kind="stable")
    first, second = first[by_first], second[by_first]
    bounds = np.searchsorted(rank[first], np.arange(len(order) + 1))
    removed = np.zeros(len(order), dtype=bool)
    kept: list[int] = []
    merged = boxes.copy()
    for r, k in enumerate(order.tolist()):
        if removed[k]:
            continue
        kept.append(k)
        partners = second[bounds[r]:bounds[r + 1]]
        partners = partners[~removed[partners]]
        if partners.size:
            removed[partners] = True
            if method == "greedy-nmm":
                group_boxes = np.concatenate([merged[k:k + 1], boxes[partners]])
                merged[k] = [*group_boxes[:, :2].min(0), *group_boxes[:, 2:].max(0)]
    keep = np.asarray(kept, dtype=np.int64)
    return keep, merged[keep]


def merge_tiles(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, tile_index: np.ndarray, tiles: np.ndarray,
                height: int, width: int, options: TileOptions, nms_iou: float, scale: float = 1.0,
                max_det: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Seam filtering then merging of one image's tile detections: (kept indices, best first; their boxes).
    ``scale``: network pixels per image pixel inside a tile (the seam margin is measured there)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    margin = SEAM_MARGIN / max(scale, 1e-9)
    candidates = np.flatnonzero(seam_keep(boxes, tile_index, tiles, height, width, margin))
    threshold = options.threshold if options.threshold is not None else nms_iou
    keep, merged = merge_detections(boxes[candidates], np.asarray(scores)[candidates], np.asarray(labels)[candidates],
                                    np.asarray(tile_index)[candidates], method=options.merge, match=options.match,
                                    threshold=threshold)
    keep = candidates[keep]
    if max_det is not None:
        keep, merged = keep[:max_det], merged[:max_det]
    return keep, merged


def describe_plan(plan: TilePlan, height: int, width: int) -> str:
    n = len(plan.grid(height, width))
    oh, ow = plan.overlap
    return f"{width}x{height} sliced into {n} tiles of {plan.text()} (overlap {ow if oh == ow else f'{ow}x{oh}'} px)"


def full_image_keep(boxes: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Detections of the whole-image pass worth adding to the tiles': those too large for a tile to hold whole
    (wider or taller than the overlap); the tiles see every smaller object at full resolution."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    oh, ow = plan.overlap
    return ((boxes[:, 2] - boxes[:, 0]) > ow) | ((boxes[:, 3] - boxes[:, 1]) > oh)


@dataclass
class TilingReport:
    """What sliced inference did over a run: said once per kind as it happens (``log``), counted for the summary."""

    log: Callable[[str], None] | None = None
    images: int = 0
    sliced: int = 0
    tiles: int = 0
    said: set = field(default_factory=set)

    def note(self, key, message: str) -> None:
        if key not in self.said:
            self.said.add(key)
            if self.log is not None:
                self.log(message)

    def summary(self) -> str:
        if not self.sliced:
            return f"sliced inference: none of {self.images} image(s) needed slicing"
        return f"sliced inference: {self.sliced} of {self.images} image(s) in {self.tiles} tiles"


def plan_images(sizes: Sequence[Sequence[int]], preprocess: Mapping | object, tiling: TileOptions | None,
                scale: TrainingScale | None, report: TilingReport | None = None) -> list[TilePlan | None]:
    """The slicing of images of these (h, w) sizes (None: whole), reported as decided."""
    plans = []
    for h, w in ((int(a), int(b)) for a, b in sizes):
        plan = plan_tiles(h, w, preprocess, scale, tiling) if tiling is not None else None
        if report is not None:
            report.images += 1
            if plan is not None:
                report.sliced += 1
                report.tiles += len(plan.grid(h, w))
                report.note(("plan", plan.tile, plan.overlap), f"sliced inference: {describe_plan(plan, h, w)}"
                            + (f"; {plan.reason}" if plan.reason else ""))
            elif (warning := shrink_warning(h, w, preprocess, scale)) is not None:
                report.note("shrink", f"warning: {warning}")
        plans.append(plan)
    return plans


def plan_regions(sizes: Sequence[Sequence[int]], plans: Sequence[TilePlan | None], full_image: bool,
                 keep: Sequence[Callable[[np.ndarray], np.ndarray] | None] | None = None
                 ) -> tuple[list[tuple[int, int, tuple[int, int, int, int]]], list[np.ndarray | None]]:
    """The regions the network sees, in order: (image, tile index or -1 for the whole image, (x1, y1, x2, y2)) for
    each image's tiles (then the whole image, with ``full_image``), or the whole image when it is not sliced; and
    each image's tile grid (None: not sliced). Both paths cut their arrays by these. ``keep[i]``, given image i's
    grid [T, 4], says which tiles to run (a slide's tissue mask): the others leave the grid, so that no seam rule
    counts on a tile that never ran."""
    regions: list[tuple[int, int, tuple[int, int, int, int]]] = []
    grids: list[np.ndarray | None] = []
    for i, ((h, w), plan) in enumerate(zip(sizes, plans)):
        whole = (i, -1, (0, 0, int(w), int(h)))
        if plan is None:
            regions.append(whole)
            grids.append(None)
            continue
        grid = plan.grid(int(h), int(w))
        if keep is not None and keep[i] is not None:
            grid = grid[np.asarray(keep[i](grid), dtype=bool)]
        grids.append(grid)
        regions += [(i, t, tuple(box)) for t, box in enumerate(grid.tolist())]
        if full_image:
            regions.append(whole)
    return regions, grids
