"""How much of the CPU the host took back during a benchmark run (steal time, from /proc/stat).

The development machines are shared virtual machines: a wall time measured while the host took a few percent
of the CPU back is not the code's. Benchmarks print this share beside each timed row.
"""

from __future__ import annotations


def cpu_times() -> list[int]:
    """The aggregate CPU line of /proc/stat (jiffies), or [] where there is none."""
    try:
        with open("/proc/stat") as fh:
            return [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return []


def steal_share(before: list[int], after: list[int]) -> str:
    """The share of CPU time stolen between two ``cpu_times()`` readings, as "3%" ("n/a" where unknown)."""
    if len(before) < 8 or len(after) < 8:
        return "n/a"
    delta = [b - a for a, b in zip(before, after)]
    total = sum(delta[:8])  # user nice system idle iowait irq softirq steal (guest time is inside user)
    return f"{100 * delta[7] / total:.0f}%" if total > 0 else "n/a"
