"""poolkit.WorkerPool: submit, map, limits, retries, shutdown that loses nothing, counters.

What both pools promise alike (option checks, statistics, logs, retry replay) is tested on both
in ``test_pool_behaviour.py``; this file tests what is a ``WorkerPool``'s own.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import pytest
import tenacity

import poolkit
from poolkit import (
    CapacityLimiter,
    JobHandedBack,
    Limits,
    PerKey,
    PoolClosed,
    QueueFull,
    RetryPolicy,
    TokenBucket,
    WorkerPool,
)

from .pool_checks import check_books


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def now() -> float:
    return asyncio.get_running_loop().time()


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


# ---------------------------------------------------------------- submit


async def test_submit_runs_coroutine_and_plain_functions() -> None:
    def plain(a: int, *, b: int) -> int:
        return a + b

    async def later() -> str:
        return "from an awaitable"

    async with WorkerPool(workers=2, name="basics") as pool:
        assert await (await pool.submit(double, 21)) == 42
        assert await (await pool.submit(plain, 1, b=2)) == 3
        assert await (await pool.submit(lambda: later())) == "from an awaitable"
        job = await pool.submit(plain, 5, b=5)
        assert (job.fn, job.args, job.kwargs) == (plain, (5,), {"b": 5})
        await job
        assert (job.args, job.kwargs) == ((), {})  # released once it ran
    s = check_books(pool)
    assert (s.submitted, s.succeeded, s.workers) == (4, 4, 0)


async def test_job_errors_are_captured_and_never_kill_a_worker() -> None:
    async def boom(n: int) -> int:
        raise ValueError(f"bad {n}")

    async with WorkerPool(workers=1) as pool:
        failing = [await pool.submit(boom, n) for n in range(3)]
        ok = await pool.submit(double, 4)
        for n, job in enumerate(failing):
            with pytest.raises(ValueError, match=f"bad {n}"):
                await job
        assert await ok == 8
        assert pool.statistics().workers == 1
    s = check_books(pool)
    assert (s.failed, s.succeeded) == (3, 1)


async def test_a_job_that_raises_cancelled_error_itself_does_not_kill_its_worker() -> None:
    async def awaits_a_cancelled_future() -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.cancel()
        await fut

    async with WorkerPool(workers=1) as pool:
        job = await pool.submit(awaits_a_cancelled_future)
        with pytest.raises(asyncio.CancelledError):
            await job
        assert await (await pool.submit(double, 1)) == 2
    assert check_books(pool).cancelled == 1


async def test_backpressure_blocks_submit_and_nowait_rejects() -> None:
    gate = asyncio.Event()

    async def wait_for_gate() -> None:
        await gate.wait()

    async with WorkerPool(workers=1, queue_size=2) as pool:
        await pool.submit(wait_for_gate)  # running
        await pool.submit(wait_for_gate)  # queued
        await pool.submit(wait_for_gate)  # queued: the queue is full now
        blocked = asyncio.create_task(pool.submit(wait_for_gate))
        await settle()
        assert not blocked.done(), "submit did not wait for room"
        with pytest.raises(QueueFull, match=r"the queue of pool\S* is full \(\d+ jobs? waiting\)"):
            pool.submit_nowait(wait_for_gate)
        s = check_books(pool)
        assert (s.running, s.queued, s.rejected, s.submitted) == (1, 2, 1, 3)
        gate.set()
        await blocked
    assert check_books(pool).succeeded == 4


async def test_blocked_submitters_are_served_in_order() -> None:
    gate = asyncio.Event()
    order: list[int] = []

    async def job(i: int) -> None:
        await gate.wait()
        order.append(i)

    async with WorkerPool(workers=1, queue_size=1) as pool:
        await pool.submit(job, 0)
        await pool.submit(job, 1)
        waiters = []
        for i in range(2, 6):
            waiters.append(asyncio.create_task(pool.submit(job, i)))
            await settle(1)
        gate.set()
        await asyncio.gather(*waiters)
    assert order == [0, 1, 2, 3, 4, 5]


async def test_cancelled_blocked_submit_submits_nothing() -> None:
    gate = asyncio.Event()
    async with WorkerPool(workers=1, queue_size=0) as pool:
        await pool.submit(gate.wait)
        blocked = asyncio.create_task(pool.submit(double, 1))
        await settle()
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        assert check_books(pool).submitted == 1
        gate.set()
    assert check_books(pool).succeeded == 1


async def test_submit_after_shutdown_and_blocked_submitters_get_pool_closed() -> None:
    gate = asyncio.Event()
    pool = WorkerPool(workers=1, queue_size=0, name="p")
    await pool.submit(gate.wait)
    blocked = asyncio.create_task(pool.submit(double, 1))
    await settle()
    stopping = asyncio.create_task(pool.shutdown(cancel=True))
    with pytest.raises(PoolClosed, match="pool 'p' is shut down"):
        await blocked
    await stopping
    with pytest.raises(PoolClosed):
        await pool.submit(double, 2)
    with pytest.raises(PoolClosed):
        pool.submit_nowait(double, 2)
    assert pool.closed
    assert check_books(pool).submitted == 1


async def test_pool_is_bound_to_its_event_loop() -> None:
    pool = WorkerPool(workers=1)
    await pool.submit(double, 1)

    def elsewhere() -> None:
        async def use() -> None:
            with pytest.raises(RuntimeError, match="belongs to another event loop"):
                await pool.submit(double, 1)

        asyncio.run(use())

    await asyncio.to_thread(elsewhere)
    await pool.shutdown()


# ---------------------------------------------------------------- cancelling jobs


async def test_cancel_a_queued_job_and_a_running_job() -> None:
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async with WorkerPool(workers=1) as pool:
        running = await pool.submit(forever)
        queued = await pool.submit(double, 1)
        await started.wait()
        assert queued.cancel()
        assert running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        assert queued.cancelled()
        assert await (await pool.submit(double, 2)) == 4  # the worker survived
        s = check_books(pool)
        assert (s.cancelled, s.started, s.workers) == (2, 2, 1)


async def test_cancelling_the_awaiter_cancels_the_job_unless_shielded() -> None:
    async def slow() -> str:
        await asyncio.sleep(10)
        return "done"

    async with WorkerPool(workers=2) as pool:
        job = await pool.submit(slow)
        waiter = asyncio.create_task(asyncio.wait_for(job, 0.01))
        with pytest.raises(TimeoutError):
            await waiter
        assert job.cancelled()
        shielded = await pool.submit(slow)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(shielded), 0.01)
        assert not shielded.done()
        shielded.cancel()
    assert check_books(pool).cancelled == 2


# ---------------------------------------------------------------- timeouts and retries


@pytest.mark.virtual_time
async def test_per_job_timeout() -> None:
    async def sleepy(t: float) -> float:
        await asyncio.sleep(t)
        return t

    async def raises_its_own_timeout() -> None:
        raise TimeoutError("mine")

    async with WorkerPool(workers=2, timeout=1.0, name="t") as pool:
        slow = await pool.submit(sleepy, 5)
        fast = await pool.submit(sleepy, 0.5)
        own = await pool.submit(raises_its_own_timeout)
        expected = r"ran past the timeout of 1\.0 s set on the pool 't'"
        with pytest.raises(TimeoutError, match=expected):
            await slow
        assert now() == 1.0
        assert await fast == 0.5
        with pytest.raises(TimeoutError, match="mine"):
            await own
    s = check_books(pool)
    assert (s.timed_out, s.succeeded, s.failed) == (1, 1, 1)


@pytest.mark.virtual_time
async def test_retries_back_off_and_are_counted() -> None:
    attempts: list[float] = []

    async def flaky(fail_times: int) -> str:
        attempts.append(now())
        if len(attempts) <= fail_times:
            raise ConnectionError("try again")
        return "ok"

    policy = RetryPolicy.attempts(4, initial=1.0, maximum=10, jitter=0)
    async with WorkerPool(workers=1, retry=policy) as pool:
        assert await (await pool.submit(flaky, 2)) == "ok"
        assert attempts == [0.0, 1.0, 3.0]  # 1 s, then 2 s
        attempts.clear()
        with pytest.raises(ConnectionError):
            await (await pool.submit(flaky, 10))
        assert len(attempts) == 4
    s = check_books(pool)
    assert (s.retried, s.succeeded, s.failed, s.started) == (5, 1, 1, 2)


@pytest.mark.parametrize("with_limit", [False, True], ids=["bare", "limited"])
async def test_a_retried_jobs_error_is_not_chained_to_its_first_attempts(
    with_limit: bool,
) -> None:
    """The first attempt runs outside tenacity; its error must not become the implicit
    ``__context__`` of what the later attempts raise (a misleading traceback)."""
    errors: list[ValueError] = []

    def fails() -> None:
        errors.append(ValueError(f"attempt {len(errors) + 1}"))
        raise errors[-1]

    policy = RetryPolicy.attempts(3, initial=0, jitter=0)
    limit = CapacityLimiter(1) if with_limit else None
    async with WorkerPool(workers=1, retry=policy, limit=limit) as pool:
        job = await pool.submit(fails)
        with pytest.raises(ValueError, match="attempt 3") as caught:
            await job
    assert caught.value is errors[2]
    assert errors[2].__context__ is None
    assert errors[1].__context__ is None


@pytest.mark.virtual_time
async def test_tenacity_object_accepted_and_cancellation_never_retried() -> None:
    calls = 0

    async def hangs() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(100)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(5),
        retry=tenacity.retry_if_exception(lambda e: True),  # even this does not retry cancels
        wait=tenacity.wait_none(),
    )
    async with WorkerPool(workers=1, retry=retrying, timeout=1) as pool:
        job = await pool.submit(hangs)
        await asyncio.sleep(0.5)
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        assert calls == 1
        timed = await pool.submit(hangs)  # timeouts are retried: 5 attempts of 1 s
        with pytest.raises(TimeoutError):
            await timed
        assert calls == 6
    s = check_books(pool)
    assert (s.cancelled, s.timed_out, s.retried) == (1, 1, 4)


def test_retry_policy_bad_input() -> None:
    with pytest.raises(ValueError, match="attempts must be >= 1, got 0"):
        RetryPolicy.attempts(0)
    with pytest.raises(TypeError, match="attempts must be an int"):
        RetryPolicy.attempts(2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="initial must be a finite number >= 0, got -1"):
        RetryPolicy.attempts(2, initial=-1)


# ---------------------------------------------------------------- limits


@pytest.mark.virtual_time
async def test_token_bucket_paces_job_starts() -> None:
    starts: list[float] = []

    async def record() -> None:
        starts.append(now())

    async with WorkerPool(workers=4, limit=TokenBucket(2, 1)) as pool:
        jobs = [await pool.submit(record) for _ in range(5)]
        await asyncio.gather(*jobs)
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5, 2.0])


async def test_capacity_limiter_caps_below_the_worker_count() -> None:
    inside = 0
    peak = 0

    async def job() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await settle(2)
        inside -= 1

    shared = CapacityLimiter(3)
    async with WorkerPool(workers=8, limit=shared) as pool:
        await asyncio.gather(*[await pool.submit(job) for _ in range(40)])
    assert peak == 3
    assert shared.borrowed == 0


@pytest.mark.virtual_time
async def test_per_key_limits_and_each_retry_pays_the_rate() -> None:
    starts: dict[str, list[float]] = {}
    fails = {"a": 1}

    async def fetch(host: str) -> None:
        starts.setdefault(host, []).append(now())
        if fails.get(host):
            fails[host] -= 1
            raise ConnectionError

    per_host = PerKey(lambda: TokenBucket(1, 1))
    async with WorkerPool(
        workers=4,
        limit=Limits(per_host),
        key=lambda job: job.args[0],
        retry=RetryPolicy.attempts(3, initial=0, jitter=0),
    ) as pool:
        await asyncio.gather(*[await pool.submit(fetch, h) for h in "aab"])
    assert starts["b"] == [0.0]
    assert starts["a"] == pytest.approx([0.0, 1.0, 2.0])  # the retry waited for a token too


# ---------------------------------------------------------------- map


async def test_map_ordered_unordered_and_async_input() -> None:
    async def source() -> Any:
        for i in range(30):
            yield i

    async def jittery(x: int) -> int:
        for _ in range(x % 4):
            await asyncio.sleep(0)
        return x * x

    async with WorkerPool(workers=4, queue_size=2) as pool:
        assert [r async for r in pool.map(jittery, range(30))] == [i * i for i in range(30)]
        unordered = [r async for r in pool.map(jittery, source(), ordered=False)]
        assert sorted(unordered) == [i * i for i in range(30)]
        assert unordered != sorted(unordered)  # they really came in completion order
    assert check_books(pool).succeeded == 60


async def test_map_reads_its_input_lazily() -> None:
    pulled = 0

    def source() -> Any:
        nonlocal pulled
        for i in range(10_000):
            pulled += 1
            yield i

    async with WorkerPool(workers=2, queue_size=3) as pool:
        results = pool.map(double, source())
        first = [await results.__anext__() for _ in range(3)]
        await settle(20)
        assert first == [0, 2, 4]
        assert pulled <= 3 + 2 + 3 + 1, "map read ahead beyond workers + queue"
        await results.aclose()  # type: ignore[attr-defined]


async def test_map_drains_a_channel_through_the_workers_until_it_is_closed() -> None:
    channel: poolkit.Channel[int] = poolkit.Channel(4)
    seen: list[int] = []

    async def producer() -> None:
        for i in range(50):
            await channel.send(i)
        channel.close()

    async def job(x: int) -> int:
        seen.append(x)
        await asyncio.sleep(0)
        return x * 10

    async with WorkerPool(workers=3) as pool:
        sending = asyncio.create_task(producer())
        results = [r async for r in pool.map(job, channel)]
        await sending
    assert results == [i * 10 for i in range(50)]
    assert sorted(seen) == list(range(50))
    assert check_books(pool).succeeded == 50


async def test_a_map_and_queued_jobs_take_turns_at_the_workers() -> None:
    """Neither starves the other: with one worker, a map's items and queued jobs alternate."""
    order: list[str] = []

    async def queued(i: int) -> None:
        order.append(f"q{i}")
        await asyncio.sleep(0)

    async def mapped(i: int) -> int:
        order.append(f"m{i}")
        await asyncio.sleep(0)
        return i

    gate = asyncio.Event()

    async def gated() -> None:
        order.append("g")
        await gate.wait()

    async with WorkerPool(workers=1, queue_size=10) as pool:
        await pool.submit(gated)  # holds the worker while both kinds of work line up
        jobs = [await pool.submit(queued, i) for i in range(4)]
        results = pool.map(mapped, range(4))
        first = asyncio.create_task(results.__anext__())
        await settle()
        gate.set()
        assert await first == 0
        assert [r async for r in results] == [1, 2, 3]
        await asyncio.gather(*jobs)
    # Five queued jobs (the gate first) and four items: they alternate while both remain.
    # (Whether the gate or m0 runs first depends on when the worker first looks, which an
    # eager task factory changes.)
    assert sorted(order) == sorted(["g", "q0", "q1", "q2", "q3", "m0", "m1", "m2", "m3"])
    kinds = [entry[0] == "m" for entry in order]
    assert all(a != b for a, b in itertools.pairwise(kinds[:8])), order


