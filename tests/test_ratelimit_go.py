"""Go's ``golang.org/x/time/rate`` limiter tests (``rate/rate_test.go``), ported to TokenBucket.

Each test takes the cases of the Go test of the same name and checks them against poolkit's API:
``AllowN(t, n)`` is ``try_acquire(n)`` with the clock at ``t``, ``TokensAt(t)`` is
``statistics().tokens``, ``reserveN`` is ``reserve``, ``WaitN`` is ``acquire``.  Go's times are
``t0 + k * 100ms`` in integer nanoseconds; here they are float seconds, and ``t0`` is also a
realistic monotonic reading far from zero (123456.789 s, a day and a half of uptime, and 3.2e6 s,
five weeks), where float seconds cannot hold ``t0 + 0.1`` exactly: the bucket must still find a
token due every 0.1 s at 10/s.

Where poolkit means something else on purpose, the test says so and checks poolkit's meaning:

* ``n > burst`` is a bad argument (``ValueError`` at once), not a refusal;
* a clock that jumps backwards refills nothing, and the interval is not counted twice when the
  clock comes forward again;
* a reservation keeps its tokens apart until its time, so ``cancel()`` before that time gives
  back all of them, even with later reservations made (Go gives back only what no later
  reservation was computed on), and ``statistics().tokens`` never shows the debt of a booking
  (it shows what could be taken now: 0, not Go's negative count);
* a rate change lets later calls use the new rate at once, around the reservations made before.
"""

from __future__ import annotations

import asyncio
import math
import threading

import pytest

from poolkit import TokenBucket
from poolkit._primitives._ratelimit import Reservation
from poolkit.testing import VirtualTimeLoop
from tests.conftest import run_on

D = 0.1  # Go's d: 100 ms

OFFSETS = [0.0, 123456.789, 3.2e6 + 0.321]


class Clock:
    """A clock the test sets: ``at(k)`` is Go's ``t0.Add(k * d)``."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.now = t0

    def __call__(self) -> float:
        return self.now

    def at(self, k: float) -> float:
        self.now = self.t0 + k * D
        return self.now


@pytest.fixture(params=OFFSETS, ids=["t0=0", "t0=1.2e5", "t0=3.2e6"])
def clock(request: pytest.FixtureRequest) -> Clock:
    return Clock(request.param)


def run(bucket: TokenBucket, clock: Clock, allows: list[tuple[float, float, float, bool]]) -> None:
    """Go's ``run``: at each step, the tokens there, then whether ``n`` more are allowed."""
    for i, (k, toks, n, ok) in enumerate(allows):
        clock.at(k)
        assert bucket.statistics().tokens == pytest.approx(toks, abs=1e-6), f"step {i}"
        if n > bucket.burst:  # Go: always false; poolkit: it could never be granted
            with pytest.raises(ValueError, match="exceeds the bucket's burst"):
                bucket.try_acquire(n)
            assert not ok
            continue
        assert bucket.try_acquire(n) is ok, f"step {i}: try_acquire({n}) at t{k}"


def test_limiter_burst_1(clock: Clock) -> None:
    run(
        TokenBucket(10, 1, clock=clock),
        clock,
        [
            (0, 1, 1, True),
            (0, 0, 1, False),
            (0, 0, 1, False),
            (1, 1, 1, True),
            (1, 0, 1, False),
            (1, 0, 1, False),
            (2, 1, 2, False),  # burst is 1: n=2 can never be granted
            (2, 1, 1, True),
            (2, 0, 1, False),
        ],
    )


def test_limiter_burst_3(clock: Clock) -> None:
    run(
        TokenBucket(10, 3, clock=clock),
        clock,
        [
            (0, 3, 2, True),
            (0, 1, 2, False),
            (0, 1, 1, True),
            (0, 0, 1, False),
            (1, 1, 4, False),
            (2, 2, 1, True),
            (3, 2, 1, True),
            (4, 2, 1, True),
            (4, 1, 1, True),
            (4, 0, 1, False),
            (4, 0, 1, False),
            (9, 3, 3, True),
            (9, 0, 0, True),
        ],
    )


def test_limiter_jump_backwards(clock: Clock) -> None:
    # Go moves its stamp back with the clock, so when the clock reaches t1 again it refills the
    # interval t0..t1 a second time and allows one more at t1.  poolkit counts an interval once:
    # the token after the jump arrives at t2.
    run(
        TokenBucket(10, 3, clock=clock),
        clock,
        [
            (1, 3, 1, True),  # start at t1
            (0, 2, 1, True),  # jump back to t0: two tokens remain
            (0, 1, 1, True),
            (0, 0, 1, False),
            (0, 0, 1, False),
            (1, 0, 1, False),  # Go: a token (t0..t1 counted again); poolkit: not yet
            (1, 0, 1, False),
            (2, 1, 1, True),  # the next token
            (2, 0, 1, False),
            (2, 0, 1, False),
        ],
    )


def test_limiter_no_truncation_errors() -> None:
    assert TokenBucket(0.7692307692307693, 1).try_acquire()


