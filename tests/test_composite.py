"""poolkit.Limits and poolkit.PerKey: several limits as one; a limit per key."""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

import poolkit
from poolkit import BudgetExhausted, CapacityLimiter, Limits, NotAcquired, PerKey, TokenBucket
from tests.conftest import run_on
from tests.test_ratelimit import HeldClock, strand, usable


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
        TypeError, match="takes CapacityLimiter, TokenBucket, PerKey or Limits objects, got 3"
    ):
        Limits(a, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="share one clock"):
        Limits(a, TokenBucket(1, clock=lambda: 0.0))


async def test_cost_is_checked_against_every_member() -> None:
    limits = Limits(TokenBucket(10, 5), CapacityLimiter(8))
    with pytest.raises(ValueError, match="exceeds the bucket's burst 5"):
        await limits.acquire(6)
    with pytest.raises(ValueError, match="exceeds the limiter's total 8"):
        await Limits(TokenBucket(10, 10), CapacityLimiter(8)).acquire(9)
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


# ================================================================ PerKey


def test_per_key_bad_arguments() -> None:
    with pytest.raises(TypeError, match="factory must be a callable"):
        PerKey(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sweep_per_use must be >= 1, got 0"):
        PerKey(lambda: CapacityLimiter(1), sweep_per_use=0)
    bad = PerKey(lambda: "not a limit")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return a CapacityLimiter, TokenBucket or Limits"):
        bad.try_acquire("k")


@pytest.mark.virtual_time
async def test_each_key_is_paced_on_its_own() -> None:
    per_host: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket("2/s", 1))
    done: dict[str, list[float]] = {"a": [], "b": []}

    async def fetch(host: str) -> None:
        await per_host.acquire(host)
        done[host].append(now())

    await asyncio.gather(*(fetch(h) for h in "ababab"))
    assert done["a"] == pytest.approx([0.0, 0.5, 1.0])
    assert done["b"] == pytest.approx([0.0, 0.5, 1.0])
    assert sorted(per_host.keys()) == ["a", "b"]
    s = per_host.statistics()
    assert (s.keys, s.created_total, s.acquired_total) == (2, 2, 6)


async def test_cap_and_rate_per_key_with_hold() -> None:
    per_host = PerKey(lambda: Limits(CapacityLimiter(2), TokenBucket(1000, 100)))
    inside: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def job(host: str) -> None:
        async with per_host.hold(host):
            inside[host] = inside.get(host, 0) + 1
            peak[host] = max(peak.get(host, 0), inside[host])
            await asyncio.sleep(0)
            inside[host] -= 1

    await asyncio.gather(*(job(h) for h in "xyzxyzxyzxyz"))
    assert peak == {"x": 2, "y": 2, "z": 2}


async def test_idle_limiters_are_forgotten_so_many_keys_stay_cheap() -> None:
    per_key: PerKey[int, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=2)
    for key in range(200_000):
        async with per_key.hold(key):
            pass
    s = per_key.statistics()
    assert s.created_total == 200_000
    assert s.keys <= 3, "idle limits are being kept"
    assert s.forgotten_total == s.created_total - s.keys


async def test_busy_keys_are_kept_and_rotated_not_forgotten() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=1)
    await per_key.acquire("busy")  # held for the whole test
    for key in range(1000):
        await per_key.acquire(f"k{key}")
        per_key.release(f"k{key}")
    assert "busy" in per_key
    assert len(per_key) <= 3
    s = per_key.statistics_for("busy")
    assert s is not None and getattr(s, "borrowed", None) == 1
    assert per_key.statistics_for("never used") is None
    per_key.release("busy")
    assert "busy" not in per_key  # idle on release: forgotten there and then
    assert per_key.sweep() == 0


@pytest.mark.virtual_time
async def test_token_buckets_are_forgotten_only_once_full_again() -> None:
    per_key: PerKey[int, TokenBucket] = PerKey(lambda: TokenBucket(1, 1))
    for key in range(50):
        await per_key.acquire(key)
    assert len(per_key) == 50, "a bucket that still owes tokens was forgotten"
    assert per_key.sweep() == 0
    await asyncio.sleep(1)  # every bucket is full again
    assert per_key.sweep() == 50
    assert len(per_key) == 0
    # A forgotten key starts over with a full bucket, exactly as if it had been kept.
    await per_key.acquire(7)
    assert now() == pytest.approx(1.0)


