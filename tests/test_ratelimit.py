"""poolkit.TokenBucket: exact timing on virtual time, FIFO across costs, cancellation, threads."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poolkit
from poolkit import TokenBucket, parse_rate
from poolkit.testing import VirtualTimeLoop


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def now() -> float:
    return asyncio.get_running_loop().time()


# ---------------------------------------------------------------- rates and bad input


@pytest.mark.parametrize(
    ("spec", "per_second"),
    [
        ("10/s", 10.0),
        ("600/min", 10.0),
        ("5000/h", 5000 / 3600),
        ("3/5s", 0.6),
        ("1 / second", 1.0),
        ("2.5/MIN", 2.5 / 60),
        ("86400/day", 1.0),
        (7, 7.0),
        (0.25, 0.25),
    ],
)
def test_parse_rate(spec: Any, per_second: float) -> None:
    assert parse_rate(spec) == pytest.approx(per_second)
    assert TokenBucket(spec).rate == pytest.approx(per_second)


@pytest.mark.parametrize(
    ("rate", "exc"),
    [
        (0, ValueError),
        (-1, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("10/fortnight", ValueError),
        ("ten/s", ValueError),
        ("10", ValueError),
        ("0/s", ValueError),
        ("1/0s", ValueError),
        (None, TypeError),
        (True, TypeError),
        ([10], TypeError),
    ],
)
def test_bad_rate_names_argument_and_value(rate: Any, exc: type) -> None:
    with pytest.raises(exc, match=r"rate must .*got"):
        TokenBucket(rate)


@pytest.mark.parametrize(
    ("burst", "exc"),
    [
        (0, ValueError),
        (0.5, ValueError),
        (math.nan, ValueError),
        (math.inf, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
def test_bad_burst(burst: Any, exc: type) -> None:
    with pytest.raises(exc, match=r"burst must .*got"):
        TokenBucket(10, burst)


def test_default_burst_is_one_seconds_worth_at_least_one() -> None:
    assert TokenBucket("10/s").burst == 10
    assert TokenBucket("600/min").burst == 10
    assert TokenBucket(2.5).burst == 3
    assert TokenBucket("1/min").burst == 1
    assert TokenBucket(10, 4).burst == 4


@pytest.mark.parametrize(
    ("cost", "exc", "words"),
    [
        (-1, ValueError, "cost must be a finite number >= 0, got -1"),
        (math.nan, ValueError, "got nan"),
        (math.inf, ValueError, "got inf"),
        (11, ValueError, "cost 11 exceeds the bucket's burst 10"),
        ("1", TypeError, "cost must be a number of tokens, got '1'"),
        (True, TypeError, "got True"),
    ],
)
async def test_bad_cost_fails_at_once_and_consumes_nothing(
    cost: Any, exc: type, words: str
) -> None:
    bucket = TokenBucket(10)
    with pytest.raises(exc) as info:
        await bucket.acquire(cost)
    assert words in str(info.value)
    with pytest.raises(exc):
        bucket.try_acquire(cost)
    with pytest.raises(exc):
        bucket.acquire_blocking(cost)
    assert bucket.statistics().tokens == 10


# ---------------------------------------------------------------- timing on virtual time


@pytest.mark.virtual_time
async def test_starts_full_then_paces_at_the_rate() -> None:
    bucket = TokenBucket("10/s")
    times = []
    for _ in range(30):
        await bucket.acquire()
        times.append(now())
    assert times[:10] == [0.0] * 10  # the burst
    assert times[10:] == pytest.approx([0.1 * k for k in range(1, 21)])
    s = bucket.statistics()
    assert (s.granted_total, s.cost_granted_total) == (30, 30)
    assert s.tokens == pytest.approx(0, abs=1e-9)


@pytest.mark.virtual_time
async def test_fractional_costs_and_refill_cap() -> None:
    bucket = TokenBucket(4, 2)
    await bucket.acquire(1.5)
    await bucket.acquire(0.5)
    assert now() == 0
    await bucket.acquire(2)  # needs 2 tokens: 0.5 s at 4/s
    assert now() == pytest.approx(0.5)
    await asyncio.sleep(100)
    assert bucket.statistics().tokens == 2  # never more than burst


@pytest.mark.virtual_time
async def test_fifo_across_costs_is_not_starved_by_small_ones() -> None:
    # The case: acquire(8) on a 10/s bucket while 5 tasks loop on acquire(1).  aiolimiter
    # 1.3 waits until the small ones stop; a FIFO bucket serves the big one in its turn.
    bucket = TokenBucket("10/s")
    stop = False

    async def small() -> None:
        while not stop:
            await bucket.acquire(1)

    smalls = [asyncio.create_task(small()) for _ in range(5)]
    await settle(1)  # they drain the burst and queue up
    t0 = now()
    await bucket.acquire(8)
    waited = now() - t0
    stop = True
    await asyncio.gather(*smalls)
    # Ahead of it: the 5 small waiters (0.5 s); then its own 8 tokens (0.8 s).
    assert waited == pytest.approx(1.3)


@pytest.mark.virtual_time
async def test_waiters_are_served_in_arrival_order_whatever_the_cost() -> None:
    bucket = TokenBucket(10, 10)
    await bucket.acquire(10)
    order: list[tuple[int, float]] = []

    async def take(i: int, cost: float) -> None:
        await bucket.acquire(cost)
        order.append((i, now()))

    costs = [5, 1, 3, 1]
    tasks = []
    for i, c in enumerate(costs):
        tasks.append(asyncio.create_task(take(i, c)))
        await settle(1)
    await asyncio.gather(*tasks)
    assert [i for i, _ in order] == [0, 1, 2, 3]
    assert [t for _, t in order] == pytest.approx([0.5, 0.6, 0.9, 1.0])


# ---------------------------------------------------------------- timeouts


@pytest.mark.virtual_time
async def test_timeout_that_cannot_be_met_fails_at_once_consuming_nothing() -> None:
    bucket = TokenBucket("10/s")
    await bucket.acquire(10)
    queued = asyncio.create_task(bucket.acquire(5))  # 0.5 s ahead of us
    await settle()
    with pytest.raises(TimeoutError, match=r"cannot get the tokens within 0\.6 s"):
        await bucket.acquire(2, timeout=0.6)  # needs 0.7 s
    assert now() == 0, "it waited instead of failing at once"
    assert bucket.statistics().waiting == 1
    await bucket.acquire(2, timeout=0.7)  # exactly enough
    assert now() == pytest.approx(0.7)
    await queued
    with pytest.raises(TimeoutError):
        await bucket.acquire(1, timeout=0)


@pytest.mark.virtual_time
async def test_timeout_expiring_in_the_queue_consumes_nothing() -> None:
    # The estimate said it could make it (1.0 s), but then the rate dropped, so the waiter ahead
    # needs longer; it times out at its deadline with nothing taken.
    bucket = TokenBucket(10, 10)
    await bucket.acquire(10)
    ahead = asyncio.create_task(bucket.acquire(9))
    await settle()
    mine = asyncio.create_task(bucket.acquire(1, timeout=1.0))
    await settle()
    bucket.rate = 5  # now the one ahead needs 1.8 s
    with pytest.raises(TimeoutError, match="no tokens within the timeout"):
        await mine
    assert now() == pytest.approx(1.0)
    await ahead
    assert now() == pytest.approx(1.8)
    assert bucket.statistics().granted_total == 2


# ---------------------------------------------------------------- cancellation


@pytest.mark.virtual_time
async def test_cancelled_waiter_consumes_nothing_and_does_not_delay_the_next() -> None:
    bucket = TokenBucket(10, 10)
    await bucket.acquire(10)
    big = asyncio.create_task(bucket.acquire(8))
    await settle()
    small_done: list[float] = []

    async def small() -> None:
        await bucket.acquire(1)
        small_done.append(now())

    s = asyncio.create_task(small())
    await asyncio.sleep(0.3)
    big.cancel()
    with pytest.raises(asyncio.CancelledError):
        await big
    await s
    # Without the big one ahead, the small one goes as soon as it has its token (0.1 s) and
    # since 0.3 s have passed, at once.
    assert small_done == [pytest.approx(0.3)]
    assert bucket.statistics().tokens == pytest.approx(2.0)  # 3 refilled, 1 taken


@pytest.mark.virtual_time
async def test_cancelled_at_the_moment_its_tokens_arrive_consumes_nothing() -> None:
    loop = asyncio.get_running_loop()
    bucket = TokenBucket(10, 10)
    await bucket.acquire(10)
    waiter = asyncio.create_task(bucket.acquire(5))
    await settle()
    loop.call_at(0.5, waiter.cancel)  # the same instant its timer fires
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert bucket.statistics().tokens == pytest.approx(5.0)
    assert bucket.statistics().granted_total == 1


# ---------------------------------------------------------------- changing rate and burst


@pytest.mark.virtual_time
async def test_raising_the_rate_reschedules_waiters() -> None:
    bucket = TokenBucket(1, 10)
    await bucket.acquire(10)
    waiter = asyncio.create_task(bucket.acquire(4))  # 4 s at 1/s
    await asyncio.sleep(1)  # 1 token so far
    bucket.rate = "3/s"  # 3 more tokens at 3/s: 1 s more
    await waiter
    assert now() == pytest.approx(2.0)
    assert bucket.rate == 3


@pytest.mark.virtual_time
async def test_lowering_burst_caps_tokens_and_fails_waiters_that_no_longer_fit() -> None:
    bucket = TokenBucket(1, 10)
    await bucket.acquire(10)
    too_big = asyncio.create_task(bucket.acquire(8))
    await settle()
    behind = asyncio.create_task(bucket.acquire(2))
    await asyncio.sleep(3)
    bucket.burst = 5
    with pytest.raises(ValueError, match="cost exceeds the bucket's burst"):
        await too_big
    await behind  # had 3 tokens already: goes at once
    assert now() == pytest.approx(3.0)
    await asyncio.sleep(100)
    assert bucket.statistics().tokens == 5


# ---------------------------------------------------------------- misc


@pytest.mark.virtual_time
async def test_try_acquire_statistics_and_repr() -> None:
    bucket = TokenBucket("2/s", 2, name="api")
    assert bucket.try_acquire()
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await settle()
    s = bucket.statistics()
    assert s == poolkit.TokenBucketStatistics(
        name="api",
        rate=2.0,
        burst=2.0,
        tokens=0.0,
        waiting=1,
        granted_total=2,
        cost_granted_total=2.0,
    )
    assert repr(bucket) == "<TokenBucket 'api' rate=2/s burst=2 tokens=0.00 waiting=1>"
    await asyncio.sleep(0.25)
    assert not bucket.try_acquire(), "try_acquire jumped the queue"
    await waiter
    async with bucket:
        pass
    assert bucket.statistics().granted_total == 4


def test_injected_clock() -> None:
    t = [100.0]
    bucket = TokenBucket(2, 2, clock=lambda: t[0])
    assert bucket.try_acquire(2)
    assert not bucket.try_acquire(1)
    t[0] += 0.5
    assert bucket.try_acquire(1)
    assert not bucket.try_acquire(0.5)
    t[0] -= 10  # a clock that runs backwards never refills (nor un-fills) the bucket
    assert not bucket.try_acquire(0.5)
    with pytest.raises(TypeError, match="clock must be a callable"):
        TokenBucket(1, clock=5)  # type: ignore[arg-type]


def test_threads_and_tasks_share_one_bucket() -> None:
    bucket = TokenBucket(200, 20)
    stamps: list[float] = []
    guard = threading.Lock()

    def record() -> None:
        with guard:
            stamps.append(time.monotonic())

    def thread_worker() -> None:
        for _ in range(25):
            bucket.acquire_blocking()
            record()

    async def task_worker() -> None:
        for _ in range(25):
            await bucket.acquire()
            record()

    async def main() -> None:
        await asyncio.gather(*(task_worker() for _ in range(3)))

    threads = [threading.Thread(target=thread_worker) for _ in range(3)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    assert len(stamps) == 150
    # 150 tokens at 200/s with a burst of 20: at least (150 - 20) / 200 s = 0.65 s.
    assert elapsed >= 0.64
    stamps.sort()
    for i in range(len(stamps)):  # no window ever got more than rate * w + burst (+ 1 for clocks)
        for j in range(i, len(stamps)):
            assert j - i + 1 <= 200 * (stamps[j] - stamps[i]) + 20 + 1
    assert bucket.statistics().granted_total == 150


def test_acquire_blocking_fails_fast_and_refuses_in_loop() -> None:
    bucket = TokenBucket(1, 1)
    bucket.acquire_blocking()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        bucket.acquire_blocking(timeout=0.5)  # needs 1 s: fails at once
    assert time.monotonic() - t0 < 0.2

    async def in_loop() -> None:
        with pytest.raises(RuntimeError, match="would block the event loop"):
            bucket.acquire_blocking()

    asyncio.run(in_loop())


# ---------------------------------------------------------------- the window bound


@settings(max_examples=120, deadline=None)
@given(
    rate=st.sampled_from([1.0, 3.0, 10.0, 0.5]),
    burst=st.sampled_from([1.0, 2.0, 5.0]),
    arrivals=st.lists(
        st.tuples(
            st.floats(0, 1),  # when the task starts
            st.floats(0, 1),  # its cost, as a fraction of burst
            st.sampled_from(["plain", "cancel", "timeout"]),
            st.floats(0, 2),  # when a "cancel" task is cancelled, after it starts
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_no_window_grants_more_than_rate_times_w_plus_burst(
    rate: float, burst: float, arrivals: list[tuple[float, float, str, float]]
) -> None:
    grants: list[tuple[float, float]] = []

    async def main() -> None:
        bucket = TokenBucket(rate, burst)

        async def one(start: float, fraction: float, mode: str, _: float) -> None:
            await asyncio.sleep(start)
            cost = round(fraction * burst, 3)
            try:
                if mode == "timeout":
                    await bucket.acquire(cost, timeout=1.0)
                else:
                    await bucket.acquire(cost)
            except TimeoutError:
                return
            grants.append((now(), cost))

        tasks = [asyncio.create_task(one(*a)) for a in arrivals]
        for (start, _, mode, after), task in zip(arrivals, tasks, strict=True):
            if mode == "cancel":
                asyncio.get_running_loop().call_at(start + after, task.cancel)
        # Liveness: on virtual time a generous deadline costs nothing, and a waiter that is never
        # woken shows up as a failure here rather than as a hang.
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10_000)
        s = bucket.statistics()
        assert s.granted_total == len(grants)
        assert s.cost_granted_total == pytest.approx(sum(c for _, c in grants))
        assert s.waiting == 0

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())
    grants.sort()
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            total += grants[j][1]
            window = grants[j][0] - grants[i][0]
            assert total <= rate * window + burst + 1e-6, (i, j, grants)


# ---------------------------------------------------------------- regressions from review


def test_waiter_on_a_closed_loop_does_not_block_the_bucket() -> None:
    bucket = TokenBucket(10, 1)
    bucket.try_acquire()
    loop = asyncio.new_event_loop()
    task = loop.create_task(bucket.acquire())
    for _ in range(3):
        loop.call_soon(loop.stop)
        loop.run_forever()
    loop.close()  # the waiter at the head will never run again
    bucket.acquire_blocking(timeout=2)
    assert bucket.statistics().waiting == 0
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose


async def test_burst_lowered_between_check_and_queue_fails_the_acquire() -> None:
    import poolkit._ratelimit as rl

    bucket = TokenBucket(100, 10)
    assert bucket.try_acquire(10)
    real = rl._LOCK
    fired = []

    class LowerFirst:
        def __enter__(self) -> None:
            if not fired:
                fired.append(1)
                rl._LOCK = real
                t = threading.Thread(target=lambda: setattr(bucket, "burst", 4))
                t.start()
                t.join()
            real.acquire()

        def __exit__(self, *exc: object) -> None:
            real.release()

        def acquire(self, *args: Any) -> bool:
            self.__enter__()
            return True

        def release(self) -> None:
            real.release()

    rl._LOCK = LowerFirst()  # type: ignore[assignment]
    try:
        with pytest.raises(ValueError, match="cost 8 exceeds the bucket's burst 4"):
            await bucket.acquire(8)  # 8 <= 10 when first checked; 4 by the time it would queue
    finally:
        rl._LOCK = real
    assert bucket.statistics().waiting == 0


@pytest.mark.parametrize("start", [1e6, 1e9])
def test_virtual_time_far_from_zero_neither_spins_nor_stalls(start: float) -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(333.33, 1)
        t0 = loop.time()
        for _ in range(100):
            await asyncio.wait_for(bucket.acquire(), 10)
        await asyncio.sleep(0.1)
        return loop.time() - t0

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start=start)) as runner:
        elapsed = runner.run(main())
    assert elapsed == pytest.approx(99 / 333.33 + 0.1, rel=1e-3)


@pytest.mark.virtual_time
async def test_reading_statistics_from_another_thread_changes_nothing() -> None:
    # The debug endpoint reads statistics from its own thread, whose clock is not the loop's.
    loop = asyncio.get_running_loop()
    bucket = TokenBucket(1, 1)
    await bucket.acquire()
    seen: list[float] = []
    reader = threading.Thread(target=lambda: seen.append(bucket.statistics().tokens))
    reader.start()
    reader.join()
    assert len(seen) == 1
    start = loop.time()
    for _ in range(3):
        await bucket.acquire()
    assert loop.time() - start == pytest.approx(3.0)  # one a second, as if nobody had looked