def test_simultaneous_requests() -> None:
    clock = Clock(123456.789)
    bucket = TokenBucket(1, 5, clock=clock)  # very slow refill: only the burst is there
    ok: list[bool] = []
    guard = threading.Lock()
    start = threading.Barrier(15)

    def request() -> None:
        start.wait()
        got = bucket.try_acquire()
        with guard:
            ok.append(got)

    threads = [threading.Thread(target=request) for _ in range(15)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ok.count(True) == 5


@pytest.mark.parametrize("t0", OFFSETS)
def test_long_running_qps(t0: float) -> None:
    # Many requests over five (clock) seconds, one every 2 ms: about the rate, never above it.
    clock = Clock(t0)
    bucket = TokenBucket(100, 100, clock=clock)
    granted = 0
    step = 0
    while clock.now < t0 + 5.0:
        granted += bucket.try_acquire()
        step += 1
        # Go's tt.advance(2ms), in whole nanoseconds: exact.  Adding 0.002 to a float clock
        # reading instead would drift (0.34 µs short after 2500 steps at 3.2e6 s, so the token
        # due at 5 s would rightly not be there yet at the clock's "5 s").
        clock.now = t0 + step * 0.002
    ideal = 100 + 100 * (clock.now - t0)
    assert granted <= int(ideal + 1)  # never more than allowed
    assert granted >= int(0.999 * ideal)  # and very close to it


# ------------------------------------------------------------------ reservations


def reserve(
    bucket: TokenBucket,
    clock: Clock,
    k: float,
    n: float,
    act: float,
    max_delay: float | None = None,
) -> Reservation:
    """Go's ``runReserve``: at t``k`` reserve ``n``; it must be ok and due at t``act``."""
    clock.at(k)
    r = bucket.reserve(n, max_delay=max_delay)
    assert r.ok, f"reserve({n}) at t{k}"
    assert r.time == pytest.approx(clock.t0 + act * D, abs=1e-6), f"reserve({n}) at t{k}"
    assert r.delay == pytest.approx((act - k) * D, abs=1e-6)
    return r


def test_simple_reserve(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    reserve(bucket, clock, 0, 2, 2)
    reserve(bucket, clock, 3, 2, 4)


def test_mix(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    with pytest.raises(ValueError, match="exceeds the bucket's burst"):  # Go: not ok
        bucket.reserve(3)
    reserve(bucket, clock, 0, 2, 0)
    run(bucket, clock, [(1, 1, 2, False)])  # not enough tokens
    reserve(bucket, clock, 1, 2, 2)
    # Go shows the debt (-1); poolkit shows what may be taken now: the token that came in is
    # the reservation's.
    run(bucket, clock, [(1, 0, 1, False)])
    run(bucket, clock, [(3, 1, 1, True)])


def test_cancel_invalid(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    clock.at(0)
    refused = bucket.reserve(2, max_delay=0.1)  # poolkit's "not ok": it would take too long
    assert not refused.ok
    assert refused.delay == math.inf
    assert refused.cancel() == 0.0  # no effect
    reserve(bucket, clock, 0, 2, 2)  # no extra tokens came from it


def test_cancel_last(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 2, 2)
    clock.at(1)
    assert r.cancel() == 2  # both tokens back
    reserve(bucket, clock, 1, 2, 2)


def test_cancel_too_late(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 2, 2)
    clock.at(3)
    assert r.cancel() == 0  # too late: no effect
    assert not r.cancelled
    reserve(bucket, clock, 3, 2, 4)


def test_cancel_0_tokens(clock: Clock) -> None:
    # Go gives nothing back (a later reservation was computed on r's tokens) and the next one
    # acts at t3.  poolkit keeps each reservation's tokens apart, so r's token comes back, the
    # later reservation keeps its time (t2), and the next one takes r's place at t1.
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 1, 1)
    later = reserve(bucket, clock, 0, 1, 2)
    clock.at(0)
    assert r.cancel() == 1
    reserve(bucket, clock, 0, 1, 1)
    assert later.time == pytest.approx(clock.t0 + 2 * D)  # unmoved, and still feasible:
    clock.at(2)
    assert bucket.statistics().tokens == pytest.approx(0, abs=1e-6)
    assert bucket.statistics().granted_total == 3


def test_cancel_1_token(clock: Clock) -> None:
    # Go cancels at exactly t2 (r's time) and gets 1 token back.  poolkit: at its time the
    # reservation is spent, so nothing comes back; a little before it, all of it does.
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 2, 2)
    reserve(bucket, clock, 0, 1, 3)
    clock.at(2)
    assert r.cancel() == 0
    reserve(bucket, clock, 2, 2, 5)

    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 2, 2)
    reserve(bucket, clock, 0, 1, 3)
    clock.at(1.5)
    assert r.cancel() == 2
    reserve(bucket, clock, 2, 1, 2)  # 2 tokens at t2; the t3 booking needs none of them
    reserve(bucket, clock, 2, 2, 4)  # 1 left, 1 more at t3 for the booking, then 1 by t4


def test_cancel_multi(clock: Clock) -> None:
    # Go gets 1 token back from C and 2 of A's 3 (B was computed on A's), then books 3 at t5.
    # poolkit gets all 4 back; B keeps t4, and 3 tokens are there at t3 without touching it.
    bucket = TokenBucket(10, 4, clock=clock)
    reserve(bucket, clock, 0, 4, 0)
    a = reserve(bucket, clock, 0, 3, 3)
    reserve(bucket, clock, 0, 1, 4)
    c = reserve(bucket, clock, 0, 1, 5)
    clock.at(1)
    assert c.cancel() == 1
    assert a.cancel() == 3
    reserve(bucket, clock, 1, 3, 3)
    clock.at(4)  # B at t4 still gets its token
    assert bucket.statistics().granted_total == 3
    assert bucket.statistics().tokens == pytest.approx(0, abs=1e-6)


def test_reserve_set_limit(clock: Clock) -> None:
    bucket = TokenBucket(5, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    reserve(bucket, clock, 0, 2, 4)
    clock.at(2)
    bucket.rate = 10
    # Go books this at t4.  poolkit: at t2 one token is in (0.2 s at 5/s), and at 10/s the t4
    # booking refills its 2 between t2 and t4 by itself, so the token is free now.
    reserve(bucket, clock, 2, 1, 2)


def test_reserve_set_burst(clock: Clock) -> None:
    bucket = TokenBucket(5, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    reserve(bucket, clock, 0, 2, 4)
    clock.at(3)
    bucket.burst = 4
    # (Go reserves at t0 here, after setting the burst at t3; poolkit's clock only moves on.)
    # At t3 the 1.5 tokens in are the t4 booking's; from t4, 4 tokens take 0.8 s.
    reserve(bucket, clock, 3, 4, 12)


def test_reserve_set_limit_cancel(clock: Clock) -> None:
    bucket = TokenBucket(5, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0)
    r = reserve(bucket, clock, 0, 2, 4)
    clock.at(2)
    bucket.rate = 10
    assert r.cancel() == 2
    reserve(bucket, clock, 2, 2, 3)


def test_reserve_max(clock: Clock) -> None:
    bucket = TokenBucket(10, 2, clock=clock)
    reserve(bucket, clock, 0, 2, 0, max_delay=D)
    reserve(bucket, clock, 0, 1, 1, max_delay=D)  # soon enough
    clock.at(0)
    late = bucket.reserve(1, max_delay=D)  # due at t2: too far
    assert not late.ok
    assert bucket.statistics().reserved == 1  # the refused one booked nothing


# ------------------------------------------------------------------ waiting


def on_virtual_time(t0: float, body: object) -> None:
    async def main() -> None:
        await body  # type: ignore[misc]

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start=t0)) as runner:
        runner.run(main())


@pytest.mark.parametrize("t0", OFFSETS)
def test_wait_simple(t0: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(10, 3)
        with pytest.raises(ValueError, match="exceeds the bucket's burst"):
            await bucket.acquire(4)
        start = loop.time()
        await bucket.acquire(2)  # act now
        assert loop.time() == start
        await bucket.acquire(3)  # act later: 2 tokens short, 0.2 s
        assert loop.time() - start == pytest.approx(2 * D, abs=1e-6)

    on_virtual_time(t0, main())


@pytest.mark.parametrize("t0", OFFSETS)
def test_wait_cancel(t0: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(10, 3)
        start = loop.time()
        await bucket.acquire(2)  # 1 token left
        waiter = asyncio.create_task(bucket.acquire(3))
        loop.call_at(start + D, waiter.cancel)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert loop.time() - start == pytest.approx(D, abs=1e-6)
        # The cancelled wait took nothing: 2 tokens are there, and 2 go at once.
        assert bucket.statistics().tokens == pytest.approx(2, abs=1e-6)
        await bucket.acquire(2)
        assert loop.time() - start == pytest.approx(D, abs=1e-6)

    on_virtual_time(t0, main())


@pytest.mark.parametrize("t0", OFFSETS)
def test_wait_timeout(t0: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(10, 3)
        start = loop.time()
        await bucket.acquire(2, timeout=D)
        with pytest.raises(TimeoutError, match="cannot get the tokens"):
            await bucket.acquire(3, timeout=D)  # needs 0.2 s: fails at once
        assert loop.time() == start

    on_virtual_time(t0, main())


async def test_wait_inf() -> None:
    bucket = TokenBucket(math.inf)  # burst is ignored: 3 > the default burst of 1
    await bucket.acquire(3)
    await bucket.acquire(3, timeout=0)


def test_zero_limit() -> None:
    bucket = TokenBucket(0, 1)
    assert bucket.try_acquire()  # it starts full
    assert not bucket.try_acquire()  # and never refills


def test_set_after_zero_limit() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bucket = TokenBucket(0, 1)
        assert bucket.try_acquire()
        assert not bucket.try_acquire()
        bucket.rate = 10
        start = loop.time()
        await bucket.acquire()  # a token in 100 ms
        assert loop.time() - start == pytest.approx(D)

    run_on("virtual", main())


def test_tiny_limit() -> None:
    bucket = TokenBucket(1e-10, 1)
    assert bucket.try_acquire()
    assert not bucket.try_acquire()