@pytest.mark.parametrize("via", ["submit", "map"])
async def test_every_worker_joins_when_jobs_wait_though_one_wake_up_is_in_flight(via: str) -> None:
    """Idle workers are woken one at a time, each waking the next as it takes a job: jobs that
    block must still get every worker, and a ninth job must wait for a free one."""
    gate = asyncio.Event()
    inside = 0

    async def blocker(_: int = 0) -> int:
        nonlocal inside
        inside += 1
        await gate.wait()
        return 0

    async with WorkerPool(workers=8) as pool:
        await settle()  # every worker idle
        if via == "submit":
            jobs = [await pool.submit(blocker) for _ in range(9)]
        else:
            results = pool.map(blocker, range(9))
            first = asyncio.create_task(results.__anext__())
        await settle(20)
        assert inside == 8
        s = check_books(pool)
        assert (s.running, s.idle) == (8, 0)
        gate.set()
        if via == "submit":
            await asyncio.gather(*jobs)
        else:
            assert await first == 0
            assert len([r async for r in results]) == 8
    assert inside == 9


@pytest.mark.parametrize("via", ["submit", "map"])
async def test_a_burst_of_waiting_jobs_has_every_worker_going_within_a_few_turns(
    via: str,
) -> None:
    """Woken workers wake two more each: 64 idle workers all run a burst of 64 jobs that wait
    on I/O within ten turns of the loop (one at a time would take 64 turns)."""
    gate = asyncio.Event()

    async def blocker(_: int = 0) -> int:
        await gate.wait()
        return 0

    async with WorkerPool(workers=64) as pool:
        await settle()
        if via == "submit":
            jobs = [await pool.submit(blocker) for _ in range(64)]
        else:
            results = pool.map(blocker, range(64))
            first = asyncio.create_task(results.__anext__())
        for _ in range(10):
            await asyncio.sleep(0)
        assert pool.statistics().running == 64
        gate.set()
        if via == "submit":
            await asyncio.gather(*jobs)
        else:
            await first
            assert len([r async for r in results]) == 63