async def test_a_key_being_acquired_is_never_forgotten() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=8)
    await per_key.acquire("k")
    waiter = asyncio.create_task(per_key.acquire("k"))  # pinned while it waits
    await settle()
    per_key.release("k")  # "k" is handed straight to the waiter
    for other in range(20):
        await per_key.acquire(other)
        per_key.release(other)
    await waiter
    assert "k" in per_key
    limit = per_key.statistics_for("k")
    assert limit is not None and getattr(limit, "borrowed", None) == 1


def test_release_of_an_unknown_key_is_an_error() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), name="hosts")
    with pytest.raises(NotAcquired, match="for key 'nope', which holds nothing"):
        per_key.release("nope")
    assert repr(per_key) == "<PerKey 'hosts' keys=0 created=0 forgotten=0 acquired=0>"


def test_threads_hold_blocking() -> None:
    per_key = PerKey(lambda: CapacityLimiter(1))
    inside: dict[int, int] = {}
    clash = []
    guard = threading.Lock()

    def worker(n: int) -> None:
        for i in range(300):
            key = (n + i) % 3
            with per_key.hold_blocking(key):
                with guard:
                    inside[key] = inside.get(key, 0) + 1
                    if inside[key] > 1:
                        clash.append(key)
                with guard:
                    inside[key] -= 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clash == []
    assert per_key.statistics().acquired_total == 1200


# ================================================================ Limits with PerKey members


@pytest.mark.virtual_time
async def test_global_cap_with_a_cap_and_a_rate_per_key() -> None:
    per_host = PerKey(lambda: Limits(CapacityLimiter(2), TokenBucket(5, 1)))
    limits = Limits(CapacityLimiter(3), TokenBucket(100, 100), per_host)
    starts: dict[str, list[float]] = {}
    inside: dict[str, int] = {}
    total_inside = 0
    peaks = [0, 0]

    async def fetch(host: str) -> None:
        nonlocal total_inside
        async with limits.hold(host):
            starts.setdefault(host, []).append(now())
            inside[host] = inside.get(host, 0) + 1
            total_inside += 1
            peaks[0] = max(peaks[0], total_inside)
            peaks[1] = max(peaks[1], inside[host])
            await asyncio.sleep(0.5)
            inside[host] -= 1
            total_inside -= 1

    await asyncio.gather(*(fetch(h) for h in "aabbccaabbcc"))
    assert peaks == [3, 2]
    for host, times in starts.items():  # 5/s per host with a burst of 1: 0.2 s apart
        times.sort()
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= 0.2 - 1e-9, (host, times)
    assert per_host.statistics().acquired_total == 12


@pytest.mark.virtual_time
async def test_keyed_tokens_are_taken_with_the_global_ones_after_the_slot() -> None:
    # The example's lesson: a per-host token taken before waiting for a global slot lets that
    # host's starts bunch up later.  Through one Limits, the host's token is taken last.
    per_host = PerKey(lambda: TokenBucket(1, 1))
    limits = Limits(CapacityLimiter(1), per_host)
    await limits.acquire(key="h")
    second = asyncio.create_task(limits.acquire(key="h"))
    await asyncio.sleep(3)  # the host bucket refilled meanwhile, but the slot is busy
    host = per_host.statistics_for("h")
    assert host is not None and getattr(host, "tokens", None) == 1
    limits.release(key="h")
    await second
    host = per_host.statistics_for("h")
    assert host is not None and getattr(host, "tokens", None) == 0
    limits.release(key="h")


async def test_key_is_required_exactly_when_there_are_keyed_members() -> None:
    keyed = Limits(PerKey(lambda: CapacityLimiter(1)))
    plain = Limits(CapacityLimiter(1))
    with pytest.raises(ValueError, match="pass key="):
        await keyed.acquire()
    with pytest.raises(ValueError, match="pass key="):
        keyed.release()
    with pytest.raises(ValueError, match="no PerKey member"):
        await plain.acquire(key="x")
    assert keyed.try_acquire(key="x")
    assert not keyed.try_acquire(key="x")
    assert keyed.try_acquire(key="y")
    keyed.release(key="x")
    keyed.release(key="y")
    with pytest.raises(TypeError, match="may not itself contain a PerKey"):
        PerKey(lambda: keyed).try_acquire("k")


