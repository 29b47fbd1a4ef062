"""aiolimiter.AsyncLimiter objects wherever poolkit takes a limit
(poolkit/_primitives/_aiolimiter_support.py and the aiolimiter parts of
poolkit/_primitives/_composite.py), tested with real aiolimiter objects.

Timing runs on virtual time.  aiolimiter re-arms its timer at ``last_check + needed / rate``,
and where float error leaves ``needed`` a hair above zero a virtual clock never moves past it
(see the CHANGELOG's Decisions): these tests give it rates whose steps are exact binary fractions
(2/s, 4/s) on a clock that starts at 0, where its arithmetic is exact and the times below are
too.  Tests that need no timing run on asyncio and uvloop, with limiters so slow (per hour) that
they never drain while a test runs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any

import pytest
from aiolimiter import AsyncLimiter

from poolkit import (
    AsyncLimiterStatistics,
    CapacityLimiter,
    Limits,
    LimitsStatistics,
    PerKey,
    ThreadPool,
    TokenBucket,
    WorkerPool,
)
from poolkit._observe import _metrics
from poolkit._primitives._composite import pool_limits
from poolkit.testing import VirtualTimeLoop


def now() -> float:
    return asyncio.get_running_loop().time()


def in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new thread (no event loop there) and return what it returned."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return result[0]


def member_stats(limits: Limits, index: int) -> AsyncLimiterStatistics:
    s = limits.statistics().members[index]
    assert isinstance(s, AsyncLimiterStatistics)
    return s


# ---------------------------------------------------------------- construction


def test_the_installed_aiolimiter_is_one_this_support_was_checked_against() -> None:
    import aiolimiter

    major, minor = (int(p) for p in aiolimiter.__version__.split(".")[:2])
    assert (1, 2) <= (major, minor) < (2, 0), aiolimiter.__version__


def test_poolkit_never_imports_aiolimiter() -> None:
    # So it is an optional extra, not a runtime dependency (pyproject.toml says so).
    code = (
        "import sys, poolkit\n"
        "poolkit.Limits(poolkit.CapacityLimiter(1), poolkit.TokenBucket(1))\n"
        "poolkit.PerKey(lambda: poolkit.TokenBucket(1)).try_acquire('k')\n"
        "assert 'aiolimiter' not in sys.modules, 'poolkit imported aiolimiter'\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_limits_take_async_limiters_also_nested() -> None:
    a, b = AsyncLimiter(10, 1), AsyncLimiter(100, 60)
    cap, bucket = CapacityLimiter(4), TokenBucket(10)
    limits = Limits(cap, a, Limits(bucket, b))
    assert limits.members == (cap, a, bucket, b)
    with pytest.raises(ValueError, match="same limit twice"):
        Limits(a, Limits(a))
    with pytest.raises(
        TypeError, match=r"got 3 \(aiolimiter\.AsyncLimiter objects are taken too\)"
    ):
        Limits(a, 3)  # type: ignore[arg-type]


def test_a_cost_an_async_limiter_can_never_grant_is_refused_naming_it() -> None:
    cap = CapacityLimiter(8)
    limits = Limits(cap, AsyncLimiter(4, 1))

    async def main() -> None:
        with pytest.raises(
            ValueError,
            match=r"cost must be >= 0 and at most the max_rate of "
            r"aiolimiter\.AsyncLimiter\(max_rate=4, time_period=1\), got 5",
        ):
            await limits.acquire(5)
        with pytest.raises(ValueError, match="got -1"):
            Limits(AsyncLimiter(4, 1)).try_acquire(-1)
        with pytest.raises(TypeError, match="cost must be a number, got '1'"):
            await Limits(AsyncLimiter(4, 1)).acquire("1")  # type: ignore[arg-type]

    asyncio.run(main())
    assert cap.borrowed == 0


def test_pool_limits_is_what_the_pools_build_their_limit_with() -> None:
    a = AsyncLimiter(10, 1)
    made = pool_limits(a)
    assert isinstance(made, Limits) and made.members == (a,)
    with pytest.raises(
        TypeError,
        match=r"limit must be a CapacityLimiter, TokenBucket, Limits or PerKey "
        r"\(or an aiolimiter\.AsyncLimiter\), got 5",
    ):
        pool_limits(5)
    with pytest.raises(
        TypeError, match="limit must be a CapacityLimiter, TokenBucket, Limits or PerKey, got 5"
    ):
        pool_limits(5, threads=True)
    for limit in (a, Limits(CapacityLimiter(2), a)):
        with pytest.raises(
            TypeError, match=r"cannot be used by a ThreadPool: .*asyncio-only.*TokenBucket"
        ):
            pool_limits(limit, threads=True)
    keyed: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1))
    assert pool_limits(keyed, threads=True).members == (keyed,)


# ---------------------------------------------------------------- order, rate, cancellation


@pytest.mark.virtual_time
async def test_the_async_limiter_rate_holds_through_limits() -> None:
    limits = Limits(CapacityLimiter(8), AsyncLimiter(4, 1))  # 4 at once, then one every 0.25 s
    starts: list[float] = []

    async def one() -> None:
        async with limits:
            starts.append(now())

    async with asyncio.TaskGroup() as tg:
        for _ in range(8):
            tg.create_task(one())
    assert starts == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.virtual_time
async def test_slots_first_then_the_async_limiter_then_the_buckets() -> None:
    slot = CapacityLimiter(1)
    a = AsyncLimiter(2, 1)
    bucket = TokenBucket(4, 1)  # one token, back 0.25 s after it is taken
    limits = Limits(slot, a, bucket)
    await slot.acquire()  # somebody else holds the slot...
    await bucket.acquire()  # ...and the bucket's token
    task = asyncio.create_task(limits.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    assert slot.statistics().waiting == 1
    assert member_stats(limits, 1).level == 0  # nothing taken before the slot is held
    slot.release()
    for _ in range(3):
        await asyncio.sleep(0)
    # It holds the slot, the AsyncLimiter has granted (and spent) its part, and it waits for
    # the bucket holding no token of it.
    assert slot.borrowed == 1
    assert member_stats(limits, 1).level == 1.0
    assert bucket.statistics().waiting == 1
    await task
    assert now() == 0.25
    assert bucket.statistics().tokens == 0
    limits.release()
    assert slot.borrowed == 0


@pytest.mark.virtual_time
async def test_cancelled_after_the_async_limiter_granted_its_part_is_spent() -> None:
    slot = CapacityLimiter(1)
    a = AsyncLimiter(2, 1)
    bucket = TokenBucket(4, 1)
    limits = Limits(slot, a, bucket)
    await bucket.acquire()
    task = asyncio.create_task(limits.acquire())
    for _ in range(3):
        await asyncio.sleep(0)
    assert bucket.statistics().waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert now() == 0.0
    assert slot.borrowed == 0  # the slot is given back
    assert member_stats(limits, 1).level == 1.0  # the AsyncLimiter's part is spent
    assert not a.has_capacity(2)
    await asyncio.sleep(0.25)
    assert bucket.try_acquire()  # no poolkit token was taken


@pytest.mark.virtual_time
async def test_cancelled_while_waiting_in_the_async_limiter_takes_nothing() -> None:
    slot = CapacityLimiter(2)
    a = AsyncLimiter(2, 1)
    limits = Limits(slot, a)
    await a.acquire(2)  # full: 1 more fits at t=0.5
    task = asyncio.create_task(limits.acquire())
    await asyncio.sleep(0.25)
    assert slot.borrowed == 1 and member_stats(limits, 1).waiting == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slot.borrowed == 0
    assert member_stats(limits, 1) == AsyncLimiterStatistics(2, 1, 2.0, 1.5, 0)
    await limits.acquire()  # not delayed by the one that left
    assert now() == 0.5
    limits.release()


@pytest.mark.virtual_time
async def test_a_timeout_covers_the_wait_in_the_async_limiter() -> None:
    slot = CapacityLimiter(1)
    a = AsyncLimiter(2, 1)
    limits = Limits(slot, a)
    await a.acquire(2)  # full: 1 more fits at t=0.5
    with pytest.raises(
        TimeoutError,
        match=r"no capacity in aiolimiter\.AsyncLimiter\(max_rate=2, time_period=1\) "
        r"within the timeout",
    ):
        await limits.acquire(timeout=0.25)
    assert now() == 0.25
    assert slot.borrowed == 0
    assert member_stats(limits, 1) == AsyncLimiterStatistics(2, 1, 2.0, 1.5, 0)
    with pytest.raises(TimeoutError, match="right now"):
        await limits.acquire(timeout=0)  # fails at once, queueing nothing
    assert now() == 0.25 and slot.borrowed == 0
    await limits.acquire(timeout=0.375)  # in time: at 0.5
    assert now() == 0.5
    limits.release()


@pytest.mark.virtual_time
async def test_aiolimiter_starves_a_heavy_acquisition_behind_light_ones() -> None:
    # Documented, not fixed: aiolimiter's waiters are a heap ordered by cost, so acquire(4)
    # waits until the light ones looping on acquire(1) stop.  A TokenBucket serves in order.
    async def run(member: AsyncLimiter | TokenBucket) -> dict[str, float]:
        limits = Limits(CapacityLimiter(8), member)
        start = now()
        done: dict[str, float] = {}

        async def light(n: int) -> None:
            for _ in range(8):
                await limits.acquire(1)
                limits.release(1)
            done[f"light{n}"] = now() - start

        async def heavy() -> None:
            await asyncio.sleep(0.1)
            await limits.acquire(4)
            limits.release(4)
            done["heavy"] = now() - start

        async with asyncio.TaskGroup() as tg:
            for n in range(3):
                tg.create_task(light(n))
            tg.create_task(heavy())
        return done

    leaky = await run(AsyncLimiter(4, 1))
    assert leaky == {"light0": 2.5, "light1": 4.75, "light2": 5.0, "heavy": 6.0}
    fifo = await run(TokenBucket(4, 4))
    assert fifo["heavy"] == 1.75 < max(fifo.values())


# ---------------------------------------------------------------- try_acquire


async def test_try_acquire_is_all_or_nothing_with_async_limiters() -> None:
    slot = CapacityLimiter(2)
    a = AsyncLimiter(2, 3600)  # drains a token in 30 minutes: nothing drains during the test
    bucket = TokenBucket(1 / 3600, 1)
    limits = Limits(slot, a, bucket)

    assert bucket.try_acquire()  # the bucket is empty now
    assert not limits.try_acquire()
    assert slot.borrowed == 0
    assert a.has_capacity(2)  # the AsyncLimiter gave nothing although it had room

    full = TokenBucket(1 / 3600, 1)
    other = Limits(slot, a, full)
    assert other.try_acquire(1)
    assert slot.borrowed == 1 and a.has_capacity(1) and not a.has_capacity(2)
    assert not other.try_acquire(1)  # the bucket's token is gone now
    assert slot.borrowed == 1 and a.has_capacity(1)
    other.release(1)

    await a.acquire(1)  # the AsyncLimiter is full
    assert not Limits(slot, a).try_acquire(1)
    assert slot.borrowed == 0


# ---------------------------------------------------------------- threads and loops


async def test_threads_are_refused_clearly_and_nothing_is_held() -> None:
    slot = CapacityLimiter(1)
    limits = Limits(slot, AsyncLimiter(10, 1))
    per_host: PerKey[str, AsyncLimiter] = PerKey(lambda: AsyncLimiter(10, 1))
    why = r"cannot use aiolimiter\.AsyncLimiter\(max_rate=10, time_period=1\): .*asyncio-only"

    def blocking() -> None:
        with pytest.raises(TypeError, match=r"Limits\.acquire_blocking\(\) " + why):
            limits.acquire_blocking()
        with pytest.raises(TypeError, match="'with limits:' " + why), limits:
            pass
        with pytest.raises(TypeError, match=why), limits.hold_blocking():
            pass
        with pytest.raises(TypeError, match=r"Limits\.try_acquire\(\) " + why):
            limits.try_acquire()
        with pytest.raises(TypeError, match=why):
            per_host.acquire_blocking("a")
        with pytest.raises(TypeError, match=why):
            per_host.try_acquire("a")
        assert slot.borrowed == 0

    await asyncio.to_thread(blocking)
    # On the loop's own thread, acquire_blocking() is refused the same way (not frozen).
    with pytest.raises(TypeError, match=why):
        limits.acquire_blocking()
    assert slot.borrowed == 0
    assert per_host.statistics().acquired_total == 0


async def test_another_open_event_loop_is_refused_before_anything_is_taken() -> None:
    slot = CapacityLimiter(1)
    limits = Limits(slot, AsyncLimiter(10, 1))
    async with limits:  # binds the AsyncLimiter to this loop
        pass

    async def elsewhere() -> None:
        with pytest.raises(RuntimeError, match="bound to another event loop, which is still open"):
            await limits.acquire()
        with pytest.raises(RuntimeError, match="bound to another event loop"):
            limits.try_acquire()
        assert slot.borrowed == 0

    await asyncio.to_thread(asyncio.run, elsewhere())
    assert limits.try_acquire()  # still fine on its own loop
    limits.release()


def test_after_its_loop_is_closed_aiolimiter_moves_it_with_its_own_warning() -> None:
    a = AsyncLimiter(4, 3600)
    limits = Limits(CapacityLimiter(1), a)

    async def once() -> None:
        async with limits:
            pass

    asyncio.run(once())
    # Read from a thread with no loop, after the loop closed: no error, no warning, no move.
    stats = in_thread(lambda: member_stats(limits, 1))
    assert stats.max_rate == 4 and stats.waiting == 0 and 0.99 < (stats.level or 0) <= 1.0
    assert "<aiolimiter.AsyncLimiter max_rate=4 time_period=3600 level=" in repr(limits)
    with pytest.warns(RuntimeWarning, match="re-used across loops"):
        asyncio.run(once())  # poolkit lets aiolimiter do what it does for a closed loop


# ---------------------------------------------------------------- PerKey


@pytest.mark.virtual_time
async def test_per_key_forgets_an_async_limiter_once_it_has_drained_exactly() -> None:
    made: list[AsyncLimiter] = []

    def factory() -> AsyncLimiter:
        made.append(AsyncLimiter(2, 1))
        return made[-1]

    per_host: PerKey[str, AsyncLimiter] = PerKey(factory)
    await per_host.acquire("a", 2)
    assert per_host.statistics_for("a") == AsyncLimiterStatistics(2, 1, 2.0, 2.0, 0)
    assert per_host.sweep() == 0
    await asyncio.sleep(0.5)
    assert per_host.sweep() == 0  # level 1: a new one would be empty, a burst beyond the rate
    assert per_host.statistics_for("a") == AsyncLimiterStatistics(2, 1, 2.0, 1.0, 0)
    await asyncio.sleep(0.5)
    # Drained: but from another thread its state cannot be read safely, so it is kept.
    assert in_thread(per_host.sweep) == 0
    assert per_host.sweep() == 1
    assert "a" not in per_host and per_host.statistics_for("a") is None
    per_host.release("a", 2)  # nothing to give back, forgotten or not: no NotAcquired

    await per_host.acquire("a", 2)  # a new limiter for the key
    assert len(made) == 2
    made[1].max_rate = 3  # changed after the factory made it: a new one would not have it
    await asyncio.sleep(10)
    assert per_host.sweep() == 0 and "a" in per_host
    s = per_host.statistics()
    assert (s.created_total, s.forgotten_total, s.acquired_total) == (2, 1, 2)


@pytest.mark.virtual_time
async def test_per_key_forgets_on_use_of_other_keys_once_drained() -> None:
    per_host: PerKey[str, AsyncLimiter] = PerKey(lambda: AsyncLimiter(2, 1), sweep_per_use=4)
    await per_host.acquire("a", 1)
    await per_host.acquire("b", 1)
    assert sorted(per_host.keys()) == ["a", "b"]
    await asyncio.sleep(0.5)  # both drained to exactly 0
    assert per_host.try_acquire("c")
    assert per_host.keys() == ["c"]


@pytest.mark.virtual_time
async def test_per_host_caps_and_aiolimiter_rates_inside_limits() -> None:
    per_host: PerKey[str, Limits] = PerKey(
        lambda: Limits(CapacityLimiter(1), AsyncLimiter(2, 1)), name="hosts"
    )
    limits = Limits(CapacityLimiter(4), per_host)
    starts: dict[str, list[float]] = {"a": [], "b": []}

    async def fetch(host: str) -> None:
        async with limits.hold(host):
            starts[host].append(now())
            await asyncio.sleep(0.125)

    async with asyncio.TaskGroup() as tg:
        for host in "abab":
            tg.create_task(fetch(host))
            tg.create_task(fetch(host))
    # One at a time per host; the first two fit the burst, then one every 0.5 s.
    assert starts == {"a": [0.0, 0.125, 0.5, 1.0], "b": [0.0, 0.125, 0.5, 1.0]}
    stats = per_host.statistics_for("a")
    assert isinstance(stats, LimitsStatistics)
    assert stats.members[1] == AsyncLimiterStatistics(2, 1, 2.0, 1.75, 0)  # 1 s later: drained 2
    await asyncio.sleep(1)
    assert per_host.sweep() == 2


# ---------------------------------------------------------------- statistics, repr, metrics


def test_statistics_repr_metrics_and_debug_dump_with_an_async_limiter() -> None:
    a = AsyncLimiter(4, 1)
    cap = CapacityLimiter(4, name="aio-cap")
    limits = Limits(cap, a, name="aio-limits")
    assert member_stats(limits, 1) == AsyncLimiterStatistics(4, 1, 4.0, 0.0, 0)  # unused yet

    async def take() -> None:
        await limits.acquire(2)
        await limits.acquire(1)

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(take())  # the loop stays open and its clock stands still: level 3 exactly
        assert repr(limits) == (
            "<Limits 'aio-limits' <CapacityLimiter 'aio-cap' borrowed=3/4 waiting=0 peak=3> & "
            "<aiolimiter.AsyncLimiter max_rate=4 time_period=1 level=3 waiting=0>>"
        )
        expected = {"max_rate": 4, "time_period": 1, "rate": 4.0, "level": 3.0, "waiting": 0}
        for dump in (_metrics.objects_json(), in_thread(_metrics.objects_json)):
            assert json.loads(json.dumps(dump, allow_nan=False)) == dump
            (entry,) = [e for e in dump["limits"] if e["name"] == "aio-limits"]
            assert entry["statistics"]["members"][1] == expected
            # The AsyncLimiter is no poolkit object: listed in the statistics, not as a member.
            assert entry["members"] == [{"kind": "limiter", "name": "aio-cap"}]
        text = _metrics.exposition()
        assert (
            'poolkit_limits_member_info{limits="aio-limits",member_kind="limiter",'
            'member="aio-cap"} 1' in text
        )
        assert "aiolimiter" not in text
        limits.release(3)


# ---------------------------------------------------------------- pools


@pytest.mark.virtual_time
async def test_worker_pool_takes_limits_and_per_key_with_async_limiters() -> None:
    starts: list[float] = []

    async def job(host: str) -> None:
        starts.append(now())

    async with WorkerPool(workers=8, limit=Limits(AsyncLimiter(4, 1))) as pool:
        await asyncio.gather(*[await pool.submit(job, "a") for _ in range(8)])
    assert starts == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0]

    starts.clear()
    per_host: PerKey[str, AsyncLimiter] = PerKey(lambda: AsyncLimiter(2, 1))
    async with WorkerPool(workers=8, limit=per_host, key=lambda j: j.args[0]) as pool:
        await asyncio.gather(*[await pool.submit(job, h) for h in "abababab"])
    assert sorted(starts) == [1.0, 1.0, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]


@pytest.mark.virtual_time
async def test_worker_pool_takes_an_async_limiter() -> None:
    starts: list[float] = []

    async def job() -> None:
        starts.append(now())

    async with WorkerPool(workers=8, limit=AsyncLimiter(4, 1)) as pool:
        await asyncio.gather(*[await pool.submit(job) for _ in range(8)])
    assert starts == [0.0, 0.0, 0.0, 0.0, 0.25, 0.5, 0.75, 1.0]


def test_thread_pool_refuses_async_limiters_when_it_is_made() -> None:
    for limit in (AsyncLimiter(4, 1), Limits(CapacityLimiter(2), AsyncLimiter(4, 1))):
        with pytest.raises(
            TypeError, match=r"cannot be used by a ThreadPool: .*asyncio-only.*TokenBucket"
        ):
            ThreadPool(workers=1, limit=limit)  # type: ignore[arg-type]


def test_thread_pool_jobs_behind_a_per_key_async_limiter_fail_saying_why() -> None:
    # A PerKey's factory is called only for a key's first use, so a ThreadPool cannot see the
    # AsyncLimiter when it is made: the job's acquisition refuses it, and the job fails.
    per_host: PerKey[str, AsyncLimiter] = PerKey(lambda: AsyncLimiter(4, 1))
    with ThreadPool(workers=1, limit=per_host, key=lambda j: j.args[0]) as pool:
        job = pool.submit(str.upper, "a")
        error = job.exception(timeout=10)
    assert isinstance(error, TypeError)
    assert "asyncio-only" in str(error)
    assert pool.statistics().failed == 1