async def test_a_failing_input_fails_the_map_after_the_items_read_before_it() -> None:
    def source() -> Any:
        yield 1
        yield 2
        raise KeyError("input broke")

    async with WorkerPool(workers=2) as pool:
        got: list[int] = []

        async def consume() -> None:
            async for r in pool.map(double, source()):
                got.append(r)

        with pytest.raises(KeyError, match="input broke"):
            await consume()
        assert got == [2, 4]
        s = check_books(pool)
        assert (s.submitted, s.succeeded) == (2, 2)


async def test_map_raises_the_first_error_after_cancelling_the_rest() -> None:
    async def job(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        await asyncio.sleep(0.01 if x > 3 else 0)
        return x

    got = []

    async def consume(pool: WorkerPool) -> None:
        async for r in pool.map(job, range(20)):
            got.append(r)

    async with WorkerPool(workers=4) as pool:
        with pytest.raises(ValueError, match="three"):
            await consume(pool)
        assert got == [0, 1, 2]
        await settle()
        s = check_books(pool)
        assert s.cancelled > 0
        assert s.running == 0 and s.queued == 0


async def test_map_outcomes_report_failures_without_raising() -> None:
    async def job(x: int) -> int:
        if x % 3 == 0:
            raise ValueError(x)
        return x

    async with WorkerPool(workers=3) as pool:
        outcomes = [o async for o in pool.map(job, range(7), outcomes=True)]
    assert [o.item for o in outcomes] == list(range(7))
    assert [o.ok for o in outcomes] == [False, True, True, False, True, True, False]
    assert [o.value for o in outcomes if o.ok] == [1, 2, 4, 5]
    assert all(isinstance(o.error, ValueError) for o in outcomes if not o.ok)


async def test_breaking_out_of_map_cancels_in_flight_jobs_and_leaves_no_task() -> None:
    from contextlib import aclosing

    async def slow(x: int) -> int:
        await asyncio.sleep(10)
        return x

    async def fast(x: int) -> int:
        return x

    async with WorkerPool(workers=4, queue_size=4) as pool:
        async with aclosing(pool.map(fast, range(1000))) as results:
            async for r in results:
                if r == 5:
                    break
        async with aclosing(pool.map(slow, range(1000))) as results:
            consumer = asyncio.create_task(results.__anext__())
            await settle()
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        await settle()
        s = check_books(pool)
        assert (s.running, s.queued) == (0, 0)
        assert s.cancelled >= 4
        assert not [t for t in asyncio.all_tasks() if "map feeder" in t.get_name()]


async def test_map_stops_with_pool_closed_when_the_pool_shuts_down() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.05)
        return x

    pool = WorkerPool(workers=2, queue_size=1)
    results = pool.map(slow, range(100))
    first = await results.__anext__()
    await pool.shutdown(cancel=True)
    with pytest.raises((JobHandedBack, PoolClosed, asyncio.CancelledError)):
        async for _ in results:
            pass
    assert first == 0
    check_books(pool)


