"""Redis limits as members of ``Limits``, made by ``PerKey`` factories and given to pools, against
a real Redis (the shared one at 127.0.0.1:6379, under a random prefix).

Limit objects made from different URLs of one server (``url`` and ``url + "?"``) stand for
different processes: they share no link, so no client and no wake-up channel, only Redis.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from poolkit import (
    CapacityLimiter,
    Limits,
    LimitsStatistics,
    PerKey,
    ThreadPool,
    TokenBucket,
    WorkerPool,
)
from poolkit.redis import (
    RedisCapacityLimiter,
    RedisCapacityLimiterStatistics,
    RedisTokenBucket,
    RedisTokenBucketStatistics,
)
from poolkit.testing import VirtualTimeLoop
from tests.redis_support import redis_client, redis_prefix, redis_url

__all__ = ["redis_client", "redis_prefix", "redis_url"]  # fixtures, used by name


def _used(client: Any, prefix: str, key: str) -> int:
    """The weight Redis counts as held on a capacity limiter's key, by everybody."""
    return int(client.hget(f"{prefix}:{{{key}}}:s", "used") or 0)


def _holders(client: Any, prefix: str, key: str) -> dict[bytes, bytes]:
    return dict(client.hgetall(f"{prefix}:{{{key}}}:h"))


def _queued(client: Any, prefix: str, key: str) -> int:
    """Tickets queued on a capacity limiter (``:q``) or a bucket (``:q`` too)."""
    return int(client.zcard(f"{prefix}:{{{key}}}:q"))


