"""ProcessPool.submit_async: backpressure for producers in ``async def`` code.

``submit()`` on an event loop never waits (a job that finds no room lines up, without bound);
``await pool.submit_async()`` waits for room, so a producer holds at most ``workers +
queue_size`` jobs in the pool.  These tests check that bound, the order in which waiters are let
in, and that a waiter cancelled or turned away by a shutdown submits nothing.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from poolkit import PoolClosed, ProcessJob, ProcessPool
from poolkit._leaks import _noleaks

from . import process_jobs as pj
from .pool_checks import check_process_books, settle_until

pytestmark = pytest.mark.skipif(
    not _noleaks._HAS_PROCFS,
    reason="worker processes are read from Linux's /proc; forkserver is the default only there",
)


async def test_a_producer_never_holds_more_than_workers_plus_queue_size() -> None:
    async with ProcessPool(workers=2, queue_size=2, name="bounded") as pool:
        jobs: list[ProcessJob[int]] = []
        most = 0
        for i in range(30):
            jobs.append(await pool.submit_async(pj.sleep_then, 0.005, i))
            s = check_process_books(pool)
            most = max(most, s.queued + s.running)
            assert s.queued + s.running <= 4, s
        assert most == 4  # it did fill the room, and waited there
        assert [await job for job in jobs] == list(range(30))
    s = check_process_books(pool)
    assert (s.submitted, s.succeeded) == (30, 30), s


async def test_waiters_are_let_in_in_the_order_they_came() -> None:
    async with ProcessPool(workers=1, queue_size=0) as pool:
        first = pool.submit(pj.sleep_then, 0.2, "first")
        order: list[int] = []

        async def producer(i: int) -> int:
            job = await pool.submit_async(pj.sleep_then, 0.01, i)
            order.append(i)
            return await job

        tasks = []
        for i in range(4):
            tasks.append(asyncio.create_task(producer(i)))
            await asyncio.sleep(0)  # each calls submit_async before the next starts
        assert await first == "first"
        assert await asyncio.gather(*tasks) == [0, 1, 2, 3]
    assert order == [0, 1, 2, 3]


async def test_a_waiter_cancelled_submits_nothing() -> None:
    async with ProcessPool(workers=1, queue_size=0) as pool:
        first = pool.submit(pj.sleep_then, 0.3, "first")
        waiter = asyncio.create_task(pool.submit_async(pj.double, 1))
        await settle_until(lambda: bool(pool._putters))
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert await first == "first"
        s = check_process_books(pool)
        assert (s.submitted, s.started, s.cancelled) == (1, 1, 0), s


async def test_a_shutdown_turns_away_the_waiters() -> None:
    pool = ProcessPool(workers=1, queue_size=0)
    first = pool.submit(pj.sleep_then, 30)
    await settle_until(first.running)
    waiter = asyncio.create_task(pool.submit_async(pj.double, 1))
    await settle_until(lambda: bool(pool._putters))
    await pool.shutdown_async(cancel=True)
    with pytest.raises(PoolClosed):
        await waiter
    assert first.cancelled()
    s = check_process_books(pool)
    assert (s.submitted, s.cancelled, s.closed) == (1, 1, True), s


@pytest.mark.parametrize("seed", range(3))
async def test_producers_cancelled_at_random_moments_keep_the_books(seed: int) -> None:
    rng = random.Random(seed)
    async with ProcessPool(workers=2, queue_size=1) as pool:

        async def producer(i: int) -> int:
            job = await pool.submit_async(pj.sleep_then, rng.uniform(0, 0.01), i)
            return await job

        tasks = [asyncio.create_task(producer(i)) for i in range(40)]
        for task in tasks:
            if rng.random() < 0.4:
                await asyncio.sleep(rng.uniform(0, 0.01))
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        s = check_process_books(pool)
    finished = [r for r in results if isinstance(r, int)]
    assert all(isinstance(r, (int, asyncio.CancelledError)) for r in results), results
    s = check_process_books(pool)
    # A producer cancelled while it waited for room submitted nothing; one cancelled while it
    # awaited its job cancelled that job: every job submitted either ran to its result or was
    # cancelled, and no more ran than were submitted.
    assert s.succeeded >= len(finished) and s.succeeded + s.cancelled == s.submitted, s
    assert s.submitted <= 40 and s.failed == 0, s
