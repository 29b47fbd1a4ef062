"""``python -m benchmarks.queue_depths``: what a ``WorkerPool``'s ``queue_size`` costs and buys.

``WorkerPool(workers=64, queue_size=d)`` over 200,000 trivial jobs and 100,000 jobs that yield
once, through ``map`` and through ``submit``, for several depths ``d``, against a hand-rolled
``asyncio.Queue(d)`` with 64 workers writing results by index, all in one run, three rounds
(µs per job, median); then the peak RSS (VmHWM) of a fresh process mapping 1,000,000 items at
each depth.  The data behind the default depth (``queue_size`` = ``workers``).
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from poolkit import WorkerPool

from ._harness import peak_rss

WORKERS = 64
DEPTHS = (0, 16, 64, 256, 1024)
Job = Callable[[int], Awaitable[int]]


async def _trivial(i: int) -> int:
    return i


async def _yields_once(i: int) -> int:
    await asyncio.sleep(0)
    return i


async def _map(job: Job, n: int, depth: int) -> float:
    async with WorkerPool(workers=WORKERS, queue_size=depth) as pool:
        start = time.perf_counter()
        async for _ in pool.map(job, range(n)):
            pass
        return (time.perf_counter() - start) / n * 1e6


async def _submit(job: Job, n: int, depth: int) -> float:
    async with WorkerPool(workers=WORKERS, queue_size=depth) as pool:
        start = time.perf_counter()
        jobs = [await pool.submit(job, i) for i in range(n)]
        for j in jobs:
            await j
        return (time.perf_counter() - start) / n * 1e6


async def _queue(job: Job, n: int, depth: int) -> float:
    q: asyncio.Queue[int | None] = asyncio.Queue(max(depth, 1))  # Queue(0) has no bound
    out: list[int | None] = [None] * n

    async def worker() -> None:
        while (i := await q.get()) is not None:
            out[i] = await job(i)

    start = time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    for i in range(n):
        await q.put(i)
    for _ in workers:
        await q.put(None)
    await asyncio.gather(*workers)
    return (time.perf_counter() - start) / n * 1e6


_RSS = r"""
import asyncio, sys
from poolkit import WorkerPool
async def job(i): return i
async def main(depth, n):
    async with WorkerPool(workers=64, queue_size=depth) as pool:
        async for _ in pool.map(job, range(n)):
            pass
asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
"""


async def _times() -> None:
    kinds: list[tuple[str, Job, int]] = [("trivial", _trivial, 200_000)]
    kinds.append(("yields once", _yields_once, 100_000))
    rows: dict[tuple[str, int], dict[str, list[float]]] = {}
    for _ in range(3):
        for kind, job, n in kinds:
            for depth in DEPTHS:
                row = rows.setdefault((kind, depth), {"map": [], "submit": [], "queue": []})
                row["map"].append(await _map(job, n, depth))
                row["submit"].append(await _submit(job, n, depth))
                row["queue"].append(await _queue(job, n, depth))
    print(f"µs per job, median of 3 rounds; CPython {sys.version.split()[0]}, asyncio loop")
    print("| job | queue_size | map | submit | Queue(d) + 64 workers | map/Queue | submit/Queue |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for (kind, depth), row in rows.items():
        m, s, q = (statistics.median(row[k]) for k in ("map", "submit", "queue"))
        print(f"| {kind} | {depth} | {m:.2f} | {s:.2f} | {q:.2f} | {m / q:.2f} | {s / q:.2f} |")


def main() -> None:
    asyncio.run(_times())
    print()
    print("| queue_size | peak RSS, map over 1,000,000 items (MiB) |")
    print("|---:|---:|")
    for depth in DEPTHS:
        print(f"| {depth} | {peak_rss(_RSS, str(depth), '1000000'):.1f} |")


if __name__ == "__main__":
    main()