async def _until(predicate: Callable[[], bool], limit: float = 3.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _cap(url: str, key: str, total: int, prefix: str, **kw: Any) -> RedisCapacityLimiter:
    kw.setdefault("lease_ttl", 2.0)
    kw.setdefault("op_timeout", 0.5)
    return RedisCapacityLimiter(url, key, total, prefix=prefix, **kw)


# ----------------------------------------------------------------------- Limits


async def test_members_acquire_release_and_statistics(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    cap = _cap(redis_url, "cap", 2, redis_prefix)
    rate = RedisTokenBucket(redis_url, "rate", 1000, prefix=redis_prefix)
    local = CapacityLimiter(4)
    limits = Limits(cap, rate, local, TokenBucket(1000), name="api")
    try:
        async with limits.hold():
            assert _used(redis_client, redis_prefix, "cap") == 1
            assert local.borrowed == 1 and cap.statistics().held == 1
            s = limits.statistics()
            assert isinstance(s.members[0], RedisCapacityLimiterStatistics)
            assert isinstance(s.members[1], RedisTokenBucketStatistics)
            assert s.members[0].held == 1 and s.members[1].granted_total == 1
            assert "RedisCapacityLimiter key='cap' held=1/2" in repr(limits)
        # Released at once here; Redis hears of it one round trip later.
        assert cap.statistics().held == 0 and local.borrowed == 0
        await _until(lambda: _used(redis_client, redis_prefix, "cap") == 0)

        assert await limits.try_acquire_async(2)
        assert not await limits.try_acquire_async(1)  # the Redis cap is full: nothing taken
        assert local.borrowed == 2 and cap.statistics().held == 2
        limits.release(2)
        with pytest.raises(RuntimeError, match=r"try_acquire_async"):
            limits.try_acquire()  # a round trip on the loop's thread: refused
        with pytest.raises(RuntimeError, match="would block the event loop"):
            limits.acquire_blocking()
        assert local.borrowed == 0
    finally:
        await cap.aclose()
        await rate.aclose()
    assert _used(redis_client, redis_prefix, "cap") == 0  # aclose() waited for the release


@pytest.mark.parametrize("seed", [3, 4])
async def test_caps_hold_across_two_processes_with_random_cancellations(
    redis_url: str, redis_prefix: str, redis_client: Any, seed: int
) -> None:
    """Two "processes", each with its own Limits of two Redis limiters (given in opposite
    orders: the one Redis-key order prevents a deadlock), a local cap and a Redis bucket.
    Cancellations at random points leave nothing held in Redis."""
    rnd = random.Random(seed)
    procs: list[tuple[Limits, list[RedisCapacityLimiter], RedisTokenBucket]] = []
    for i in range(2):
        url = redis_url + "?" * i
        a, b = _cap(url, "a", 3, redis_prefix), _cap(url, "b", 2, redis_prefix)
        bucket = RedisTokenBucket(url, "r", 2000, 50, prefix=redis_prefix, op_timeout=0.5)
        members = (a, b) if i == 0 else (b, a)
        procs.append((Limits(*members, CapacityLimiter(3), bucket), [a, b], bucket))
    inside = {"a": 0, "b": 0}
    peak = {"a": 0, "b": 0}
    done = 0

    async def worker(limits: Limits) -> None:
        nonlocal done
        for _ in range(8):
            cost = rnd.randint(1, 2)
            try:
                await limits.acquire(cost, timeout=rnd.choice([None, 0.005, 0.05]))
            except TimeoutError:
                continue
            try:
                for k in inside:
                    inside[k] += cost
                    peak[k] = max(peak[k], inside[k])
                assert inside["a"] <= 3 and inside["b"] <= 2
                await asyncio.sleep(rnd.random() * 0.005)
                done += 1
            finally:
                for k in inside:
                    inside[k] -= cost
                limits.release(cost)

    tasks = [asyncio.create_task(worker(procs[i % 2][0])) for i in range(8)]
    for _ in range(8):  # while queued in Redis, in a script call, waiting on the bucket, holding
        await asyncio.sleep(rnd.random() * 0.02)
        rnd.choice(tasks).cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert done >= 8 and peak["b"] == 2  # it was contended
    for limits, caps, _ in procs:
        assert limits.members[2].statistics().borrowed == 0  # type: ignore[union-attr]
        assert [c.statistics().held for c in caps] == [0, 0]
    # Before any aclose() (which would give back whatever an object still counts): Redis has
    # heard of every release and every give-back of a cancelled acquisition.
    await _until(lambda: _used(redis_client, redis_prefix, "a") == 0)
    await _until(lambda: _used(redis_client, redis_prefix, "b") == 0)
    for _, caps, bucket in procs:
        for c in caps:
            await c.aclose()
        await bucket.aclose()  # waits for refunds still on their way
    for key in "ab":
        assert _used(redis_client, redis_prefix, key) == 0
        assert _holders(redis_client, redis_prefix, key) == {}
        assert _queued(redis_client, redis_prefix, key) == 0
    assert _queued(redis_client, redis_prefix, "r") == 0


async def test_a_failed_or_cancelled_acquisition_refunds_redis_tokens(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    # A slow bucket (1 token a second, burst 2): a token not given back would be missing for a
    # second; given back, the whole burst is there again.
    rate = RedisTokenBucket(redis_url, "r", 1, 2, prefix=redis_prefix)
    probe = RedisTokenBucket(redis_url + "?", "r", 1, 2, prefix=redis_prefix)
    cap = _cap(redis_url, "c", 1, redis_prefix)
    local = TokenBucket(0.001, 1)
    assert local.try_acquire()  # empty for the next 1000 s
    limits = Limits(cap, rate, local)
    try:
        with pytest.raises(TimeoutError):
            await limits.acquire(timeout=5)  # the local bucket cannot make it: fails at once
        await _until(lambda: not rate._pending)
        assert cap.statistics().held == 0
        assert await probe.try_acquire(2)  # the token Limits took was refunded

        waiter = asyncio.create_task(limits.acquire())
        await _until(lambda: local.statistics().waiting == 1)
        assert _used(redis_client, redis_prefix, "c") == 1  # holds the Redis slot meanwhile
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await _until(lambda: not rate._pending and not cap._releasing)
        assert _used(redis_client, redis_prefix, "c") == 0
        assert local.statistics().waiting == 0
    finally:
        for obj in (cap, rate, probe):
            await obj.aclose()


async def test_timeout_covers_every_member_and_leaves_nothing(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    other = _cap(redis_url + "?", "c", 2, redis_prefix)  # another process holds the cap
    cap = _cap(redis_url, "c", 2, redis_prefix)
    local = CapacityLimiter(1)
    limits = Limits(local, cap)
    try:
        await other.acquire(2)
        with pytest.raises(TimeoutError):
            await limits.acquire(timeout=0.05)
        with pytest.raises(TimeoutError):
            await limits.acquire(timeout=0)
        assert local.borrowed == 0 and cap.statistics().held == 0
        await _until(lambda: _queued(redis_client, redis_prefix, "c") == 0)
        assert _used(redis_client, redis_prefix, "c") == 2  # the other's only
        waiter = asyncio.create_task(limits.acquire(timeout=5))
        await _until(lambda: _queued(redis_client, redis_prefix, "c") == 1)
        await other.release(2)
        await asyncio.wait_for(waiter, 5)  # woken by the other's release, within its timeout
        limits.release()
    finally:
        for obj in (cap, other):
            await obj.aclose()
    assert _used(redis_client, redis_prefix, "c") == 0


def test_local_rate_keeps_virtual_time_with_redis_members(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    """The local bucket's pacing is exact on virtual time with a Redis member before it (the
    loop waits for Redis' replies, in real time, before it jumps to its next timer)."""

    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        cap = _cap(redis_url, "c", 2, redis_prefix, lease_ttl=60.0, op_timeout=5.0)
        limits = Limits(cap, TokenBucket(2, 1))  # 2 a second, no burst
        starts: list[float] = []
        t0 = loop.time()

        async def one() -> None:
            async with limits.hold():
                starts.append(loop.time() - t0)

        try:
            for _ in range(4):
                await one()
        finally:
            await cap.aclose()
        return starts

    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(autojump_threshold=0.2)) as r:
        starts = r.run(main())
    assert starts == pytest.approx([0.0, 0.5, 1.0, 1.5], abs=1e-9)
    assert _used(redis_client, redis_prefix, "c") == 0


# ----------------------------------------------------------------------- threads


def test_blocking_forms_in_threads(redis_url: str, redis_prefix: str, redis_client: Any) -> None:
    cap = _cap(redis_url, "c", 2, redis_prefix)
    rate = RedisTokenBucket(redis_url, "r", 1000, prefix=redis_prefix)
    limits = Limits(cap, rate, CapacityLimiter(4))
    other = Limits(_cap(redis_url + "?", "c", 2, redis_prefix))
    try:
        with limits.hold_blocking(cost=2):
            assert _used(redis_client, redis_prefix, "c") == 2
            assert not other.try_acquire()
            with pytest.raises(TimeoutError):
                other.acquire_blocking(timeout=0.02)
        assert _used(redis_client, redis_prefix, "c") == 0  # a thread's release is done at once
        assert limits.try_acquire(2)
        assert not limits.try_acquire(1)
        limits.release(2)
        with limits:
            assert _used(redis_client, redis_prefix, "c") == 1
        assert _used(redis_client, redis_prefix, "c") == 0
        assert _queued(redis_client, redis_prefix, "c") == 0
    finally:
        cap.close()
        rate.close()
        other.members[0].close()  # type: ignore[union-attr]


def test_thread_pools_never_exceed_the_redis_total(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    caps = [_cap(redis_url + "?" * i, "pool", 3, redis_prefix) for i in range(2)]
    guard = threading.Lock()
    inside = peak = 0

    def job() -> None:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.002)
        with guard:
            inside -= 1

    try:
        pools = [ThreadPool(workers=4, limit=Limits(c, CapacityLimiter(2))) for c in caps]
        futures = [pool.submit(job) for _ in range(15) for pool in pools]
        for f in futures:
            f.result(timeout=10)
        for pool in pools:
            pool.shutdown()
        assert peak == 3  # 2 per pool locally, 3 over both in Redis
        assert _used(redis_client, redis_prefix, "pool") == 0
    finally:
        for c in caps:
            c.close()
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    tasks_only = RedisCapacityLimiter(client, "x", 1, prefix=redis_prefix)
    with pytest.raises(TypeError, match=r"cannot be used by a ThreadPool.*redis\.asyncio\.Redis"):
        ThreadPool(limit=Limits(tasks_only))
    tasks_only.close()


# ----------------------------------------------------------------------- pools


async def test_worker_pools_never_exceed_the_redis_total(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    caps = [_cap(redis_url + "?" * i, "pool", 3, redis_prefix) for i in range(2)]
    inside = peak = 0

    async def job() -> None:
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        await asyncio.sleep(0.002)
        inside -= 1

    try:
        async with (
            WorkerPool(workers=5, limit=Limits(caps[0])) as one,
            WorkerPool(workers=5, limit=caps[1]) as two,
        ):
            jobs = [await pool.submit(job) for _ in range(20) for pool in (one, two)]
            await asyncio.gather(*jobs)
        assert peak == 3
    finally:
        for c in caps:
            await c.aclose()
    assert _used(redis_client, redis_prefix, "pool") == 0
    assert _holders(redis_client, redis_prefix, "pool") == {}


# ----------------------------------------------------------------------- PerKey


def test_with_key_is_checked_and_defaults_to_no_argument() -> None:
    with pytest.raises(TypeError, match=r"with_key must be a bool .*got 1"):
        PerKey(lambda: CapacityLimiter(1), with_key=1)  # type: ignore[call-overload]
    plain: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1))
    keyed: PerKey[str, CapacityLimiter] = PerKey(lambda k: CapacityLimiter(len(k)), with_key=True)
    assert plain.try_acquire("abc") and not plain.try_acquire("abc")
    assert keyed.try_acquire("abc", 3) and not keyed.try_acquire("abc")
    plain.release("abc")
    keyed.release("abc", 3)


async def test_per_key_redis_keys_expire_and_idle_members_are_forgotten(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    made: list[str] = []

    def per_host(host: str) -> Limits:
        made.append(host)
        return Limits(
            _cap(redis_url, f"host-{host}", 1, redis_prefix),
            RedisTokenBucket(redis_url, f"host-{host}", 1000, prefix=redis_prefix),
        )

    per_key: PerKey[str, Limits] = PerKey(per_host, with_key=True, name="hosts")
    outer = Limits(CapacityLimiter(8), per_key)
    try:
        async with outer.hold("a"), outer.hold("b"):
            assert not await outer.try_acquire_async(key="a")  # a's Redis cap is 1
            assert _used(redis_client, redis_prefix, "host-a") == 1
            assert per_key.sweep() == 0  # held: not idle
            stats = outer.statistics()
            assert stats.members[-1].keys == 2  # type: ignore[union-attr]
            held = per_key.statistics_for("a")
            assert isinstance(held, LimitsStatistics)
            assert isinstance(held.members[0], RedisCapacityLimiterStatistics)
            assert held.members[0].held == 1
        assert made == ["a", "b"]
        keys = list(redis_client.scan_iter(match=f"{redis_prefix}:*"))
        assert keys and all(redis_client.pttl(k) > 0 for k in keys)  # every key expires
        beats = [t for t in asyncio.all_tasks() if t.get_name().startswith("poolkit redis lease")]
        assert beats  # the limiters' heartbeats, while they held

        await _until(lambda: _used(redis_client, redis_prefix, "host-a") == 0)
        await _until(lambda: per_key.sweep() == 0 and len(per_key) == 0)
        assert per_key.statistics().forgotten_total == 2
        for _ in range(3):
            await asyncio.sleep(0)
        assert all(t.done() for t in beats)  # forgetting stopped them: nothing left running
        assert [t for t in asyncio.all_tasks() if "lease" in t.get_name()] == []

        async with outer.hold("a"):  # a new object for the key, on the same connections
            assert made == ["a", "b", "a"]
            assert _used(redis_client, redis_prefix, "host-a") == 1
    finally:
        await per_key.aclose()
    assert _used(redis_client, redis_prefix, "host-a") == 0
    with pytest.raises(RuntimeError, match="was closed"):
        await outer.acquire(key="c")


async def test_a_limiter_and_a_bucket_on_one_link_wake_their_own_waiters(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A limiter and a bucket made from one URL share a link, hence one table of waiters by
    # ticket.  Their tickets used to be counted apart, so a cap waiter and a bucket waiter could
    # bear one name, and the cap's grant then woke nobody (two scraper processes sharing a
    # host's cap and rate waited for ever).  Every ticket registered must come from the link's
    # one count, and no two waiters may bear one.
    cap = _cap(redis_url, "cap", 2, redis_prefix)
    rate = RedisTokenBucket(redis_url, "rate", 500, 1, prefix=redis_prefix, op_timeout=0.5)
    link = cap._link
    assert rate._link is link
    drawn: list[str] = []
    registered: list[str] = []
    new_ticket, register, subscribe = link.new_ticket, link.register, link.subscribe

    def spy_new_ticket() -> str:
        drawn.append(new_ticket())
        return drawn[-1]

    def spy_register(ticket: str, callback: Any) -> bool:
        registered.append(ticket)
        return register(ticket, callback)

    async def spy_subscribe(ticket: str, callback: Any) -> None:
        registered.append(ticket)
        await subscribe(ticket, callback)

    monkeypatch.setattr(link, "new_ticket", spy_new_ticket)
    monkeypatch.setattr(link, "register", spy_register)
    monkeypatch.setattr(link, "subscribe", spy_subscribe)
    limits = Limits(cap, rate)
    served = 0

    async def worker() -> None:
        nonlocal served
        for _ in range(5):
            async with limits.hold():
                served += 1
                await asyncio.sleep(0.001)

    try:
        async with asyncio.timeout(15):
            await asyncio.gather(*(worker() for _ in range(6)))
        assert served == 30
        assert registered, "nobody waited: the test proves nothing"
        assert set(registered) <= set(drawn)
        assert len(set(drawn)) == len(drawn)
    finally:
        await cap.aclose()
        await rate.aclose()
