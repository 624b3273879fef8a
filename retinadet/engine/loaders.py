"""Loaders whose order and augmentation are pure functions of (seed, epoch, index).

That is what makes an interrupted run resumable exactly: the batch order of an epoch
comes from a sampler seeded with (seed, epoch), a resumed epoch skips the batches
already trained on, and each sample's augmentation is drawn from an RNG seeded with
(seed, epoch, index), independent of workers and of where the epoch started. Tiled training
(:mod:`retinadet.data.tiles`) keeps this: its epoch's tiles are a function of (seed, epoch), their
order is fixed, and each tile's window comes from the same per-index RNG as its augmentation. Mosaic
(:mod:`retinadet.data.mosaic`) keeps it too: whether a sample is a mosaic, its three partners and its centre come
from that RNG, and which epochs have mosaic is a function of the epoch.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from retinadet.data.loading import (
    DetectionCollate,
    DetectionDataset,
    GroupedBatchSampler,
    LoaderCounters,
    aspect_ratio_groups,
)
from retinadet.data.mosaic import MosaicDataset
from retinadet.data.records import DatasetRecords
from retinadet.data.tiles import TileCollate, TileCounters, TileDataset, TileSampling
from retinadet.data.transforms import build_transform
from retinadet.errors import ConfigError, DataError


class SeededDataset(Dataset):
    """Draws each sample's augmentation (and a tile's window) from torch's RNG seeded by (seed, epoch, index)."""

    def __init__(self, inner: DetectionDataset | TileDataset, seed: int, epoch: int = 0):
        self.inner = inner
        self.seed = int(seed)
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        with torch.random.fork_rng(devices=[]):
            # Only the CPU generator: torch.manual_seed also queues a seed for every lazy accelerator
            # module, formatting a stack trace each time (1.7 ms a sample, a fifth of loading it).
            torch.default_generator.manual_seed((self.seed * 1_000_003 + self.epoch * 100_003 + int(index)) % (2**63 - 1))
            return self.inner[index]


def epoch_batches(n: int, groups: list[int], batch_size: int, seed: int, epoch: int, rank: int = 0,
                  world: int = 1, shuffle: bool = True) -> list[list[int]]:
    """The batches of one epoch for one rank (same count on every rank); ``shuffle=False`` keeps the order of
    0..n-1 (rank r takes r, r + world, ...)."""
    sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=shuffle, seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    return list(GroupedBatchSampler(sampler, groups, batch_size, drop_last=False))


def scaled_preprocess(preprocess: Any, scale: float) -> Any:
    """The model's resize rule with every target size scaled (multiples of the size divisor, at least one)."""
    step = preprocess.size_divisible or 32

    def size(value):
        return None if value is None else max(step, int(value * scale / step + 0.5) * step)

    return dataclasses.replace(preprocess, min_size=size(preprocess.min_size), max_size=size(preprocess.max_size),
                               fixed_size=size(preprocess.fixed_size))


def mosaic_epochs(epochs: int, close: float) -> int:
    """The epochs with mosaic, the first ``ceil((1 - close) * epochs)``: the last ``close`` share trains on whole
    images, as inference sees them (YOLO's close_mosaic). Exact in the share (no float rounding up)."""
    epochs = int(epochs)
    return max(0, epochs - int(math.floor(float(close) * epochs + 1e-9)))


def _pipeline(data: DatasetRecords, augment: str, preprocess: Any,
              tiles: TileSampling | None = None) -> tuple[DetectionDataset | TileDataset, DetectionCollate]:
    """The dataset (with its augmentation and resize; of tiles with ``tiles``) and the collate that pads its batches."""
    transform = build_transform(augment, preprocess)
    pad = (preprocess.size_divisible or 32, preprocess.fixed_size)
    if tiles is not None:
        return TileDataset(data, transform, tiles, window=preprocess.window), TileCollate(*pad)
    return DetectionDataset(data, transform, window=preprocess.window), DetectionCollate(*pad)


