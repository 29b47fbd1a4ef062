"""poolkit.Limits: several limits as one, no token held while waiting for another limit."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import poolkit
from poolkit import CapacityLimiter, Limits, TokenBucket


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def now() -> float:
    return asyncio.get_running_loop().time()


def test_construction_rules() -> None:
    a, b, c = TokenBucket(10), TokenBucket("500/min"), CapacityLimiter(4)
    assert Limits(a, Limits(b, c)).members == (a, b, c)
    with pytest.raises(ValueError, match="at least one"):
        Limits()
    with pytest.raises(ValueError, match="same limit twice"):
        Limits(a, Limits(a))
    with pytest.raises(
        TypeError, match="takes CapacityLimiter, TokenBucket or Limits objects, got 3"
    ):
        Limits(a, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share one clock"):
        Limits(a, TokenBucket(1, clock=lambda: 0.0))


async def test_cost_is_checked_against_every_member() -> None:
    limits = Limits(TokenBucket(10, 5), CapacityLimiter(3))
    with pytest.raises(ValueError, match="exceeds the bucket's burst 5"):
        await limits.acquire(6)
    with pytest.raises(ValueError, match="exceeds the limiter's total 3"):
        await limits.acquire(4)
    with pytest.raises(TypeError, match="cost must be a positive int"):
        await limits.acquire(1.5)
    assert Limits(TokenBucket(10)).try_acquire(0.5)  # fractional costs are fine without limiters


@pytest.mark.virtual_time
async def test_every_limit_holds() -> None:
    fast, slow, cap = TokenBucket(10, 10), TokenBucket("120/min", 5), CapacityLimiter(3)
    limits = Limits(fast, slow, cap)
    starts: list[float] = []
    inside = 0
    peak = 0

    async def job() -> None:
        nonlocal inside, peak
        async with limits:
            starts.append(now())
            inside += 1
            peak = max(peak, inside)
            await asyncio.sleep(0.7)
            inside -= 1

    await asyncio.gather(*(job() for _ in range(30)))
    assert peak == 3
    starts.sort()
    for rate, burst in ((10, 10), (2, 5)):
        for i in range(len(starts)):
            for j in range(i, len(starts)):
                assert j - i + 1 <= rate * (starts[j] - starts[i]) + burst + 1e-9
    assert cap.borrowed == 0


@pytest.mark.virtual_time
async def test_no_token_is_taken_from_one_bucket_while_waiting_for_another() -> None:
    a, b = TokenBucket(10, 10), TokenBucket(1, 1)
    limits = Limits(a, b)
    await limits.acquire()  # both at once: a has 9, b has 0
    second = asyncio.create_task(limits.acquire())
    await asyncio.sleep(0.5)
    assert not second.done()
    assert a.statistics().tokens == 10, "a's token was taken while waiting for b"
    await second
    assert now() == pytest.approx(1.0)
    assert a.statistics().tokens == 9
    assert b.statistics().tokens == pytest.approx(0, abs=1e-9)


@pytest.mark.virtual_time
async def test_slots_first_then_tokens() -> None:
    bucket, cap = TokenBucket(10, 10), CapacityLimiter(1)
    limits = Limits(bucket, cap)
    await limits.acquire()
    waiting = asyncio.create_task(limits.acquire())
    await asyncio.sleep(5)
    assert bucket.statistics().tokens == 10, "tokens were spent before the slot was free"
    limits.release()
    await waiting
    assert bucket.statistics().tokens == 9
    assert cap.borrowed == 1


@pytest.mark.virtual_time
async def test_cancel_while_waiting_for_tokens_gives_the_slot_back() -> None:
    bucket, cap = TokenBucket(1, 1), CapacityLimiter(2)
    limits = Limits(bucket, cap)
    await limits.acquire()
    waiting = asyncio.create_task(limits.acquire())
    await asyncio.sleep(0.5)
    assert cap.borrowed == 2  # holding its slot while it waits for a token
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert cap.borrowed == 1
    assert bucket.statistics().granted_total == 1


@pytest.mark.virtual_time
async def test_timeout_that_the_buckets_cannot_meet_fails_at_once() -> None:
    bucket, cap = TokenBucket(1, 1), CapacityLimiter(2)
    limits = Limits(bucket, cap)
    await limits.acquire()
    with pytest.raises(TimeoutError, match="cannot get the tokens"):
        await limits.acquire(timeout=0.5)
    assert now() == 0
    assert cap.borrowed == 1
    await limits.acquire(timeout=1.0)
    assert now() == pytest.approx(1.0)


@pytest.mark.virtual_time
async def test_combined_waiters_queue_with_single_bucket_users() -> None:
    shared, other = TokenBucket(1, 1), TokenBucket(1, 1)
    await shared.acquire()
    await other.acquire()
    order: list[str] = []

    async def combined() -> None:
        await Limits(shared, other).acquire()
        order.append("combined")

    async def single() -> None:
        await shared.acquire()
        order.append("single")

    c = asyncio.create_task(combined())
    await settle()
    s = asyncio.create_task(single())
    await asyncio.gather(c, s)
    assert order == ["combined", "single"]
    assert now() == pytest.approx(2.0)


async def test_try_acquire_takes_all_or_nothing() -> None:
    bucket, cap = TokenBucket(1, 1), CapacityLimiter(1)
    limits = Limits(bucket, cap)
    assert limits.try_acquire()
    assert not limits.try_acquire()  # no slot
    limits.release()
    assert not limits.try_acquire()  # a slot, but no token: the slot goes back
    assert cap.borrowed == 0
    assert bucket.statistics().granted_total == 1


def test_threads_use_the_blocking_form() -> None:
    limits = Limits(TokenBucket(500, 5), CapacityLimiter(2))
    inside = 0
    peak = 0
    guard = threading.Lock()

    def worker() -> None:
        nonlocal inside, peak
        for _ in range(10):
            with limits:
                with guard:
                    inside += 1
                    peak = max(peak, inside)
                time.sleep(0.001)
                with guard:
                    inside -= 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 2
    s = limits.statistics()
    assert isinstance(s, poolkit.LimitsStatistics)
    bucket_stats: Any = s.members[0]
    assert bucket_stats.granted_total == 40
    assert "TokenBucket" in repr(limits)
    assert "CapacityLimiter" in repr(limits)
