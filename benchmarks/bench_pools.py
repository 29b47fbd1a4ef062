"""WorkerPool benchmarks: per-job cost (map and submit), peak memory of streaming 1M items."""

from __future__ import annotations

import asyncio

import aiojobs
import aiometer
import anyio

import poolkit
import poolkit.leaks

from ._harness import Case, Suite, peak_rss, register, run_async, timed

WORKERS = 64
QUEUE = 1024


async def trivial(x: int) -> int:
    return 2 * x


# ----------------------------------------------------------------- alternatives (asyncio)


def _handrolled(futures: bool):  # type: ignore[no-untyped-def]
    """asyncio.Queue + 64 worker tasks; a future per job (as submit gives), or results by index."""

    def run(n: int) -> float:
        async def main() -> float:
            loop = asyncio.get_running_loop()
            q: asyncio.Queue[tuple[object, int] | None] = asyncio.Queue(QUEUE)
            results: list[int] = [0] * n

            async def worker() -> None:
                while True:
                    item = await q.get()
                    if item is None:
                        return
                    slot, x = item
                    if futures:
                        slot.set_result(await trivial(x))  # type: ignore[attr-defined]
                    else:
                        results[slot] = await trivial(x)  # type: ignore[index]

            async def body() -> None:
                workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
                pending = []
                for i in range(n):
                    if futures:
                        fut = loop.create_future()
                        await q.put((fut, i))
                        pending.append(fut)
                    else:
                        await q.put((i, i))
                for fut in pending:
                    await fut
                for _ in workers:
                    await q.put(None)
                await asyncio.gather(*workers)

            return await timed(body())

        return run_async(main)

    return run


def _taskgroup_semaphore(n: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(WORKERS)

        async def one(x: int) -> int:
            async with sem:
                return await trivial(x)

        async def body() -> None:
            async with asyncio.TaskGroup() as tg:
                for i in range(n):
                    tg.create_task(one(i))

        return await timed(body())

    return run_async(main)


def _gather_semaphore(n: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(WORKERS)

        async def one(x: int) -> int:
            async with sem:
                return await trivial(x)

        return await timed(asyncio.gather(*(one(i) for i in range(n))))

    return run_async(main)


def _aiometer(n: int) -> float:
    async def main() -> float:
        async def body() -> None:
            async with aiometer.amap(trivial, range(n), max_at_once=WORKERS) as results:
                async for _ in results:
                    pass

        return await timed(body())

    return run_async(main)


def _aiojobs(n: int) -> float:
    async def main() -> float:
        async def body() -> None:
            scheduler = aiojobs.Scheduler(limit=WORKERS, pending_limit=QUEUE)
            jobs = [await scheduler.spawn(trivial(i)) for i in range(n)]
            for job in jobs:
                await job.wait()
            await scheduler.close()

        return await timed(body())

    return run_async(main)


def _anyio_limiter(n: int) -> float:
    async def main() -> float:
        limiter = anyio.CapacityLimiter(WORKERS)
        results: list[int] = [0] * n

        async def one(i: int) -> None:
            async with limiter:
                results[i] = await trivial(i)

        async def body() -> None:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(one, i)

        return await timed(body())

    return run_async(main)


# ----------------------------------------------------------------- poolkit


def _pool_map(n: int) -> float:
    async def main() -> float:
        async def body() -> None:
            async with poolkit.WorkerPool(workers=WORKERS, queue_size=QUEUE) as pool:
                async for _ in pool.map(trivial, range(n)):
                    pass

        return await timed(body())

    return run_async(main)


def _pool_submit(n: int, *, tracking: bool = False) -> float:
    """``tracking``: with creation-site tracking on (bench_leaks compares the two)."""

    async def main() -> float:
        if tracking:
            poolkit.leaks.track_tasks()

        async def body() -> None:
            async with poolkit.WorkerPool(workers=WORKERS, queue_size=QUEUE) as pool:
                jobs = [await pool.submit(trivial, i) for i in range(n)]
                for job in jobs:
                    await job

        return await timed(body())

    return run_async(main)


through_map = register(
    Suite(f"200k trivial jobs, {WORKERS} workers, through map", unit="job", items=200_000)
)
through_map.cases += [
    Case("poolkit.WorkerPool.map", _pool_map, poolkit=True),
    Case("hand-rolled Queue + 64 workers, futures", _handrolled(True)),
    Case("hand-rolled Queue + 64 workers, no futures", _handrolled(False)),
    Case("TaskGroup + Semaphore", _taskgroup_semaphore),
    Case("gather + Semaphore", _gather_semaphore),
    Case("aiometer.amap", _aiometer),
    Case("anyio task group + CapacityLimiter", _anyio_limiter),
]

through_submit = register(
    Suite(f"200k trivial jobs, {WORKERS} workers, through submit", unit="job", items=200_000)
)
through_submit.cases += [
    Case("poolkit.WorkerPool.submit", _pool_submit, poolkit=True),
    Case("hand-rolled Queue + 64 workers, futures", _handrolled(True)),
    Case("TaskGroup + Semaphore", _taskgroup_semaphore),
    Case("aiojobs.Scheduler.spawn", _aiojobs),
]

# ----------------------------------------------------------------- peak memory, 1M items

_RSS_SCRIPT = r"""
import asyncio, sys, concurrent.futures as cf
import poolkit
kind, n = sys.argv[1], int(sys.argv[2])
async def trivial(x): return 2 * x
def plain(x): return 2 * x
async def pool_map():
    async with poolkit.WorkerPool(workers=64, queue_size=1024) as pool:
        async for _ in pool.map(trivial, range(n)):
            pass
async def gather_sem():
    sem = asyncio.Semaphore(64)
    async def one(x):
        async with sem:
            return await trivial(x)
    await asyncio.gather(*(one(i) for i in range(n)))
if kind == "pool_map":
    asyncio.run(pool_map())
elif kind == "gather_sem":
    asyncio.run(gather_sem())
elif kind == "thread_map":
    with poolkit.ThreadPool(workers=8, queue_size=64) as pool:
        for _ in pool.map(plain, range(n)):
            pass
elif kind == "tpe_map":
    with cf.ThreadPoolExecutor(8) as ex:
        for _ in ex.map(plain, range(n)):
            pass
"""


def _peak_rss(kind: str):  # type: ignore[no-untyped-def]
    """Peak RSS in MiB of a fresh interpreter doing the work, so runs do not share a peak."""

    def run(n: int) -> float:
        return peak_rss(_RSS_SCRIPT, kind, str(n))

    return run


memory = register(
    Suite(
        "map over 1,000,000 items, peak RSS of the whole process",
        unit="MiB",
        items=1_000_000,
        kind="figure",
    )
)
memory.cases += [
    Case("poolkit.WorkerPool.map", _peak_rss("pool_map"), poolkit=True),
    Case("gather + Semaphore", _peak_rss("gather_sem")),
]
