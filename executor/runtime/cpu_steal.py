"""The CPU time a virtual machine's hypervisor took from this machine's virtual CPUs ("steal"), per run phase.

On a virtual machine a virtual CPU can be descheduled by the host while a thread runs on it. The CPU share's decode
kernel splits its tasks statically over its threads (ATen's parallel_for), so one descheduled CPU holds up the
whole call: a few milliseconds taken from one of 15 CPUs during a 4 ms call costs the call that much. Linux counts
that time per CPU in /proc/stat's 8th field (steal, in USER_HZ ticks: 1/100 s on x86 Linux), which this reads at
the phase boundaries so that a report can say whether the host took time while the run was slow.

    read_cpu_ticks(path)            CpuTicks of /proc/stat (None where it cannot be read: not Linux)
    steal_between(before, after)    StealFigures over the interval (None where either is None)

Ticks of one CPU line: user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already in
user, so a CPU's total is the first eight fields.

    steal fraction = d steal / d total          (all CPUs: the aggregate "cpu" line)
    busiest CPU    = max over cpuN of d steal_N / d total_N

Leaves out: the hypervisor's side (which other guest took the time), sub-tick intervals (10 ms resolution per CPU:
a phase of 1 s on 16 CPUs is 1,600 ticks).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

PROC_STAT = Path("/proc/stat")
STEAL_FIELD = 7
"""index of steal among a cpu line's numbers"""
TOTAL_FIELDS = 8
"""user nice system idle iowait irq softirq steal: guest and guest_nice are already counted in user and nice"""


@dataclass(frozen=True)
class CpuTicks:
    """(steal, total) ticks of the aggregate line and of each CPU, at one moment."""

    steal: int
    total: int
    per_cpu: tuple[tuple[int, int], ...]
    """(steal, total) of cpu0, cpu1, ..."""


@dataclass(frozen=True)
class StealFigures:
    fraction: float
    """d steal / d total over every CPU (0: none taken)"""
    busiest_cpu_fraction: float
    """the largest one CPU's d steal / d total"""


def parse_cpu_ticks(text: str) -> Optional[CpuTicks]:
    """CpuTicks of /proc/stat's text; None where it has no aggregate "cpu" line or its lines are too short (a
    kernel before 2.6.11 had no steal field)."""
    aggregate, per_cpu = None, []
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu"):
            continue
        numbers = [int(value) for value in rest.split()]
        if len(numbers) < TOTAL_FIELDS:
            return None
        pair = (numbers[STEAL_FIELD], sum(numbers[:TOTAL_FIELDS]))
        if name == "cpu":
            aggregate = pair
        else:
            per_cpu.append(pair)
    if aggregate is None:
        return None
    return CpuTicks(steal=aggregate[0], total=aggregate[1], per_cpu=tuple(per_cpu))


def read_cpu_ticks(path: Path = PROC_STAT) -> Optional[CpuTicks]:
    """CpuTicks now; None where ``path`` cannot be read or parsed."""
    try:
        return parse_cpu_ticks(path.read_text())
    except (OSError, ValueError):
        return None


def steal_between(before: Optional[CpuTicks], after: Optional[CpuTicks]) -> Optional[StealFigures]:
    """StealFigures from ``before`` to ``after``; None where either is None or no tick passed."""
    if before is None or after is None or after.total <= before.total:
        return None
    busiest = 0.0
    if len(before.per_cpu) == len(after.per_cpu):
        for (steal_0, total_0), (steal_1, total_1) in zip(before.per_cpu, after.per_cpu):
            if total_1 > total_0:
                busiest = max(busiest, (steal_1 - steal_0) / (total_1 - total_0))
    return StealFigures(fraction=(after.steal - before.steal) / (after.total - before.total),
                        busiest_cpu_fraction=busiest)
