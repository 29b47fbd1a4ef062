"""WorkerPool benchmarks: per-job cost (map and submit) at the defaults, peak memory over 1M items.

Every poolkit row is ``WorkerPool(workers=64)`` and nothing else, the pool a user gets.  The
alternatives are what a user writes instead: the hand-rolled one is an ``asyncio.Queue(64)``
(as deep as the pool's default queue) with 64 worker tasks that write each result into a list
by its index.  Three kinds of job: trivial (returns at once), one that yields to the loop once
(``await asyncio.sleep(0)``), and an I/O-like one (sleeps 1 ms).

Each case leaves the sum of the results it collected in :data:`CHECK` and counts the calls of
the job in :data:`CALLS`, so that a test (tests/test_benchmarks.py) holds every case to doing the
whole work, and the poolkit ones to the defaults.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import aiojobs
import aiometer
import anyio

import poolkit
import poolkit.leaks

from ._harness import Case, Suite, peak_rss_case, register, run_async, timed

WORKERS = 64
DEPTH = 64  # the hand-rolled queue's depth: the pool's default queue_size for 64 workers

CALLS = [0]  # calls of the job functions, all cases together
CHECK = [0]  # the sum of the results the last case collected

Job = Callable[[int], Awaitable[int]]


async def trivial(x: int) -> int:
    CALLS[0] += 1
    return 2 * x


async def yields_once(x: int) -> int:
    CALLS[0] += 1
    await asyncio.sleep(0)
    return 2 * x


async def io_like(x: int) -> int:
    CALLS[0] += 1
    await asyncio.sleep(0.001)
    return 2 * x


# ----------------------------------------------------------------- alternatives (asyncio)


def _handrolled(job: Job, futures: bool = False) -> Callable[[int], float]:
    """asyncio.Queue(64) + 64 worker tasks writing results by index (or a future per job, as
    a submit() would give)."""

    def run(n: int) -> float:
        async def main() -> float:
            loop = asyncio.get_running_loop()
            q: asyncio.Queue[int | None] = asyncio.Queue(DEPTH)
            results: list[int] = [0] * n
            slots: list[asyncio.Future[int]] = []

            async def worker() -> None:
                while (i := await q.get()) is not None:
                    if futures:
                        slots[i].set_result(await job(i))
                    else:
                        results[i] = await job(i)

            async def body() -> None:
                workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
                for i in range(n):
                    if futures:
                        slots.append(loop.create_future())
                    await q.put(i)
                for _ in workers:
                    await q.put(None)
                await asyncio.gather(*workers)
                if futures:
                    for i, fut in enumerate(slots):
                        results[i] = await fut

            spent = await timed(body())
            CHECK[0] = sum(results)
            return spent

        return run_async(main)

    return run


def _taskgroup_semaphore(job: Job) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            sem = asyncio.Semaphore(WORKERS)
            results: list[int] = [0] * n

            async def one(i: int) -> None:
                async with sem:
                    results[i] = await job(i)

            async def body() -> None:
                async with asyncio.TaskGroup() as tg:
                    for i in range(n):
                        tg.create_task(one(i))

            spent = await timed(body())
            CHECK[0] = sum(results)
            return spent

        return run_async(main)

    return run


def _gather_semaphore(n: int) -> float:
    async def main() -> float:
        sem = asyncio.Semaphore(WORKERS)

        async def one(x: int) -> int:
            async with sem:
                return await trivial(x)

        results: list[int] = []

        async def body() -> None:
            results.extend(await asyncio.gather(*(one(i) for i in range(n))))

        spent = await timed(body())
        CHECK[0] = sum(results)
        return spent

    return run_async(main)


def _aiometer(n: int) -> float:
    async def main() -> float:
        total = 0

        async def body() -> None:
            nonlocal total
            async with aiometer.amap(trivial, range(n), max_at_once=WORKERS) as results:
                async for r in results:
                    total += r

        spent = await timed(body())
        CHECK[0] = total
        return spent

    return run_async(main)


def _aiojobs(n: int) -> float:
    async def main() -> float:
        results: list[int] = []

        async def body() -> None:
            scheduler = aiojobs.Scheduler(limit=WORKERS)
            jobs = [await scheduler.spawn(trivial(i)) for i in range(n)]
            results.extend([await job.wait() for job in jobs])
            await scheduler.close()

        spent = await timed(body())
        CHECK[0] = sum(results)
        return spent

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

        spent = await timed(body())
        CHECK[0] = sum(results)
        return spent

    return run_async(main)


# ----------------------------------------------------------------- poolkit, at its defaults


def _pool_map(job: Job) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            total = 0

            async def body() -> None:
                nonlocal total
                async with poolkit.WorkerPool(workers=WORKERS) as pool:
                    async for r in pool.map(job, range(n)):
                        total += r

            spent = await timed(body())
            CHECK[0] = total
            return spent

        return run_async(main)

    return run


def _pool_submit(job: Job, *, tracking: bool = False) -> Callable[[int], float]:
    """``tracking``: with creation-site tracking on (bench_leaks compares the two)."""

    def run(n: int) -> float:
        async def main() -> float:
            if tracking:
                poolkit.leaks.track_tasks()
            results: list[int] = []

            async def body() -> None:
                async with poolkit.WorkerPool(workers=WORKERS) as pool:
                    jobs = [await pool.submit(job, i) for i in range(n)]
                    results.extend([await j for j in jobs])

            spent = await timed(body())
            CHECK[0] = sum(results)
            return spent

        return run_async(main)

    return run


_HANDROLLED = f"hand-rolled Queue({DEPTH}) + {WORKERS} workers, results by index"
_KINDS: list[tuple[str, Job, int]] = [
    ("trivial jobs", trivial, 200_000),
    ("jobs that yield once", yields_once, 100_000),
    ("1 ms I/O-like jobs", io_like, 20_000),
]

for _what, _job, _items in _KINDS:
    _size = f"{_items // 1000}k"
    through_map = register(
        Suite(f"{_size} {_what}, {WORKERS} workers, through map", unit="job", items=_items)
    )
    through_map.cases += [
        Case(f"poolkit.WorkerPool(workers={WORKERS}).map", _pool_map(_job), poolkit=True),
        Case(_HANDROLLED, _handrolled(_job)),
        Case("TaskGroup + Semaphore", _taskgroup_semaphore(_job)),
    ]
    through_submit = register(
        Suite(f"{_size} {_what}, {WORKERS} workers, through submit", unit="job", items=_items)
    )
    through_submit.cases += [
        Case(f"poolkit.WorkerPool(workers={WORKERS}).submit", _pool_submit(_job), poolkit=True),
        Case(_HANDROLLED, _handrolled(_job)),
        Case(f"hand-rolled Queue({DEPTH}) + {WORKERS} workers, futures", _handrolled(_job, True)),
        Case("TaskGroup + Semaphore", _taskgroup_semaphore(_job)),
    ]
    if _job is trivial:
        through_map.cases += [
            Case("gather + Semaphore", _gather_semaphore),
            Case("aiometer.amap", _aiometer),
            Case("anyio task group + CapacityLimiter", _anyio_limiter),
        ]
        through_submit.cases.append(Case(f"aiojobs.Scheduler(limit={WORKERS}).spawn", _aiojobs))

# ----------------------------------------------------------------- peak memory, 1M items

_RSS_SCRIPT = r"""
import asyncio, sys
import poolkit
kind, n = sys.argv[1], int(sys.argv[2])
async def trivial(x): return 2 * x
async def pool_map():
    async with poolkit.WorkerPool(workers=64) as pool:
        async for _ in pool.map(trivial, range(n)):
            pass
async def gather_sem():
    sem = asyncio.Semaphore(64)
    async def one(x):
        async with sem:
            return await trivial(x)
    await asyncio.gather(*(one(i) for i in range(n)))
asyncio.run(pool_map() if kind == "pool_map" else gather_sem())
"""


memory = register(
    Suite(
        "map over 1,000,000 items, peak RSS of the whole process",
        unit="MiB",
        items=1_000_000,
        kind="figure",
    )
)
memory.cases += [
    Case(
        f"poolkit.WorkerPool(workers={WORKERS}).map", peak_rss_case(_RSS_SCRIPT, "pool_map"), True
    ),
    Case("gather + Semaphore", peak_rss_case(_RSS_SCRIPT, "gather_sem")),
]