class TrainLoader:
    """Iterates one epoch from a given batch index; ``len`` is the full epoch.

    With ``small=(epochs, preprocess)``, epochs before ``epochs`` resize with that preprocess instead
    (progressive resizing): which inputs an epoch sees stays a function of the epoch, so resume is exact.
    With ``tiles``, an epoch is the tiles :func:`retinadet.data.tiles.epoch_tiles` samples, in its order
    (an image's tiles consecutive), sharded across ranks like the images of an untiled epoch.
    With ``mosaic=(prob, epochs)``, epochs before ``epochs`` (every epoch: None) wrap the dataset, full-size or
    small, in :class:`~retinadet.data.mosaic.MosaicDataset` (not with ``tiles``: a ConfigError).
    """

    def __init__(self, data: DatasetRecords, preprocess: Any, batch_size: int, augment: str = "default",
                 workers: int = 0, seed: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False,
                 small: tuple[int, Any] | None = None, tiles: TileSampling | None = None,
                 mosaic: tuple[float, int | None] | None = None):
        if len(data) == 0:
            raise DataError(f"{data.root}: split '{data.split}' has no images")
        self.mosaic_prob = float(mosaic[0]) if mosaic is not None else 0.0
        if self.mosaic_prob > 0 and tiles is not None:
            raise ConfigError("--mosaic does not combine with --tile (tiles are crops already; drop one of them)")
        # Epochs before this one are mosaic (None: every epoch); like small_epochs, settable after construction.
        self.mosaic_epochs: int | None = 0
        if self.mosaic_prob > 0:
            self.mosaic_epochs = None if mosaic[1] is None else int(mosaic[1])
        self.tiles = tiles
        self.full = _pipeline(data, augment, preprocess, tiles)
        self.small = _pipeline(data, augment, small[1], tiles) if small is not None and small[0] > 0 else None
        self.small_epochs = int(small[0]) if self.small is not None else 0
        self.dataset = self.full[0]
        if isinstance(self.dataset, TileDataset):
            self.tile_counts = self.dataset.tile_counts()
            self.num_samples = sum(self.tile_counts)
            self.groups = aspect_ratio_groups(self.dataset.image_aspect_ratios())  # per image; per tile in plan()
            self.counters: LoaderCounters = TileCounters(min_visibility=self.dataset.sampling.min_visibility)
        else:
            self.num_samples = len(self.dataset)
            self.groups = aspect_ratio_groups(self.dataset.aspect_ratios())
            self.counters = LoaderCounters()
        self.batch_size, self.workers, self.seed = int(batch_size), int(workers), int(seed)
        self.rank, self.world, self.pin_memory = rank, world, pin_memory

    def __len__(self) -> int:
        per_rank = math.ceil(self.num_samples / self.world)
        return math.ceil(per_rank / self.batch_size)

    def is_mosaic(self, epoch: int) -> bool:
        """Whether ``epoch``'s samples are mosaics (with ``mosaic_prob``)."""
        return self.mosaic_prob > 0 and (self.mosaic_epochs is None or epoch < self.mosaic_epochs)

    def plan(self, epoch: int) -> tuple[Dataset, DetectionCollate, list[list[int]]]:
        """The dataset, collate and this rank's batches (indices into the dataset) of ``epoch``."""
        dataset, collate = self.small if epoch < self.small_epochs else self.full
        if self.is_mosaic(epoch):  # never tiles (refused above)
            dataset = MosaicDataset(dataset, self.mosaic_prob)
        if isinstance(dataset, TileDataset):
            dataset = dataset.epoch(self.seed, epoch)
            groups = [self.groups[s.image] for s in dataset.samples]
            batches = epoch_batches(len(dataset), groups, self.batch_size, self.seed, epoch, self.rank, self.world,
                                    shuffle=False)
        else:
            batches = epoch_batches(len(dataset), self.groups, self.batch_size, self.seed, epoch, self.rank, self.world)
        return dataset, collate, batches

    def epoch(self, epoch: int, start: int = 0):
        dataset, collate, batches = self.plan(epoch)
        loader = DataLoader(SeededDataset(dataset, self.seed, epoch), batch_sampler=batches[start:],
                            num_workers=self.workers, collate_fn=collate, pin_memory=self.pin_memory,
                            generator=torch.Generator().manual_seed(self.seed + epoch))
        for batch in loader:
            stats = batch.pop("stats", None)
            if stats is not None:
                self.counters.update(len(batch["paths"]), stats)
            yield batch


def eval_loader(data: DatasetRecords, preprocess: Any, batch_size: int, workers: int = 0, rank: int = 0,
                world: int = 1) -> DataLoader:
    """Sequential, no augmentation; rank r gets images r, r+world, ... (no padding duplicates)."""
    if len(data) == 0:
        raise DataError(f"{data.root}: split '{data.split}' has no images")
    dataset, collate = _pipeline(data, "none", preprocess)
    idx = list(range(rank, len(dataset), world))
    batches = [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))
