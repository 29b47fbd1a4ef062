"""poolkit.TokenBucket: exact timing on virtual time, FIFO across costs, cancellation, threads."""

from __future__ import annotations

import asyncio
import gc
import math
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poolkit
from poolkit import BudgetExhausted, TokenBucket, parse_rate
from poolkit.testing import VirtualTimeLoop
from tests import conftest
from tests.conftest import run_on


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def now() -> float:
    return asyncio.get_running_loop().time()


def run_lightly(coro: Coroutine[Any, Any, Any], *, start: float = 0.0) -> Any:
    """Run ``coro`` on a fresh virtual-time loop (eager tasks under ``--eager-tasks``): for
    hypothesis examples, without ``run_on``'s garbage collection after each one."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start=start)) as runner:
        if conftest.EAGER:
            runner.get_loop().set_task_factory(asyncio.eager_task_factory)
        return runner.run(coro)


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
        (-1, ValueError),
        (-math.inf, ValueError),
        (math.nan, ValueError),
        ("10/fortnight", ValueError),
        ("ten/s", ValueError),
        ("10", ValueError),
        ("-1/s", ValueError),
        ("1/0s", ValueError),
        ("1/0ms", ValueError),
        ("infinite", ValueError),
        ("inf/s", ValueError),
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
        reserved=0.0,
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
    import poolkit._primitives._ratelimit as rl

    bucket = TokenBucket(100, 10)
    assert bucket.try_acquire(10)
    real = rl._LOCK
    fired: list[int] = []

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


# ---------------------------------------------------------------- float time far from zero (4a)

# Realistic monotonic readings: zero, a day and a half of uptime, five weeks.
OFFSETS = [0.0, 123456.789, 3.2e6 + 0.321]


@pytest.mark.parametrize("start", OFFSETS)
def test_a_token_due_every_tenth_of_a_second_is_there_every_tenth(start: float) -> None:
    # The case: at 10/s with a burst of 1, try_acquire every 0.1 s was refused at the
    # 5th step (a refill capped at 1.0000000000000004, then 0.9999999999999998 carried over).
    async def main() -> int:
        bucket = TokenBucket(10, 1)
        for k in range(1000):
            if k:
                await asyncio.sleep(0.1)
            if not bucket.try_acquire():
                return k
        return 1000

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start=start)) as runner:
        assert runner.run(main()) == 1000


@pytest.mark.parametrize("start", OFFSETS)
@pytest.mark.parametrize("rate", [10.0, 3.0, 1000.0, 0.7692307692307693])
def test_a_waiting_acquire_and_try_acquire_agree_at_every_instant(
    start: float, rate: float
) -> None:
    # A waiter is granted when its timer fires; at that very instant a twin bucket with the same
    # history must grant try_acquire too, and show the token in its statistics.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        waited = TokenBucket(rate, 1)
        twin = TokenBucket(rate, 1)
        for k in range(200):
            await waited.acquire()
            assert loop.time() - start == pytest.approx(k / rate, rel=1e-9, abs=1e-6)
            assert twin.statistics().tokens >= 1 - 1e-6, k
            assert twin.try_acquire(), f"step {k}: the waiter got a token that try_acquire did not"

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start=start)) as runner:
        runner.run(main())


@settings(max_examples=200, deadline=None)
@given(
    offset=st.sampled_from(OFFSETS),
    rate=st.sampled_from([10.0, 3.0, 100.0, 1000.0, 0.7692307692307693]),
    burst=st.sampled_from([1.0, 2.0, 3.0]),
    steps=st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([1.0, 2.0, 3.0])), min_size=1, max_size=60
    ),
)
def test_decisions_agree_with_exact_arithmetic_far_from_zero(
    offset: float, rate: float, burst: float, steps: list[tuple[int, float]]
) -> None:
    # The clock moves in steps of half a token's refill time, computed as a float reading
    # offset + n * step (one rounding, as a real clock's); the exact bucket is kept in
    # Fractions.  try_acquire, acquire(timeout=0) on a twin, and statistics().tokens must all
    # agree with it at every step.
    from fractions import Fraction

    clock = [offset]
    a = TokenBucket(rate, burst, clock=lambda: clock[0])
    b = TokenBucket(rate, burst, clock=lambda: clock[0])
    exact = Fraction(burst)
    halves = 0

    async def main() -> None:
        nonlocal exact, halves
        for i, (k, cost) in enumerate(steps):
            halves += k
            clock[0] = offset + halves / (2 * rate)
            exact = min(Fraction(burst), exact + Fraction(k, 2))
            due = cost <= burst and exact >= cost
            tokens = a.statistics().tokens
            assert tokens == pytest.approx(float(exact), abs=1e-6), i
            if cost > burst:
                continue
            got_a = a.try_acquire(cost)
            try:
                await b.acquire(cost, timeout=0)
                got_b = True
            except TimeoutError:
                got_b = False
            assert got_a is got_b is due, (i, tokens, float(exact), cost)
            assert (tokens >= cost - cost * 1e-6) is due
            if due:
                exact -= Fraction(cost)

    run_lightly(main())  # (the buckets use the test's clock, not the loop's)


def test_a_grant_short_by_float_noise_leaves_exactly_zero() -> None:
    t0 = 123456.789
    clock = [t0]
    bucket = TokenBucket(10, 1, clock=lambda: clock[0])
    assert bucket.try_acquire()
    clock[0] = t0 + 0.1  # 0.10000000000582077 s later
    assert bucket.try_acquire()
    clock[0] = t0 + 0.2  # 0.09999999999126885 s later: 0.9999999999 of a token
    assert bucket.statistics().tokens == pytest.approx(1.0)
    assert bucket.try_acquire()
    assert bucket.statistics().tokens == 0.0  # not -8.7e-11, carried into the next step
    clock[0] = t0 + 0.3
    assert bucket.statistics().tokens == pytest.approx(1.0)


# ---------------------------------------------------------------- stranded waiters (4b)


@contextmanager
def timed_without_gc() -> Iterator[list[float]]:
    """Time the block with the garbage collector paused (collected first): the stall measured
    must be poolkit's, not a collection of the heap the other tests left."""
    gc.collect()
    gc.disable()
    elapsed: list[float] = []
    t0 = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed.append(time.perf_counter() - t0)
        gc.enable()


class StillLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock stands still, for :func:`strand`: no timer comes due while
    the waiters are being stranded, however slowly a loaded machine runs the loop.  (One that did
    would wake its task, and closing the loop would drop that wake-up: the task, referenced by
    nothing else, is then destroyed and withdraws, which is right, but leaves nothing stranded.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._still = super().time()

    def time(self) -> float:
        return self._still


def strand(*makes: Any) -> None:
    """Start a task for each ``make()`` on a new loop of this thread, let each run until it
    waits, then close the loop: they can never run again.  No reference to them is kept."""
    loop = StillLoop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": expected
    for make in makes:
        asyncio.ensure_future(make(), loop=loop)  # noqa: RUF006  (stranded on purpose)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()


class HeldClock:
    """``time.monotonic()``, held still until :meth:`go`: while waiters of a fast bucket are
    being stranded (real time, a loop of their own), none of them gets a token."""

    def __init__(self) -> None:
        self.held: float | None = time.monotonic()

    def __call__(self) -> float:
        return time.monotonic() if self.held is None else self.held

    def go(self) -> None:
        self.held = None


def usable(kind: str) -> None:
    """Skip a test that runs a loop of ``kind`` itself if that loop cannot run eager tasks."""
    if kind == "uvloop" and conftest.EAGER and conftest.UVLOOP_EAGER_PROBLEM:
        pytest.skip(conftest.UVLOOP_EAGER_PROBLEM)


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_stranded_waiters_do_not_stall_a_later_acquire(kind: str) -> None:
    # Each stranded waiter skipped used to destroy its task under the shared lock, whose clean-up
    # then waited 0.1 s for that lock: 9 of them stalled the next acquire by ~0.9 s.  (Stranded
    # on this thread, as the later acquire: waking a task of a closed loop in its own thread is
    # what destroyed it on the spot.)
    usable(kind)
    clock = HeldClock()
    bucket = TokenBucket(1000, 1, clock=clock)
    assert bucket.try_acquire()
    strand(*[bucket.acquire] * 9)
    assert (len(bucket._queue), bucket.statistics().waiting) == (9, 0)  # queued, not counted
    clock.go()

    async def main() -> None:
        with timed_without_gc() as elapsed:
            await bucket.acquire()
        assert elapsed[0] < 0.05, elapsed
        # Later waiters are served, in order, and nothing is left queued.
        order: list[int] = []

        async def take(i: int) -> None:
            await bucket.acquire()
            order.append(i)

        await asyncio.gather(*(take(i) for i in range(5)))
        assert order == list(range(5))

    run_on(kind, main())
    s = bucket.statistics()
    assert (s.waiting, s.granted_total) == (0, 7)


def test_stranded_waiters_do_not_stall_a_thread() -> None:
    clock = HeldClock()
    bucket = TokenBucket(1000, 1, clock=clock)
    assert bucket.try_acquire()
    strand(*[bucket.acquire] * 9)
    assert len(bucket._queue) == 9
    clock.go()
    with timed_without_gc() as elapsed:
        bucket.acquire_blocking()
    assert elapsed[0] < 0.05, elapsed
    assert bucket.statistics().waiting == 0


@pytest.mark.parametrize("change", ["rate", "burst", "cancel"])
def test_stranded_waiters_do_not_stall_a_change(change: str) -> None:
    # Assigning rate or burst, or cancelling a reservation, wakes the first in line; each
    # stranded one used to be destroyed there, under the lock, for 0.1 s each.
    bucket = TokenBucket(1, 2)
    assert bucket.try_acquire(2)
    r = bucket.reserve(1)
    strand(*[bucket.acquire] * 9)
    with timed_without_gc() as elapsed:
        if change == "rate":
            bucket.rate = 2
        elif change == "burst":
            bucket.burst = 3
        else:
            assert r.cancel() == 1
    assert elapsed[0] < 0.05, elapsed
    assert bucket.statistics().waiting == 0


async def test_a_waiter_closed_while_the_lock_is_held_never_waits_for_it() -> None:
    # The garbage collector may close a waiting coroutine in a thread that holds the lock.  Its
    # clean-up used to wait 0.1 s for the lock, give up, and leave the waiter queued for good.
    import poolkit._primitives._ratelimit as rl

    bucket = TokenBucket(1, 1)
    assert bucket.try_acquire()
    coro = bucket.acquire()
    coro.send(None)  # runs until it waits for its token
    assert bucket.statistics().waiting == 1
    with timed_without_gc() as elapsed, rl.LOCK:
        coro.close()
    assert elapsed[0] < 0.05, elapsed
    deadline = time.monotonic() + 2.0  # the withdrawal runs once the lock is free
    while bucket.statistics().waiting and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.001)  # (a thread of locked_soon's does it: nothing to await)
    assert bucket.statistics().waiting == 0
    assert bucket.statistics().granted_total == 1


