"""Limits kept in Redis: poolkit's ``RedisTokenBucket`` and ``RedisCapacityLimiter`` against what
users run for the same job -- ``limits`` (moving window, async storage), pyrate-limiter's
``RedisBucket`` (async client) and throttled-py's GCRA (async ``RedisStore``); for the capacity
limiter, redis-py's own ``Lock`` (a capacity of one, the nearest thing redis-py ships).

Every case of a suite runs in the same process, against the same server, in the same run:

* the times and the 8-process accuracy run use ``POOLKIT_BENCH_REDIS_URL`` (default: the shared
  server, ``redis://127.0.0.1:6379/0``) under a random key prefix whose keys are deleted after
  each case;
* the command counts use a ``redis-server`` of the benchmark's own (a free port of 127.0.0.1, no
  persistence, stopped at exit), so that nobody else's traffic is counted.  Two counts are given:
  the commands a client *sends* (from ``MONITOR``: one per round trip unless pipelined; commands
  run inside a script are not sent) and the commands Redis *executes* (``INFO commandstats``,
  which also counts each command a script calls).

How each peer waits, as it ships (read in its installed source): pyrate-limiter sleeps until the
wait its bucket computed from the client's clock plus ``buffer_ms`` (50 ms), then tries again;
throttled-py sleeps in chunks of 0.2-0.5 s until ``retry_after`` has passed, then tries again;
redis-py's ``Lock`` polls every ``sleep`` (0.1 s).  ``limits`` has no blocking acquire: its cases
wait as users write it, ``hit()`` and ``asyncio.sleep(0.01)`` until it succeeds.  ``limits``
windows are whole seconds and pyrate-limiter's are sliding logs, so "rate r, burst b" is given to
each in its own terms (named in the case) and each is judged by its own contract.

Wake-up latency: for a bucket, from the instant the next token is due (one token per period,
taken midway through an uncontended acquire that took under 5 ms) to the waiter running; for a
capacity limiter, from the holder's call to ``release`` to the waiter running, holder and waiter
being two objects (two leases; the wake-up is PUBLISHed by the release script).  Medians.

Accuracy: 8 worker processes of 16 tasks each loop on ``acquire`` against one limit for 4 s
(at scale 1) and stamp each admission with ``time.time()``, one clock for all.  "Admitted" is the
share of what the contract allows over the run (GCRA: ``rate*T + burst``; a log of ``n`` per
``W``: ``n*ceil(T/W)``); "worst window" counts the admissions beyond the contract in any window
between two stamps, each stamp allowed the lag its worker showed around it (a stamp is taken when
the worker's loop gets to it, which a busy machine delays); the largest lag allowed is printed
too.  Workers open their connections (as many as they have tasks) on another key before the
start, so that connection set-up is not counted as the limit's.
"""

from __future__ import annotations

import asyncio
import atexit
import bisect
import contextlib
import json
import math
import os
import random
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
import redis.asyncio
import throttled.asyncio as throttled_aio
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pyrate_limiter import Limiter as PyrateLimiter
from pyrate_limiter import Rate as PyrateRate
from pyrate_limiter.buckets import RedisBucket as PyrateRedisBucket

from poolkit.redis import RedisCapacityLimiter, RedisTokenBucket

from ._harness import Case, Suite, register, run_async
from ._redis_server import RedisServer, delete_keys

