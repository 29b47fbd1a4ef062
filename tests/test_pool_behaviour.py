"""What both pools promise alike, tested once on each kind (``WorkerPool`` and ``ThreadPool``).

They share one core (``poolkit._pools._pool_core``): the option checks, the counters, the messages,
retry replay.  Behaviour that differs by nature (cancelling a running job, timeouts on a
thread, event loops, threads starting as jobs need them) stays in ``test_pool.py`` and
``test_thread_pool.py``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import pytest
import tenacity

import poolkit
from poolkit import CapacityLimiter, PerKey, PoolClosed, RetryPolicy

from .pool_checks import KINDS, Kind, check_books, settle_until


def double(x: int) -> int:
    return 2 * x


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", KINDS, ids=str)
@pytest.mark.parametrize(
    ("kwargs", "exc", "words"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"workers": 2.5}, TypeError, "workers must be an int, got 2.5"),
        ({"workers": True}, TypeError, "workers must be an int, got True"),
        ({"queue_size": -1}, ValueError, "queue_size must be >= 0, got -1"),
        ({"queue_size": "3"}, TypeError, "queue_size must be an int"),
        ({"name": 3}, TypeError, "name must be a str or None, got 3"),
        ({"limit": 5}, TypeError, "limit must be a CapacityLimiter, TokenBucket, Limits or PerKey"),
        ({"key": 5}, TypeError, "key must be a function of the job, got 5"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0"),
        ({"timeout": 0}, ValueError, "timeout must be > 0 seconds or None, got 0"),
        ({"retry": 3}, TypeError, "retry must be a poolkit.RetryPolicy or a tenacity.{retrying}"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be a bool, got 1"),
        ({"workers": 2, "min_workers": 3}, ValueError, "min_workers (3) must not exceed workers"),
        ({"idle_timeout": math.nan}, ValueError, "idle_timeout must be >= 0"),
    ],
)
def test_bad_options_name_argument_and_value(
    kind: Kind, kwargs: dict[str, Any], exc: type, words: str
) -> None:
    with pytest.raises(exc) as info:
        kind.make(**kwargs)
    assert words.format(retrying=kind.retrying) in str(info.value)


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_keyed_limit_needs_a_key_function(kind: Kind) -> None:
    with pytest.raises(ValueError, match="pass key="):
        kind.make(limit=PerKey(lambda: CapacityLimiter(1)))


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_key_without_limit_is_refused_at_construction(kind: Kind) -> None:
    with pytest.raises(ValueError, match=r"key= needs limit=.*got key=.*, limit=None"):
        kind.make(key=lambda job: job.args[0])


@pytest.mark.parametrize("kind", KINDS, ids=str)
def test_a_pool_given_a_number_for_retry_says_what_it_meant(kind: Kind) -> None:
    with pytest.raises(TypeError, match=r"retry=poolkit\.RetryPolicy\.attempts\(3\)"):
        kind.make(retry=3)


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_non_callable_is_a_type_error_at_submit(kind: Kind) -> None:
    async with kind.make(workers=1) as pool:
        with pytest.raises(TypeError, match="fn must be callable, got 3"):
            await kind.submit(pool, 3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="fn must be callable"):
            pool.submit_nowait("nope")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="needs an iterable"):
            pool.map(double, 5)  # type: ignore[arg-type]
    assert pool.statistics().submitted == 0


# ---------------------------------------------------------------- counters, names, logs


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_statistics_and_repr(kind: Kind) -> None:
    wait, release = kind.gate()
    async with kind.make(workers=2, name="fetch") as pool:
        jobs = [await kind.submit(pool, wait) for _ in range(3)]
        await settle_until(lambda: pool.statistics().busy == 2)
        assert repr(pool) == f"<{kind} 'fetch' workers=2/2 busy=2 queued=1 closed=False>"
        s = check_books(pool)
        assert s.queue_wait_total >= 0
        release()
        assert [await kind.result(job) for job in jobs] == [True] * 3
    s = check_books(pool)
    assert s.run_time_total > 0
    assert (s.started, s.succeeded) == (3, 3)
    assert repr(pool) == f"<{kind} 'fetch' workers=0/2 busy=0 queued=0 closed=True>"


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_worker_start_and_exit_are_logged(
    kind: Kind, caplog: pytest.LogCaptureFixture
) -> None:
    wait, release = kind.gate()
    with caplog.at_level(logging.DEBUG, logger="poolkit.pool"):
        async with kind.make(workers=2, name="logged") as pool:
            jobs = [await kind.submit(pool, wait) for _ in range(2)]  # two at once: two threads
            await settle_until(lambda: pool.statistics().busy == 2)
            release()
            assert [await kind.result(job) for job in jobs] == [True, True]
    messages = [r.getMessage() for r in caplog.records if r.name == "poolkit.pool"]
    assert "pool 'logged': worker 1 started" in messages
    assert "pool 'logged': worker 2 exited" in messages
    assert len(messages) == 4


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_resize_after_shutdown_raises_pool_closed(kind: Kind) -> None:
    pool = kind.make(workers=2, name="gone")
    pool.resize(3)  # before it starts: the size it will start with
    async with pool:
        assert pool.statistics().target_workers == 3
        if not kind.threads:  # (threads start as jobs need them)
            assert pool.statistics().workers == 3
    with pytest.raises(PoolClosed, match=r"pool 'gone' is shut down; resize\(4\) cannot change"):
        pool.resize(4)
    assert pool.statistics().target_workers == 3
    never = kind.make(workers=2, name="never")
    never.resize(3)
    assert await kind.shutdown(never) == []  # it never started
    with pytest.raises(PoolClosed, match=r"pool 'never' is shut down; resize\(4\) cannot change"):
        never.resize(4)


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_elastic_pool_with_no_workers_and_no_queue_starts_one_for_a_submit(
    kind: Kind,
) -> None:
    async with kind.make(workers=2, queue_size=0, min_workers=0, idle_timeout=1) as pool:
        assert pool.statistics().workers == 0
        async with asyncio.timeout(5):  # used to wait forever for room nobody would make
            job = await kind.submit(pool, double, 4)
            assert await kind.result(job) == 8


# ---------------------------------------------------------------- retries


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_retry_on_a_result_retries(kind: Kind) -> None:
    calls = 0

    def not_ready_twice() -> str | None:
        nonlocal calls
        calls += 1
        return None if calls < 3 else "ready"

    policy = RetryPolicy(
        retry=tenacity.retry_if_result(lambda r: r is None), wait=tenacity.wait_none()
    )
    async with kind.make(workers=1, retry=policy) as pool:
        assert await kind.result(await kind.submit(pool, not_ready_twice)) == "ready"
        assert (calls, pool.statistics().retried) == (3, 2)


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_a_first_attempt_run_outside_tenacity_still_starts_its_clock(kind: Kind) -> None:
    calls: list[float] = []
    starts: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("reset")
        return "ok"

    def note(state: tenacity.RetryCallState) -> None:
        starts.append(state.start_time)

    policy = poolkit.RetryPolicy(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_none(),
        retry=tenacity.retry_if_exception_type(ConnectionError),
        before_sleep=note,
    )
    async with kind.make(workers=1, retry=policy) as pool:
        assert await kind.result(await kind.submit(pool, flaky)) == "ok"
    assert len(calls) == 3 and pool.statistics().retried == 2
    # stop_after_delay and friends measure from the first attempt, not from the first retry.
    assert len(set(starts)) == 1 and starts[0] <= calls[0]


# ---------------------------------------------------------------- fail_fast


@pytest.mark.parametrize("kind", KINDS, ids=str)
async def test_fail_fast_map_raises_the_failure_not_a_sibling_cancellation(kind: Kind) -> None:
    async def f(i: int) -> int:
        if i == 1:
            raise ValueError("the real failure")
        await asyncio.sleep(1)
        return i

    def g(i: int) -> int:
        if i == 1:
            raise ValueError("the real failure")
        time.sleep(0.05)
        return i

    async def body() -> None:
        if kind.threads:  # a window of 2: later items are submitted as earlier ones fail
            async with kind.make(workers=2, queue_size=0, fail_fast=True) as pool:
                await kind.map(pool, g, range(10))
        else:
            async with kind.make(workers=2, fail_fast=True) as pool:
                await kind.map(pool, f, range(4))

    with pytest.raises(ValueError, match="the real failure"):
        await body()
    task = asyncio.current_task()
    assert task is not None and task.cancelling() == 0