# ---------------------------------------------------------------- rates: ms, inf, 0


@pytest.mark.parametrize(
    ("spec", "per_second"),
    [
        ("1/100ms", 10.0),
        ("5/ms", 5000.0),
        ("2 / 500 milliseconds", 4.0),
        ("1/250msec", 4.0),
        ("3/1millisecond", 3000.0),
        ("inf", math.inf),
        (" Infinity ", math.inf),
        ("INF", math.inf),
        (math.inf, math.inf),
        (0, 0.0),
        ("0/s", 0.0),
        ("0/100ms", 0.0),
    ],
)
def test_parse_rate_milliseconds_infinity_and_zero(spec: Any, per_second: float) -> None:
    assert parse_rate(spec) == pytest.approx(per_second)
    assert TokenBucket(spec, 1).rate == pytest.approx(per_second)


def test_rate_error_lists_every_unit() -> None:
    with pytest.raises(ValueError, match=r"'1/100ms' or 'inf' \(units: ms, s, m or min, h or hr"):
        parse_rate("10/fortnight", "--rate")
    with pytest.raises(ValueError, match=r"--rate must .* >= 0 .* got -2"):
        parse_rate(-2, "--rate")


@pytest.mark.virtual_time
async def test_an_infinite_rate_is_no_limit() -> None:
    bucket = TokenBucket(math.inf)
    assert bucket.burst == 1  # the default; it only matters once a finite rate is assigned
    for _ in range(100):
        await bucket.acquire(50)  # above burst: ignored, as in Go
    assert now() == 0
    assert bucket.try_acquire(1e9)
    await bucket.acquire(7, timeout=0)
    bucket.acquire_blocking(3)
    r = bucket.reserve(1000)
    assert (r.ok, r.delay) == (True, 0.0)
    assert r.cancel() == 0.0  # nothing to give back to an unlimited bucket
    bucket.burst = 4  # remembered, and still unlimited
    assert bucket.try_acquire(5)
    s = bucket.statistics()
    assert (s.rate, s.burst, s.tokens, s.granted_total) == (math.inf, 4, math.inf, 105)
    assert repr(bucket) == "<TokenBucket rate=inf/s burst=4 tokens=inf waiting=0>"
    assert TokenBucket("inf", 5).burst == 5


