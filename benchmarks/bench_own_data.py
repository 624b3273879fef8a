"""Benchmark: the default `retinadet train --data` on BCCD and two small synthetic sets of other kinds, against the
fixed recipe it replaced.

    python benchmarks/bench_own_data.py [--sets bccd,clutter,elongated] [--recipes default,fixed] [--out DIR]

- ``bccd``: real blood-cell microscopy (VOC, ../shared/datasets/bccd): small rare platelets among red cells.
- ``clutter`` and ``elongated`` (``own_data_sets.py``): large objects on clutter, and thin boxes of 1:4 to 1:18.

Recipes:
- ``default``: ``retinadet.train(data=...)`` with nothing else, what a user's first run gets: the input size
  and anchors fitted to the boxes, and the from-scratch recipe of the `fast` preset.
- ``fixed``: the recipe before it, every option spelled out (FIXED): the 288 px canvas, the preset's anchors,
  30 epochs, focal loss, no EMA, no mosaic.

Each run trains on the train split, picks best.pt on val (the trainer's choice by val AP), and evaluates the test
split once. Prints a table: the input size chosen, epochs, wall time of the training call, the share of CPU time
the host took back during it (a wall time measured with much steal is not the recipe's), test AP, AP50, and
per-class test AP. Run it on an otherwise idle machine, one run at a time: BCCD takes up to 10 minutes a recipe.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import click
from host_load import cpu_times, steal_share
from own_data_sets import SETS, ensure_set

BCCD = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd"
# The recipe `train --data` ran before this benchmark's: what the fitted recipe must at least match.
FIXED = {"imgsz": 288, "epochs": 30, "autoanchor": False, "ema": False, "mosaic": 0.0, "augment": "upright",
         "model_overrides": {"loss.cls_loss": "focal"}}
RECIPES = {"default": {}, "fixed": FIXED}


@click.command()
@click.option("--sets", default="bccd,clutter,elongated", show_default=True,
              help=f"Comma-separated: bccd, {', '.join(SETS)}.")
@click.option("--recipes", default="default,fixed", show_default=True, help=f"Comma-separated: {', '.join(RECIPES)}.")
@click.option("--out", default="runs/bench_own_data", show_default=True)
@click.option("--cache", default=None, help="Where the synthetic sets are written once [default: OUT/data].")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed (the sets are seed 0).")
def main(sets: str, recipes: str, out: str, cache: str | None, seed: int) -> None:
    import retinadet

    names = [s.strip() for s in sets.split(",") if s.strip()]
    chosen = [r.strip() for r in recipes.split(",") if r.strip()]
    unknown = [n for n in names if n != "bccd" and n not in SETS] + [r for r in chosen if r not in RECIPES]
    if unknown:
        raise click.BadParameter(f"unknown: {', '.join(unknown)}")
    rows = []
    for name in names:
        data = str(BCCD) if name == "bccd" else str(ensure_set(name, cache or Path(out) / "data"))
        if name == "bccd" and not BCCD.exists():
            raise click.ClickException(f"BCCD not found at {BCCD}")
        for recipe in chosen:
            before, t0 = cpu_times(), time.perf_counter()
            result = retinadet.train(data=data, project=out, name=f"{name}-{recipe}", exist_ok=True, progress=False,
                                     seed=seed, **RECIPES[recipe])
            wall, steal = time.perf_counter() - t0, steal_share(before, cpu_times())
            det = retinadet.load(result.best)
            test = det.val(data=data, split="test", save_dir=result.save_dir / "bench_test", log=lambda *_: None)
            size = det.model.cfg.preprocess
            row = {"set": name, "recipe": recipe, "input": size.fixed_size or size.min_size,
                   "epochs": result.epochs_completed, "wall_s": round(wall, 1), "steal": steal,
                   "test_AP": round(test["AP"], 4), "test_AP50": round(test["AP50"], 4),
                   "per_class_AP": {k: round(v, 3) for k, v in test["per_class_AP"].items()}}
            rows.append(row)
            click.echo(json.dumps(row))
    click.echo("| set | recipe | input | epochs | wall (s) | host steal | test AP | test AP50 | per-class test AP |")
    click.echo("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        per_class = ", ".join(f"{k} {v:.3f}" for k, v in r["per_class_AP"].items())
        click.echo(f"| {r['set']} | {r['recipe']} | {r['input']} | {r['epochs']} | {r['wall_s']:.0f} | {r['steal']} | "
                   f"{r['test_AP']:.3f} | {r['test_AP50']:.3f} | {per_class} |")


if __name__ == "__main__":
    main()
