"""Dynamic batching: requests that arrive together share one forward pass.

A forward pass of 8 images costs far less than 8 passes of one (the convolutions vectorise over the batch, the
anchors are built once per geometry), so under concurrent load the server gathers the images waiting for the same
inference options, up to ``max_batch`` of them and at most ``batch_wait_ms`` after the first arrived, and runs them
through :meth:`retinadet.detector.Detector.predict` as one list: the same code path, resize rule and
post-processing as ``retinadet predict``. Inference runs on one worker thread, so the event loop keeps accepting
requests (and batches fill up) while the model is busy, and the model is never entered by two threads at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from retinadet.utils.sentinels import FROM_CONFIG, FromConfig
from retinadet.utils.tiling import TileOptions


@dataclass(frozen=True)
class InferOptions:
    """The options that change a forward pass; requests are batched only with requests of equal options.
    ``conf`` is the threshold the network runs at (per-class thresholds are applied after, by the caller)."""

    conf: float | None = None
    iou: float | None = None
    max_det: int | None | FromConfig = FROM_CONFIG
    tile: TileOptions = field(default_factory=TileOptions)


@dataclass
class BatchStats:
    """What the batcher did: ``batches`` forward passes (Triton's execution_count) for ``images`` images
    (its inference_count)."""

    batches: int = 0
    images: int = 0
    failed_batches: int = 0
    largest_batch: int = 0
    busy_s: float = 0.0  # time spent inside Detector.predict
    last_ns: int = 0  # wall clock of the last finished batch (ns since the epoch), 0 before the first

    def to_dict(self) -> dict:
        return {"batches": self.batches, "images": self.images, "failed_batches": self.failed_batches,
                "largest_batch": self.largest_batch, "busy_s": round(self.busy_s, 6), "last_ns": self.last_ns}


@dataclass
class _Item:
    image: Tensor
    options: InferOptions
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """Gathers concurrent :meth:`submit` calls into batched ``detector.predict`` calls.

    ``max_batch`` 1 turns batching off (one image per forward pass, in arrival order). Start it with
    :meth:`start` inside the running event loop (the app's lifespan) and stop it with :meth:`stop`, which waits
    for the forward pass in flight and fails the requests still waiting."""

    def __init__(self, detector: Any, max_batch: int = 8, batch_wait_ms: float = 10.0):
        if int(max_batch) < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if float(batch_wait_ms) < 0:
            raise ValueError(f"batch_wait_ms must be >= 0, got {batch_wait_ms}")
        self.detector = detector
        self.max_batch = int(max_batch)
        self.batch_wait = float(batch_wait_ms) / 1000.0
        self.stats = BatchStats()
        # Waiting requests by options, the group whose first request is oldest first. Only the event loop's thread
        # touches it, so it needs no lock; ``_wake`` tells the collector something arrived.
        self._buckets: dict[Hashable, list[_Item]] = {}
        self._inflight: list[_Item] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def run_on_model_thread(self, fn):
        """``fn()`` on the one inference thread, so that it never overlaps a batch's forward pass (Grad-CAM hooks
        the model's modules); on a pool thread while the batcher is not started."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    async def start(self) -> None:
        if self.running:
            return
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retinadet-infer")
        self._task = asyncio.create_task(self._collect(), name="retinadet-batcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)  # the pass in flight ends
            self._executor = None
        waiting = self._inflight + [it for bucket in self._buckets.values() for it in bucket]
        self._buckets.clear()
        self._inflight = []
        for it in waiting:
            if not it.future.done():
                it.future.set_exception(RuntimeError("the server is shutting down"))

    async def submit(self, image: Tensor, options: InferOptions | None = None):
        """The :class:`retinadet.structures.Detections` of one uint8 image [3, H, W], in its pixels; raises what
        its batch's ``predict`` raised."""
        if not self.running or self._wake is None:
            raise RuntimeError("the batcher is not running (start it in the app's lifespan)")
        options = options if options is not None else InferOptions()
        future = asyncio.get_running_loop().create_future()
        self._buckets.setdefault(options, []).append(_Item(image, options, future, time.monotonic()))
        self._wake.set()
        return await future

    async def _collect(self) -> None:
        """One batch at a time: the oldest options group fills until it holds ``max_batch`` images or its first
        image has waited ``batch_wait``; requests arriving meanwhile (also during a forward pass) wait their turn."""
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            if not self._buckets:
                self._wake.clear()
                await self._wake.wait()
                continue
            key = next(iter(self._buckets))
            bucket = self._buckets[key]  # the live list: submit() appends to it while we wait
            deadline = bucket[0].arrived + self.batch_wait
            while len(bucket) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, rest = bucket[:self.max_batch], bucket[self.max_batch:]
            if rest:
                self._buckets[key] = rest  # keeps its place: its first request is still the oldest
            else:
                del self._buckets[key]
            batch = [it for it in batch if not it.future.done()]  # a request cancelled meanwhile
            if batch:
                await self._run(loop, batch, key)

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item], options: InferOptions) -> None:
        self._inflight = batch
        started = time.perf_counter()
        try:
            results = await loop.run_in_executor(self._executor, self._predict, [it.image for it in batch], options)
        except Exception as exc:  # noqa: BLE001 - one batch's failure is its requests' error, not the server's
            self.stats.failed_batches += 1
            for it in batch:
                if not it.future.done():
                    it.future.set_exception(exc)
            return
        finally:
            self.stats.busy_s += time.perf_counter() - started
            self._inflight = []
        self.stats.batches += 1
        self.stats.images += len(batch)
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        self.stats.last_ns = time.time_ns()
        for it, result in zip(batch, results):
            if not it.future.done():
                it.future.set_result(result)

    def _predict(self, images: list[Tensor], options: InferOptions) -> list:
        dets = self.detector.predict(images, conf=options.conf, iou=options.iou, max_det=options.max_det,
                                     tile=options.tile, batch_size=self.max_batch)
        if len(dets) != len(images):
            raise RuntimeError(f"predict returned {len(dets)} results for {len(images)} images")
        return list(dets)