@pytest.mark.virtual_time
async def test_rate_set_to_inf_lets_every_waiter_go_at_once_then_back_to_a_full_bucket() -> None:
    bucket = TokenBucket(1, 2)
    await bucket.acquire(2)
    done: list[tuple[int, float]] = []

    async def take(i: int, cost: float) -> None:
        await bucket.acquire(cost)
        done.append((i, now()))

    tasks = []
    for i, cost in enumerate([2, 1, 2, 1, 2]):
        tasks.append(asyncio.create_task(take(i, cost)))
        await settle(1)
    await asyncio.sleep(0.5)
    assert done == []
    bucket.rate = math.inf
    await asyncio.gather(*tasks)
    assert done == [(i, 0.5) for i in range(5)]  # all of them, in order, at once
    bucket.rate = "1/s"  # back: a full bucket, burst counts again
    assert bucket.statistics().tokens == 2
    await bucket.acquire(2)
    assert now() == 0.5
    await bucket.acquire(1)
    assert now() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="exceeds the bucket's burst 2"):
        await bucket.acquire(3)


@pytest.mark.virtual_time
async def test_rate_zero_is_a_fixed_budget_and_a_spent_one_fails_at_once() -> None:
    bucket = TokenBucket("0/s", 5, name="quota")
    for _ in range(4):
        await bucket.acquire()
    with pytest.raises(BudgetExhausted, match=r"'quota': rate 0 .* cost 2 with 1 tokens left"):
        await bucket.acquire(2)
    with pytest.raises(BudgetExhausted):
        await bucket.acquire(2, timeout=10)  # the budget, not the timeout, is the reason
    assert not bucket.try_acquire(2)
    refused = bucket.reserve(2)
    assert (refused.ok, refused.delay, refused.time) == (False, math.inf, math.inf)
    await asyncio.sleep(1000)  # never refilled
    assert now() == 1000
    last = bucket.reserve(1)
    assert (last.ok, last.delay) == (True, 0.0)
    with pytest.raises(BudgetExhausted):
        await bucket.acquire(0.5)
    await bucket.acquire(0)  # nothing costs nothing
    s = bucket.statistics()
    assert (s.rate, s.tokens, s.granted_total, s.cost_granted_total) == (0, 0, 6, 5)
    assert isinstance(BudgetExhausted("x"), poolkit.PoolkitError)


def test_a_fixed_budget_in_fractions_is_spent_to_the_last_fraction() -> None:
    # 1 - 0.1 nine times is 0.09999999999999987: the tolerance lets the tenth tenth through.
    bucket = TokenBucket(0, 1)
    assert all(bucket.try_acquire(0.1) for _ in range(10))
    assert not bucket.try_acquire(0.1)
    with pytest.raises(BudgetExhausted):
        bucket.acquire_blocking(0.1)