@pytest.mark.virtual_time
async def test_cancelled_keyed_acquire_holds_nothing_anywhere() -> None:
    per_host = PerKey(lambda: Limits(CapacityLimiter(1), TokenBucket(1, 1)))
    shared = CapacityLimiter(5)
    limits = Limits(shared, per_host)
    await limits.acquire(key="h")
    waiting = asyncio.create_task(limits.acquire(key="h"))
    await asyncio.sleep(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert shared.borrowed == 1
    limits.release(key="h")
    assert shared.borrowed == 0
    assert "h" not in per_host or per_host.statistics_for("h") is not None


# ================================================================ regressions from review


@pytest.mark.virtual_time
async def test_bucket_forgotten_while_held_does_not_break_release() -> None:
    caps = PerKey(lambda: CapacityLimiter(1))
    rates = PerKey(lambda: TokenBucket("2/s"))
    limits = Limits(caps, rates)
    async with limits.hold("host"):
        await asyncio.sleep(1.0)  # the host's bucket refills to full ...
        assert rates.sweep() == 1  # ... and is forgotten while the body still runs
    assert "host" not in caps  # its slot was given back (and the idle limiter forgotten)
    await limits.acquire(key="host", timeout=1)
    limits.release(key="host")
    async with rates.hold("other"):
        rates.sweep()


def test_release_gives_every_member_its_share_even_if_one_complains() -> None:
    cap = CapacityLimiter(1)
    picky = PerKey(lambda: CapacityLimiter(1))
    limits = Limits(cap, picky)
    assert cap.try_acquire()
    with pytest.raises(NotAcquired):
        limits.release(key="never acquired")
    assert cap.borrowed == 0


def test_factory_failure_leaves_no_key_pinned() -> None:
    good = PerKey(lambda: CapacityLimiter(1))
    calls = []

    def failing() -> CapacityLimiter:
        calls.append(1)
        raise RuntimeError("factory failed")

    limits = Limits(good, PerKey(failing))
    with pytest.raises(RuntimeError, match="factory failed"):
        limits.try_acquire(key="k")
    assert good.sweep() == 1  # "k" was not left pinned
    assert "k" not in good


def test_a_limit_both_fixed_and_per_key_is_refused() -> None:
    shared = CapacityLimiter(1)
    limits = Limits(shared, PerKey(lambda: shared))
    with pytest.raises(ValueError, match="would be charged twice"):
        limits.try_acquire(key="k")
    assert shared.borrowed == 0


# ================================================================ infinite and zero rates


@pytest.mark.virtual_time
async def test_limits_with_an_infinite_bucket_and_a_fixed_budget() -> None:
    unlimited, budget, cap = TokenBucket(math.inf), TokenBucket(0, 5), CapacityLimiter(3)
    limits = Limits(unlimited, budget, cap)
    await limits.acquire(3)  # above the unlimited bucket's burst of 1: ignored
    limits.release(3)
    assert limits.try_acquire(2)
    limits.release(2)
    with pytest.raises(BudgetExhausted, match="rate 0"):
        await limits.acquire(1)  # 5 spent: the budget, not time, is the limit
    assert not limits.try_acquire(1)
    assert cap.borrowed == 0  # the slot taken before the buckets was given back
    assert now() == 0
    assert unlimited.statistics().tokens == math.inf
    assert budget.statistics().granted_total == 2


@pytest.mark.virtual_time
async def test_combined_waiters_are_served_from_a_budget_as_far_as_it_goes() -> None:
    quota, slow = TokenBucket(1, 5), TokenBucket(1, 2)
    limits = Limits(quota, slow)
    await slow.acquire(2)
    done: list[tuple[int, float]] = []

    async def take(i: int) -> None:
        await limits.acquire(2)
        done.append((i, now()))

    tasks = [asyncio.create_task(take(i)) for i in range(3)]
    await asyncio.sleep(0.5)
    quota.rate = 0  # 5 left: two of them, and the third can never be served
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert done == [(0, 2.0), (1, 4.0)]
    assert isinstance(results[2], BudgetExhausted)
    assert now() == 4.0  # it failed as soon as it was first in line


@pytest.mark.virtual_time
async def test_an_unlimited_bucket_made_finite_fails_a_waiter_whose_cost_no_longer_fits() -> None:
    unlimited, slow, cap = TokenBucket(math.inf), TokenBucket(1, 5), CapacityLimiter(4)
    limits = Limits(unlimited, slow, cap)
    await slow.acquire(5)
    waiter = asyncio.create_task(limits.acquire(4))
    await asyncio.sleep(1)
    unlimited.rate = 10  # burst 1 counts again
    with pytest.raises(ValueError, match="4 > burst 1"):
        await waiter
    assert cap.borrowed == 0


@pytest.mark.virtual_time
async def test_per_key_forgets_unlimited_buckets_but_never_a_spent_budget() -> None:
    unlimited: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket("inf"))
    for key in "abc":
        await unlimited.acquire(key, 10)
    unlimited.sweep()
    assert len(unlimited) == 0  # always full: forgetting changes nothing
    assert unlimited.statistics().forgotten_total == 3
    budgets: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket(0, 2), sweep_per_use=4)
    await budgets.acquire("spent", 2)
    await budgets.acquire("half", 1)
    assert budgets.try_acquire("unused", 0)  # drew nothing: still full
    for n in range(20):  # every use looks at a few keys to forget
        budgets.try_acquire(f"other{n}", 0)
    await asyncio.sleep(86400)
    assert budgets.sweep() == 1  # the last "other" (full); "spent" and "half" are kept:
    # forgetting them would give those keys a full budget again
    assert set(budgets.keys()) == {"spent", "half"}
    with pytest.raises(BudgetExhausted):
        await budgets.acquire("spent")
    assert budgets.try_acquire("half")
    assert not budgets.try_acquire("half")
    assert budgets.statistics().forgotten_total == 21