# ---------------------------------------------------------------- shutdown


async def test_drain_finishes_queued_and_running_jobs() -> None:
    async def slow(x: int) -> int:
        await asyncio.sleep(0.01)
        return x

    pool = WorkerPool(workers=2, queue_size=10)
    jobs = [await pool.submit(slow, i) for i in range(10)]
    assert await pool.shutdown() == []
    assert [j.result() for j in jobs] == list(range(10))
    s = check_books(pool)
    assert (s.succeeded, s.workers, s.closed) == (10, 0, True)
    assert await pool.shutdown() == []  # idempotent


async def test_cancel_hands_back_unstarted_jobs_and_cancels_running_ones() -> None:
    gate = asyncio.Event()

    async def wait(tag: str, *, extra: int = 0) -> str:
        await gate.wait()
        return tag

    pool = WorkerPool(workers=2, queue_size=10, name="hb")
    running = [await pool.submit(wait, f"r{i}") for i in range(2)]
    queued = [await pool.submit(wait, f"q{i}", extra=i) for i in range(5)]
    await settle()
    handed = await pool.shutdown(cancel=True)
    assert [h.args for h in handed] == [(f"q{i}",) for i in range(5)]
    assert [h.kwargs for h in handed] == [{"extra": i} for i in range(5)]
    assert [h.job for h in handed] == queued
    assert all(h.fn is wait for h in handed)
    for job in queued:
        with pytest.raises(
            JobHandedBack,
            match=r"pool 'hb' was shut down \(cancelling, or a drain that ran out of time\)",
        ):
            await job
    for job in running:
        assert job.cancelled()
    assert pool.handed_back == handed
    s = check_books(pool)
    assert (s.handed_back, s.cancelled, s.workers) == (5, 2, 0)
    # handed-back jobs can be run again elsewhere
    gate.set()
    async with WorkerPool(workers=2) as other:
        again = [await other.submit(h.fn, *h.args, **h.kwargs) for h in handed]
        assert [await j for j in again] == [f"q{i}" for i in range(5)]