ROOT = Path(__file__).resolve().parents[1]
SHARED_URL = os.environ.get("POOLKIT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = f"pkbench-{secrets.token_hex(5)}"
_serial = iter(range(1 << 62))


def _new_key(what: str) -> str:
    return f"{what}{next(_serial)}"


def _cleanup(url: str) -> None:
    """Delete every key this run made on ``url`` (never FLUSH: the server may be shared)."""
    delete_keys(url, f"{PREFIX}*")


# ----------------------------------------------------------------- the benchmark's own server


class _OwnServer:
    """A ``redis-server`` of the benchmark's own, started on first use (and again if it died),
    stopped at exit."""

    def __init__(self) -> None:
        self.server: RedisServer | None = None

    def _running(self) -> RedisServer:
        if self.server is None or not self.server.running:
            try:
                server = RedisServer(start_timeout=10)
            except RuntimeError:
                raise RuntimeError(
                    "the command counts need redis-server on PATH (their own server)"
                ) from None
            server.start()
            atexit.register(server.stop)
            self.server = server
        return self.server

    @property
    def url(self) -> str:
        return self._running().url

    @property
    def port(self) -> int:
        return self._running().port


OWN = _OwnServer()


class _Counting:
    """What clients send (``MONITOR``, script-internal commands left out) and what Redis executes
    (``INFO commandstats``) between ``start()`` and ``stop()``, on the benchmark's own server.

    ``MONITOR`` streams each command after it ran; markers (``ECHO``) sent through a separate
    connection bracket the interval, so no command is counted late or missed."""

    _SKIP = frozenset({"info", "config|resetstat", "config", "echo", "monitor", "ping"})

    def __init__(self, port: int) -> None:
        self.port = port
        self.stats = redis.Redis(port=port, socket_timeout=5)
        self.sent: Counter[str] = Counter()
        self.executed: dict[str, int] = {}
        self._mark = f"pkbench-mark-{secrets.token_hex(4)}"
        self._seen: list[str] = []
        self._cond = threading.Condition()
        self._counting = False
        self._sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self._file = self._sock.makefile("rb")
        if not self._file.readline().startswith(b"+OK"):
            raise RuntimeError("MONITOR refused")
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            for raw in self._file:
                line = raw.decode(errors="replace")
                if self._mark in line:
                    with self._cond:
                        self._seen.append(line.split(self._mark, 1)[1][:2])
                        self._cond.notify_all()
                    continue
                if not self._counting or " lua] " in line:
                    continue  # a command that a script ran: not sent by a client
                try:
                    command = line.split('"', 2)[1].lower()
                except IndexError:
                    continue
                if command not in self._SKIP:
                    self.sent[command] += 1

    def _marker(self, tag: str) -> None:
        self.stats.echo(self._mark + tag)
        with self._cond:
            if not self._cond.wait_for(lambda: tag in self._seen, timeout=10):
                raise RuntimeError("MONITOR lost its marker")

    def _commandstats(self) -> dict[str, int]:
        return {
            name.removeprefix("cmdstat_"): int(value["calls"])
            for name, value in self.stats.info("commandstats").items()
            if isinstance(value, dict)
        }

    def start(self) -> None:
        self._marker("s0")
        self._counting = True
        self._before = self._commandstats()

    def stop(self) -> None:
        after = self._commandstats()
        self._marker("s1")
        self._counting = False
        self.executed = {
            k: v - self._before.get(k, 0)
            for k, v in after.items()
            if k not in self._SKIP and v - self._before.get(k, 0) > 0
        }

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._file.close()
        self._sock.close()
        self.stats.close()

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    @property
    def total_executed(self) -> int:
        return sum(self.executed.values())


# ----------------------------------------------------------------- the token buckets compared


@dataclass(frozen=True, slots=True)
class Spec:
    """A rate limit: ``rate`` per second, bursts of ``burst``."""

    rate: float
    burst: int


class Bucket:
    """One library's rate limit in Redis, as a user of it would write ``acquire``."""

    name = ""
    poolkit = False

    async def open(self, url: str, key: str, spec: Spec) -> None:
        raise NotImplementedError

    async def acquire(self) -> None:
        raise NotImplementedError

    async def warm(self, tasks: int = 1) -> None:
        """Open connections (``tasks`` of them, for as many concurrent tasks) and load scripts,
        without touching the limit's own tokens."""

    async def close(self) -> None:
        raise NotImplementedError

    # How its contract reads the spec: GCRA promises <= rate*w + burst in any window w; a log
    # of "n per window" promises <= n in any window of that length.
    def contract(self, spec: Spec) -> tuple[str, float, float]:
        return ("gcra", spec.rate, spec.burst)


class PoolkitBucket(Bucket):
    name = "poolkit RedisTokenBucket"
    poolkit = True

    async def open(self, url: str, key: str, spec: Spec) -> None:
        self.bucket = RedisTokenBucket(url, key, spec.rate, spec.burst, prefix=PREFIX)
        self.url, self.key = url, key

    async def acquire(self) -> None:
        await self.bucket.acquire()

    async def warm(self, tasks: int = 1) -> None:
        # Another key on the same link, at least three at once on a burst of 1, so that one
        # queues behind the head and the wake-up subscription is made too.
        other = RedisTokenBucket(self.url, f"{self.key}-warm", 1000, 1, prefix=PREFIX)
        try:
            await asyncio.gather(*(other.acquire() for _ in range(max(3, tasks))))
        finally:
            await other.aclose()

    async def close(self) -> None:
        await self.bucket.aclose()


class ThrottledBucket(Bucket):
    name = "throttled-py GCRA (asyncio RedisStore)"

    async def open(self, url: str, key: str, spec: Spec) -> None:
        self.store = throttled_aio.RedisStore(server=url)
        # Its periods are whole seconds: emission interval period/limit = 1/rate, capacity burst.
        period = max(1, math.ceil(spec.burst / spec.rate - 1e-9))
        quota = throttled_aio.per_duration(
            timedelta(seconds=period), round(spec.rate * period), burst=spec.burst
        )
        self.throttle = throttled_aio.Throttled(
            key=key, using="gcra", quota=quota, store=self.store, key_prefix=f"{PREFIX}-thr"
        )

    async def acquire(self) -> None:
        result = await self.throttle.limit(timeout=3600)
        if result.limited:
            raise RuntimeError("throttled-py gave up")

    async def warm(self, tasks: int = 1) -> None:
        warm = f"{self.throttle.key}-warm"
        await asyncio.gather(*(self.throttle.limit(key=warm) for _ in range(tasks)))

    async def close(self) -> None:
        client: Any = self.store._backend.get_client()  # a redis.asyncio.Redis
        await client.aclose()
        await client.connection_pool.disconnect()  # its own pool, which aclose() leaves open


class PyrateBucket(Bucket):
    """A sliding log of ``burst`` per ``burst/rate`` seconds: its way of saying rate and burst."""

    name = "pyrate-limiter RedisBucket (redis.asyncio)"

    def window_ms(self, spec: Spec) -> int:
        return max(1, round(1000 * spec.burst / spec.rate))

    async def open(self, url: str, key: str, spec: Spec) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        bucket = await PyrateRedisBucket.init(
            [PyrateRate(spec.burst, self.window_ms(spec))], self.client, f"{PREFIX}:pyrate:{key}"
        )
        self.limiter = PyrateLimiter(bucket)

    async def acquire(self) -> None:
        if not await self.limiter.try_acquire_async("item"):
            raise RuntimeError("pyrate-limiter gave up")

    async def warm(self, tasks: int = 1) -> None:
        # Its script was loaded by RedisBucket.init; its limiter runs one acquire at a time.
        await self.client.ping()

    async def close(self) -> None:
        self.limiter.close()
        await self.client.aclose()

    def contract(self, spec: Spec) -> tuple[str, float, float]:
        return ("log", spec.burst, self.window_ms(spec) / 1000)


class LimitsBucket(Bucket):
    """A moving window of ``rate*W`` per ``W`` whole seconds (``limits``' granularity), ``W``
    the burst's duration rounded up to a second: the burst it allows is ``rate*W``."""

    name = "limits moving window (async+redis, poll 10 ms)"

    def window_s(self, spec: Spec) -> int:
        return max(1, math.ceil(spec.burst / spec.rate - 1e-9))

    def amount(self, spec: Spec) -> int:
        return max(1, round(spec.rate * self.window_s(spec)))

    async def open(self, url: str, key: str, spec: Spec) -> None:
        # What "async+redis://" gives: the coredis client (limits[async-redis]).
        self.storage = RedisStorage(f"async+{url}", key_prefix=f"{PREFIX}-limits")
        self.limiter = MovingWindowRateLimiter(self.storage)
        self.item = RateLimitItemPerSecond(self.amount(spec), self.window_s(spec))
        self.key = key

    async def acquire(self) -> None:
        # Polling is what it leaves its users to write.
        while not await self.limiter.hit(self.item, self.key):  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    async def warm(self, tasks: int = 1) -> None:
        warm = f"{self.key}-warm"
        await asyncio.gather(*(self.limiter.hit(self.item, warm) for _ in range(tasks)))

    async def close(self) -> None:
        bridge: Any = self.storage.bridge
        client = bridge.storage  # a coredis.Redis
        client.connection_pool.disconnect()

    def contract(self, spec: Spec) -> tuple[str, float, float]:
        return ("log", self.amount(spec), self.window_s(spec))


BUCKETS: list[type[Bucket]] = [PoolkitBucket, LimitsBucket, PyrateBucket, ThrottledBucket]

# ----------------------------------------------------------------- capacity limiters compared


class Slots:
    name = ""
    poolkit = False

    async def open(self, url: str, key: str, total: int) -> None:
        raise NotImplementedError

    async def acquire(self) -> None:
        raise NotImplementedError

    async def release(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class PoolkitSlots(Slots):
    name = "poolkit RedisCapacityLimiter"
    poolkit = True

    async def open(self, url: str, key: str, total: int) -> None:
        # From the URL, as users write it.  Two of these in one process share the process's
        # connections and wake-up channel, but each has its own lease, and a wake-up still
        # goes through Redis (the release script PUBLISHes it).
        self.limiter = RedisCapacityLimiter(url, key, total, prefix=PREFIX)

    async def acquire(self) -> None:
        await self.limiter.acquire()

    async def release(self) -> None:
        await self.limiter.release()

    async def close(self) -> None:
        await self.limiter.aclose()


class RedisPyLock(Slots):
    """redis-py's asyncio ``Lock`` (capacity 1) at its defaults: blocking, polls every 0.1 s."""

    name = "redis-py asyncio Lock (polls 0.1 s)"

    async def open(self, url: str, key: str, total: int) -> None:
        self.client = redis.asyncio.Redis.from_url(url)
        self.lock = self.client.lock(f"{PREFIX}:lock:{key}", timeout=30)

    async def acquire(self) -> None:
        if not await self.lock.acquire():
            raise RuntimeError("Lock.acquire gave up")

    async def release(self) -> None:
        await self.lock.release()

    async def close(self) -> None:
        await self.client.aclose()


SLOTS: list[type[Slots]] = [PoolkitSlots, RedisPyLock]


def _label(cls: type[Bucket] | type[Slots], spec: str = "") -> str:
    return f"{cls.name}{spec}"


# ----------------------------------------------------------------- µs per uncontended acquire

FAST = Spec(1e9, 10**9)  # nobody ever waits
WARM = 20  # acquires before the clock starts: connections, SCRIPT LOAD, subscriptions


def _uncontended(cls: type[Bucket]) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            b = cls()
            await b.open(SHARED_URL, _new_key("fast"), FAST)
            try:
                for _ in range(WARM):
                    await b.acquire()
                t0 = time.perf_counter()
                for _ in range(n):
                    await b.acquire()
                return time.perf_counter() - t0
            finally:
                await b.close()

        try:
            return run_async(main)
        finally:
            _cleanup(SHARED_URL)

    return run


uncontended = register(Suite("redis token bucket acquire, never waits", unit="acquire", items=3000))
uncontended.cases += [Case(_label(cls), _uncontended(cls), poolkit=cls.poolkit) for cls in BUCKETS]


def _pair(cls: type[Slots]) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            s = cls()
            await s.open(SHARED_URL, _new_key("pair"), 8)
            try:
                for _ in range(WARM):
                    await s.acquire()
                    await s.release()
                t0 = time.perf_counter()
                for _ in range(n):
                    await s.acquire()
                    await s.release()
                return time.perf_counter() - t0
            finally:
                await s.close()

        try:
            return run_async(main)
        finally:
            _cleanup(SHARED_URL)

    return run


pair = register(
    Suite("redis capacity limiter acquire+release, uncontended", unit="pair", items=3000)
)
pair.cases += [Case(_label(cls), _pair(cls), poolkit=cls.poolkit) for cls in SLOTS]

# ----------------------------------------------------------------- commands per acquire

_counts: dict[tuple[str, int], tuple[float, float]] = {}


def _count_run(cls: type[Bucket], items: int) -> tuple[float, float]:
    """(commands sent, commands executed) per uncontended acquire, on the own server; memoized
    so that the two figure suites share one run."""
    key = (cls.name, items)
    if key in _counts:
        return _counts[key]
    n = max(50, items)
    url = OWN.url

    async def main() -> float:
        b = cls()
        await b.open(url, _new_key("count"), FAST)
        counting = _Counting(OWN.port)
        try:
            for _ in range(WARM):
                await b.acquire()
            counting.start()
            for _ in range(n):
                await b.acquire()
            counting.stop()
        finally:
            counting.close()
            await b.close()
        _counts[key] = (counting.total_sent / n, counting.total_executed / n)
        return 0.0

    try:
        run_async(main)
    finally:
        _cleanup(url)
    return _counts[key]


sent = register(
    Suite(
        "redis token bucket: commands sent per acquire (MONITOR)",
        unit="commands; target <= 2 round trips",
        items=500,
        kind="figure",
    )
)
executed = register(
    Suite(
        "redis token bucket: commands executed per acquire (INFO commandstats)",
        unit="commands, inside scripts included",
        items=500,
        kind="figure",
    )
)


def _part(
    run: Callable[[type[Bucket], int], tuple[float, ...]], cls: type[Bucket], index: int
) -> Callable[[int], float]:
    """A case giving one of the figures of a memoized run that two suites share."""

    def case(items: int) -> float:
        return run(cls, items)[index]

    return case


sent.cases += [Case(_label(c), _part(_count_run, c, 0), poolkit=c.poolkit) for c in BUCKETS]
executed.cases += [Case(_label(c), _part(_count_run, c, 1), poolkit=c.poolkit) for c in BUCKETS]


def _slots_count(cls: type[Slots]) -> Callable[[int], float]:
    """Commands sent per uncontended acquire+release pair, on the own server."""

    def run(items: int) -> float:
        n = max(50, items)
        url = OWN.url

        async def main() -> float:
            s = cls()
            await s.open(url, _new_key("countpair"), 8)
            counting = _Counting(OWN.port)
            try:
                for _ in range(WARM):
                    await s.acquire()
                    await s.release()
                counting.start()
                for _ in range(n):
                    await s.acquire()
                    await s.release()
                counting.stop()
            finally:
                counting.close()
                await s.close()
            return counting.total_sent / n

        try:
            return run_async(main)
        finally:
            _cleanup(url)

    return run


pair_sent = register(
    Suite(
        "redis capacity limiter: commands sent per acquire+release (MONITOR)",
        unit="commands: round trips, unless pipelined",
        items=500,
        kind="figure",
    )
)
pair_sent.cases += [Case(_label(c), _slots_count(c), poolkit=c.poolkit) for c in SLOTS]

# ----------------------------------------------------------------- commands while waiting


def _wait_seconds(items: int) -> float:
    return max(0.5, items / 1000)


def _bucket_waiting(cls: type[Bucket]) -> Callable[[int], float]:
    """Commands sent per second while one waiter waits for a token due after the window."""

    def run(items: int) -> float:
        span = _wait_seconds(items)
        # The next token comes 0.5-1.5 s after the window closes (a whole number of seconds
        # apart, as throttled-py's periods are).
        spec = Spec(1 / math.ceil(span + 0.5), 1)
        url = OWN.url

        async def main() -> float:
            b = cls()
            await b.open(url, _new_key("wait"), spec)
            counting = _Counting(OWN.port)
            try:
                await b.acquire()  # the only token
                waiter = asyncio.create_task(b.acquire())
                await asyncio.sleep(0.15)  # it has asked once, and now waits
                counting.start()
                await asyncio.sleep(span)
                counting.stop()
                await asyncio.wait_for(waiter, 30)  # ... and it does get through
            finally:
                counting.close()
                await b.close()
            return counting.total_sent / span

        try:
            return run_async(main)
        finally:
            _cleanup(url)

    return run


def _slots_waiting(cls: type[Slots]) -> Callable[[int], float]:
    def run(items: int) -> float:
        span = _wait_seconds(items)
        url = OWN.url

        async def main() -> float:
            key = _new_key("held")
            holder, waiter = cls(), cls()
            await holder.open(url, key, 1)
            await waiter.open(url, key, 1)
            counting = _Counting(OWN.port)
            try:
                await holder.acquire()
                task = asyncio.create_task(waiter.acquire())
                await asyncio.sleep(0.15)
                counting.start()
                await asyncio.sleep(span)
                counting.stop()
                await holder.release()
                await asyncio.wait_for(task, 30)
                await waiter.release()
            finally:
                counting.close()
                await waiter.close()
                await holder.close()
            return counting.total_sent / span

        try:
            return run_async(main)
        finally:
            _cleanup(url)

    return run


bucket_waiting = register(
    Suite(
        "redis token bucket: commands sent while one waiter waits",
        unit="commands/s; 0 = no polling",
        items=2000,
        kind="figure",
    )
)
bucket_waiting.cases += [Case(_label(c), _bucket_waiting(c), poolkit=c.poolkit) for c in BUCKETS]
slots_waiting = register(
    Suite(
        "redis capacity limiter: commands sent while a waiter waits",
        unit="commands/s, lease heartbeats included; 0 = no polling",
        items=2000,
        kind="figure",
    )
)
slots_waiting.cases += [Case(_label(c), _slots_waiting(c), poolkit=c.poolkit) for c in SLOTS]

# ----------------------------------------------------------------- wake-up latency


def _period(cls: type[Bucket]) -> float:
    return 1.0 if cls is LimitsBucket else 0.25  # limits: windows of whole seconds


def _bucket_wake(cls: type[Bucket]) -> Callable[[int], float]:
    """Median ms from the instant the next token is due to the waiter running: one token per
    period, taken (at a known instant: midway through an uncontended acquire), then a waiter."""

    def run(items: int) -> float:
        period = _period(cls)
        samples = max(2, items)

        async def main() -> float:
            b = cls()
            spec = Spec(1 / period, 1)
            await b.open(SHARED_URL, _new_key("wake"), spec)
            lags: list[float] = []
            try:
                slow: list[tuple[float, float]] = []  # (drain's duration, lag)
                for _ in range(4 * samples):
                    if len(lags) == samples:
                        break
                    t0 = time.time()
                    await b.acquire()  # the bucket is full: this one does not wait
                    t1 = time.time()
                    await b.acquire()
                    t2 = time.time()
                    # The token was due `period` after the drain, known to +-(t1 - t0)/2: a
                    # drain slowed by a busy machine says little, and is kept only if no
                    # drain was quick.
                    lag = t2 - ((t0 + t1) / 2 + period)
                    if t1 - t0 <= 0.005:
                        lags.append(lag)
                    else:
                        slow.append((t1 - t0, lag))
                    await asyncio.sleep(period * 1.2)  # full again
                if not lags:
                    lags.append(min(slow)[1])
            finally:
                await b.close()
            lags.sort()
            return 1000 * lags[len(lags) // 2]

        try:
            return run_async(main)
        finally:
            _cleanup(SHARED_URL)

    return run


def _slots_wake(cls: type[Slots]) -> Callable[[int], float]:
    """Median ms from the holder's call to release to the waiter running; holder and waiter are
    separate limiter objects (two leases)."""

    def run(items: int) -> float:
        samples = max(3, items)
        rng = random.Random(1)

        async def main() -> float:
            key = _new_key("wakeslot")
            holder, waiter = cls(), cls()
            await holder.open(SHARED_URL, key, 1)
            await waiter.open(SHARED_URL, key, 1)
            lags: list[float] = []
            try:
                for _ in range(samples):
                    await holder.acquire()
                    task = asyncio.create_task(waiter.acquire())
                    await asyncio.sleep(rng.uniform(0.05, 0.15))  # any phase of a poll
                    assert not task.done()
                    t0 = time.perf_counter()
                    await holder.release()
                    await task
                    lags.append(time.perf_counter() - t0)
                    await waiter.release()
            finally:
                await waiter.close()
                await holder.close()
            lags.sort()
            return 1000 * lags[len(lags) // 2]

        try:
            return run_async(main)
        finally:
            _cleanup(SHARED_URL)

    return run


bucket_wake = register(
    Suite(
        "redis token bucket: wake-up latency, token due -> waiter runs",
        unit="ms, median",
        items=8,
        kind="figure",
    )
)
bucket_wake.cases += [
    Case(_label(c, f", 1 per {_period(c):g} s"), _bucket_wake(c), poolkit=c.poolkit)
    for c in BUCKETS
]
slots_wake = register(
    Suite(
        "redis capacity limiter: wake-up latency, release -> waiter runs",
        unit="ms, median",
        items=20,
        kind="figure",
    )
)
slots_wake.cases += [Case(_label(c), _slots_wake(c), poolkit=c.poolkit) for c in SLOTS]

# ----------------------------------------------------------------- accuracy, 8 processes

RATE = 200.0
BURST = 20
PROCESSES = 8
TASKS = 16
# A stamp is taken when acquire returns, in a process of 16 tasks among 8 on a shared machine:
# it can lag its grant by as long as that process was not running.  Each worker measures how
# late it runs a timer due every 5 ms, all along; the window figure gives each stamp the lag
# its worker showed around it (see stamp_lags), and only that figure.

_WORKER = r"""
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks.bench_redis import _worker
_worker(sys.argv[2])
"""


def _worker(config_json: str) -> None:
    """A process of the accuracy run: open, say ready, read the start instant, run ``tasks``
    tasks acquiring until the end instant, print the admission stamps as JSON."""
    global PREFIX
    config = json.loads(config_json)
    PREFIX = config["prefix"]  # the parent's: every process must name the same keys
    cls = next(c for c in BUCKETS if c.__name__ == config["cls"])
    spec = Spec(config["rate"], config["burst"])

    async def main() -> None:
        b = cls()
        await b.open(config["url"], config["key"], spec)
        await b.warm(config["tasks"])
        print("ready", flush=True)
        start = float(await asyncio.to_thread(sys.stdin.readline))
        end = start + config["seconds"]
        stamps: list[float] = []

        async def task() -> None:
            while True:
                await b.acquire()
                t = time.time()
                if t >= end:
                    return
                stamps.append(t)

        late: list[tuple[float, float]] = []

        async def probe() -> None:  # how late this process runs a due callback: a stamp's lag
            while time.time() < end:
                t = time.monotonic()
                await asyncio.sleep(0.005)
                late.append((time.time(), time.monotonic() - t - 0.005))

        await asyncio.sleep(max(0.0, start - time.time()))
        try:
            await asyncio.wait_for(
                asyncio.gather(probe(), *(task() for _ in range(config["tasks"]))),
                config["seconds"] + 30,
            )
        finally:
            await b.close()
        print(json.dumps({"stamps": stamps, "late": late}), flush=True)

    asyncio.run(main())


PROBE = 0.005  # the workers' probe: a timer every 5 ms


def stamp_lags(stamps: list[float], late: list[tuple[float, float]]) -> list[float]:
    """For each stamp of one worker, how long after its grant it may have been taken.

    The grant's reply waited for the worker's loop as long as the loop was stalled (descheduled,
    or busy); a stall of ``d`` held back a probe timer due in it, which ran about ``d - PROBE``
    late, close to the stamp (within a few ms either side).  So: the latest probe within 25 ms of
    the stamp, plus two probe periods and 2 ms (the stamp's own path, and the timer's own
    coarseness), a margin that a server-side trace of an 8-process run showed to be needed."""
    times = [t for t, _ in late]
    lags = []
    for t in stamps:
        lo = bisect.bisect_left(times, t - 0.025)
        hi = bisect.bisect_right(times, t + 0.025)
        near = max((x for _, x in late[lo:hi]), default=0.0)
        lags.append(max(0.0, near) + 2 * PROBE + 0.002)
    return lags


def gcra_excess(stamps: list[tuple[float, float]], rate: float, burst: float) -> int:
    """The most admissions in any window [t_i, t_j] beyond ``rate*(t_j - t_i + lag_i) + burst``,
    over (stamp, lag) pairs; 0 when the contract holds.  O(n): with ``a_j = j - rate*t_j`` it is
    the max over j of ``a_j - min_{i<=j}(a_i + rate*lag_i) + 1 - burst``."""
    worst, low = -math.inf, math.inf
    for j, (t, lag) in enumerate(sorted(stamps)):
        low = min(low, j - rate * t + rate * lag)
        worst = max(worst, j - rate * t - low + 1 - burst)
    return max(0, math.ceil(worst - 1e-9)) if stamps else 0


def log_excess(stamps: list[tuple[float, float]], limit: float, window: float) -> int:
    """The most admissions beyond ``limit`` whose grants fit in a window of ``window`` seconds:
    stamps t_i..t_j with ``t_j - (t_i - lag_i) < window``."""
    s = sorted(stamps)
    times = [t for t, _ in s]
    worst = 0
    for i, (t, lag) in enumerate(s):
        worst = max(worst, bisect.bisect_left(times, t - lag + window) - i)
    return max(0, math.ceil(worst - limit))


_accuracy: dict[tuple[str, int], tuple[float, float, float]] = {}


def _accuracy_run(cls: type[Bucket], items: int) -> tuple[float, float, float]:
    """(admitted as % of what the contract allows over the run, excess admissions in the worst
    window, the worst lag in ms), from PROCESSES processes of TASKS tasks each; memoized for
    the three suites."""
    key = (cls.name, items)
    if key in _accuracy:
        return _accuracy[key]
    seconds = max(1.0, items / RATE)
    spec = Spec(RATE, BURST)
    config = {
        "cls": cls.__name__,
        "url": SHARED_URL,
        "prefix": PREFIX,
        "key": _new_key("acc"),
        "rate": RATE,
        "burst": BURST,
        "tasks": TASKS,
        "seconds": seconds,
    }
    procs: list[subprocess.Popen[str]] = []
    try:
        for _ in range(PROCESSES):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, str(ROOT), json.dumps(config)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    cwd=ROOT,
                )
            )
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{cls.name}: a worker failed to start")
        start = time.time() + 0.2
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start!r}\n")
            p.stdin.flush()
        stamps: list[tuple[float, float]] = []
        for p in procs:
            out, _ = p.communicate(timeout=seconds + 60)
            if p.returncode != 0:
                raise RuntimeError(f"{cls.name}: a worker failed ({p.returncode})")
            result = json.loads(out.strip().splitlines()[-1])
            lags = stamp_lags(result["stamps"], [(t, x) for t, x in result["late"]])
            stamps += zip(result["stamps"], lags, strict=True)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        _cleanup(SHARED_URL)
    kind, a, b = cls().contract(spec)
    if kind == "gcra":
        allowed = a * seconds + b
        excess = gcra_excess(stamps, a, b)
    else:  # at most `a` in any window of `b` seconds
        allowed = a * math.ceil(seconds / b - 1e-9)
        excess = log_excess(stamps, a, b)
    lag = max((x for _, x in stamps), default=0.0)
    _accuracy[key] = (100 * len(stamps) / allowed, float(excess), 1000 * lag)
    return _accuracy[key]


_ACC = f"{PROCESSES} processes x {TASKS} tasks, {RATE:g}/s burst {BURST}"
admitted = register(
    Suite(
        f"redis token bucket, {_ACC}, 4 s: admitted",
        unit="% of its contract's bound",
        items=int(RATE * 4),
        kind="figure",
        higher_is_better=True,
    )
)
excess = register(
    Suite(
        "redis token bucket, same run: worst window",
        unit="admissions over its contract; target 0",
        items=int(RATE * 4),
        kind="figure",
    )
)


def _contract_label(cls: type[Bucket]) -> str:
    kind, a, b = cls().contract(Spec(RATE, BURST))
    if kind == "gcra":
        return f"{cls.name}, {a:g}/s burst {b:g}"
    return f"{cls.name}, {a:g} per {b:g} s"


lags = register(
    Suite(
        "redis token bucket, same run: the most lag allowed to a stamp",
        unit="ms",
        items=int(RATE * 4),
        kind="figure",
    )
)


admitted.cases += [
    Case(_contract_label(c), _part(_accuracy_run, c, 0), poolkit=c.poolkit) for c in BUCKETS
]
excess.cases += [
    Case(_contract_label(c), _part(_accuracy_run, c, 1), poolkit=c.poolkit) for c in BUCKETS
]
lags.cases += [
    Case(_contract_label(c), _part(_accuracy_run, c, 2), poolkit=c.poolkit) for c in BUCKETS
]
