"""Loader throughput vs. the `fast` model's CPU training step.

The loader must deliver batches well ahead of what a training step consumes, or
training waits on data. Measured separately (each on the whole machine):

* loader: `build_loader(..., augment=<preset>, workers=N)` iterated for a number of batches;
* train step: forward + loss + backward + SGD step of `build_model("fast")` on real batches.

Usage: python benchmarks/bench_loader.py [--data shapes|PATH] [--batch-size 8] [--workers 2]
"""

from __future__ import annotations

import argparse
import time

import torch


def bench_loader(data, split, batch_size, workers, augment, batches):
    from retinadet.data.loading import build_loader

    loader = build_loader(data, split, batch_size=batch_size, workers=workers, model="fast", augment=augment,
                          persistent_workers=True, seed=0)
    it = iter(loader)
    next(it)  # worker start-up is a one-off cost, not throughput
    done, t0 = 0, time.perf_counter()
    while done < batches:
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            continue
        done += 1
    elapsed = time.perf_counter() - t0
    return done / elapsed, loader


def bench_train_step(loader, steps, warmup=2):
    from retinadet.model import build_model

    torch.manual_seed(0)
    model = build_model("fast", num_classes=len(loader.class_names))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = []
    for b in loader:
        batches.append(b)
        if len(batches) == 4:
            break

    def step(batch):
        losses = model(model.normalize(batch["images"], batch["image_sizes"]),
                       targets={"boxes": batch["boxes"], "labels": batch["labels"], "crowd": batch["crowd"]})
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return losses["total"].detach().item()

    for i in range(warmup):
        step(batches[i % len(batches)])
    t0 = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    return steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="shapes", help="'shapes' (built-in, cached) or a dataset path")
    ap.add_argument("--split", default="train")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--augment", default="default")
    ap.add_argument("--loader-batches", type=int, default=40)
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()

    data = args.data
    if data == "shapes":
        from retinadet.data.synthetic import ensure_shapes_dataset

        t0 = time.perf_counter()
        data = ensure_shapes_dataset()
        print(f"shapes dataset ready at {data} ({time.perf_counter() - t0:.1f}s)")

    loader_rate, loader = bench_loader(data, args.split, args.batch_size, args.workers, args.augment, args.loader_batches)
    # Training on all cores, no loader workers running alongside.
    torch.set_num_threads(max(1, torch.get_num_threads()))
    step_rate = bench_train_step(loader, args.steps)
    bs = args.batch_size
    rows = [
        (f"loader ({args.augment}, {args.workers} workers)", loader_rate, loader_rate * bs),
        ("train step (fast, SGD)", step_rate, step_rate * bs),
    ]
    print(f"\n{'stage':<36}{'batches/s':>12}{'images/s':>12}")
    for name, b, i in rows:
        print(f"{name:<36}{b:>12.2f}{i:>12.1f}")
    ratio = loader_rate / step_rate
    print(f"\nloader / train-step rate: {ratio:.1f}x (target >= 3x) batch size {bs}, data {args.data}")
    print(f"loader counters: {loader.counters.summary()}")


if __name__ == "__main__":
    main()
