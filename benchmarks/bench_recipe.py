"""Benchmark: the default `retinadet train` recipe on built-in shapes data, the usual seed and unseen ones.

    python benchmarks/bench_recipe.py [--seeds 0,1] [--out runs/bench_recipe]

Seed 0 is the dataset `retinadet train` uses; other seeds draw new images (new textures, shapes, sizes
and positions) from the same generator, so they check the recipe rather than one dataset. Prints a
table: wall time of the whole run (training, validation, report), epochs, and best val
AP / AP50. Run it on an otherwise idle machine: the wall time is the figure of merit. On a virtual
machine the table also gives the share of CPU time the host took back (steal, from /proc/stat) during
each run: a wall time measured with more than a few percent of steal is not the recipe's.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
from host_load import cpu_times, steal_share


@click.command()
@click.option("--seeds", default="0,1", show_default=True, help="Comma-separated shapes dataset seeds.")
@click.option("--out", default="runs/bench_recipe", show_default=True)
def main(seeds: str, out: str) -> None:
    import retinadet
    from retinadet.data.synthetic import ShapesConfig, ensure_shapes_dataset

    rows = []
    for seed in [int(s) for s in seeds.split(",") if s.strip()]:
        # The dataset is written before the clock starts, as `retinadet train` finds it cached after a first run.
        data = "shapes" if seed == 0 else str(ensure_shapes_dataset(ShapesConfig(seed=seed)))
        cpu0 = cpu_times()
        t0 = time.perf_counter()
        result = retinadet.train(data=data, project=out, name=f"seed{seed}", exist_ok=True, progress=False)
        wall = time.perf_counter() - t0
        rows.append((seed, wall, steal_share(cpu0, cpu_times()), result.epochs_completed, result.best_fitness,
                     _best_ap50(Path(result.save_dir))))
    click.echo("| shapes seed | wall (s) | host steal | epochs | best val AP | AP50 at best |")
    click.echo("|---|---|---|---|---|---|")
    for seed, wall, steal, epochs, ap, ap50 in rows:
        click.echo(f"| {seed} | {wall:.0f} | {steal} | {epochs} | {ap:.3f} | {ap50:.3f} |")


def _best_ap50(run: Path) -> float:
    from retinadet.utils.files import read_csv

    header, rows = read_csv(run / "results.csv")
    ap, ap50 = header.index("AP"), header.index("AP50")
    validated = [r for r in rows if r[ap] != ""]  # the validation schedule leaves some epochs without AP
    if not validated:
        raise SystemExit(f"{run / 'results.csv'}: no epoch was validated, so there is no best AP50 to report")
    best = max(validated, key=lambda r: float(r[ap]))
    return float(best[ap50])


if __name__ == "__main__":
    main()