# ================================================================ stranded waiters, clean-up


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


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_stranded_limits_waiters_do_not_stall_a_later_acquire(kind: str) -> None:
    # Each one skipped used to be destroyed under the buckets' lock, its clean-up waiting 0.1 s
    # for that lock; and the slot each one holds must come back.
    usable(kind)
    clock = HeldClock()
    cap, bucket = CapacityLimiter(20), TokenBucket(1000, 1, clock=clock)
    limits = Limits(cap, bucket)
    assert bucket.try_acquire()
    strand(*[limits.acquire] * 9)
    # Still queued (nobody has met them yet), but not counted as waiting: they never run again.
    assert (cap.borrowed, len(bucket._queue), bucket.statistics().waiting) == (9, 9, 0)
    clock.go()

    async def main() -> None:
        with timed_without_gc() as elapsed:
            await limits.acquire()
        assert elapsed[0] < 0.05, elapsed
        for _ in range(3):
            async with limits:
                pass

    run_on(kind, main())
    assert cap.borrowed == 1
    assert bucket.statistics().waiting == 0
    assert bucket.statistics().granted_total == 5


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_stranded_per_key_waiters_do_not_stall_a_later_acquire(kind: str) -> None:
    usable(kind)
    clock = HeldClock()
    per_host: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket(1000, 1, clock=clock))
    limits = Limits(CapacityLimiter(20), per_host)
    assert per_host.try_acquire("h")
    strand(*[lambda: per_host.acquire("h")] * 5, *[lambda: limits.acquire(key="h")] * 4)
    host = per_host.statistics_for("h")
    assert host is not None and getattr(host, "waiting", None) == 0  # stranded: not waiting
    assert len(per_host._entries["h"].limit._queue) == 9  # but still queued
    clock.go()

    async def main() -> None:
        with timed_without_gc() as elapsed:
            await per_host.acquire("h")
            await limits.acquire(key="h")
        assert elapsed[0] < 0.05, elapsed
        limits.release(key="h")

    run_on(kind, main())
    # The stranded ones unpinned "h" and left its queue: it is idle, and (full again a
    # millisecond later) perhaps forgotten already.
    entry = per_host._entries.get("h")
    assert entry is None or (entry.pins, entry.limit.statistics().waiting) == (0, 0)


def close_holding(lock: Any, coro: Any) -> bool:
    """Close ``coro`` in a thread that holds ``lock``, as the garbage collector may; True if that
    returned within a second (a clean-up that waits for the lock never returns)."""
    done = threading.Event()

    def run() -> None:
        with lock:
            coro.close()
            done.set()

    threading.Thread(target=run, daemon=True).start()
    return done.wait(1.0)