@pytest.mark.virtual_time
async def test_drain_with_a_deadline_turns_into_a_cancel() -> None:
    async def sleepy(t: float) -> float:
        await asyncio.sleep(t)
        return t

    pool = WorkerPool(workers=1, queue_size=5)
    jobs = [await pool.submit(sleepy, 1.0) for _ in range(5)]
    handed = await pool.shutdown(timeout=2.5)
    assert now() == 2.5
    assert [j.done() and not j.cancelled() and j.exception() is None for j in jobs[:2]] == [
        True
    ] * 2
    assert jobs[2].cancelled()  # running at the deadline
    assert len(handed) == 2
    s = check_books(pool)
    assert (s.succeeded, s.cancelled, s.handed_back, s.workers) == (2, 1, 2, 0)


@pytest.mark.virtual_time
async def test_cancel_with_a_deadline_reports_jobs_that_ignore_cancellation() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                continue  # ignores cancellation: a bug in the job

    pool = WorkerPool(workers=1)
    await pool.submit(stubborn)
    await settle()
    with pytest.raises(TimeoutError, match="ignore cancellation"):
        await pool.shutdown(cancel=True, timeout=3)
    release.set()
    await pool.shutdown()
    assert check_books(pool).workers == 0


async def test_async_with_takes_the_cancel_path_on_error_or_cancellation() -> None:
    gate = asyncio.Event()
    pool = WorkerPool(workers=1)

    async def failing_body() -> None:
        async with pool:
            await pool.submit(gate.wait)
            await pool.submit(gate.wait)
            await settle()
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        await failing_body()
    s = check_books(pool)
    assert (s.cancelled, s.handed_back, s.workers) == (1, 1, 0)
    assert len(pool.handed_back) == 1

    pool2 = WorkerPool(workers=1)

    async def owner() -> None:
        async with pool2:
            await pool2.submit(gate.wait)
            await asyncio.Event().wait()

    task = asyncio.create_task(owner())
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (pool2.statistics().cancelled, pool2.statistics().workers) == (1, 0)


async def test_fail_fast_cancels_the_rest_and_raises_the_first_error() -> None:
    gate = asyncio.Event()

    async def boom() -> None:
        await settle(2)
        raise KeyError("first")

    pool = WorkerPool(workers=2, queue_size=10, fail_fast=True)
    handles: list[Any] = []

    async def body() -> None:
        async with pool:
            handles.append(await pool.submit(gate.wait))
            await pool.submit(boom)
            handles.extend([await pool.submit(gate.wait) for _ in range(3)])
            await settle(10)
            with pytest.raises(PoolClosed):
                await pool.submit(gate.wait)

    with pytest.raises(KeyError, match="first"):
        await body()
    waiting, *queued = handles
    assert waiting.cancelled()
    assert all(q.cancelled() for q in queued)
    s = check_books(pool)
    assert (s.failed, s.cancelled, s.handed_back) == (1, 4, 0)