@pytest.mark.virtual_time
async def test_waiters_fail_when_the_rate_is_set_to_zero_and_come_back_with_a_rate() -> None:
    bucket = TokenBucket(1, 5)
    await bucket.acquire(5)
    first = asyncio.create_task(bucket.acquire(2))
    await settle(1)
    second = asyncio.create_task(bucket.acquire(2))
    third = asyncio.create_task(bucket.acquire(1))
    fourth = asyncio.create_task(bucket.acquire(1))
    await asyncio.sleep(3.5)  # first served at 2; 1.5 tokens left
    await first
    bucket.rate = 0
    with pytest.raises(BudgetExhausted, match=r"cost 2 with 1\.5 tokens left: the tokens would"):
        await second
    await third  # served in turn from what is left,
    with pytest.raises(BudgetExhausted, match=r"cost 1 with 0\.5 tokens left"):
        await fourth  # as far as it goes
    assert now() == 3.5
    assert bucket.statistics().waiting == 0
    bucket.rate = "2/s"
    await bucket.acquire(1)
    assert now() == 3.75


def test_bad_reserve_arguments() -> None:
    bucket = TokenBucket(10, 5)
    with pytest.raises(ValueError, match="cost 6 exceeds the bucket's burst 5"):
        bucket.reserve(6)
    with pytest.raises(ValueError, match="cost must be a finite number >= 0, got -1"):
        bucket.reserve(-1)
    with pytest.raises(TypeError, match="cost must be a number of tokens, got '1'"):
        bucket.reserve("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_delay must be >= 0 seconds or None, got -1"):
        bucket.reserve(1, max_delay=-1)
    with pytest.raises(TypeError, match="max_delay must be a number of seconds or None"):
        bucket.reserve(1, max_delay="1")  # type: ignore[arg-type]
    assert bucket.statistics().tokens == 5


# ---------------------------------------------------------------- reservations


@pytest.mark.virtual_time
async def test_reserve_books_tokens_for_later_and_counts_them_at_their_time() -> None:
    bucket = TokenBucket(2, 2)
    now_ = bucket.reserve(2)
    assert (now_.ok, now_.delay, now_.time, now_.cost) == (True, 0.0, 0.0, 2)
    later = bucket.reserve(1)
    assert (later.delay, later.time) == (0.5, 0.5)
    assert repr(later) == "<Reservation cost=1 time=0.500000 delay=0.500000 pending>"
    s = bucket.statistics()
    assert (s.tokens, s.reserved, s.granted_total) == (0, 1, 1)
    assert repr(bucket) == "<TokenBucket rate=2/s burst=2 tokens=0.00 waiting=0 reserved=1>"
    assert not bucket.try_acquire(0.5)  # the half token in by 0.25 s will be the reservation's
    await asyncio.sleep(0.5)
    s = bucket.statistics()
    assert (s.tokens, s.reserved, s.granted_total, s.cost_granted_total) == (0, 0, 2, 3)
    assert later.cancel() == 0.0  # too late: its time has come
    assert not later.cancelled
    await bucket.acquire()
    assert now() == 1.0


@pytest.mark.virtual_time
async def test_a_reservation_does_not_overtake_the_waiters_queued_before_it() -> None:
    bucket = TokenBucket(1, 1)
    await bucket.acquire()
    done: dict[str, float] = {}

    async def take(name: str, cost: float) -> None:
        await bucket.acquire(cost)
        done[name] = now()

    first = asyncio.create_task(take("first", 1))
    await settle(1)
    r = bucket.reserve(1)
    assert r.time == 2.0  # after "first", which is due at 1
    behind = asyncio.create_task(take("behind", 1))  # queued after the reservation was made
    await asyncio.gather(first, behind)
    assert done == {"first": 1.0, "behind": 3.0}  # the reservation took its token at 2


@pytest.mark.virtual_time
async def test_a_later_acquire_may_use_tokens_a_reservation_does_not_need() -> None:
    bucket = TokenBucket(1, 2)
    await bucket.acquire(2)
    ahead = asyncio.create_task(bucket.acquire(2))  # due at 2
    await settle(1)
    r = bucket.reserve(1)
    assert r.time == 3.0
    await asyncio.sleep(0.5)
    ahead.cancel()  # the 2 tokens it would have taken are free; r still needs 1 at 3
    with pytest.raises(asyncio.CancelledError):
        await ahead
    await bucket.acquire(1)
    assert now() == 1.0  # not after the reservation: it does not need this token
    assert not bucket.try_acquire(0.5)  # the next token is free only once it has come in
    await bucket.acquire(1)
    assert now() == 2.0  # r's token comes in between 2 and 3
    await bucket.acquire(1)
    assert now() == 4.0  # from 2 on, what comes in is r's until 3: this one waits for r
    assert bucket.statistics().granted_total == 5  # 2, 1 at 1, 1 at 2, r at 3, 1 at 4


