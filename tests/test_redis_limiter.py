"""RedisCapacityLimiter against a real Redis: the shared one at 127.0.0.1:6379 (under a random
prefix) and, for faults and command counts, a server of the test's own.

Limiter objects made from different URLs of one server (``url`` and ``url + "?"``...) stand for
different processes: they share no link, so no client and no wake-up channel, only Redis.  The
crash test uses a real second process.
"""

from __future__ import annotations

import asyncio
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from poolkit import LeaseLost, NotAcquired
from poolkit._primitives._redis_limiter import RedisCapacityLimiter
from poolkit._primitives._redis_link import RedisUnavailable
from tests.redis_support import (
    OwnRedisServer,
    commandstats,
    own_redis,
    redis_client,
    redis_prefix,
    redis_url,
)

__all__ = ["own_redis", "redis_client", "redis_prefix", "redis_url"]  # fixtures, used by name

_ROOT = Path(__file__).resolve().parents[1]

# Commands the limiter's scripts run inside Redis: INFO commandstats counts them, but they cost no
# round trip (and cannot run without an EVALSHA).
_IN_SCRIPTS = {
    "type",
    "time",
    "hget",
    "hmget",
    "hset",
    "hdel",
    "hincrby",
    "zrange",
    "zrangebyscore",
    "zremrangebyscore",
    "zscore",
    "zadd",
    "zrem",
    "pexpire",
    "publish",
}