# ---------------------------------------------------------------- workers


async def test_resize_up_and_down_loses_nothing() -> None:
    gate = asyncio.Event()
    async with WorkerPool(workers=2, queue_size=math.inf) as pool:
        jobs = [await pool.submit(gate.wait) for _ in range(6)]
        await settle()
        assert pool.statistics().running == 2
        pool.resize(4)
        await settle()
        assert pool.statistics().running == 4
        pool.resize(1)  # busy workers finish their job, then retire
        gate.set()
        await asyncio.gather(*jobs)
        await settle()
        s = check_books(pool)
        assert (s.workers, s.target_workers, s.succeeded) == (1, 1, 6)
        with pytest.raises(ValueError, match="workers must be >= 1"):
            pool.resize(0)


async def test_resize_retires_idle_workers_at_once() -> None:
    async with WorkerPool(workers=5) as pool:
        await settle()
        pool.resize(2)
        await settle()
        assert pool.statistics().workers == 2
        assert await (await pool.submit(double, 3)) == 6


@pytest.mark.virtual_time
async def test_elastic_pool_grows_on_demand_and_shrinks_when_idle() -> None:
    async def work() -> None:
        await asyncio.sleep(1)

    async with WorkerPool(workers=6, min_workers=1, idle_timeout=10) as pool:
        assert pool.statistics().workers == 1
        jobs = [await pool.submit(work) for _ in range(6)]
        await settle()
        assert pool.statistics().workers == 6
        await asyncio.gather(*jobs)
        assert now() == 1.0  # all six ran at once
        await asyncio.sleep(10.5)
        assert pool.statistics().workers == 1  # the rest exited after 10 idle seconds


# ---------------------------------------------------------------- regressions (review 4)


async def test_resize_before_the_workers_ever_ran_still_shuts_down() -> None:
    pool = WorkerPool(workers=4)
    await pool.__aenter__()  # four worker tasks exist, none has run yet
    pool.resize(2)
    await settle()
    assert check_books(pool).workers == 2
    assert await (await pool.submit(double, 4)) == 8
    async with asyncio.timeout(5):
        await pool.shutdown()
    assert check_books(pool).workers == 0


@pytest.mark.virtual_time
async def test_resize_down_as_a_busy_worker_finishes_keeps_exactly_the_target() -> None:
    pool = WorkerPool(workers=3)
    await pool.__aenter__()
    await settle()

    async def resizer() -> None:
        await asyncio.sleep(1)
        pool.resize(1)

    shrinking = asyncio.create_task(resizer())
    await asyncio.sleep(0)  # the resizer's timer comes first, the busy job's right after
    busy = await pool.submit(asyncio.sleep, 1)
    await shrinking
    await busy
    await asyncio.sleep(0.1)
    assert check_books(pool).workers == 1
    later = await pool.submit(double, 5)
    await pool.shutdown()
    assert later.result() == 10


async def test_resize_down_then_up_before_the_retired_workers_exit() -> None:
    async with WorkerPool(workers=4) as pool:
        await settle()
        pool.resize(1)
        pool.resize(4)
        await settle()
        assert check_books(pool).workers == 4
        gate = asyncio.Event()
        jobs = [await pool.submit(gate.wait) for _ in range(4)]
        await settle()
        assert check_books(pool).running == 4  # four really run at once
        gate.set()
        await asyncio.gather(*jobs)


@pytest.mark.virtual_time
async def test_elastic_job_that_arrives_as_the_last_idle_timer_fires_still_runs() -> None:
    pool = WorkerPool(workers=2, min_workers=0, idle_timeout=5)
    loop = asyncio.get_running_loop()
    await (await pool.submit(asyncio.sleep, 0))  # the worker now idles, with a 5 s timer
    late: list[poolkit.Job[Any]] = []
    loop.call_later(5, lambda: late.append(pool.submit_nowait(double, 21)))
    await asyncio.sleep(6)
    assert await asyncio.wait_for(late[0], 10) == 42
    await pool.shutdown()
    assert check_books(pool).succeeded == 2


@pytest.mark.virtual_time
@pytest.mark.parametrize("timeout", [None, 3.0])
async def test_a_cancelled_job_is_never_retried_and_its_worker_stays_sound(
    timeout: float | None,
) -> None:
    calls = 0

    async def wraps_cancellation() -> str:
        nonlocal calls
        calls += 1
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            raise RuntimeError("cancelled (as a library reports it)") from None
        return "done"

    policy = RetryPolicy.attempts(3, initial=0, jitter=0)
    async with WorkerPool(workers=1, timeout=timeout, retry=policy) as pool:
        job = await pool.submit(wraps_cancellation)
        await asyncio.sleep(1)
        assert job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        s = check_books(pool)
        assert (calls, s.retried, s.cancelled, s.timed_out) == (1, 0, 1, 0)
        # The worker carries no leftover cancellation: cancelling the next job hurts nobody else.
        victim = await pool.submit(asyncio.sleep, 100)
        await asyncio.sleep(1)
        victim.cancel()
        after = await pool.submit(double, 3)
        assert await after == 6
        assert check_books(pool).workers == 1