@pytest.mark.virtual_time
async def test_cancelling_a_reservation_gives_its_tokens_to_the_next_waiter() -> None:
    bucket = TokenBucket(1, 1)
    await bucket.acquire()
    r = bucket.reserve(1)
    assert r.time == 1.0
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.5)
    assert r.cancel() == 1.0
    assert r.cancelled
    assert r.cancel() == 0.0  # once
    assert repr(r) == "<Reservation cost=1 time=1.000000 delay=1.000000 cancelled>"
    await waiter
    assert now() == 1.0  # r's token, not the one after it
    assert bucket.statistics().granted_total == 2


@pytest.mark.virtual_time
async def test_max_delay_and_a_timeout_count_the_reservations() -> None:
    bucket = TokenBucket(1, 1)
    assert bucket.try_acquire()
    assert not bucket.reserve(1, max_delay=0.5).ok
    r = bucket.reserve(1, max_delay=1)
    assert r.ok
    with pytest.raises(TimeoutError, match=r"cannot get the tokens within 1\.5 s"):
        await bucket.acquire(timeout=1.5)  # 2 s: after the reservation's token
    await bucket.acquire(timeout=2)
    assert now() == 2.0


@pytest.mark.virtual_time
async def test_a_reservation_keeps_its_time_when_the_rate_is_lowered() -> None:
    bucket = TokenBucket(2, 2)
    await bucket.acquire(2)
    r = bucket.reserve(2)
    assert r.time == 1.0
    bucket.rate = 1  # it was told 1 s; it still takes its tokens then (as in Go)
    await asyncio.sleep(1)
    s = bucket.statistics()
    assert (s.reserved, s.granted_total) == (0, 2)
    assert s.tokens == pytest.approx(-1.0)  # 1 token came in at the new rate: 1 owed
    await bucket.acquire(1)
    assert now() == 3.0


@pytest.mark.virtual_time
async def test_per_key_keeps_a_bucket_with_a_reservation_not_yet_due() -> None:
    made: list[TokenBucket] = []

    def factory() -> TokenBucket:
        made.append(TokenBucket(1, 2))
        return made[-1]

    per_key: poolkit.PerKey[str, TokenBucket] = poolkit.PerKey(factory)
    await per_key.acquire("k", 2)
    bucket = made[0]
    ahead = asyncio.create_task(bucket.acquire(2))
    await settle(1)
    r = bucket.reserve(2)
    assert r.time == 4.0
    ahead.cancel()
    with pytest.raises(asyncio.CancelledError):
        await ahead
    await asyncio.sleep(3)  # full again at 2, but both are promised at 4 (one can go now)
    assert bucket.statistics().tokens == 1
    assert per_key.sweep() == 0, "forgetting it would hand the reserved tokens to anyone"
    await asyncio.sleep(2)  # r took its 2 at 4; one has come in since
    assert per_key.sweep() == 0
    await asyncio.sleep(1)  # full, nothing booked: a new bucket would be the same
    assert per_key.sweep() == 1


# ---------------------------------------------------------------- the bound, with reservations


