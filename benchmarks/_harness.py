"""The benchmark registry, the timing loop and the table."""

from __future__ import annotations

import asyncio
import gc
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Case",
    "Suite",
    "peak_rss",
    "peak_rss_case",
    "register",
    "run_async",
    "suites",
    "timed",
]


@dataclass(slots=True)
class Case:
    """One implementation of a benchmark.

    In a "time" suite ``run(items)`` returns the seconds taken by ``items`` operations; in a
    "figure" suite it returns the figure itself (a rate, a ratio to a bound, a size).
    """

    name: str
    run: Callable[[int], float]
    poolkit: bool = False


@dataclass(slots=True)
class Suite:
    """One benchmark: a task done by poolkit and by each alternative, at the same size."""

    name: str
    unit: str  # "time": what the figure is per ("item"); "figure": its unit ("% of target")
    items: int  # operations at scale 1.0
    cases: list[Case] = field(default_factory=list)
    kind: str = "time"  # or "figure"
    higher_is_better: bool = False  # for "figure" suites: which of the repeats to keep


_SUITES: list[Suite] = []

# The last lines of a script run in a fresh interpreter to measure its peak memory: it prints
# the process's own high-water mark in MiB.  On Linux that is VmHWM: ``ru_maxrss`` survives
# ``exec``, so a child would report at least the RSS its parent (the benchmark) had.
_PRINT_PEAK_RSS = r"""
try:
    with open("/proc/self/status") as _status:
        _hwm = next(line for line in _status if line.startswith("VmHWM:"))
    print(int(_hwm.split()[1]) / 1024)
except OSError:
    import resource
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def register(suite: Suite) -> Suite:
    _SUITES.append(suite)
    return suite


def suites() -> list[Suite]:
    return list(_SUITES)


def peak_rss(script: str, *args: str) -> float:
    """Peak RSS in MiB of a fresh interpreter running ``script`` with ``args`` (``sys.argv[1:]``),
    so that runs do not share a peak; imports count alike for every case."""
    out = subprocess.run(
        [sys.executable, "-c", script + _PRINT_PEAK_RSS, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    return float(out.stdout.split()[-1])


def peak_rss_case(script: str, *args: str) -> Callable[[int], float]:
    """A figure case: the peak RSS of ``script`` run with ``args`` and the item count."""

    def run(items: int) -> float:
        return peak_rss(script, *args, str(items))

    return run


LOOP_FACTORY: list[Callable[[], asyncio.AbstractEventLoop]] = [asyncio.new_event_loop]


def run_async(main: Callable[[], Coroutine[Any, Any, float]]) -> float:
    """Run ``main`` on a fresh loop of the selected kind; return what it returns (seconds)."""
    with asyncio.Runner(loop_factory=LOOP_FACTORY[0]) as runner:
        return runner.run(main())


async def timed(body: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await body
    return time.perf_counter() - t0


@dataclass(slots=True)
class Row:
    suite: str
    case: str
    per_op_us: float  # best of the repeats
    poolkit: bool
    paired: float | None = None  # alternatives of "time" suites: median of poolkit/this by round


def measure(suite: Suite, scale: float, repeat: int) -> list[Row]:
    items = max(1, int(suite.items * scale))
    samples: dict[str, list[float]] = {c.name: [] for c in suite.cases}
    for round_ in range(repeat):
        # Interleaved, so that drift of the machine hits every case alike; every other round in
        # reverse, so that no case always runs right after the same other one (a case may leave
        # work behind for the machine: closing sockets, a server process winding down).
        order = suite.cases if round_ % 2 == 0 else suite.cases[::-1]
        for case in order:
            gc.collect()
            value = case.run(items)
            samples[case.name].append(value / items * 1e6 if suite.kind == "time" else value)
    pick = max if suite.kind == "figure" and suite.higher_is_better else min
    mine = next(samples[c.name] for c in suite.cases if c.poolkit)
    rows = []
    for c in suite.cases:
        paired = None
        if suite.kind == "time" and not c.poolkit:
            # Each round ran every case back to back: comparing within rounds cancels the
            # machine's slow drift, which "best of" alone can hide on a noisy machine.
            paired = statistics.median(a / b for a, b in zip(mine, samples[c.name], strict=True))
        rows.append(Row(suite.name, c.name, pick(samples[c.name]), c.poolkit, paired))
    return rows


def table(results: list[tuple[Suite, list[Row]]]) -> str:
    """One block per benchmark: poolkit first, then the alternatives, best first."""
    titles = [
        f"{suite.name} (per {suite.unit})"
        if suite.kind == "time"
        else f"{suite.name} [{suite.unit}]"
        for suite, _ in results
    ]
    w1 = max([len("benchmark"), *map(len, titles)])
    w2 = max([len("implementation")] + [len(r.case) for _, rows in results for r in rows])
    header = (
        f"{'benchmark':<{w1}}  {'implementation':<{w2}}  {'µs/op':>9}  {'poolkit/alt':>11}"
        f"  {'by round':>8}"
    )
    lines = [header, "-" * len(header)]
    for title, (suite, rows) in zip(titles, results, strict=True):
        mine = next(r for r in rows if r.poolkit)
        for i, r in enumerate(sorted(rows, key=lambda r: (not r.poolkit, r.per_op_us))):
            if suite.kind == "figure":
                ratio = by_round = "-"
            else:
                ratio = "" if r.poolkit else f"{mine.per_op_us / r.per_op_us:.2f}"
                by_round = "" if r.paired is None else f"{r.paired:.2f}"
            name = title if i == 0 else ""
            lines.append(
                f"{name:<{w1}}  {r.case:<{w2}}  {r.per_op_us:>9.3f}  {ratio:>11}  {by_round:>8}"
            )
        lines.append("")
    lines.append("µs/op: best of the repeats; for a benchmark with [brackets], the figure itself.")
    lines.append(
        "poolkit/alt: poolkit's time divided by the alternative's; below 1.00, poolkit is faster."
    )
    lines.append(
        "by round: the same ratio within each round (every case runs once a round, back to back),"
        " median over the rounds."
    )
    return "\n".join(lines)
