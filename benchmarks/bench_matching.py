"""Anchor matching on the anchor grid against torchvision's ``box_iou``, side by side in one run.

The ``fast`` model's training step at one input size, with BCCD-like targets (a mosaic holds about 40 boxes),
timed in alternating rounds so that machine load hits both paths alike. Prints the time of the IoU alone, of
matching, of the loss (matching and the losses, forward and backward) and of the whole step (forward, backward,
AdamW), and the ratio of torchvision's path to ours. The matches are checked equal before any timing.

    python benchmarks/bench_matching.py --size 320 --boxes 40 --threads 2 --rounds 5
"""

from __future__ import annotations

import statistics
import time

import click
import torch
from torchvision.ops import box_iou

from retinadet.model import build_model, matching
from retinadet.model.matching import anchor_iou, match_anchors


def _time(fn, repeat: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


@click.command()
@click.option("--size", default=320, show_default=True, help="Square input side (px).")
@click.option("--batch", default=8, show_default=True)
@click.option("--boxes", default=40, show_default=True, help="Boxes per image.")
@click.option("--threads", default=2, show_default=True)
@click.option("--rounds", default=5, show_default=True)
def main(size: int, batch: int, boxes: int, threads: int, rounds: int) -> None:
    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    model = build_model("fast", overrides={"num_classes": 3, "preprocess.min_size": size, "preprocess.max_size": size,
                                           "preprocess.fixed_size": size})
    model.use_channels_last()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(batch, 3, size, size, generator=g)
    corner = torch.rand(batch, boxes, 2, generator=g) * (size - 40)
    gt = torch.cat([corner, corner + 8 + torch.rand(batch, boxes, 2, generator=g) * 60], dim=-1)
    targets = {"boxes": gt, "labels": torch.randint(0, 3, (batch, boxes), generator=g)}
    valid = torch.ones(batch, boxes, dtype=torch.bool)
    cls_logits, box_deltas, anchors, per_level = model.forward_raw(model.normalize(images))
    cls_logits, box_deltas = cls_logits.detach().requires_grad_(), box_deltas.detach().requires_grad_()
    shapes = model.cfg.anchors.num_anchors
    flat = gt.reshape(-1, 4)

    paths = {"torchvision box_iou": None, "anchor grid (ours)": shapes}
    matches = {name: match_anchors(anchors, gt, valid, ~valid, model.cfg.matcher, per_level, s) for name, s in paths.items()}
    first, second = matches.values()
    if not torch.equal(first, second):
        raise SystemExit("the two paths matched differently")
    print(f"fast model, {size}px, batch {batch}, {boxes} boxes per image, {anchors.shape[0]} anchors, {threads} threads; "
          f"{int((first >= 0).sum())} positive anchors, identical on both paths")

    def step() -> None:
        loss = model(model.normalize(images), targets)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    def loss_only() -> None:
        model.compute_loss(cls_logits, box_deltas, anchors, targets, per_level)["total"].backward()

    parts = {
        "IoU": lambda s: (lambda: box_iou(flat, anchors) if s is None else anchor_iou(flat, anchors, per_level, s)),
        "matching": lambda s: (lambda: match_anchors(anchors, gt, valid, ~valid, model.cfg.matcher, per_level, s)),
        "loss fwd+bwd": lambda s: loss_only,
        "training step": lambda s: step,
    }
    grid_iou = matching.anchor_iou
    times: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds):
        for name, s in paths.items():
            # The model's loss calls the matcher with its anchors per location; torchvision's path replaces the
            # matcher's IoU with box_iou, as the matcher computed it before.
            matching.anchor_iou = grid_iou if s is not None else (lambda b, a, *_: box_iou(b, a))
            try:
                for part, make in parts.items():
                    times.setdefault((part, name), []).append(_time(make(s), 3 if part == "training step" else 5))
            finally:
                matching.anchor_iou = grid_iou

    print(f"{'part':<15}" + "".join(f"{n:>24}" for n in paths) + f"{'ratio':>8}")
    for part in parts:
        ms = [statistics.median(times[(part, n)]) * 1000 for n in paths]
        print(f"{part:<15}" + "".join(f"{m:>21.1f} ms" for m in ms) + f"{ms[0] / ms[1]:>7.2f}x")


if __name__ == "__main__":
    main()