@pytest.mark.virtual_time
async def test_per_key_clean_up_never_waits_for_its_own_lock() -> None:
    per_key: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket(1, 1))
    assert per_key.try_acquire("k")
    coro = per_key.acquire("k")
    coro.send(None)  # waiting for its token, with "k" pinned
    returned = close_holding(per_key._lock, coro)
    assert returned, "the clean-up waited for a lock its own thread holds"
    for _ in range(200):  # the pin is dropped once the lock is free, by a short-lived thread
        if per_key._entries["k"].pins == 0:
            break
        time.sleep(0.005)  # noqa: ASYNC251  (real time, for a thread; the loop has nothing to do)
    assert per_key._entries["k"].pins == 0
    host = per_key.statistics_for("k")
    assert host is not None and getattr(host, "waiting", None) == 0


@pytest.mark.virtual_time
async def test_limits_clean_up_gives_slots_back_without_waiting_for_the_limiter_lock() -> None:
    cap, bucket = CapacityLimiter(2), TokenBucket(1, 1)
    limits = Limits(cap, bucket)
    assert bucket.try_acquire()
    coro = limits.acquire()
    coro.send(None)  # holds a slot, waits for a token
    assert cap.borrowed == 1
    returned = close_holding(cap._lock, coro)
    assert returned, "the clean-up waited for the limiter's lock, which its own thread holds"
    for _ in range(200):
        if cap.borrowed == 0:
            break
        time.sleep(0.005)  # noqa: ASYNC251  (as above)
    assert cap.borrowed == 0
    assert bucket.statistics().waiting == 0


# ================================================================ what forgetting may not lose


class ManualClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.mark.parametrize("change", ["rate", "burst", "total"])
def test_per_key_keeps_a_limit_whose_settings_were_changed(change: str) -> None:
    # Forgetting it and making a new one from the factory lost the change.
    clock = ManualClock()
    made: list[Any] = []

    def factory() -> Any:
        limit = CapacityLimiter(2) if change == "total" else TokenBucket(1, 2, clock=clock)
        made.append(limit)
        return limit

    per_key: PerKey[str, Any] = PerKey(factory)
    assert per_key.try_acquire("k")
    setattr(made[0], change, 5)  # (the factory let the caller keep it)
    per_key.release("k")
    clock.t = 100.0  # the bucket is full again
    assert per_key.sweep() == 0
    assert "k" in per_key
    assert per_key.try_acquire("k", 5 if change != "rate" else 2)
    assert len(made) == 1  # never made again


def test_per_key_keeps_a_fixed_budget_drawn_a_hair_at_a_time() -> None:
    # "Idle" means exactly full: forgiving the hair at each forgetting would hand the key a new,
    # full budget every time, without end.
    per_key: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket(0, 1))
    for _ in range(100):
        assert per_key.try_acquire("k", 1e-7)
        per_key.release("k")
    host = per_key.statistics_for("k")
    assert host is not None and getattr(host, "tokens", None) == pytest.approx(1 - 1e-5)
    assert per_key.statistics().created_total == 1


def test_per_key_runs_its_factory_holding_no_lock() -> None:
    seen: list[bool] = []
    per_key: PerKey[str, CapacityLimiter]

    def factory() -> CapacityLimiter:
        seen.append(per_key._lock.locked())
        per_key.statistics()  # a factory that looks at its PerKey deadlocked
        return CapacityLimiter(1)

    per_key = PerKey(factory)
    done = threading.Event()

    def use() -> None:
        assert per_key.try_acquire("k")
        done.set()

    threading.Thread(target=use, daemon=True).start()
    assert done.wait(2), "the factory ran under the PerKey's lock"
    assert seen == [False]
    per_key.release("k")


def test_limits_try_acquire_gives_slots_back_outside_the_buckets_lock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Giving a slot back may lay stranded waiters to rest, which runs their clean-up: never
    # under the buckets' lock.
    released_under_lock: list[bool] = []
    original = CapacityLimiter.release

    def release(self: CapacityLimiter, weight: int = 1) -> None:
        released_under_lock.append(poolkit._primitives._ratelimit.LOCK.locked())
        original(self, weight)

    monkeypatch.setattr(CapacityLimiter, "release", release)
    cap = CapacityLimiter(1)
    bucket = TokenBucket(1, 1, clock=ManualClock())
    assert bucket.try_acquire()
    limits = Limits(cap, bucket)
    assert not limits.try_acquire()
    assert released_under_lock == [False]
    assert cap.borrowed == 0