async def test_a_job_that_cancels_itself_does_not_cancel_the_next_one() -> None:
    group: list[poolkit.Job[Any]] = []

    async def cancels_its_group() -> int:
        for job in group:  # including itself, without awaiting afterwards
            job.cancel()
        return 1

    async def innocent() -> str:
        await asyncio.sleep(0.01)
        return "innocent"

    async with WorkerPool(workers=1, queue_size=4) as pool:
        first = await pool.submit(cancels_its_group)
        group.append(first)
        second = await pool.submit(innocent)
        results = await asyncio.gather(first, second, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert results[1] == "innocent"
        # With an empty queue the pending cancellation used to kill the idle worker.
        group[:] = [await pool.submit(cancels_its_group)]
        await asyncio.gather(group[0], return_exceptions=True)
        await settle()
        assert check_books(pool).workers == 1
        assert await (await pool.submit(double, 2)) == 4


async def test_cancelled_queued_jobs_free_their_room_at_once() -> None:
    gate = asyncio.Event()
    async with WorkerPool(workers=1, queue_size=2) as pool:
        await pool.submit(gate.wait)
        await settle()
        for job in [await pool.submit(double, i) for i in range(2)]:
            job.cancel()
        assert check_books(pool).queued == 0
        pool.submit_nowait(double, 1)  # would have raised QueueFull
        async with asyncio.timeout(1):
            await pool.submit(double, 2)  # would have blocked
        with pytest.raises(QueueFull):
            pool.submit_nowait(double, 3)  # the room really is used up now
        gate.set()


async def test_fail_fast_awaiting_a_cancelled_sibling_raises_the_failure() -> None:
    async def boom() -> None:
        await asyncio.sleep(0)
        raise KeyError("first")

    async def body() -> None:
        async with WorkerPool(workers=2, fail_fast=True) as pool:
            slow = await pool.submit(asyncio.sleep, 10)
            await pool.submit(boom)
            await slow  # cancelled by fail_fast: the CancelledError must not be the story

    with pytest.raises(KeyError, match="first"):
        await body()


async def test_map_in_a_pool_shut_down_with_cancel_raises_pool_closed() -> None:
    pool = WorkerPool(workers=2)
    await pool.__aenter__()

    async def stopper() -> None:
        await asyncio.sleep(0.01)
        await pool.shutdown(cancel=True)

    stopping = asyncio.create_task(stopper())
    with pytest.raises(PoolClosed):
        async for _ in pool.map(asyncio.sleep, [10, 10, 10]):
            pass
    await stopping


@pytest.mark.virtual_time
async def test_cancelled_while_draining_leaves_no_worker_behind() -> None:
    pool = WorkerPool(workers=2, queue_size=10)

    async def body() -> None:
        async with asyncio.timeout(0.2), pool:
            for _ in range(6):
                await pool.submit(asyncio.sleep, 0.5)

    with pytest.raises(TimeoutError):
        await body()
    s = check_books(pool)
    assert s.workers == 0 and s.running == 0 and s.queued == 0
    assert s.cancelled == 2 and s.handed_back == 4
    await asyncio.sleep(2)
    assert pool.statistics().succeeded == 0  # nothing ran on in the background


@pytest.mark.virtual_time
async def test_drain_deadline_then_cancel_deadline_bounds_a_stubborn_job() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                continue  # ignores cancellation: a bug in the job

    pool = WorkerPool(workers=1)
    await pool.submit(stubborn)
    await settle()
    start = now()
    with pytest.raises(TimeoutError, match="ignore cancellation"):
        await pool.shutdown(timeout=2)
    assert now() - start == pytest.approx(4.0)  # 2 s draining, then 2 s for the cancellation
    release.set()
    await pool.shutdown()
    assert check_books(pool).workers == 0


# ------------------------------------------------- retries: the first attempt without tenacity


@pytest.mark.virtual_time
async def test_the_pools_own_timeout_is_a_timeout_error_to_retry_policies() -> None:
    attempts = 0

    async def slow() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(10)

    policy = poolkit.RetryPolicy.attempts(3, initial=0.1, jitter=0, on=TimeoutError)
    async with poolkit.WorkerPool(workers=1, timeout=1, retry=policy) as pool:
        job = await pool.submit(slow)
        with pytest.raises(TimeoutError, match="ran past the timeout of 1"):
            await job
    assert attempts == 3
    assert pool.statistics().retried == 2


# ---------------------------------------------------------------- misuse that used to pass silently


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        (
            {"stop": 3},
            "RetryPolicy stop must be a tenacity stop strategy such as "
            "tenacity.stop_after_attempt(3) (a callable taking a tenacity.RetryCallState), got 3",
        ),
        (
            {"wait": 2},
            "RetryPolicy wait must be a tenacity wait strategy such as tenacity.wait_fixed(2)",
        ),
        ({"wait": 2}, "got 2; for 2 s between attempts: wait=tenacity.wait_fixed(2)"),
        (
            {"retry": ConnectionError},
            "to retry on ConnectionError, pass "
            "retry=tenacity.retry_if_exception_type(ConnectionError)",
        ),
        ({"retry": (ValueError,)}, "RetryPolicy retry must be a tenacity retry strategy"),
        ({"wait": tenacity.wait_none}, "pass an instance, tenacity.wait.wait_none(...), not the"),
        ({"stop": None}, "RetryPolicy stop must be a tenacity stop strategy"),
        ({"before_sleep": 5}, "before_sleep must be None or a function of a tenacity"),
    ],
)
def test_retry_policy_refuses_what_tenacity_cannot_call(kwargs: dict[str, Any], words: str) -> None:
    """``RetryPolicy(stop=3)`` used to be accepted; at a job's first failure the job's own error
    was replaced by ``TypeError: 'int' object is not callable`` from inside tenacity."""
    with pytest.raises(TypeError) as info:
        RetryPolicy(**kwargs)
    assert words in str(info.value)


