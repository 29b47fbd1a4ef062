"""WorkerPool and event loops: one asyncio.run after another, loops that end under the pool,
loops alive elsewhere, and eager task factories.  Each test runs its loops itself, on asyncio and
on uvloop, and checks that no job was accepted and then lost."""

from __future__ import annotations

import asyncio
import gc
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import poolkit
from poolkit import JobHandedBack, WorkerPool

from .conftest import LOOP_FACTORIES
from .pool_checks import check_books, settle_until

KINDS = [k for k in ("asyncio", "uvloop") if k in LOOP_FACTORIES]
eager_only = pytest.mark.skipif(
    sys.version_info < (3, 12), reason="asyncio.eager_task_factory is new in Python 3.12"
)


def eager_kinds() -> list[Any]:
    """The loops that accept asyncio's eager task factory (uvloop 0.23 on 3.13 does not: it
    passes the factory an ``eager_start`` argument that asyncio's own factory refuses)."""
    kinds: list[Any] = []
    for kind in KINDS:
        loop = LOOP_FACTORIES[kind]()
        probe = asyncio.sleep(0)
        try:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
            loop.run_until_complete(probe)
            kinds.append(kind)
        except (TypeError, AttributeError) as exc:
            probe.close()  # never started: no "never awaited" warning
            kinds.append(pytest.param(kind, marks=pytest.mark.skip(reason=f"{kind}: {exc}")))
        finally:
            loop.close()
    return kinds


def run(kind: str, coro: Coroutine[Any, Any, Any], *, eager: bool = False) -> Any:
    """One loop's life, as asyncio.run gives it: it cancels every task left when it ends."""
    reported: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[kind]) as runner:
        loop = runner.get_loop()
        loop.set_exception_handler(lambda _, context: reported.append(context))
        if eager:
            loop.set_task_factory(asyncio.eager_task_factory)  # type: ignore[attr-defined]
        result = runner.run(coro)
    gc.collect()
    assert not reported, [c.get("message") for c in reported]
    return result


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


# ---------------------------------------------------------------- one loop after another


@pytest.mark.parametrize("kind", KINDS)
def test_a_pool_serves_one_asyncio_run_after_another(kind: str) -> None:
    """The issue's report: the job submitted in the second run was accepted, never ran, and
    shutdown() returned with ``queued=1`` on a closed pool."""
    pool = WorkerPool(workers=2)

    async def first() -> None:
        await (await pool.submit(asyncio.sleep, 0))

    async def second() -> tuple[bool, Any]:
        job = await pool.submit(asyncio.sleep, 0, "x")
        await pool.shutdown()
        return job.done(), job.result()

    run(kind, first())
    assert run(kind, second()) == (True, "x")
    s = check_books(pool)
    assert (s.queued, s.succeeded, s.workers, s.closed) == (0, 2, 0, True)


@pytest.mark.parametrize("kind", KINDS)
def test_a_module_level_pool_serves_several_runs_with_map_and_nowait(kind: str) -> None:
    pool = WorkerPool(workers=3, name="cli")

    async def command(n: int) -> list[int]:
        job = pool.submit_nowait(double, n)
        results = [r async for r in pool.map(double, range(n))]
        return [await job, *results]

    for n in range(1, 5):
        assert run(kind, command(n)) == [2 * n, *(2 * i for i in range(n))]
    run(kind, pool.shutdown())
    s = check_books(pool)
    assert (s.succeeded, s.workers, s.queued) == (4 + 10, 0, 0)


@pytest.mark.parametrize("kind", KINDS)
def test_jobs_still_queued_when_a_loop_ends_are_handed_back(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=10, name="left")
    queued: list[poolkit.Job[Any]] = []

    async def walks_away() -> None:
        await pool.submit(asyncio.sleep, 10)  # running when the loop ends: cancelled with it
        queued.extend([await pool.submit(double, i) for i in range(3)])
        await asyncio.sleep(0)

    run(kind, walks_away())
    s = check_books(pool)
    assert (s.cancelled, s.handed_back, s.queued, s.workers) == (1, 3, 0, 0)
    assert [h.job for h in pool.handed_back] == queued
    for job in queued:
        with pytest.raises(JobHandedBack, match="cancelled from outside"):
            job.result()

    async def comes_back() -> int:
        return await (await pool.submit(double, 21))

    assert run(kind, comes_back()) == 42
    run(kind, pool.shutdown())
    assert check_books(pool).succeeded == 1


@pytest.mark.parametrize("kind", KINDS)
def test_an_elastic_pool_with_no_worker_left_moves_to_the_next_loop(kind: str) -> None:
    """No worker is there for the end of the loop to cancel (they idled out): the pool must
    still notice the new loop (on 3.11, where it reads only the thread, by having no worker)."""
    pool = WorkerPool(workers=2, min_workers=0, idle_timeout=0)

    async def first() -> None:
        await (await pool.submit(double, 1))
        for _ in range(100):  # idle_timeout=0: it leaves as soon as it is idle
            if not pool.statistics().workers:
                break
            await asyncio.sleep(0)
        assert pool.statistics().workers == 0

    async def second() -> int:
        return await (await pool.submit(double, 2))

    run(kind, first())
    assert run(kind, second()) == 4
    run(kind, pool.shutdown())
    assert check_books(pool).succeeded == 2