@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1.0, 3.0, 10.0, 0.5]),
    burst=st.sampled_from([1.0, 2.0, 5.0]),
    ops=st.lists(
        st.tuples(
            st.floats(0, 2),  # when the task starts
            st.sampled_from(
                ["acquire", "cancel", "timeout", "try", "reserve", "reserve+cancel", "reserve<"]
            ),
            st.floats(0, 1),  # its cost, as a fraction of burst
            st.floats(0, 3),  # when to cancel (after start), or max_delay
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_the_window_bound_holds_counting_reservations_and_they_keep_fifo(
    rate: float, burst: float, ops: list[tuple[float, str, float, float]]
) -> None:
    grants: list[tuple[float, float]] = []
    granted_at: dict[int, float] = {}
    queued: set[int] = set()
    fifo: list[tuple[float, set[int]]] = []  # (a reservation's time, the waiters queued then)
    latest = [0.0]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(rate, burst)

        async def one(i: int, start: float, kind: str, fraction: float, extra: float) -> None:
            await asyncio.sleep(start)
            cost = round(fraction * burst, 3)
            if kind in ("acquire", "cancel", "timeout"):
                queued.add(i)
                try:
                    await bucket.acquire(cost, timeout=1.0 if kind == "timeout" else None)
                except TimeoutError:
                    return
                finally:
                    queued.discard(i)
                granted_at[i] = now()
                grants.append((now(), cost))
            elif kind == "try":
                if bucket.try_acquire(cost):
                    grants.append((now(), cost))
            else:
                ahead = set(queued)
                r = bucket.reserve(cost, max_delay=extra if kind == "reserve<" else None)
                if not r.ok:
                    assert kind == "reserve<" and r.delay == math.inf
                    return
                assert r.time == pytest.approx(now() + r.delay)
                assert kind != "reserve<" or r.delay <= extra + 1e-9
                fifo.append((r.time, ahead))
                latest[0] = max(latest[0], r.time)
                if kind == "reserve+cancel":
                    await asyncio.sleep(extra)
                    back = r.cancel()
                    if r.cancelled:  # before its time: every token back
                        assert (back, now() < r.time) == (cost, True)
                        return
                    assert (back, now() >= r.time) == (0.0, True)  # too late: spent
                grants.append((r.time, cost))

        tasks = [asyncio.create_task(one(i, *op)) for i, op in enumerate(ops)]
        for (start, kind, _, after), task in zip(ops, tasks, strict=True):
            if kind == "cancel":
                loop.call_at(start + after, task.cancel)
        # Liveness: on virtual time a generous deadline costs nothing, and a waiter that is never
        # woken shows up as a failure here rather than as a hang.
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10_000)
        for result in results:  # the checks made inside the tasks
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                raise result
        await asyncio.sleep(max(0.0, latest[0] - now()) + 1)  # every reservation is due
        s = bucket.statistics()
        assert s.granted_total == len(grants)
        assert s.cost_granted_total == pytest.approx(sum(c for _, c in grants))
        assert (s.waiting, s.reserved) == (0, 0)

    run_lightly(main())
    grants.sort()
    for i in range(len(grants)):
        total = 0.0
        for j in range(i, len(grants)):
            total += grants[j][1]
            bound = rate * (grants[j][0] - grants[i][0]) + burst
            assert total <= bound * (1 + 1e-6) + 1e-9, (i, j, grants)
    for when, ahead in fifo:  # waiters queued before a reservation were served before its time
        for i in ahead:
            if i in granted_at:
                assert granted_at[i] <= when + 1e-9, (when, i, granted_at)


# ---------------------------------------------------------------- a waiter stranded in the queue


class Clock:
    """A clock the test moves by hand; it records whether the buckets' lock was held when read."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t
        self.read_under_lock = False

    def __call__(self) -> float:
        if poolkit._primitives._ratelimit.LOCK.locked():
            self.read_under_lock = True
        return self.t


def strand_open(make: Any) -> asyncio.AbstractEventLoop:
    """Start ``make()`` on a new loop and let it run until it waits; the loop stays open (the
    caller closes it, stranding the task, when it likes)."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": expected
    asyncio.ensure_future(make(), loop=loop)  # noqa: RUF006  (stranded on purpose)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    return loop


def test_a_thread_behind_a_head_stranded_while_it_waited_is_served() -> None:
    # The head sleeps on its loop's timer; a thread queues behind it and waits for its nudge;
    # then the head's loop is closed, so the nudge never comes.  The thread waited for ever
    # though the bucket refilled.
    bucket = TokenBucket(100, 1)
    assert bucket.try_acquire()
    loop = strand_open(bucket.acquire)
    served = threading.Event()

    def second() -> None:
        bucket.acquire_blocking(timeout=30)
        served.set()

    t = threading.Thread(target=second)
    t.start()
    deadline = time.monotonic() + 5
    while len(bucket._queue) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    time.sleep(0.05)  # the head's token is due by now: it would have been served
    loop.close()
    assert served.wait(3), "the waiter behind a stranded head was never woken"
    t.join()
    assert bucket.statistics().waiting == 0


async def test_a_task_behind_a_head_stranded_while_it_waited_is_served() -> None:
    bucket = TokenBucket(100, 1)
    assert bucket.try_acquire()
    stranded = await asyncio.to_thread(strand_open, bucket.acquire)  # (a loop in another thread)
    second = asyncio.create_task(bucket.acquire())
    while len(bucket._queue) < 2:  # noqa: ASYNC110
        await asyncio.sleep(0.001)
    await asyncio.sleep(0.05)
    stranded.close()
    await asyncio.wait_for(second, 3)  # never, before
    assert bucket.statistics().waiting == 0


def test_a_stranded_waiter_in_the_queue_holds_up_nobody() -> None:
    clock = Clock()
    bucket = TokenBucket(1, 10, clock=clock)
    assert bucket.try_acquire(10)
    strand(lambda: bucket.acquire(10))  # queued for 10 s, and it will never run
    clock.t = 100.0  # the bucket is full again
    s = bucket.statistics()
    assert (s.tokens, s.waiting) == (10.0, 0)
    assert bucket._is_idle()  # so a PerKey may forget it
    assert bucket.try_acquire(1)  # it was refused for ever

    async def main() -> None:
        await bucket.acquire(1, timeout=0.5)  # TimeoutError at once, counting the dead one

    run_lightly(main(), start=100.0)
    r = bucket.reserve(1)
    assert (r.ok, r.delay) == (True, 0.0)  # it was booked 1 s late, behind the dead one
    assert bucket.statistics().granted_total == 4


def test_a_stranded_waiter_in_the_middle_does_not_fail_a_timeout_at_once() -> None:
    clock = Clock()
    bucket = TokenBucket(1, 10, clock=clock)
    assert bucket.try_acquire(10)
    head = threading.Thread(target=bucket.acquire_blocking, args=(1,))  # live: due in 1 s
    head.start()
    deadline = time.monotonic() + 5
    while not bucket._queue:
        assert time.monotonic() < deadline
        time.sleep(0.001)
    strand(lambda: bucket.acquire(5))  # behind it, would need 5 s, and will never run

    async def main() -> None:
        # 1 s for the head, 1 s for this one: 2.5 s is enough.  The dead waiter's 5 s were
        # counted, and the timeout failed at once.
        late = asyncio.ensure_future(bucket.acquire(1, timeout=2.5))
        await asyncio.sleep(0.1)
        assert not late.done()
        late.cancel()
        with pytest.raises(asyncio.CancelledError):
            await late

    run_lightly(main())
    clock.t = 100.0
    bucket.rate = 1  # (wakes the head at once, to read the clock again)
    head.join(5)
    assert not head.is_alive()
    assert bucket.statistics().waiting == 0


def test_reserve_with_max_delay_at_rate_zero_behind_a_waiter() -> None:
    # cost * tolerance / rate, at rate 0: ZeroDivisionError.
    clock = Clock(100.0)
    budget, paced = TokenBucket(0, 10, clock=clock), TokenBucket(1, 1, clock=clock)
    assert paced.try_acquire()
    limits = poolkit.Limits(budget, paced)

    async def main() -> None:
        waiter = asyncio.create_task(limits.acquire(1))
        await asyncio.sleep(0)  # queued in both buckets, waiting for `paced`
        assert budget.statistics().waiting == 1
        r = budget.reserve(1, max_delay=5)
        assert (r.ok, r.delay) == (True, 0.0)
        r2 = budget.reserve(20 - 11, max_delay=0)  # 10 - 1 (the waiter's) - 1 left: 8 only
        assert not r2.ok
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter

    run_lightly(main())


async def test_the_clock_is_never_read_under_the_lock() -> None:
    clock = Clock()
    bucket = TokenBucket(10, 1, clock=clock)
    assert bucket.try_acquire()
    r = bucket.reserve(1)
    bucket.statistics()
    bucket.rate = 20
    bucket.burst = 2
    r.cancel()
    assert bucket._is_idle() is False
    waiter = asyncio.create_task(bucket.acquire(2))
    await asyncio.sleep(0)
    clock.t = 1.0
    bucket.rate = 30  # nudges the waiter, which reads the clock again
    await waiter
    assert not clock.read_under_lock