def _sent(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands clients sent between two ``commandstats`` (the second INFO excluded)."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    delta["info"] -= 1
    return {k: v for k, v in delta.items() if v and k not in _IN_SCRIPTS}


def _key(prefix: str, part: str, key: str = "k") -> str:
    return f"{prefix}:{{{key}}}:{part}"


def _state(client: Any, prefix: str, key: str = "k") -> dict[str, Any]:
    """What Redis holds for the limit: used, holders, queue."""
    return {
        "used": int(client.hget(_key(prefix, "s", key), "used") or 0),
        "holders": {k.decode(): int(v) for k, v in client.hgetall(_key(prefix, "h", key)).items()},
        "queued": int(client.zcard(_key(prefix, "q", key))),
        "tickets": int(client.hlen(_key(prefix, "d", key))),
    }


def _idle(client: Any, prefix: str, key: str = "k") -> bool:
    s = _state(client, prefix, key)
    return s["used"] == 0 and not s["holders"] and s["queued"] == 0 and s["tickets"] == 0


async def _until(predicate: Any, limit: float = 2.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def _make(url: str, total: int, prefix: str, n: int, **kw: Any) -> list[RedisCapacityLimiter]:
    """``n`` limiters on one key, each as if in its own process (a URL of its own)."""
    kw.setdefault("lease_ttl", 2.0)
    kw.setdefault("op_timeout", 0.5)
    return [RedisCapacityLimiter(url + "?" * i, "k", total, prefix=prefix, **kw) for i in range(n)]


# ----------------------------------------------------------------------- arguments


def test_bad_arguments_name_the_argument_and_value(redis_url: str) -> None:
    with pytest.raises(ValueError, match=r"total must be >= 1, got 0"):
        RedisCapacityLimiter(redis_url, "k", 0)
    with pytest.raises(TypeError, match=r"total must be a positive int, got 2.5"):
        RedisCapacityLimiter(redis_url, "k", 2.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"total must be a positive int, got True"):
        RedisCapacityLimiter(redis_url, "k", True)
    with pytest.raises(ValueError, match=r"key .*'a{b}'"):
        RedisCapacityLimiter(redis_url, "a{b}", 2)
    with pytest.raises(ValueError, match=r"lease_ttl .*got 0"):
        RedisCapacityLimiter(redis_url, "k", 2, lease_ttl=0)
    with pytest.raises(TypeError, match=r"lease_ttl .*'5'"):
        RedisCapacityLimiter(redis_url, "k", 2, lease_ttl="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"op_timeout must be shorter than lease_ttl / 2"):
        RedisCapacityLimiter(redis_url, "k", 2, lease_ttl=1, op_timeout=0.6)
    with pytest.raises(ValueError, match=r"on_error .*'ignore'"):
        RedisCapacityLimiter(redis_url, "k", 2, on_error="ignore")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="local_share"):
        RedisCapacityLimiter(redis_url, "k", 2, on_error="local")
    with pytest.raises(TypeError, match="on_lease_lost"):
        RedisCapacityLimiter(redis_url, "k", 2, on_lease_lost=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"redis must be a Redis URL .*'http://x'"):
        RedisCapacityLimiter("http://x", "k", 2)
    with pytest.raises(TypeError, match="redis must be"):
        RedisCapacityLimiter(42, "k", 2)
    with pytest.raises(TypeError, match=r"name must be a str or None, got 5"):
        RedisCapacityLimiter(redis_url, "k", 2, name=5)  # type: ignore[arg-type]


def test_bad_weights_and_wrong_key_type(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    (lim,) = _make(redis_url, 2, redis_prefix, 1)
    try:
        with pytest.raises(ValueError, match="weight 3 exceeds the limiter's total 2"):
            lim.acquire_blocking(3)
        with pytest.raises(ValueError, match=r"weight must be >= 1, got 0"):
            lim.try_acquire_blocking(0)
        with pytest.raises(TypeError, match="weight must be a positive int, got '1'"):
            lim.acquire_blocking("1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="timeout"):
            lim.acquire_blocking(1, timeout=-1)
        with pytest.raises(NotAcquired, match=r"release\(1\).*holds only 0"):
            lim.release_blocking(1)
    finally:
        lim.close()
    redis_client.set(_key(redis_prefix, "h", "w"), "a string")
    other = RedisCapacityLimiter(redis_url, "w", 2, prefix=redis_prefix)
    try:
        with pytest.raises(TypeError, match=r"holds a string, not what the limiter keeps"):
            other.acquire_blocking(1)
        assert redis_client.get(_key(redis_prefix, "h", "w")) == b"a string"  # untouched
    finally:
        other.close()


# ----------------------------------------------------------------------- basics


async def test_shared_between_objects_and_configure(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    a, b = _make(redis_url, 3, redis_prefix, 2)
    try:
        await a.acquire(2)
        assert not await b.try_acquire(2)
        assert await b.try_acquire(1)
        assert _state(redis_client, redis_prefix)["used"] == 3
        s = a.statistics()
        assert (s.held, s.total, s.key, s.lease_lost) == (2, 3, "k", False)
        assert "held=2/3" in repr(a)
        await b.configure(total=5)  # seen by every process, and by a's next script
        assert await a.try_acquire(2)
        assert a.total == 5
        await a.release(4)
        await b.release(1)
        assert _idle(redis_client, redis_prefix)
    finally:
        await a.aclose()
        await b.aclose()
    assert int(redis_client.pttl(_key(redis_prefix, "s"))) > 0  # idle keys expire


async def test_lowering_total_fails_waiters_that_can_never_fit(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    a, b = _make(redis_url, 3, redis_prefix, 2)
    try:
        await a.acquire(3)
        heavy = asyncio.create_task(b.acquire(3))
        await _until(lambda: b.statistics().waiting == 1)
        await a.configure(total=2)
        with pytest.raises(ValueError, match=r"weight 3 exceeds the limiter's total 2"):
            await asyncio.wait_for(heavy, 2)
        with pytest.raises(ValueError, match="weight 3 exceeds"):
            await b.acquire(3)
        await a.release(3)
        assert _idle(redis_client, redis_prefix) and b.statistics().total == 2
    finally:
        await a.aclose()
        await b.aclose()


@pytest.mark.parametrize("seed", [14, 15, 16])
async def test_cap_never_exceeded_with_random_cancellations(
    redis_url: str, redis_prefix: str, redis_client: Any, seed: int
) -> None:
    total = 5
    limiters = _make(redis_url, total, redis_prefix, 3)
    rnd = random.Random(seed)
    inside = 0  # what the holders record, not the limiters' counters
    peak = 0
    done = 0

    async def worker(lim: RedisCapacityLimiter) -> None:
        nonlocal inside, peak, done
        for _ in range(6):
            w = rnd.randint(1, 3)
            try:
                await lim.acquire(w, timeout=rnd.choice([None, 0.01, 0.05, 0.5]))
            except TimeoutError:
                continue
            inside += w
            peak = max(peak, inside)
            assert inside <= total
            try:
                await asyncio.sleep(rnd.random() * 0.01)
                done += 1
            finally:  # cancelled while holding: it still gives the weight back
                inside -= w
                await lim.release(w)

    tasks = [asyncio.create_task(worker(limiters[i % 3])) for i in range(12)]
    for _ in range(8):  # cancel at random points: while queued, in a script call, holding
        await asyncio.sleep(rnd.random() * 0.05)
        victim = rnd.choice(tasks)
        victim.cancel()
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    assert all(r is None or isinstance(r, asyncio.CancelledError) for r in results), results
    assert any(isinstance(r, asyncio.CancelledError) for r in results)
    assert done > 10 and peak <= total
    assert all(lim.statistics().held == 0 for lim in limiters)
    await _until(lambda: _idle(redis_client, redis_prefix))  # (undoing a cancelled acquire)
    for lim in limiters:
        await lim.aclose()


_WORKER = """
import asyncio, random, sys
import redis.asyncio
from poolkit._primitives._redis_limiter import RedisCapacityLimiter

async def main(url, prefix):
    lim = RedisCapacityLimiter(url, "k", 3, prefix=prefix, lease_ttl=2.0, op_timeout=0.5)
    record = redis.asyncio.Redis.from_url(url)
    inside = f"{prefix}:record:inside"

    async def holder(i):
        for _ in range(4):
            w = random.randint(1, 2)
            async with lim.hold(w):
                now = await record.incrby(inside, w)  # what the holders write
                await record.rpush(f"{prefix}:record:seen", now)
                await asyncio.sleep(random.random() * 0.01)
                await record.decrby(inside, w)

    try:
        await asyncio.gather(*(holder(i) for i in range(6)))
    finally:
        await lim.aclose()
        await record.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


async def test_cap_never_exceeded_across_real_processes(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WORKER, redis_url, redis_prefix, cwd=_ROOT
        )
        for _ in range(3)
    ]
    try:
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 20)
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
    assert codes == [0, 0, 0]
    seen = [int(x) for x in redis_client.lrange(f"{redis_prefix}:record:seen", 0, -1)]
    assert len(seen) == 3 * 6 * 4
    assert max(seen) <= 3 and max(seen) >= 2  # never above the cap, and it was contended
    assert _idle(redis_client, redis_prefix)


async def test_fifo_heavy_head_is_not_starved(redis_url: str, redis_prefix: str) -> None:
    a, b, c = _make(redis_url, 4, redis_prefix, 3)
    order: list[str] = []
    try:
        await a.acquire(3)

        async def take(lim: RedisCapacityLimiter, w: int, label: str) -> None:
            await lim.acquire(w)
            order.append(label)

        heavy = asyncio.create_task(take(b, 4, "heavy"))
        await _until(lambda: b.statistics().waiting == 1)
        assert not await c.try_acquire(1)  # it would fit, but the heavy head is first
        light = asyncio.create_task(take(c, 1, "light"))
        await _until(lambda: c.statistics().waiting == 1)
        await asyncio.sleep(0.05)
        assert order == []
        await a.release(3)
        await asyncio.wait_for(heavy, 2)
        await asyncio.sleep(0.05)
        assert order == ["heavy"]
        await b.release(4)
        await asyncio.wait_for(light, 2)
        assert order == ["heavy", "light"]
        await c.release(1)
    finally:
        for lim in (a, b, c):
            await lim.aclose()


async def test_timed_out_and_cancelled_acquire_leave_nothing(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    a, b = _make(redis_url, 2, redis_prefix, 2)
    try:
        await a.acquire(2)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match=r"no capacity within 0\.2 s"):
            await b.acquire(1, timeout=0.2)
        assert time.monotonic() - t0 < 1.0
        with pytest.raises(TimeoutError, match="no capacity right now"):
            await b.acquire(1, timeout=0)
        assert _state(redis_client, redis_prefix)["queued"] == 0
        task = asyncio.create_task(b.acquire(2))
        await _until(lambda: _state(redis_client, redis_prefix)["queued"] == 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        s = _state(redis_client, redis_prefix)
        assert s["queued"] == 0 and s["tickets"] == 0 and list(s["holders"].values()) == [2]
        # A grant that races the cancellation: either the acquire won (and holds), or it was
        # cancelled and the grant went back.  Try a few timings.
        outcomes = set()
        for delay in (0, 0, 0.0005, 0.001, 0.002):
            task = asyncio.create_task(b.acquire(2))
            await _until(lambda: _state(redis_client, redis_prefix)["queued"] == 1)
            release = asyncio.create_task(a.release(2))
            await asyncio.sleep(delay)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                outcomes.add("cancelled")
                assert b.statistics().held == 0
            else:
                outcomes.add("granted")
                assert b.statistics().held == 2
                await b.release(2)
            await release
            await _until(lambda: _idle(redis_client, redis_prefix))
            await a.acquire(2)
        await a.release(2)
        assert "cancelled" in outcomes
        assert b.statistics().waiting == 0
    finally:
        await a.aclose()
        await b.aclose()


def test_blocking_forms_from_threads(redis_url: str, redis_prefix: str, redis_client: Any) -> None:
    a, b = _make(redis_url, 2, redis_prefix, 2)
    got = threading.Event()
    try:
        a.acquire_blocking(2)

        def wait_for_it() -> None:
            with b:
                got.set()

        t = threading.Thread(target=wait_for_it)
        t.start()
        assert not got.wait(0.2)
        assert b.statistics().waiting == 1
        a.release_blocking(2)
        assert got.wait(2)
        t.join(2)
        assert _idle(redis_client, redis_prefix)
        assert a.try_acquire_blocking(2) and not b.try_acquire_blocking(1)
        with pytest.raises(TimeoutError):
            b.acquire_blocking(1, timeout=0.1)
        a.release_blocking(2)
    finally:
        a.close()
        b.close()


# ----------------------------------------------------------------------- round trips


async def test_one_round_trip_uncontended_and_none_while_waiting(own_redis: OwnRedisServer) -> None:
    client = own_redis.client()
    a, b = _make(own_redis.url, 2, "poolkit", 2, lease_ttl=6.0)
    try:
        await a.acquire(1)  # warm up: scripts loaded, subscription confirmed
        await a.release(1)
        before = commandstats(client)
        await a.acquire(1)
        assert _sent(before, commandstats(client)) == {"evalsha": 1}
        await a.acquire(1)  # now full
        calls: list[str] = []
        link = b._link
        real = link.eval

        async def counting(lua: str, keys: Any, args: Any, what: str) -> Any:
            calls.append(what)
            return await real(lua, keys, args, what)

        link.eval = counting  # type: ignore[method-assign]
        waiter = asyncio.create_task(b.acquire(2))
        await _until(lambda: b.statistics().waiting == 1)
        await asyncio.sleep(0.05)
        del calls[:]
        before = commandstats(client)
        await asyncio.sleep(1.0)  # heartbeats every 2 s: at most one of each limiter
        sent = _sent(before, commandstats(client))
        assert sent.get("evalsha", 0) <= 2 and set(sent) <= {"evalsha"}, sent
        assert set(calls) <= {"renew"}, calls  # the waiter itself: heartbeats only
        t0 = time.monotonic()
        await a.release(2)
        await asyncio.wait_for(waiter, 1)
        assert time.monotonic() - t0 < 0.2  # pushed, not polled
        await b.release(2)
    finally:
        await a.aclose()
        await b.aclose()
        client.close()


# ----------------------------------------------------------------------- crashes and faults

# A test that restarts its own Redis server leaves the new one running when it returns, for the
# fixture to stop: not a leak.
_RESTARTS_ITS_SERVER = pytest.mark.no_leaks(ignore_names=["redis-server"])


_HOLDER = """
import sys, time
from poolkit._primitives._redis_limiter import RedisCapacityLimiter
lim = RedisCapacityLimiter(sys.argv[1], "k", 2, prefix=sys.argv[2], lease_ttl=1.0,
                           op_timeout=0.3)
lim.acquire_blocking(2)
print("held", flush=True)
time.sleep(60)
"""


async def test_killed_holder_gives_weight_back_within_ttl(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _HOLDER,
        redis_url,
        redis_prefix,
        stdout=asyncio.subprocess.PIPE,
        cwd=_ROOT,
    )
    (lim,) = _make(redis_url, 2, redis_prefix, 1, lease_ttl=1.0, op_timeout=0.3)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 5)
        assert line.strip() == b"held"
        assert not await lim.try_acquire(1)
        waiter = asyncio.create_task(lim.acquire(2))
        await asyncio.sleep(0.5)  # the holder's heartbeat keeps it
        assert not waiter.done()
        proc.kill()
        killed = time.monotonic()
        await asyncio.wait_for(waiter, 3)
        assert time.monotonic() - killed < 1.0 + 1.0 / 3 + 0.3
        assert _state(redis_client, redis_prefix)["used"] == 2
        await lim.release(2)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
        await lim.aclose()


@_RESTARTS_ITS_SERVER
async def test_lease_lost_when_server_restarts(own_redis: OwnRedisServer) -> None:
    losses: list[LeaseLost] = []
    lim = RedisCapacityLimiter(
        own_redis.url, "k", 3, lease_ttl=0.9, op_timeout=0.3, on_lease_lost=losses.append
    )
    try:
        reached = False

        async def hold_through_restart() -> None:
            nonlocal reached
            async with lim.hold(2):
                await asyncio.to_thread(own_redis.restart)  # comes back empty
                await asyncio.sleep(3)
                reached = True

        t0 = time.monotonic()
        with pytest.raises(LeaseLost, match="lease was lost"):
            await hold_through_restart()
        assert not reached and time.monotonic() - t0 < 2.5
        assert len(losses) == 1 and "lost 2 of weight" in str(losses[0])
        assert lim.lease_lost and lim.statistics().lease_lost and lim.statistics().held == 0
        async with lim:  # a new lease
            assert lim.statistics().held == 1
        # A thread inside "with" hears of it at the block's exit.
        with pytest.raises(LeaseLost):
            await asyncio.to_thread(_hold_through_restart, lim, own_redis)
        assert len(losses) == 2

        async def inside_async_with() -> None:
            async with lim:
                await asyncio.to_thread(own_redis.restart)
                await asyncio.sleep(3)

        with pytest.raises(LeaseLost) as info:
            await inside_async_with()
        assert isinstance(info.value.__cause__, asyncio.CancelledError)
        assert len(losses) == 3
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # the cancellation was taken back
    finally:
        await lim.aclose()


def _hold_through_restart(lim: RedisCapacityLimiter, server: OwnRedisServer) -> None:
    with lim:
        server.restart()
        time.sleep(1.5)


async def test_on_error_policies_with_server_down(own_redis: OwnRedisServer) -> None:
    raise_ = RedisCapacityLimiter(own_redis.url, "k", 4, lease_ttl=1.0, op_timeout=0.3)
    allow = RedisCapacityLimiter(
        own_redis.url + "?", "k", 4, lease_ttl=1.0, op_timeout=0.3, on_error="allow"
    )
    local = RedisCapacityLimiter(
        own_redis.url + "??",
        "k",
        4,
        lease_ttl=1.0,
        op_timeout=0.3,
        on_error="local",
        local_share=0.5,
    )
    try:
        await raise_.acquire(1)
        await raise_.release(1)
        own_redis.pause()
        try:
            t0 = time.monotonic()
            with pytest.raises(RedisUnavailable) as info:
                await raise_.acquire(1)
            assert time.monotonic() - t0 < 1.0
            assert info.value.__cause__ is not None
        finally:
            own_redis.resume()
        own_redis.kill()
        with pytest.raises(RedisUnavailable):
            await raise_.try_acquire(1)
        await allow.acquire(4)
        assert allow.statistics().held_without_redis == 4
        await allow.release(4)
        await local.acquire(1)
        assert await local.try_acquire(1)
        assert not await local.try_acquire(1)  # the local share: 2 of 4
        with pytest.raises(TimeoutError):
            await local.acquire(1, timeout=0.1)
        await local.release(2)
        s = local.statistics()
        assert s.held_without_redis == 0 and s.errors_total >= 3 and s.fallbacks_total == 2
    finally:
        for lim in (raise_, allow, local):
            await lim.aclose()


async def test_lost_wake_up_is_recovered_after_pubsub_reconnect(own_redis: OwnRedisServer) -> None:
    client = own_redis.client()
    a, b = _make(own_redis.url, 1, "poolkit", 2, lease_ttl=6.0)
    try:
        await a.acquire(1)
        waiter = asyncio.create_task(b.acquire(1))
        await _until(lambda: b.statistics().waiting == 1)
        client.client_kill_filter(_type="pubsub")  # the wake-up of the release below is lost
        await a.release(1)
        await asyncio.wait_for(waiter, 3)  # re-checked once the subscription is back
        assert b.statistics().held == 1
        await b.release(1)
    finally:
        await a.aclose()
        await b.aclose()
        client.close()


async def test_hold_releases_on_error_and_counts(
    redis_url: str, redis_prefix: str, redis_client: Any
) -> None:
    (lim,) = _make(redis_url, 3, redis_prefix, 1, name="downloads")
    try:

        async def fail_inside() -> None:
            async with lim.hold(3):
                assert _state(redis_client, redis_prefix)["used"] == 3
                raise KeyError("boom")

        with pytest.raises(KeyError):
            await fail_inside()
        assert _idle(redis_client, redis_prefix)
        s = lim.statistics()
        assert (s.name, s.held, s.acquired_total, s.errors_total) == ("downloads", 0, 1, 0)
        assert repr(lim).startswith("<RedisCapacityLimiter 'downloads' key='k' held=0/3")
    finally:
        await lim.aclose()
    await lim.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await lim.acquire()


def test_blocking_client_and_local_policy_in_threads(own_redis: OwnRedisServer) -> None:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # A client passed in is used as it is: its timeouts and retries are the caller's choice.
    client = redis.Redis(
        port=own_redis.port,
        socket_timeout=0.3,
        socket_connect_timeout=0.3,
        retry=Retry(NoBackoff(), 0),
    )
    lim = RedisCapacityLimiter(
        client, "k", 4, lease_ttl=1.0, op_timeout=0.3, on_error="local", local_share=0.25
    )
    try:
        with lim:
            assert lim.statistics().held == 1
        lim.acquire_blocking(2)
        time.sleep(0.6)  # renewed by the heartbeat thread meanwhile
        assert int(own_redis.client().hget("poolkit:{k}:s", "used")) == 2
        lim.release_blocking(2)
        own_redis.kill()
        lim.acquire_blocking(1)  # the local share: 1 of 4
        assert not lim.try_acquire_blocking(1)
        lim.release_blocking(1)
        assert lim.statistics().fallbacks_total == 1
    finally:
        lim.close()
        client.close()


async def test_lease_lost_when_server_is_paused_past_the_ttl(own_redis: OwnRedisServer) -> None:
    losses: list[LeaseLost] = []
    lim = RedisCapacityLimiter(
        own_redis.url, "k", 3, lease_ttl=0.9, op_timeout=0.2, on_lease_lost=losses.append
    )
    try:
        await lim.acquire(1)
        own_redis.pause()
        try:
            await _until(lambda: bool(losses), limit=0.9 + 0.3 + 0.2 + 0.5)
        finally:
            own_redis.resume()
        assert "could not be renewed within lease_ttl=0.9 s" in str(losses[0])
        assert losses[0].__cause__ is not None and lim.lease_lost
        await lim.release(1)  # forfeited: nothing to give back in Redis
        assert lim.statistics().held == 0
        await lim.acquire(3)  # a new lease; Redis purged the old one
        await lim.release(3)
    finally:
        await lim.aclose()
