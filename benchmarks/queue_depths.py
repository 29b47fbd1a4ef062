"""``python -m benchmarks.queue_depths``: what a ``WorkerPool``'s ``queue_size`` costs per job.

``WorkerPool(workers=64).map`` over 200,000 trivial jobs at the default depth (``queue_size`` =
``workers``) and deeper, against a hand-rolled ``asyncio.Queue`` of the same depths with 64
workers writing results by index, all in one run, three rounds; µs per job, min and median.
The data behind the choice of the default depth (issue 13).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from poolkit import WorkerPool

N = 200_000
WORKERS = 64


async def _job(i: int) -> int:
    return i


async def _pool(depth: int | None) -> float:
    async with WorkerPool(workers=WORKERS, queue_size=depth) as pool:
        start = time.perf_counter()
        async for _ in pool.map(_job, range(N)):
            pass
        return (time.perf_counter() - start) / N * 1e6


async def _queue(depth: int) -> float:
    q: asyncio.Queue[int | None] = asyncio.Queue(depth)
    out: list[int | None] = [None] * N

    async def worker() -> None:
        while (i := await q.get()) is not None:
            out[i] = await _job(i)

    start = time.perf_counter()
    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    for i in range(N):
        await q.put(i)
    for _ in workers:
        await q.put(None)
    await asyncio.gather(*workers)
    return (time.perf_counter() - start) / N * 1e6


async def main() -> None:
    rows: dict[str, list[float]] = {}
    for _ in range(3):
        for depth in (None, 128, 256, 1024):
            label = f"WorkerPool.map, queue_size={depth or 'default (64)'}"
            rows.setdefault(label, []).append(await _pool(depth))
        for depth in (64, 1024):
            rows.setdefault(f"asyncio.Queue({depth}) + 64 workers", []).append(await _queue(depth))
    for label, times in rows.items():
        print(f"{label:45} min {min(times):6.2f}  median {statistics.median(times):6.2f} µs/job")


if __name__ == "__main__":
    asyncio.run(main())
