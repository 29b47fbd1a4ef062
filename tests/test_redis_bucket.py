"""RedisTokenBucket against a real Redis: the shared one at 127.0.0.1:6379 (under a random
prefix) and, for faults and command counts, a server of the test's own.

Two bucket objects made from different URLs of one server (``url`` and ``url + "?"``) stand for
two processes: they share no link, so no client and no wake-up channel, only Redis.  Accuracy
with many real processes is measured in tests/test_redis_multiprocess.py.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from contextlib import aclosing, closing
from typing import Any

import pytest

from poolkit._primitives._redis_bucket import RedisTokenBucket
from poolkit._primitives._redis_link import RedisLink, RedisUnavailable
from tests.redis_support import (
    OwnRedisServer,
    commandstats,
    own_redis,
    redis_client,
    redis_prefix,
    redis_url,
)

__all__ = ["own_redis", "redis_client", "redis_prefix", "redis_url"]  # fixtures, used by name


# Commands the bucket's scripts run inside Redis: INFO commandstats counts them too, but they cost
# no round trip (and cannot run without an EVALSHA).
_IN_SCRIPTS = {
    "type",
    "time",
    "hmget",
    "hget",
    "hset",
    "hexists",
    "hdel",
    "hincrby",
    "zrange",
    "zadd",
    "zrem",
    "pexpire",
    "del",
    "exists",
    "publish",
}


def _sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands clients sent between two ``commandstats`` (the second INFO excluded)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["info"] -= 1
    return {k: v for k, v in delta.items() if v and k not in _IN_SCRIPTS}


def _keys(prefix: str, key: str = "k") -> tuple[str, str, str]:
    return (f"{prefix}:{{{key}}}:b", f"{prefix}:{{{key}}}:q", f"{prefix}:{{{key}}}:t")


def _queued(client: Any, prefix: str = "poolkit", key: str = "k") -> int:
    """Tickets in the bucket's queue in Redis (the test's own server uses the default prefix)."""
    return int(client.zcard(f"{prefix}:{{{key}}}:q"))


async def _until(predicate: Any, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


# ----------------------------------------------------------------------- arguments


def test_bad_arguments_name_the_argument_and_value(redis_url: str) -> None:
    with pytest.raises(ValueError, match=r"rate .*got 0"):
        RedisTokenBucket(redis_url, "k", 0)
    with pytest.raises(ValueError, match=r"rate .*got -1"):
        RedisTokenBucket(redis_url, "k", -1)
    with pytest.raises(ValueError, match=r"rate .*'inf'"):
        RedisTokenBucket(redis_url, "k", "inf")
    with pytest.raises(TypeError, match="rate"):
        RedisTokenBucket(redis_url, "k", [5])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"burst .*got 0"):
        RedisTokenBucket(redis_url, "k", 5, 0)
    with pytest.raises(TypeError, match="burst"):
        RedisTokenBucket(redis_url, "k", 5, "2")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"on_error .*'ignore'"):
        RedisTokenBucket(redis_url, "k", 5, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_share"):
        RedisTokenBucket(redis_url, "k", 5, on_error="local")
    with pytest.raises(ValueError, match=r"local_share .*got 2"):
        RedisTokenBucket(redis_url, "k", 5, on_error="local", local_share=2)
    with pytest.raises(ValueError, match=r"key .*'a{b}'"):
        RedisTokenBucket(redis_url, "a{b}", 5)
    with pytest.raises(TypeError, match="key"):
        RedisTokenBucket(redis_url, 3, 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"op_timeout .*got 0"):
        RedisTokenBucket(redis_url, "k", 5, op_timeout=0)
    with pytest.raises(ValueError, match=r"redis must be a Redis URL .*'http://x'"):
        RedisTokenBucket("http://x", "k", 5)
    with pytest.raises(TypeError, match="redis must be"):
        RedisTokenBucket(42, "k", 5)
    b = RedisTokenBucket(redis_url, "k", "5/s", 2)
    try:
        assert b.rate == 5.0 and b.burst == 2.0
        with pytest.raises(ValueError, match="cost 3 exceeds the bucket's burst 2"):
            b.acquire_blocking(3)
        with pytest.raises(ValueError, match=r"cost .*got 0"):
            b.try_acquire_blocking(0)
        with pytest.raises(TypeError, match="cost"):
            b.try_acquire_blocking("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            b.acquire_blocking(1, timeout=-1)
    finally:
        b.close()


def test_a_key_of_the_wrong_type_is_named(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    state, _, _ = _keys(redis_prefix)
    redis_client.set(state, "not a hash")
    with closing(RedisTokenBucket(redis_url, "k", 5, prefix=redis_prefix)) as b:
        with pytest.raises(TypeError, match=f"Redis key '{state}' holds a string"):
            b.try_acquire_blocking()
        with pytest.raises(TypeError, match=f"Redis key '{state}' holds a string"):
            b.acquire_blocking()
    assert redis_client.get(state) == b"not a hash"  # nothing was overwritten


@pytest.mark.parametrize("part", [1, 2])
def test_a_queue_key_of_the_wrong_type_is_named_on_the_fast_path_too(
    redis_url: str, redis_prefix: str, redis_client: Any, part: int
) -> None:
    # The uncontended path checks no types itself: its EXISTS sends it to the full script.
    key = _keys(redis_prefix)[part]
    with closing(RedisTokenBucket(redis_url, "k", 5, prefix=redis_prefix)) as b:
        b.acquire_blocking()  # the state exists: the next calls would take the fast path
        redis_client.set(key, "not a queue")
        with pytest.raises(TypeError, match=f"Redis key '{key}' holds a string"):
            b.try_acquire_blocking()
        with pytest.raises(TypeError, match=f"Redis key '{key}' holds a string"):
            b.acquire_blocking()
    assert redis_client.get(key) == b"not a queue"


# ----------------------------------------------------------------------- round trips, keys


async def test_uncontended_acquire_is_one_round_trip(own_redis: OwnRedisServer) -> None:
    b = RedisTokenBucket(own_redis.url, "k", 1000, 1000)
    probe = own_redis.client()
    try:
        await b.acquire()  # loads the script, subscribes this loop to wake-ups
        assert await b.try_acquire()
        before = commandstats(probe)
        for _ in range(20):
            await b.acquire()
        for _ in range(5):
            assert await b.try_acquire()
        assert _sent(before, commandstats(probe)) == {"evalsha": 25}
        assert b.statistics().granted_total == 27
    finally:
        probe.close()
        await b.aclose()


def test_uncontended_blocking_acquire_is_one_round_trip(own_redis: OwnRedisServer) -> None:
    probe = own_redis.client()
    with closing(RedisTokenBucket(own_redis.url, "k", 1000, 1000)) as b:
        b.acquire_blocking()
        before = commandstats(probe)
        for _ in range(10):
            b.acquire_blocking()
        after = commandstats(probe)
    probe.close()
    assert _sent(before, after) == {"evalsha": 10}


async def test_keys_expire_when_idle(redis_url: str, redis_prefix: str, redis_client: Any) -> None:
    state, queue, tickets = _keys(redis_prefix)
    b = RedisTokenBucket(redis_url, "k", 10, 5, prefix=redis_prefix)
    try:
        await b.acquire(5)
        # Full again in 0.5 s; the state lives that long plus two leases (12 s).
        ttl = redis_client.pttl(state)
        assert 12_000 < ttl <= 12_600
        assert redis_client.exists(queue, tickets) == 0
        waiter = asyncio.ensure_future(b.acquire(2))
        await _until(lambda: redis_client.exists(queue) == 1)
        assert 0 < redis_client.pttl(queue) <= 12_000  # two leases
        await waiter
        assert redis_client.exists(queue, tickets) == 0  # an empty queue is deleted at once
    finally:
        await b.aclose()


# ----------------------------------------------------------------------- fairness, pushing


async def test_a_heavy_head_is_not_starved_by_light_ones_from_another_process(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    heavy = RedisTokenBucket(redis_url, "k", 20, 4, prefix=redis_prefix)
    light = RedisTokenBucket(redis_url + "?", "k", 20, 4, prefix=redis_prefix)  # another link
    order: list[str] = []
    try:
        await heavy.acquire(4)  # empty: the next 4 tokens take 0.2 s

        async def small(i: int) -> None:
            await light.acquire(1)
            order.append(f"light{i}")

        first = asyncio.ensure_future(small(0))
        await _until(lambda: _queued(redis_client, redis_prefix) == 1)
        big = asyncio.ensure_future(heavy.acquire(4))
        await _until(lambda: _queued(redis_client, redis_prefix) == 2)
        big.add_done_callback(lambda _: order.append("heavy"))
        rest = [asyncio.ensure_future(small(i)) for i in range(1, 6)]
        await asyncio.gather(first, big, *rest)
        # light0 came first; the heavy one then waited for 4 tokens while the light ones, that
        # could each have gone after one token, waited behind it.
        assert order[:2] == ["light0", "heavy"]
        assert sorted(order[2:]) == [f"light{i}" for i in range(1, 6)]
    finally:
        await heavy.aclose()
        await light.aclose()


async def test_waiters_send_nothing_while_they_wait(own_redis: OwnRedisServer) -> None:
    head_bucket = RedisTokenBucket(own_redis.url, "k", 1, 1)
    behind_bucket = RedisTokenBucket(own_redis.url + "?", "k", 1, 1)
    probe = own_redis.client()
    try:
        await head_bucket.acquire()  # empty now: the next token in 1 s
        await behind_bucket.try_acquire()  # loads the scripts
        head = asyncio.ensure_future(head_bucket.acquire())
        await _until(lambda: _queued(probe) == 1)
        behind = asyncio.ensure_future(behind_bucket.acquire())
        await _until(lambda: _queued(probe) == 2)
        before = commandstats(probe)
        await asyncio.sleep(0.8)  # the head sleeps on a timer, the other waits for a push
        after = commandstats(probe)
        delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
        delta["info"] -= 1
        assert {k: v for k, v in delta.items() if v} == {}
        assert not head.done() and not behind.done()
        await asyncio.gather(head, behind)
    finally:
        probe.close()
        await head_bucket.aclose()
        await behind_bucket.aclose()


async def test_the_next_waiter_is_woken_within_milliseconds(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    a = RedisTokenBucket(redis_url, "k", 1, 4, prefix=redis_prefix)
    b = RedisTokenBucket(redis_url + "?", "k", 1, 4, prefix=redis_prefix)
    try:
        await a.acquire(2)  # 2 tokens left
        heavy = asyncio.ensure_future(a.acquire(4))  # the head, for 2 s
        await _until(lambda: _queued(redis_client, redis_prefix) == 1)
        light = asyncio.ensure_future(b.acquire(1))  # could go now, but it is behind
        await asyncio.sleep(0.2)
        assert not light.done()  # FIFO: nobody passes the head
        heavy.cancel()
        t0 = time.monotonic()
        await light
        latency = time.monotonic() - t0
        assert latency < 0.05, latency
        with pytest.raises(asyncio.CancelledError):
            await heavy
    finally:
        await a.aclose()
        await b.aclose()


async def test_configure_is_seen_by_another_object_and_wakes_the_head(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    a = RedisTokenBucket(redis_url, "k", 1, 2, prefix=redis_prefix)
    b = RedisTokenBucket(redis_url + "?", "k", 1, 2, prefix=redis_prefix)
    try:
        await a.acquire(2)
        waiter = asyncio.ensure_future(b.acquire(1))  # head, 1 s to wait at 1/s
        await _until(lambda: _queued(redis_client, redis_prefix) == 1)
        t0 = time.monotonic()
        await a.configure(rate=100, burst=7)
        await waiter
        assert time.monotonic() - t0 < 0.1  # told its new wait (10 ms), not left on 1 s
        assert (b.rate, b.burst) == (100.0, 7.0)
        await asyncio.sleep(0.08)
        assert await b.try_acquire(7)  # a burst of 7, which b's constructor did not allow
        c = RedisTokenBucket(redis_url + "?x", "k", 3, 1, prefix=redis_prefix)
        try:
            await c.try_acquire()
            assert (c.rate, c.burst) == (100.0, 7.0)  # Redis' values win over the constructor's
        finally:
            await c.aclose()
    finally:
        await a.aclose()
        await b.aclose()


def test_configure_blocking_keeps_the_tokens_held(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    with (
        closing(RedisTokenBucket(redis_url, "k", 10, 10, prefix=redis_prefix)) as a,
        closing(RedisTokenBucket(redis_url + "?", "k", 1, 1, prefix=redis_prefix)) as b,
    ):
        a.acquire_blocking(10)  # empty
        with pytest.raises(ValueError, match="configure"):
            a.configure_blocking()
        with pytest.raises(ValueError, match=r"rate .*got 0"):
            a.configure_blocking(rate=0)
        a.configure_blocking(rate="1/s")  # still empty: a lower rate hands out nothing more
        assert (a.rate, a.burst) == (1.0, 10.0)
        assert not b.try_acquire_blocking()
        assert (b.rate, b.burst) == (1.0, 10.0)
        a.configure_blocking(rate="100/s", burst=3)
        t0 = time.monotonic()
        b.acquire_blocking(3)  # 30 ms at 100/s from empty
        assert time.monotonic() - t0 < 0.2


def test_a_blocking_waiter_is_woken_by_a_push(redis_url: str, redis_prefix: str) -> None:
    with closing(RedisTokenBucket(redis_url, "k", 5, 1, prefix=redis_prefix)) as b:
        b.acquire_blocking()
        times: list[float] = []
        t0 = time.monotonic()

        def worker() -> None:
            b.acquire_blocking()
            times.append(time.monotonic() - t0)

        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(5)
        assert len(times) == 3
        assert 0.5 <= max(times) < 0.8  # 3 tokens at 5/s, served in turn
        assert b.statistics().waiting == 0


async def test_a_client_passed_in_is_used_and_not_closed(redis_url: str, redis_prefix: str) -> None:
    import redis.asyncio

    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        async with aclosing(RedisTokenBucket(client, "k", 5, 1, prefix=redis_prefix)) as b:
            await b.acquire()
            t0 = time.monotonic()
            await b.acquire()  # waits for the next token, woken by its own timer
            assert 0.15 < time.monotonic() - t0 < 0.4
            with pytest.raises(RuntimeError, match=r"redis\.asyncio\.Redis client"):
                b.try_acquire_blocking()
        assert await client.ping()  # still open
    finally:
        await client.aclose()


def test_a_blocking_client_passed_in_is_used_from_threads(
    redis_url: str, redis_prefix: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=1)
    try:
        with closing(RedisTokenBucket(client, "k", 5, 1, prefix=redis_prefix)) as b:
            assert b.try_acquire_blocking()
            assert not b.try_acquire_blocking()
            b.acquire_blocking()

            async def from_a_task() -> None:
                await b.try_acquire()

            with pytest.raises(RuntimeError, match=r"blocking redis\.Redis client"):
                asyncio.run(from_a_task())
        assert client.ping()
    finally:
        client.close()


# ----------------------------------------------------------------------- timeouts, cancellation


async def test_a_timeout_that_cannot_be_met_fails_at_once(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    _, queue, tickets = _keys(redis_prefix)
    a = RedisTokenBucket(redis_url, "k", 2, 2, prefix=redis_prefix)
    try:
        await a.acquire(2)  # empty: a token every 0.5 s
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"timeout=0.3"):
            await a.acquire(1, timeout=0.3)
        with pytest.raises(TimeoutError):
            await a.acquire(1, timeout=0)
        assert time.monotonic() - t0 < 0.1
        assert redis_client.exists(queue, tickets) == 0
        head = asyncio.ensure_future(a.acquire(2))  # 1 s
        await _until(lambda: _queued(redis_client, redis_prefix) == 1)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="waiters ahead"):
            await a.acquire(1, timeout=1.2)  # 1 s for the head, then 0.5 s: 1.5 s
        assert time.monotonic() - t0 < 0.1
        assert redis_client.zcard(queue) == 1
        await head
    finally:
        await a.aclose()


async def test_cancelled_and_timed_out_waiters_leave_nothing_and_take_nothing(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    state, queue, tickets = _keys(redis_prefix)
    a = RedisTokenBucket(redis_url, "k", 5, 5, prefix=redis_prefix)
    try:
        await a.acquire(5)  # empty: full again in 1 s
        tat = redis_client.hget(state, "tat")
        cancelled = asyncio.ensure_future(a.acquire(5))
        await _until(lambda: redis_client.exists(queue) == 1)
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cancelled
        assert redis_client.exists(queue, tickets) == 0
        assert redis_client.hget(state, "tat") == tat

        # A head that never claims (its process hangs, its lease still good) holds up a waiter
        # whose timeout looked easy to meet (1 token for the head and 1 of its own: 0.4 s).
        seconds, micros = redis_client.time()
        expiry = seconds * 1_000_000 + micros + 10_000_000
        redis_client.zadd(queue, {"stuck": 0})
        redis_client.hset(tickets, "stuck", f"1 {expiry} {redis_prefix}:wake:nobody")
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            await a.acquire(1, timeout=0.6)
        assert 0.55 < time.monotonic() - t0 < 0.8
        assert redis_client.zrange(queue, 0, -1) == [b"stuck"]  # its own ticket is gone
        assert set(redis_client.hkeys(tickets)) == {b"stuck", b"#seq"}  # #seq: the counter
        assert redis_client.hget(state, "tat") == tat
        redis_client.delete(queue, tickets)
        # Nothing was consumed: the bucket is full once the first acquire's 1 s has passed.
        seconds, micros = redis_client.time()
        full_in = (float(tat.decode()) - (seconds * 1_000_000 + micros)) / 1e6
        await asyncio.sleep(max(0.0, full_in) + 0.02)
        assert await a.try_acquire(5)
    finally:
        await a.aclose()


async def test_a_crashed_waiter_holds_the_queue_for_one_lease_at_most(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    _, queue, tickets = _keys(redis_prefix)
    a = RedisTokenBucket(redis_url, "k", 5, 5, prefix=redis_prefix)
    a._lease = 0.6  # heartbeats every 0.2 s
    try:
        assert await a.try_acquire()  # the state exists; 4 tokens left
        # The head of a process that died: nobody will claim for it or renew its lease.
        seconds, micros = redis_client.time()
        expiry = seconds * 1_000_000 + micros + 400_000
        redis_client.zadd(queue, {"dead": 0})
        redis_client.hset(tickets, "dead", f"1 {expiry} {redis_prefix}:wake:dead")
        t0 = time.monotonic()
        await a.acquire()  # FIFO: behind the dead head, until its lease runs out
        elapsed = time.monotonic() - t0
        assert 0.35 < elapsed < 0.9, elapsed
        assert redis_client.exists(queue, tickets) == 0
    finally:
        await a.aclose()


async def test_cancelling_while_a_script_is_in_flight_leaves_nothing(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    state, queue, tickets = _keys(redis_prefix)
    a = RedisTokenBucket(redis_url, "k", 5, 5, prefix=redis_prefix)
    try:
        await a.acquire(1)
        tat = redis_client.hget(state, "tat")
        for _ in range(5):  # cancel at once: the script is sent, its reply not read yet
            task = asyncio.ensure_future(a.acquire(1))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0.05)
        assert redis_client.exists(queue, tickets) == 0
        # Granted in Redis, then given back: tat is where it was (the rate is exact in floats
        # only up to rounding, hence approx).
        assert float(redis_client.hget(state, "tat")) == pytest.approx(float(tat), abs=2)
    finally:
        await a.aclose()


def test_a_skewed_client_clock_changes_nothing(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600.0)  # an hour ahead
    with closing(RedisTokenBucket(redis_url, "k", 10, 1, prefix=redis_prefix)) as b:
        t0 = time.monotonic()
        for _ in range(4):
            b.acquire_blocking()
        elapsed = time.monotonic() - t0
    monkeypatch.setattr(time, "time", lambda: real() - 7200.0)  # and two hours behind
    with closing(RedisTokenBucket(redis_url, "k2", 10, 1, prefix=redis_prefix)) as b:
        t0 = time.monotonic()
        for _ in range(4):
            b.acquire_blocking()
        elapsed2 = time.monotonic() - t0
    rng = random.Random(7)
    monkeypatch.setattr(time, "time", lambda: real() + rng.uniform(-86400, 86400))  # erratic
    with closing(RedisTokenBucket(redis_url, "k3", 10, 1, prefix=redis_prefix)) as b:
        t0 = time.monotonic()
        for _ in range(4):
            b.acquire_blocking()
        elapsed3 = time.monotonic() - t0
    for e in (elapsed, elapsed2, elapsed3):  # 3 tokens at 10/s after the first, each time
        assert 0.28 <= e < 0.45, e


# ----------------------------------------------------------------------- faults

# A test that restarts its own Redis server leaves the new one running when it returns, for the
# fixture to stop: not a leak.
_RESTARTS_ITS_SERVER = pytest.mark.no_leaks(ignore_names=["redis-server"])


@_RESTARTS_ITS_SERVER
async def test_on_error_raise_fails_promptly_when_the_server_is_killed_or_paused(
    own_redis: OwnRedisServer,
) -> None:
    b = RedisTokenBucket(own_redis.url, "k", 100, 10, op_timeout=0.3)
    try:
        await b.acquire()
        own_redis.kill()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable) as info:
            await b.acquire()
        assert time.monotonic() - t0 < 0.5
        assert info.value.__cause__ is not None
        own_redis.start()
        await b.acquire()  # reconnects by itself
        own_redis.pause()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable, match=r"op_timeout=0.3"):
            await b.acquire()
        with pytest.raises(RedisUnavailable):
            await b.try_acquire()
        assert time.monotonic() - t0 < 0.9
        own_redis.resume()
        await b.acquire()
        s = b.statistics()
        assert s.errors_total == 3 and s.fallbacks_total == 0
    finally:
        own_redis.resume()
        await b.aclose()


@_RESTARTS_ITS_SERVER
def test_on_error_raise_in_threads(own_redis: OwnRedisServer) -> None:
    with closing(RedisTokenBucket(own_redis.url, "k", 100, 10, op_timeout=0.3)) as b:
        b.acquire_blocking()
        own_redis.pause()
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable):
            b.acquire_blocking()
        assert time.monotonic() - t0 < 0.9
        own_redis.resume()
        own_redis.kill()
        with pytest.raises(RedisUnavailable):
            b.try_acquire_blocking()
        own_redis.start()
        assert b.try_acquire_blocking()


async def test_on_error_allow_admits(own_redis: OwnRedisServer) -> None:
    b = RedisTokenBucket(own_redis.url, "k", 1, 1, on_error="allow", op_timeout=0.3)
    try:
        await b.acquire()
        own_redis.pause()
        t0 = time.monotonic()
        for _ in range(3):
            await b.acquire()  # would wait 1 s each with Redis
        assert await b.try_acquire()
        assert time.monotonic() - t0 < 1.5
        assert b.statistics().fallbacks_total == 4
        own_redis.resume()
        assert not await b.try_acquire()  # the shared limit is back
    finally:
        own_redis.resume()
        await b.aclose()


@_RESTARTS_ITS_SERVER
async def test_on_error_local_falls_back_to_a_local_share(own_redis: OwnRedisServer) -> None:
    b = RedisTokenBucket(
        own_redis.url, "k", 10, 4, on_error="local", local_share=0.5, op_timeout=0.2
    )
    try:
        await b.acquire()
        own_redis.kill()
        t0 = time.monotonic()
        await b.acquire()  # the local bucket: 5/s, burst 2, full
        await b.acquire()
        fast = time.monotonic() - t0
        assert not await b.try_acquire()  # local bucket empty
        t1 = time.monotonic()
        await b.acquire()  # 0.2 s at 5/s (plus the failed Redis call)
        slow = time.monotonic() - t1
        assert fast < 0.6 and 0.15 < slow < 0.7
        assert b.statistics().fallbacks_total == 4
        own_redis.start()
        await b.acquire()
        assert b.statistics().fallbacks_total == 4  # Redis again
    finally:
        await b.aclose()


async def test_waiters_apply_the_policy_promptly_when_the_server_dies(
    own_redis: OwnRedisServer,
) -> None:
    a = RedisTokenBucket(own_redis.url, "k", 0.5, 1, op_timeout=0.3)
    allow = RedisTokenBucket(own_redis.url + "?", "k", 0.5, 1, on_error="allow", op_timeout=0.3)
    probe = own_redis.client()
    try:
        await a.acquire()  # empty: the next token in 2 s
        head = asyncio.ensure_future(a.acquire())
        await _until(lambda: _queued(probe) == 1)
        behind = asyncio.ensure_future(allow.acquire())
        await _until(lambda: _queued(probe) == 2)
        probe.close()
        own_redis.kill()  # both subscriptions break: each waiter looks at its ticket at once
        t0 = time.monotonic()
        with pytest.raises(RedisUnavailable):
            await head
        await behind  # admitted: on_error="allow"
        assert time.monotonic() - t0 < 1.0  # not the 2 s the token would have taken
        assert allow.statistics().fallbacks_total == 1
        assert a.statistics().errors_total == 1 and a.statistics().waiting == 0
    finally:
        probe.close()
        await a.aclose()
        await allow.aclose()


@_RESTARTS_ITS_SERVER
async def test_a_waiter_recovers_when_the_server_restarts(own_redis: OwnRedisServer) -> None:
    a = RedisTokenBucket(own_redis.url, "k", 2, 1, op_timeout=0.5)
    probe = own_redis.client()
    try:
        await a.acquire()
        waiter = asyncio.ensure_future(a.acquire())  # head, 0.5 s
        await _until(lambda: _queued(probe) == 1)
        probe.close()
        own_redis.restart()  # its data is gone: the ticket is lost, the bucket full again
        await asyncio.wait_for(waiter, 3)
        assert a.statistics().granted_total == 2
    finally:
        probe.close()
        await a.aclose()


def test_links_are_shared_and_closed_with_their_last_user(redis_url: str) -> None:
    a = RedisTokenBucket(redis_url, "k1", 5)
    b = RedisTokenBucket(redis_url, "k2", 5)
    link = RedisLink.shared(redis_url, prefix="poolkit", op_timeout=1.0)

    def closed() -> bool:  # read afresh each time (an inline check would be narrowed by mypy)
        return link.closed

    try:
        assert a._link is link and b._link is link  # one subscription for the process
        assert not closed()
    finally:
        link.release()
    a.close()
    a.close()  # idempotent
    assert not closed()
    b.close()
    assert closed()
    with pytest.raises(RuntimeError, match="closed"):
        b.try_acquire_blocking()


async def test_async_with_takes_one_token_as_a_local_bucket_does(
    redis_url: str, redis_prefix: str
) -> None:
    async with aclosing(RedisTokenBucket(redis_url, "k", 1, 2, prefix=redis_prefix)) as b:
        async with b:
            pass
        async with b:
            pass
        assert b.statistics().granted_total == 2
        assert not await b.try_acquire()  # both tokens were spent: leaving gave none back


def test_with_takes_one_token_in_a_thread(redis_url: str, redis_prefix: str) -> None:
    with closing(RedisTokenBucket(redis_url, "k", 1, 1, prefix=redis_prefix)) as b:
        with b:
            pass
        assert b.statistics().granted_total == 1
        assert not b.try_acquire_blocking()
