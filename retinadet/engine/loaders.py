"""Loaders whose order and augmentation are pure functions of (seed, epoch, index).

That is what makes an interrupted run resumable exactly: the batch order of an epoch
comes from a sampler seeded with (seed, epoch), a resumed epoch skips the batches
already trained on, and each sample's augmentation is drawn from an RNG seeded with
(seed, epoch, index), independent of workers and of where the epoch started.
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
from retinadet.data.records import DatasetRecords
from retinadet.data.transforms import build_transform
from retinadet.errors import DataError


class SeededDataset(Dataset):
    """Draws each sample's augmentation from torch's RNG seeded by (seed, epoch, index)."""

    def __init__(self, inner: DetectionDataset, seed: int, epoch: int = 0):
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
    """The batches of one epoch for one rank (same count on every rank)."""
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


def _pipeline(data: DatasetRecords, augment: str, preprocess: Any) -> tuple[DetectionDataset, DetectionCollate]:
    """The dataset (with its augmentation and resize) and the collate that pads its batches."""
    return (DetectionDataset(data, build_transform(augment, preprocess)),
            DetectionCollate(preprocess.size_divisible or 32, preprocess.fixed_size))


class TrainLoader:
    """Iterates one epoch from a given batch index; ``len`` is the full epoch.

    With ``small=(epochs, preprocess)``, epochs before ``epochs`` resize with that preprocess instead
    (progressive resizing): which inputs an epoch sees stays a function of the epoch, so resume is exact.
    """

    def __init__(self, data: DatasetRecords, preprocess: Any, batch_size: int, augment: str = "default",
                 workers: int = 0, seed: int = 0, rank: int = 0, world: int = 1, pin_memory: bool = False,
                 small: tuple[int, Any] | None = None):
        if len(data) == 0:
            raise DataError(f"{data.root}: split '{data.split}' has no images")
        self.full = _pipeline(data, augment, preprocess)
        self.small = _pipeline(data, augment, small[1]) if small is not None and small[0] > 0 else None
        self.small_epochs = int(small[0]) if self.small is not None else 0
        self.dataset = self.full[0]
        self.groups = aspect_ratio_groups(self.dataset.aspect_ratios())
        self.batch_size, self.workers, self.seed = int(batch_size), int(workers), int(seed)
        self.rank, self.world, self.pin_memory = rank, world, pin_memory
        self.counters = LoaderCounters()

    def __len__(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world)
        return math.ceil(per_rank / self.batch_size)

    def epoch(self, epoch: int, start: int = 0):
        dataset, collate = self.small if epoch < self.small_epochs else self.full
        batches = epoch_batches(len(self.dataset), self.groups, self.batch_size, self.seed, epoch, self.rank, self.world)
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