@pytest.mark.parametrize("kind", KINDS)
def test_shutdown_from_a_later_loop_hands_back_what_the_first_left(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=5)

    async def walks_away() -> None:
        gate = asyncio.Event()
        await pool.submit(gate.wait)
        await pool.submit(double, 1)

    run(kind, walks_away())
    handed = run(kind, pool.shutdown(cancel=True))
    assert [h.args for h in handed] == [(1,)]
    s = check_books(pool)
    assert (s.closed, s.workers, s.handed_back, s.cancelled) == (True, 0, 1, 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_loop_closed_without_cancelling_its_tasks_lets_the_pool_move(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=5)
    loop = LOOP_FACTORIES[kind]()
    loop.set_exception_handler(lambda _, context: None)  # "Task was destroyed but it is pending"
    handles: list[poolkit.Job[Any]] = []

    async def leaves_work_behind() -> None:
        handles.append(await pool.submit(asyncio.sleep, 100))  # running when the loop closes
        handles.append(await pool.submit(double, 1))  # queued
        await asyncio.sleep(0.01)

    loop.run_until_complete(leaves_work_behind())
    loop.close()

    async def later() -> int:
        result = await (await pool.submit(double, 2))
        await pool.shutdown()
        return result

    assert run(kind, later()) == 4
    s = check_books(pool)
    assert (s.cancelled, s.handed_back, s.succeeded, s.workers) == (1, 1, 1, 0)
    assert handles[0].cancelled()
    with pytest.raises(JobHandedBack, match="event loop of pool finished"):
        handles[1].result()
    handles.clear()
    del loop
    gc.collect()  # the old worker's coroutine is closed now: it must not touch the books
    assert check_books(pool) == s


# ---------------------------------------------------------------- loops that are still alive


@pytest.mark.parametrize("kind", KINDS)
def test_a_loop_alive_in_another_thread_keeps_its_pool(kind: str) -> None:
    pool = WorkerPool(workers=1, name="owned")
    ready = threading.Event()
    stop: list[Callable[[], None]] = []

    async def owner() -> None:
        done = asyncio.Event()
        loop = asyncio.get_running_loop()
        stop.append(lambda: loop.call_soon_threadsafe(done.set))
        async with pool:
            await (await pool.submit(double, 1))
            ready.set()
            await done.wait()

    thread = threading.Thread(target=run, args=(kind, owner()))
    thread.start()
    try:
        assert ready.wait(10)

        async def intruder() -> None:
            with pytest.raises(RuntimeError, match="belongs to another event loop, which is run"):
                await pool.submit(double, 2)
            with pytest.raises(RuntimeError, match="belongs to another event loop"):
                await pool.shutdown()

        run(kind, intruder())
    finally:
        stop[0]()
        thread.join(10)
    assert check_books(pool).succeeded == 1


@pytest.mark.parametrize("kind", KINDS)
def test_a_stopped_loop_that_still_holds_the_workers_keeps_its_pool(kind: str) -> None:
    pool = WorkerPool(workers=1)
    loop = LOOP_FACTORIES[kind]()
    try:
        loop.run_until_complete(pool.__aenter__())

        async def elsewhere() -> None:
            with pytest.raises(RuntimeError, match="has stopped but still holds 1 of the pool"):
                await pool.submit(double, 1)

        run(kind, elsewhere())
        loop.run_until_complete(pool.shutdown())  # the pool is still that loop's, and sound
        assert check_books(pool).workers == 0
    finally:
        loop.close()


# ---------------------------------------------------------------- workers cancelled from outside


async def test_workers_cancelled_from_outside_come_back_on_the_same_loop() -> None:
    pool = WorkerPool(workers=2, queue_size=5)
    gate = asyncio.Event()
    running = [await pool.submit(gate.wait) for _ in range(2)]
    queued = await pool.submit(double, 1)
    # Both workers busy (idle workers are woken a few per turn of the loop, not all at once).
    await settle_until(lambda: pool.statistics().running == 2)
    workers = [w.task for w in pool._workers.values()]
    for task in workers:
        assert task is not None
        task.cancel()
    await asyncio.gather(*[t for t in workers if t is not None], return_exceptions=True)
    s = check_books(pool)
    assert (s.workers, s.cancelled, s.handed_back, s.queued) == (0, 2, 1, 0)
    assert all(job.cancelled() for job in running)
    with pytest.raises(JobHandedBack, match="cancelled from outside"):
        await queued
    assert await (await pool.submit(double, 5)) == 10  # new workers, on the same loop
    assert check_books(pool).workers == 2
    await pool.shutdown()


# ---------------------------------------------------------------- eager task factories


@eager_only
@pytest.mark.parametrize("kind", eager_kinds() if sys.version_info >= (3, 12) else KINDS)
def test_pool_works_when_tasks_start_eagerly(kind: str) -> None:
    """A worker made with an eager task factory runs inside create_task(), before its task is
    returned: it used to find no task of its own, die on an assertion, and hang the pool."""

    async def main() -> list[int]:
        async with WorkerPool(workers=2, queue_size=0) as pool:
            jobs = [await pool.submit(double, i) for i in range(5)]
            results = [await job for job in jobs]
            results += [r async for r in pool.map(double, range(3))]
        check_books(pool)
        return results

    assert run(kind, main(), eager=True) == [0, 2, 4, 6, 8, 0, 2, 4]


@eager_only
@pytest.mark.parametrize("kind", eager_kinds() if sys.version_info >= (3, 12) else KINDS)
def test_an_eager_worker_started_for_a_waiting_submit_lets_it_in(kind: str) -> None:
    """An elastic pool with no worker and no queue starts one for a submit that would wait; an
    eager worker is idle before the submitter queues up, and nobody admitted the submitter."""

    async def main() -> int:
        async with WorkerPool(workers=2, queue_size=0, min_workers=0) as pool:
            async with asyncio.timeout(5):
                return await (await pool.submit(double, 4))

    assert run(kind, main(), eager=True) == 8