def test_retry_policy_attempts_checks_on() -> None:
    with pytest.raises(TypeError, match="on must be an exception class or a tuple of exception"):
        RetryPolicy.attempts(3, on=ValueError())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got \(\)"):
        RetryPolicy.attempts(3, on=())
    assert RetryPolicy.attempts(3, on=(KeyError, ValueError)).stop is not None


async def test_using_a_pool_from_a_plain_thread_says_what_to_do_instead() -> None:
    # Regression: resize() or submit_nowait() from a thread raised asyncio's bare "no running
    # event loop", which does not say that the pool is bound to a loop, nor what to use.
    async with WorkerPool(workers=2, name="bound") as pool:
        await pool.submit(asyncio.sleep, 0)
        errors: list[BaseException] = []

        def from_thread() -> None:
            for call in (lambda: pool.resize(3), lambda: pool.submit_nowait(asyncio.sleep, 0)):
                try:
                    call()
                except RuntimeError as e:
                    errors.append(e)

        await asyncio.to_thread(from_thread)
        assert len(errors) == 2
        for e in errors:
            assert "pool 'bound' runs on an event loop" in str(e)
            assert "submit_blocking()" in str(e)
        assert pool.statistics().target_workers == 2


async def test_a_users_set_result_or_set_exception_is_refused() -> None:
    """A user's ``job.set_result()`` used to be accepted; the worker then died with
    ``InvalidStateError`` when the job finished, and the pool lost that worker."""
    gate = asyncio.Event()

    async def waits(tag: str) -> str:
        await gate.wait()
        return tag

    async with WorkerPool(workers=1, name="owner") as pool:
        running = await pool.submit(waits, "running")
        queued = await pool.submit(waits, "queued")
        await settle()
        for job in (running, queued):
            with pytest.raises(asyncio.InvalidStateError, match=r"call job\.cancel\(\)"):
                job.set_result("mine")
            with pytest.raises(asyncio.InvalidStateError, match=r"pool 'owner' .*sets a job's"):
                job.set_exception(ValueError("mine"))
        gate.set()
        assert [await running, await queued] == ["running", "queued"]
        assert await (await pool.submit(double, 2)) == 4  # the worker is fine
        s = check_books(pool)
        assert (s.workers, s.succeeded) == (1, 3)


async def test_a_plain_function_runs_in_the_worker_on_the_loops_thread() -> None:
    """What submit(sync_fn) does, as documented: it is called on the loop's thread (so it must
    not block), its result is the job's, and an awaitable it returns is awaited."""
    import threading

    async with WorkerPool(workers=1) as pool:
        assert await (await pool.submit(threading.get_ident)) == threading.get_ident()
        assert await (await pool.submit(lambda: double(4))) == 8


async def test_idle_and_running_workers_are_where_dumps_look_for_them() -> None:
    """For task dumps: a worker waiting for its next job is inside ``_JobQueue.wait_for_job``,
    and a running job's coroutine is awaited by ``_Worker.run`` itself (plain jobs) or by
    ``_Worker._attempt`` (jobs under a limit, a timeout or tenacity)."""
    gate = asyncio.Event()

    def chain(task: asyncio.Task[Any]) -> list[str]:
        names = []
        coro: Any = task.get_coro()
        while coro is not None and hasattr(coro, "cr_code"):
            names.append(coro.cr_code.co_qualname)
            coro = coro.cr_await
        return names

    async with WorkerPool(workers=2) as pool, WorkerPool(workers=1, timeout=10) as slow:
        await settle()
        idle = [w.task for w in pool._workers.values() if w.task is not None]
        assert [chain(t)[:2] for t in idle] == [["_Worker.run", "_JobQueue.wait_for_job"]] * 2
        job = await pool.submit(gate.wait)
        other = await slow.submit(gate.wait)
        await settle()
        (busy,) = [w.task for w in pool._workers.values() if w.job is job and w.task is not None]
        assert chain(busy)[:2] == ["_Worker.run", "Event.wait"]
        (limited,) = [w.task for w in slow._workers.values() if w.task is not None]
        assert chain(limited) == [
            "_Worker.run",
            "_Worker._attempts",
            "_Worker._attempt",  # the limit is acquired here, then the job is awaited
            "Event.wait",
        ]
        gate.set()
        await asyncio.gather(job, other)
