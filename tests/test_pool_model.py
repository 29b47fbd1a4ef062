"""WorkerPool under random load: the accounting identity at every step, nothing lost, no leak."""

from __future__ import annotations

import asyncio
import random
from contextlib import aclosing
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from poolkit import JobHandedBack, PoolClosed, WorkerPool
from poolkit.testing import VirtualTimeLoop

from .conftest import LOOP_FACTORIES
from .pool_checks import check_books

KINDS = ["fast", "slow", "failing", "hanging"]


async def run_job(kind: str, duration: float) -> str:
    if kind == "fast":
        return "ok"
    if kind == "slow":
        await asyncio.sleep(duration)
        return "ok"
    if kind == "failing":
        await asyncio.sleep(duration / 2)
        raise ValueError("failed")
    await asyncio.Event().wait()  # hanging: only a cancellation ends it
    raise AssertionError("unreachable")


def identity(pool: WorkerPool) -> None:
    s = check_books(pool)
    assert s.running <= s.target_workers or s.workers > s.target_workers, s


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(1, 4),
    queue_size=st.integers(0, 4),
    jobs=st.lists(
        st.tuples(st.sampled_from(KINDS), st.floats(0.01, 2.0), st.booleans()),
        max_size=25,
    ),
    shutdown_at=st.floats(0, 3),
    cancel=st.booleans(),
    deadline=st.one_of(st.none(), st.floats(0.1, 2.0)),
    timeout=st.one_of(st.none(), st.floats(0.5, 3.0)),
)
def test_random_jobs_and_shutdown_lose_nothing(
    workers: int,
    queue_size: int,
    jobs: list[tuple[str, float, bool]],
    shutdown_at: float,
    cancel: bool,
    deadline: float | None,
    timeout: float | None,
) -> None:
    """Jobs fast, slow, failing or hanging; some cancelled by their submitter; the pool shut
    down at a random moment, draining or cancelling, with or without a deadline."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = WorkerPool(workers=workers, queue_size=queue_size, timeout=timeout)
        handles: list[Any] = []
        submitted_ok = 0
        refused = 0

        async def submitter() -> None:
            nonlocal submitted_ok, refused
            for kind, duration, cancel_it in jobs:
                try:
                    job = await pool.submit(run_job, kind, duration)
                except PoolClosed:
                    refused += 1
                    continue
                submitted_ok += 1
                handles.append(job)
                identity(pool)
                if cancel_it:
                    loop.call_later(duration / 3, job.cancel)
                await asyncio.sleep(duration / 10)

        feeding = asyncio.create_task(submitter())
        stop_at = loop.time() + shutdown_at
        while loop.time() < stop_at:
            await asyncio.sleep(0.05)
            identity(pool)
        # Hanging jobs never finish on their own: draining them needs a deadline (then a cancel).
        hangs = any(kind == "hanging" for kind, _, _ in jobs) and timeout is None
        if cancel or deadline is not None or not hangs:
            handed = await pool.shutdown(cancel=cancel, timeout=deadline)
        else:
            handed = await pool.shutdown(timeout=5.0)
        await feeding
        identity(pool)
        s = pool.statistics()
        assert s.workers == 0
        assert s.queued == 0 and s.running == 0
        assert s.submitted == submitted_ok == len(handles)
        assert submitted_ok + refused == len(jobs)
        assert len(handed) == s.handed_back
        for job in handles:  # every handle is resolved, consistently with the counters
            assert job.done()
        outcomes = {"ok": 0, "failed": 0, "cancelled": 0, "timed_out": 0, "handed_back": 0}
        for job in handles:
            if job.cancelled():
                outcomes["cancelled"] += 1
            elif isinstance(job.exception(), JobHandedBack):
                outcomes["handed_back"] += 1
            elif isinstance(job.exception(), TimeoutError):
                outcomes["timed_out"] += 1
            elif job.exception() is not None:
                outcomes["failed"] += 1
            else:
                outcomes["ok"] += 1
        assert outcomes == {
            "ok": s.succeeded,
            "failed": s.failed,
            "cancelled": s.cancelled,
            "timed_out": s.timed_out,
            "handed_back": s.handed_back,
        }, (outcomes, s)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.get_loop().set_exception_handler(lambda loop, ctx: None)  # failed jobs unread
        runner.run(main())
        leftover = [t for t in asyncio.all_tasks(runner.get_loop()) if not t.done()]
        assert not leftover, leftover


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("loop_kind", [k for k in ("asyncio", "uvloop") if k in LOOP_FACTORIES])
def test_concurrency_cap_holds_under_random_cancellation(seed: int, loop_kind: str) -> None:
    rng = random.Random(seed)
    workers = rng.randint(1, 6)
    inside = 0
    peak = 0

    async def job() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        try:
            for _ in range(rng.randint(0, 4)):
                await asyncio.sleep(0)
        finally:
            inside -= 1

    async def main() -> None:
        async with WorkerPool(workers=workers, queue_size=rng.randint(0, 8)) as pool:
            handles = []
            for _ in range(300):
                handles.append(await pool.submit(job))
                if rng.random() < 0.2:
                    rng.choice(handles).cancel()
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
                if rng.random() < 0.02:
                    pool.resize(rng.randint(1, workers))
            await asyncio.gather(*handles, return_exceptions=True)
            identity(pool)
        assert pool.statistics().workers == 0

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        runner.run(main())
    assert 1 <= peak <= workers
    assert inside == 0


OPS = st.one_of(
    st.tuples(st.just("submit"), st.floats(0, 2.0)),
    st.tuples(st.just("resize"), st.integers(1, 5)),
    st.tuples(st.just("cancel"), st.integers(0, 30)),
    st.tuples(st.just("sleep"), st.floats(0, 3.0)),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(1, 5),
    elastic=st.one_of(st.none(), st.integers(0, 1)),
    idle_timeout=st.floats(0.1, 2.0),
    queue_size=st.integers(0, 3),
    ops=st.lists(OPS, max_size=40),
)
def test_resize_and_elastic_workers_lose_nothing_and_converge(
    workers: int,
    elastic: int | None,
    idle_timeout: float,
    queue_size: int,
    ops: list[tuple[str, Any]],
) -> None:
    """Random submits, resizes (even before the workers ever ran), cancels and idle periods, on
    a fixed or an elastic pool: every job ends, the worker count settles on its target, and the
    pool never runs more jobs than the largest target it was given."""

    async def main() -> None:
        pool = WorkerPool(
            workers=workers,
            queue_size=queue_size,
            min_workers=elastic,
            idle_timeout=idle_timeout,
        )
        handles: list[Any] = []
        running = peak = 0
        most = workers

        async def job(duration: float) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(duration)
            finally:
                running -= 1

        await pool.__aenter__()
        for op, value in ops:
            if op == "submit":
                handles.append(await pool.submit(job, value))
            elif op == "resize":
                if elastic is None or value >= elastic:
                    pool.resize(value)
                    most = max(most, value)
            elif op == "cancel" and handles:
                handles[value % len(handles)].cancel()
            else:
                await asyncio.sleep(value)
            identity(pool)
        await asyncio.sleep(10)  # every job is done, and idle workers have timed out
        s = pool.statistics()
        assert s.queued == s.running == 0, s
        if elastic is None:
            assert s.workers == s.target_workers, s
        else:
            assert elastic <= s.workers <= s.target_workers, s
        await pool.shutdown()
        identity(pool)
        assert pool.statistics().workers == 0
        assert all(h.done() for h in handles)
        assert peak <= most

    async def bounded() -> None:
        # A lost job or worker would hang: fail instead (virtual time, so this costs nothing).
        async with asyncio.timeout(1000):
            await main()

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(bounded())
        leftover = [t for t in asyncio.all_tasks(runner.get_loop()) if not t.done()]
        assert not leftover, leftover


MAP = st.tuples(
    st.lists(st.sampled_from(["fast", "slow", "failing"]), max_size=30),  # the items' jobs
    st.booleans(),  # ordered
    st.booleans(),  # outcomes
    st.booleans(),  # an async iterable
    st.one_of(st.none(), st.floats(0, 3.0)),  # the consumer is cancelled at this time
    st.one_of(st.none(), st.integers(0, 10)),  # or breaks out after this many results
    st.floats(0, 0.3),  # the consumer's own time per result
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    workers=st.integers(1, 4),
    queue_size=st.integers(0, 4),
    elastic=st.booleans(),
    maps=st.lists(MAP, min_size=1, max_size=3),
    submits=st.lists(st.floats(0, 1.0), max_size=10),
    shutdown_at=st.one_of(st.none(), st.floats(0, 4.0)),
    cancel=st.booleans(),
)
def test_maps_and_submits_share_the_pool_and_lose_nothing(
    workers: int,
    queue_size: int,
    elastic: bool,
    maps: list[tuple[list[str], bool, bool, bool, float | None, int | None, float]],
    submits: list[float],
    shutdown_at: float | None,
    cancel: bool,
) -> None:
    """Several maps (plain and async input, ordered or not, outcomes or the first error) and
    plain submits in one pool; consumers that are slow, cancelled at a random moment or leave
    early; the pool shut down at a random moment.  The workers take a map's items straight from
    its input, so the tests hold them to what the queue promised: never more than ``workers``
    jobs at once, never more than ``workers + queue_size`` items read and not yet yielded, every
    item run at most once (exactly once if its map ran to the end), each map's results right and
    in order, the accounting identity at every step, and no task left behind."""
    window = workers + queue_size

    async def main() -> None:
        loop = asyncio.get_running_loop()
        pool = WorkerPool(
            workers=workers, queue_size=queue_size, min_workers=0 if elastic else None
        )
        running = peak = 0
        calls: dict[tuple[int, int], int] = {}

        async def job(m: int, i: int, kind: str) -> int:
            nonlocal running, peak
            calls[m, i] = calls.get((m, i), 0) + 1
            running += 1
            peak = max(peak, running)
            try:
                if kind != "fast":
                    await asyncio.sleep(0.1 * (i % 3 + 1))
                if kind == "failing":
                    raise ValueError(f"{m}:{i}")
                return i
            finally:
                running -= 1

        async def consume(m: int) -> tuple[str, list[Any]]:
            kinds, ordered, outcomes, is_async, _, leave_after, pace = maps[m]
            read = yielded = 0

            def counted(i: int) -> int:
                nonlocal read
                read += 1
                assert read - yielded <= window, (read, yielded, window)
                return i

            async def aitems() -> Any:
                for i in range(len(kinds)):
                    yield counted(i)

            items: Any = aitems() if is_async else (counted(i) for i in range(len(kinds)))
            got: list[Any] = []

            def fn(i: int) -> Any:
                return job(m, i, kinds[i])

            try:
                async with aclosing(pool.map(fn, items, ordered=ordered, outcomes=outcomes)) as it:
                    async for r in it:
                        yielded += 1
                        identity(pool)
                        got.append(r)
                        if leave_after is not None and len(got) > leave_after:
                            return "left", got
                        await asyncio.sleep(pace)
            except ValueError as exc:
                return f"raised {exc}", got
            except PoolClosed:
                return "closed", got
            finally:
                if is_async:
                    await items.aclose()  # as with ``async for``, the input is its owner's
            return "done", got

        consumers = []
        for m, spec in enumerate(maps):
            task = asyncio.create_task(consume(m))
            if spec[4] is not None:
                loop.call_later(spec[4], task.cancel)
            consumers.append(task)
        handles = []
        for d in submits:
            try:
                handles.append(await pool.submit(asyncio.sleep, d, "slept"))
            except PoolClosed:
                break
            identity(pool)
        if shutdown_at is not None:
            await asyncio.sleep(shutdown_at)
            await pool.shutdown(cancel=cancel)
        results = await asyncio.gather(*consumers, return_exceptions=True)
        await pool.shutdown()
        identity(pool)
        s = pool.statistics()
        assert s.workers == 0 and s.queued == 0 and s.running == 0, s
        assert 1 <= peak <= workers or peak == 0
        assert all(n == 1 for n in calls.values()), calls
        assert all(h.done() for h in handles)
        for m, result in enumerate(results):
            kinds, ordered, outcomes, *_ = maps[m]
            if isinstance(result, BaseException):
                assert isinstance(result, asyncio.CancelledError), result
                continue
            how, got = result
            expect = list(range(len(kinds)))
            if outcomes:
                for o in got:
                    if isinstance(o.error, asyncio.CancelledError):  # shutdown(cancel=True)
                        assert shutdown_at is not None and cancel, o
                    else:
                        assert (o.error is None) == (kinds[o.item] != "failing"), o
                values = [o.item for o in got]
            else:
                values = got
                assert all(kinds[i] != "failing" for i in values)
            if ordered:
                assert values == expect[: len(values)], (values, how)
            else:
                assert len(set(values)) == len(values) and set(values) <= set(expect)
            if how == "done":
                assert sorted(values) == expect
                assert all((m, i) in calls for i in expect)
                assert outcomes or "failing" not in kinds
            elif how.startswith("raised"):
                assert not outcomes and "failing" in kinds
            elif how == "closed":
                assert shutdown_at is not None
        for (m, i), n in calls.items():
            assert i < len(maps[m][0]) and n == 1

    async def bounded() -> None:
        async with asyncio.timeout(1000):  # a lost item or wake-up would hang: fail instead
            await main()

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.get_loop().set_exception_handler(lambda loop, ctx: None)
        runner.run(bounded())
        leftover = [t for t in asyncio.all_tasks(runner.get_loop()) if not t.done()]
        assert not leftover, leftover
