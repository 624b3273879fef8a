"""Benchmark: `retinadet train --time` on built-in shapes data, through the CLI in a subprocess.

    python benchmarks/bench_time_budget.py [--budgets 5m] [--amp off] [--out runs/bench_time_budget]

Each budget is one `retinadet train --time BUDGET` run (the default recipe otherwise). The wall time is the
subprocess's, from start (imports included) to exit, so it is what a user waits. Prints a table: the budget, the
wall time, its deviation from the budget (the aim is within 5%), the epochs done (a last epoch the budget cut short
counts as its share), the last validation's AP and the best, and the share of CPU time the host took back (steal,
from /proc/stat) during the run: a run measured with much steal is not the planner's fault. Run it on an otherwise
idle machine; one 5-minute budget takes a little over 5 minutes.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import click
from host_load import cpu_times, steal_share

# "time budget 5m reached: epoch 8 ended at iteration 31/75"
CUT_SHORT = re.compile(r"reached: epoch (\d+) ended at iteration (\d+)/(\d+)")


@click.command()
@click.option("--budgets", default="5m", show_default=True, help="Comma-separated --time values.")
@click.option("--amp", default="off", show_default=True, help="--amp of the runs (off, auto, bf16, ...).")
@click.option("--out", default="runs/bench_time_budget", show_default=True)
def main(budgets: str, amp: str, out: str) -> None:
    from retinadet.data.synthetic import ShapesConfig, ensure_shapes_dataset
    from retinadet.engine.config import parse_duration
    from retinadet.utils.files import read_csv

    ensure_shapes_dataset(ShapesConfig())  # written before the clock starts, as a second `retinadet train` finds it
    rows = []
    for budget in [b.strip() for b in budgets.split(",") if b.strip()]:
        seconds = parse_duration(budget)
        name = f"time_{budget}_{amp}"
        cmd = [sys.executable, "-m", "retinadet", "train", "--time", budget, "--amp", amp, "--project", out,
               "--name", name, "--exist-ok"]
        cpu0 = cpu_times()
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise click.ClickException(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        run = Path(out) / "train" / name
        header, results = read_csv(run / "results.csv")
        aps = [float(r[header.index("AP")]) for r in results if r[header.index("AP")]]
        epochs = float(len(results))
        if (cut := CUT_SHORT.search((run / "train.log").read_text())) is not None:
            epochs -= 1 - int(cut.group(2)) / int(cut.group(3))
        rows.append((budget, seconds, wall, steal_share(cpu0, cpu_times()), epochs, aps[-1] if aps else float("nan"),
                     max(aps, default=float("nan"))))
    click.echo("| budget | wall (s) | deviation | host steal | epochs | last val AP | best val AP |")
    click.echo("|---|---|---|---|---|---|---|")
    for budget, seconds, wall, steal, epochs, last, best in rows:
        click.echo(f"| {budget} | {wall:.1f} | {(wall - seconds) / seconds:+.1%} | {steal} | {epochs:.2f} | {last:.3f} | "
                   f"{best:.3f} |")


if __name__ == "__main__":
    main()
