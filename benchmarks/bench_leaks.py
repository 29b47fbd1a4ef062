"""Leak-hunting costs: creation-site tracking on and off, snapshots and blocked-task proofs."""

from __future__ import annotations

import asyncio
import gc
import time
import traceback
from collections import Counter

import poolkit
from poolkit import leaks

from ._harness import Case, Suite, register, run_async, timed
from .bench_pools import WORKERS, _pool_submit, trivial

LIVE_TASKS = 10_000

# ----------------------------------------------------------------- tracking on the pool


tracked_pool = register(
    Suite(
        f"200k trivial jobs through WorkerPool.submit, {WORKERS} workers, task tracking",
        unit="job",
        items=200_000,
    )
)
tracked_pool.cases += [
    Case("track_tasks() on", _pool_submit(trivial, tracking=True), poolkit=True),
    Case("track_tasks() off (the default)", _pool_submit(trivial)),
]

# ----------------------------------------------------------------- tracking on create_task


def _create_tasks(tracking: bool):  # type: ignore[no-untyped-def]
    def run(n: int) -> float:
        async def main() -> float:
            if tracking:
                leaks.track_tasks()
            loop = asyncio.get_running_loop()

            async def body() -> None:
                for i in range(n):
                    await loop.create_task(trivial(i))

            return await timed(body())

        return run_async(main)

    return run


tracked_tasks = register(
    Suite("100k create_task + await, creation-site tracking", unit="task", items=100_000)
)
tracked_tasks.cases += [
    Case("track_tasks() on", _create_tasks(True), poolkit=True),
    Case("plain asyncio (no tracking)", _create_tasks(False)),
]

# ----------------------------------------------------------------- snapshots of 10k tasks


def _with_live_tasks(take):  # type: ignore[no-untyped-def]
    """Time ``take()`` ``n`` times with LIVE_TASKS tasks blocked on channels and limiters."""

    def run(n: int) -> float:
        async def main() -> float:
            leaks.track_tasks()
            channels = [poolkit.Channel[int](0) for _ in range(10)]
            limiter = poolkit.CapacityLimiter(1)
            await limiter.acquire()

            async def blocked(i: int) -> None:
                if i % 2:
                    await channels[i % 10].receive()
                else:
                    async with limiter:
                        pass

            tasks = [asyncio.create_task(blocked(i)) for i in range(LIVE_TASKS)]
            await asyncio.sleep(0)
            t0 = time.perf_counter()
            for _ in range(n):
                take()
            spent = time.perf_counter() - t0
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            limiter.release()
            return spent

        return run_async(main)

    return run


def _poolkit_dump() -> None:
    leaks.snapshot().dump(1)


def _stdlib_stacks() -> None:
    """What one does without poolkit: every task's frames, formatted, identical ones counted."""
    groups: Counter[str] = Counter()
    for task in asyncio.all_tasks():
        frames = ((f, f.f_lineno) for f in task.get_stack())
        summary = traceback.StackSummary.extract(frames, lookup_lines=False)
        groups["".join(summary.format())] += 1


snapshots = register(
    Suite(f"snapshot + grouped dump of {LIVE_TASKS:,} live tasks", unit="snapshot", items=20)
)
snapshots.cases += [
    Case("poolkit.leaks.snapshot().dump(1)", _with_live_tasks(_poolkit_dump), poolkit=True),
    Case("asyncio.all_tasks() + Task.get_stack()", _with_live_tasks(_stdlib_stacks)),
]


def _find_blocked() -> None:
    leaks.find_blocked()


def _gc_collect() -> None:
    gc.collect()


blocked = register(
    Suite(f"find blocked tasks among {LIVE_TASKS:,} live tasks", unit="search", items=10)
)
blocked.cases += [
    Case("poolkit.leaks.find_blocked()", _with_live_tasks(_find_blocked), poolkit=True),
    Case("gc.collect() (frees them, proves nothing)", _with_live_tasks(_gc_collect)),
]
