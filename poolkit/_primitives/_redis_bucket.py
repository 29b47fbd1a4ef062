"""RedisTokenBucket: a token bucket shared by every process that names the same key in Redis.

The local :class:`~poolkit.TokenBucket`'s contract -- ``rate`` tokens a second in bursts of up to
``burst``, weighted costs, FIFO whatever the cost, a timeout that cannot be met fails at once, a
cancelled waiter has consumed nothing -- held by every process and machine together, through
one Redis server.  The clients, scripts, timeouts, error mapping and wake-ups are in
:mod:`poolkit._primitives._redis_link`; this module is the bucket's protocol.

GCRA, with Redis' clock
-----------------------
The state is one number, the *theoretical arrival time* ``tat`` (as go-redis/redis_rate and
redis-cell keep it): the instant the bucket would be full again, in microseconds of Redis'
``TIME``.  With the emission interval ``T = 1/rate`` and the tolerance ``burst * T``, a cost
``c`` conforms at ``now`` iff ``max(tat, now) + c*T - now <= burst*T``, and taking it sets ``tat``
to that sum.  It is the token bucket exactly (``tokens = burst - (tat - now)/T``), in one
number that needs no refill step.  ``TIME`` is read inside the script, so it is the only clock
any decision uses: a process whose wall clock is an hour off is served as the others are.  A
waiter is told a *duration* ("conforms in 2350 µs") and sleeps that long on its own monotonic
clock; no instant ever crosses from one machine to another.  (Effects replication, the only mode
since Redis 7 and the default since 5, allows ``TIME`` before writes; scripts need nothing else.)

FIFO across processes
---------------------
Waiters queue in Redis: a sorted set of tickets, scored by a counter, and a hash of each ticket's
cost, lease expiry and owner's wake-up channel.  The *acquire* script grants at once only when
the queue is empty and the cost conforms (one round trip: the uncontended case, five commands,
``HMGET EXISTS TIME HSET PEXPIRE``, before anything else in the script; the keys' types are
checked by the rest of it, when that path does not apply); otherwise it queues a ticket.  Only
the head of the queue is ever granted, so a heavy request at the head is not starved by light
ones behind it, in whichever process they run.  The head is told how long
until its cost conforms; it sleeps exactly that long (a local timer, not a poll) and runs the
*claim* script once.  Whenever the head is granted or leaves, the script that did it PUBLISHes
to the new head's process "you are head, wait d µs", so a waiter behind the head sends nothing
at all while it waits -- apart from renewing its ticket's lease every ``lease/3`` (2 s), a
heartbeat the issue allows and which doubles as a check for a lost message.  A ticket whose lease
ran out (its process crashed) is removed by the next script that meets it at the head, which
hands the head on, so a crashed waiter holds up the queue for one lease at most.  When the
wake-up subscription reconnects, every local waiter looks at its ticket once.  Measured on
localhost (Redis 7.0, redis-py 8.1): from a cancelled head's leaving to the grant of the waiter
behind it in another process -- the leave script, its PUBLISH, the claim script -- 0.8 ms median,
2.5 ms at most over 30 runs.

Grants happen only in a script called by the ticket's own process, never on its behalf: a
process that died or gave up is never granted anything.

Why pub/sub rather than a list per waiter with a blocking pop: BLPOP holds a connection per
waiting task (a thousand waiters, a thousand connections, and a blocked connection per thread);
one subscription per process and event loop serves every waiter in it, and what pub/sub may lose
(a message sent while the subscription reconnects) is covered by the look each waiter takes after
a reconnection and by the heartbeat.

Timeouts and cancellation
-------------------------
With ``timeout=``, the acquire script adds up the costs of the live tickets ahead and the new
one, and if the last of them cannot conform in time it queues nothing and the call raises
:class:`TimeoutError` at once.  A waiter that times out or is cancelled runs the *leave* script,
which removes its ticket by id (idempotently) and, if it was the head, tells the next one.  That
clean-up runs shielded from further cancellation.  A script call that is in flight when the
caller is cancelled is waited for (it takes at most ``op_timeout``): if it had queued a ticket,
the ticket is removed; if it had granted the tokens, they are given back (``tat -= c*T``), so a
cancelled acquire has consumed nothing.

In Limits and PerKey
--------------------
A :class:`~poolkit.Limits` takes a Redis bucket's tokens after every concurrency slot, one bucket
after the other; if a later member then fails, times out or is cancelled, the tokens Redis
granted are *refunded* (:meth:`RedisTokenBucket._refund_soon`: the leave script moves ``tat``
back by the cost, so no more than the burst can ever be there), in a task that ``aclose()`` waits
for, or in the call from a thread.  Tokens granted by the ``on_error`` policy are not refunded,
and a refund that cannot reach Redis leaves them spent.  The state lives in Redis, so a ``PerKey``
may forget an object as soon as nobody waits in it and nothing of it is in flight.

Configuration lives in Redis
----------------------------
Rate and burst are fields of the state hash.  The constructor's values are written only when
Redis has none (the first process to use the key, or the first after the key expired idle);
``configure()`` overwrites them for every process, and the head waiter is told its new wait.
The tokens held are kept across a change (capped at a new, smaller burst), as when a
:class:`~poolkit.TokenBucket`'s rate is assigned: ``tat`` is a time, so the script rescales it
(left alone, a lower rate would turn the same ``tat`` into more tokens).
Every script reads them afresh, so the last ``configure()`` wins until the key expires idle, and
then the constructor values of whichever process comes first apply again: keep constructor
arguments and ``configure()`` calls in agreement if the change must outlive an idle period.
``rate`` and ``burst`` on the object are the values Redis last reported.

Keys
----
``{prefix}:{key}:b`` (hash: rate, burst, tat), ``{prefix}:{key}:q`` (the queue) and
``{prefix}:{key}:t`` (tickets): one hash tag, so Cluster keeps them in one slot.  The state
expires once the bucket would be full again plus two leases (12 s), the queue keys two leases
after the last ticket was touched, and at once when the queue is empty: a million idle per-host
buckets leave nothing behind.  A key of another type already at one of these names raises
:class:`TypeError` naming it.

Faults
------
Every call has a timeout (``op_timeout``).  ``on_error`` says what a call does when Redis cannot
be reached in time: ``"raise"`` (the default) raises :class:`RedisUnavailable`, failing closed;
``"allow"`` grants, failing open; ``"local"`` acquires from a local :class:`~poolkit.TokenBucket`
with ``local_share`` of the rate and of the burst (at least 1), meant to be ``1/N`` for ``N``
processes, on which a cost above its burst is taken as its burst.  Each call tries Redis first, so
the shared limit is back as soon as Redis is.  A waiter already queued in Redis when it fails
applies the policy too; its ticket expires with its lease.  A server that dies breaks the
wake-up subscription, so every waiter learns it at once; one that hangs (SIGSTOP, a partition)
is noticed by the head at its claim and by the others at their next heartbeat, within
``lease/3 + op_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, final

from poolkit._core._checks import check_timeout
from poolkit._core._registry import register, unregistered
from poolkit._primitives._ratelimit import TokenBucket, parse_rate
from poolkit._primitives._redis_link import (
    RECHECK,
    EvalCancelled,
    OnError,
    RedisLink,
    RedisUnavailable,
    check_key,
    check_local_share,
    check_on_error,
    check_op_timeout,
    check_prefix,
    key_of,
)

__all__ = ["RedisTokenBucket", "RedisTokenBucketStatistics", "RedisUnavailable"]

# A ticket's lease: a waiter renews it every third of it; a crashed one is dropped after it.
_LEASE = 6.0

# Script replies: {status, wait µs, rate, burst}.
_GRANTED = 1
_REFUSED = 0  # try_acquire: not now
_HEAD = 2  # queued at the head: claim after the wait
_QUEUED = 3  # queued behind others: wait to be told
_TOO_LATE = -1  # the timeout cannot be met; nothing queued
_TOO_BIG = -2  # cost above the burst in Redis
_LOST = -3  # the ticket is gone (lease expired, server restarted)
_WRONG_TYPE = -9

_LUA_COMMON = r"""
local b, q, t = KEYS[1], KEYS[2], KEYS[3]
local function fmt(x) return string.format('%.17g', x) end
local function wrongtype()
  local want = {[b] = 'hash', [q] = 'zset', [t] = 'hash'}
  for _, k in ipairs({b, q, t}) do
    local ty = redis.call('TYPE', k)['ok']
    if ty ~= 'none' and ty ~= want[k] then return {-9, 0, k, ty} end
  end
  return nil
end
local tm = redis.call('TIME')
local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
local function config(rate0, burst0)
  local c = redis.call('HMGET', b, 'rate', 'burst', 'tat')
  local rate, burst = tonumber(c[1]), tonumber(c[2])
  if not rate or not burst then
    rate, burst = tonumber(rate0), tonumber(burst0)
    redis.call('HSET', b, 'rate', rate0, 'burst', burst0)
  end
  return rate, burst, tonumber(c[3]) or 0
end
-- µs until cost conforms (0: now), and tat after taking it then
local function wait_for(tat, cost, rate, burst)
  local T = 1000000 / rate
  local new = math.max(tat, now) + cost * T
  local w = new - now - burst * T
  if w <= cost * T * 1e-9 then return 0, new end
  return math.ceil(w), new
end
local function ticket(id)
  local v = redis.call('HGET', t, id)
  if not v then return nil end
  local c, e, ch = string.match(v, '^(%S+) (%S+) (%S+)$')
  return tonumber(c), tonumber(e), ch
end
local function drop(id) redis.call('ZREM', q, id); redis.call('HDEL', t, id) end
-- the live head (expired heads are dropped): id, cost, channel
local function head()
  while true do
    local h = redis.call('ZRANGE', q, 0, 0)[1]
    if not h then return nil end
    local c, e, ch = ticket(h)
    if c and e > now then return h, c, ch end
    drop(h)
  end
end
local function first() return redis.call('ZRANGE', q, 0, 0)[1] end
-- tell a new head (not the caller) how long it waits; then set the keys' expiry
local function finish(old, me, rate, burst, tat, lease)
  local h, c, ch = head()
  if h and h ~= me and (h ~= old or A[1] == 'configure') then
    local w = wait_for(tat, c, rate, burst)
    redis.call('PUBLISH', ch, h .. ' h ' .. w)
  end
  local full = math.max(tat - now, 0) / 1000
  redis.call('PEXPIRE', b, math.ceil(full) + math.max(10000, 2 * lease))
  if not h then
    redis.call('DEL', q, t)
  else
    redis.call('PEXPIRE', q, 2 * lease)
    redis.call('PEXPIRE', t, 2 * lease)
  end
end
-- a ticket: "cost expiry channel", the expiry in µs of TIME
local function renew(id, cost, channel, lease)
  local expiry = string.format('%.0f', now + lease * 1000)
  redis.call('HSET', t, id, fmt(cost) .. ' ' .. expiry .. ' ' .. channel)
end
local function enqueue(id, cost, channel, lease)
  local seq = redis.call('HINCRBY', t, '#seq', 1)
  redis.call('ZADD', q, seq, id)
  renew(id, cost, channel, lease)
end
"""

# The uncontended grant, first: nobody queued (neither queue key exists), the configuration is
# in Redis and the cost conforms now.  Five commands; the type of each key is checked by the
# commands themselves (HMGET on a non-hash is an error, EXISTS covers both queue keys), and
# anything else -- a wrong type, a first use, a wait -- falls through to the full script, which
# checks the types and names the key.  Its reply is the usual one as a single string, "1 0 rate
# burst": redis-py parses one bulk string for a fraction of what a four-element array costs.
_LUA_FAST = r"""
do
  local c = redis.pcall('HMGET', KEYS[1], 'rate', 'burst', 'tat')
  if not c.err and c[1] and c[2] and redis.call('EXISTS', KEYS[2], KEYS[3]) == 0 then
    local cs, lease = string.match(ARGV[1], '^(%S+) (%S+)')
    local rate, burst, cost = tonumber(c[1]), tonumber(c[2]), tonumber(cs)
    local tm = redis.call('TIME')
    local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])
    local T = 1000000 / rate
    local new = math.max(tonumber(c[3]) or 0, now) + cost * T
    if cost <= burst and new - now - burst * T <= cost * T * 1e-9 then
      redis.call('HSET', KEYS[1], 'tat', string.format('%.17g', new))
      local keep = math.ceil((new - now) / 1000) + math.max(10000, 2 * tonumber(lease))
      redis.call('PEXPIRE', KEYS[1], keep)
      return '1 0 ' .. c[1] .. ' ' .. c[2]
    end
  end
end
"""

# The arguments of every script but acquire's are its ARGV, as they are: A = ARGV.
_LUA_ARGV = "local A = ARGV\n"

# ARGV[1] = "cost lease op rate0 burst0 mode ticket timeout", ARGV[2] = channel: redis-py packs
# each argument of a command for ~2 µs of Python, nine of them cost more than the split here
# (which the fast path, reading the first two, does not even need).
_LUA_ACQUIRE_ARGS = r"""
local w = {}
for x in string.gmatch(ARGV[1], '%S+') do w[#w + 1] = x end
local A = {w[3], w[4], w[5], w[1], w[6], w[7], ARGV[2], w[2], w[8]}
"""

# A: op, rate0, burst0, cost, mode ('try'|'wait'), ticket, channel, lease ms, timeout µs (-1)
_LUA_ACQUIRE = (
    _LUA_FAST
    + _LUA_ACQUIRE_ARGS
    + _LUA_COMMON
    + r"""
local bad = wrongtype(); if bad then return bad end
local rate, burst, tat = config(A[2], A[3])
local rs, bs = fmt(rate), fmt(burst)
local cost, mode, me, channel = tonumber(A[4]), A[5], A[6], A[7]
local lease, timeout = tonumber(A[8]), tonumber(A[9])
if cost > burst then return {-2, 0, rs, bs} end
local old = first()
local h = head()
if not h then
  local w, new = wait_for(tat, cost, rate, burst)
  if w == 0 then
    redis.call('HSET', b, 'tat', fmt(new))
    finish(old, me, rate, burst, new, lease)
    return {1, 0, rs, bs}
  end
  if mode == 'try' or (timeout >= 0 and w > timeout) then
    finish(old, me, rate, burst, tat, lease)
    return {mode == 'try' and 0 or -1, w, rs, bs}
  end
  enqueue(me, cost, channel, lease)
  finish(old, me, rate, burst, tat, lease)
  return {2, w, rs, bs}
end
if mode == 'try' then
  finish(old, me, rate, burst, tat, lease)
  return {0, 0, rs, bs}
end
if timeout >= 0 then
  local total = cost
  local ids = redis.call('ZRANGE', q, 0, -1)
  for _, id in ipairs(ids) do
    local c, e = ticket(id)
    if c and e > now then total = total + c end
  end
  local w = wait_for(tat, total, rate, burst)
  if w > timeout then
    finish(old, me, rate, burst, tat, lease)
    return {-1, w, rs, bs}
  end
end
enqueue(me, cost, channel, lease)
finish(old, me, rate, burst, tat, lease)
return {3, 0, rs, bs}
"""
)

# ARGV: op, rate0, burst0, ticket, lease ms
_LUA_CLAIM = (
    _LUA_ARGV
    + _LUA_COMMON
    + r"""
local bad = wrongtype(); if bad then return bad end
local rate, burst, tat = config(A[2], A[3])
local rs, bs = fmt(rate), fmt(burst)
local me, lease = A[4], tonumber(A[5])
local old = first()
local h = head()
local cost, e, channel = ticket(me)
if not cost or e <= now then
  if cost then drop(me) end
  finish(old, me, rate, burst, tat, lease)
  return {-3, 0, rs, bs}
end
if h ~= me then
  renew(me, cost, channel, lease)
  finish(old, me, rate, burst, tat, lease)
  return {3, 0, rs, bs}
end
if cost > burst then
  drop(me)
  finish(me, me, rate, burst, tat, lease)
  return {-2, 0, rs, bs}
end
local w, new = wait_for(tat, cost, rate, burst)
if w == 0 then
  redis.call('HSET', b, 'tat', fmt(new))
  drop(me)
  finish(me, me, rate, burst, new, lease)
  return {1, 0, rs, bs}
end
renew(me, cost, channel, lease)
finish(old, me, rate, burst, tat, lease)
return {2, w, rs, bs}
"""
)

# ARGV: op, rate0, burst0, ticket, lease ms, refund (a cost granted to a cancelled caller, or 0)
_LUA_LEAVE = (
    _LUA_ARGV
    + _LUA_COMMON
    + r"""
local bad = wrongtype(); if bad then return bad end
local rate, burst, tat = config(A[2], A[3])
local me, lease, refund = A[4], tonumber(A[5]), tonumber(A[6])
local old = first()
if redis.call('HEXISTS', t, me) == 1 then
  drop(me)
elseif refund > 0 then
  tat = tat - refund * 1000000 / rate
  redis.call('HSET', b, 'tat', fmt(tat))
end
finish(old, nil, rate, burst, tat, lease)
return {1, 0, fmt(rate), fmt(burst)}
"""
)

# ARGV: op ('configure'), rate ('' to keep), burst ('' to keep), rate0, burst0, lease ms
_LUA_CONFIGURE = (
    _LUA_ARGV
    + _LUA_COMMON
    + r"""
local bad = wrongtype(); if bad then return bad end
local rate, burst, tat = config(A[4], A[5])
-- the tokens held now are kept (capped at the new burst): GCRA's tat is a time, so it is
-- rescaled, else a lower rate would hand out tokens
local tokens = burst - math.max(tat - now, 0) * rate / 1000000
if A[2] ~= '' then rate = tonumber(A[2]); redis.call('HSET', b, 'rate', A[2]) end
if A[3] ~= '' then burst = tonumber(A[3]); redis.call('HSET', b, 'burst', A[3]) end
tat = now + (burst - math.min(tokens, burst)) * 1000000 / rate
redis.call('HSET', b, 'tat', fmt(tat))
finish(nil, nil, rate, burst, tat, tonumber(A[6]))
return {0, 0, fmt(rate), fmt(burst)}
"""
)


@dataclass(frozen=True, slots=True)
class RedisTokenBucketStatistics:
    """A snapshot of a :class:`RedisTokenBucket` as this process sees it, from
    :meth:`RedisTokenBucket.statistics` (which never calls Redis)."""

    name: str | None
    """The name given to the bucket, if any."""
    key: str
    """The bucket's key, as given (the Redis keys are ``{prefix}:{key}:...``)."""
    rate: float
    """Tokens per second, as Redis last reported it (every process shares it)."""
    burst: float
    """The bucket's size, as Redis last reported it."""
    waiting: int
    """Tasks and threads of this process waiting in ``acquire`` on this object."""
    granted_total: int
    """Acquisitions granted by Redis to this object (fallbacks not counted)."""
    cost_granted_total: float
    """Tokens granted by Redis to this object."""
    errors_total: int
    """Operations that found Redis unavailable (see ``on_error``)."""
    fallbacks_total: int
    """Acquisitions that ``on_error="allow"`` or ``"local"`` served without Redis."""


def _check_rate(rate: float | str) -> float:
    value = parse_rate(rate)
    if not (0 < value < math.inf):
        raise ValueError(
            f"rate must be a finite number of tokens per second > 0 for a Redis bucket, "
            f"got {rate!r}"
        )
    return value


def _check_burst(burst: object) -> float:
    if isinstance(burst, bool) or not isinstance(burst, (int, float)):
        raise TypeError(f"burst must be a number of tokens, got {burst!r}")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
    return float(burst)


class _Inbox:
    """Wake-up messages for one waiting ticket, from the link's listener (a loop or a thread)."""

    __slots__ = ("event", "items", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.items: deque[str] = deque()
        self.loop = loop
        # In a loop, made when a waiter first waits (most acquires never do): put() runs in the
        # same loop, so one that comes first is seen in ``items``.
        self.event: asyncio.Event | threading.Event | None = (
            None if loop is not None else threading.Event()
        )

    def put(self, payload: str) -> None:
        self.items.append(payload)
        if self.event is not None:
            self.event.set()


@final
class RedisTokenBucket:
    """A token bucket in Redis: ``rate`` tokens a second, bursts of ``burst``, FIFO, shared by
    every process that uses the same ``key`` (and ``prefix``) on the same Redis.

    ``await acquire(cost)`` waits its turn and takes ``cost`` tokens; ``try_acquire(cost)`` takes
    them only if they are there and nobody is queued; ``acquire_blocking`` /
    ``try_acquire_blocking`` are the thread forms.  A ``cost`` above the burst raises
    ``ValueError`` at once; a ``timeout`` that cannot be met raises :class:`TimeoutError` at once;
    either way, and when cancelled, nothing is consumed.  See the module docstring for the
    protocol, the keys, configuration and faults.

    Args:
        redis: A Redis URL (``"redis://127.0.0.1:6379/0"``; the object makes an asyncio client
            per event loop and a blocking client for threads, with ``op_timeout`` as socket
            timeouts), a ``redis.asyncio.Redis`` (tasks only) or a ``redis.Redis`` (threads only;
            its own ``socket_timeout`` bounds each call, so give it one).
        key: The bucket's name in Redis; processes that give the same key share the bucket.
        rate: Tokens per second, a number or a string such as ``"5/s"``, ``"600/min"``; finite
            and > 0.  Written to Redis only if it holds no rate for the key yet.
        burst: The bucket's size, the largest single cost; default one second's worth (at least
            1).  Written to Redis only if it holds none yet.
        prefix: The first part of every Redis key (no braces).
        on_error: ``"raise"`` (fail closed with :class:`RedisUnavailable`), ``"allow"`` (fail
            open) or ``"local"`` (a local bucket with ``local_share`` of the limit).
        local_share: With ``on_error="local"`` (and only then): the fraction in (0, 1] of the rate
            and burst this process may use alone while Redis is unavailable.
        op_timeout: Seconds each Redis call may take before it counts as unavailable.
        name: A label for ``repr``, statistics and messages.

    Raises:
        ValueError: If ``redis`` is a malformed URL, ``key`` or ``prefix`` is empty or has braces,
            ``rate`` is not > 0 and finite, ``burst`` is below 1 or not finite, ``on_error`` is
            not one of the three, ``local_share`` is missing with ``"local"`` (or given without
            it) or outside (0, 1], or ``op_timeout`` is not > 0.
        TypeError: If an argument has the wrong type (``redis`` neither a str nor a redis-py
            client, ``key`` not a str...).
        ImportError: If redis-py is not installed (``pip install 'poolkit[redis]'``).
    """

    __slots__ = (
        "__weakref__",
        "_burst",
        "_burst0",
        "_closed",
        "_cost_granted",
        "_counting",
        "_errors",
        "_fallbacks",
        "_granted",
        "_keys",
        "_lease",
        "_link",
        "_local",
        "_name",
        "_on_error",
        "_pending",
        "_rate",
        "_rate0",
        "_waiting",
        "_whats",
        "key",
    )

    def __init__(
        self,
        redis: Any,
        key: str,
        rate: float | str,
        burst: float | None = None,
        *,
        prefix: str = "poolkit",
        on_error: OnError = "raise",
        local_share: float | None = None,
        op_timeout: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.key = check_key(key)
        prefix = check_prefix(prefix)
        self._rate = self._rate0 = _check_rate(rate)
        if burst is None:
            self._burst = float(max(1, math.ceil(self._rate)))
        else:
            self._burst = _check_burst(burst)
        self._burst0 = self._burst
        self._on_error = check_on_error(on_error)
        share = check_local_share(local_share, self._on_error)
        op_timeout = check_op_timeout(op_timeout)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._name = name
        self._local: TokenBucket | None = None
        if share is not None:
            with unregistered():  # reported through this bucket, not as a bucket of its own
                self._local = TokenBucket(
                    self._rate * share,
                    max(1.0, self._burst * share),
                    name=f"{name or key} (local share)",
                )
        self._keys = (key_of(prefix, key, "b"), key_of(prefix, key, "q"), key_of(prefix, key, "t"))
        self._lease = _LEASE
        # Counters are updated by tasks and threads alike; reading them takes no lock.
        self._counting = threading.Lock()
        self._waiting = 0
        self._granted = 0
        self._cost_granted = 0.0
        self._errors = 0
        self._fallbacks = 0
        self._closed = False
        self._pending: set[asyncio.Task[Any]] = set()  # shielded clean-ups in flight
        self._whats: dict[str, str] = {}
        self._link = RedisLink.shared(redis, prefix=prefix, op_timeout=op_timeout)
        register(self, "redis_bucket")

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        """The name given when it was made, if any."""
        return self._name

    @property
    def rate(self) -> float:
        """Tokens per second, as Redis last reported it (the constructor's until then); change it
        for every process with :meth:`configure`."""
        return self._rate

    @property
    def burst(self) -> float:
        """The bucket's size, as Redis last reported it (the constructor's until then)."""
        return self._burst

    def statistics(self) -> RedisTokenBucketStatistics:
        """A snapshot of what this object knows; never calls Redis.

        Returns:
            A frozen :class:`RedisTokenBucketStatistics`.
        """
        return RedisTokenBucketStatistics(
            name=self._name,
            key=self.key,
            rate=self._rate,
            burst=self._burst,
            waiting=self._waiting,
            granted_total=self._granted,
            cost_granted_total=self._cost_granted,
            errors_total=self._errors,
            fallbacks_total=self._fallbacks,
        )

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        return (
            f"<RedisTokenBucket{name} key={self.key!r} rate={self._rate:g}/s "
            f"burst={self._burst:g} waiting={self._waiting} on_error={self._on_error!r} "
            f"closed={self._closed}>"
        )

    def _label(self) -> str:
        return f"Redis token bucket {self._name or self.key!r}"

    def _what(self, what: str) -> str:
        """``what`` for a message, after the label (made once per operation: the hot path's
        calls pay a dict lookup, not an f-string)."""
        text = self._whats.get(what)
        if text is None:
            text = self._whats[what] = f"{self._label()}: {what}"
        return text

    def _count_waiting(self, n: int) -> None:
        with self._counting:
            self._waiting += n

    def _check_cost(self, cost: object) -> float:
        if isinstance(cost, bool) or not isinstance(cost, (int, float)):
            raise TypeError(f"cost must be a number of tokens, got {cost!r}")
        if not (cost > 0 and math.isfinite(cost)):
            raise ValueError(f"cost must be a finite number > 0, got {cost!r}")
        if cost > self._burst:
            raise ValueError(
                f"cost {cost:g} exceeds the bucket's burst {self._burst:g}; "
                f"it could never be granted"
            )
        if self._closed:
            raise RuntimeError(f"{self._label()} was closed; make a new one")
        return float(cost)

    # ----------------------------------------------------------------- replies

    def _args(self, *rest: object) -> list[object]:
        return ["op", _fmt(self._rate0), _fmt(self._burst0), *rest]

    def _read(self, reply: Any, cost: float) -> tuple[int, float]:
        """Status and wait (seconds) of a script reply; raise what it means for the caller."""
        if isinstance(reply, (bytes, str)):  # the fast path's "1 0 rate burst"
            reply = reply.split()
        status = int(reply[0])
        if status == _WRONG_TYPE:
            key, kind = (_text(x) for x in reply[2:4])
            raise TypeError(
                f"{self._label()}: Redis key {key!r} holds a {kind}, not what the bucket keeps "
                f"there; choose another key or prefix, or delete that key"
            )
        self._rate = float(_text(reply[2]))
        self._burst = float(_text(reply[3]))
        if status == _GRANTED:
            with self._counting:
                self._granted += 1
                self._cost_granted += cost
        elif status == _TOO_BIG:
            raise ValueError(
                f"cost {cost:g} exceeds the bucket's burst {self._burst:g} (as configured in "
                f"Redis); it could never be granted"
            )
        return status, int(reply[1]) / 1e6

    def _too_late(self, wait: float, timeout: float | None) -> TimeoutError:
        return TimeoutError(
            f"{self._label()}: the tokens cannot come within timeout={timeout} s "
            f"(about {wait:.3f} s, the waiters ahead included)"
        )

    def _failed(self, e: RedisUnavailable) -> bool:
        """Count ``e``; True if the policy admits the caller without Redis (else re-raise)."""
        with self._counting:
            self._errors += 1
            if self._on_error == "raise":
                return False
            self._fallbacks += 1
            return True

    def _local_cost(self, cost: float) -> float:
        assert self._local is not None
        return min(cost, self._local.burst)

    # ----------------------------------------------------------------- asyncio

    async def _eval(self, lua: str, args: list[object], what: str) -> Any:
        return await self._link.eval(lua, self._keys, args, self._what(what))

    async def try_acquire(self, cost: float = 1) -> bool:
        """Take ``cost`` tokens if they are there and nobody is queued in Redis; never waits for
        tokens (it waits at most ``op_timeout`` for Redis).

        Returns:
            True if the tokens were taken (or, Redis unavailable, the policy admitted it).

        Raises:
            ValueError, TypeError: If ``cost`` is not a number in (0, burst].
            RedisUnavailable: With ``on_error="raise"``, if Redis cannot be reached in time.
        """
        return (await self._try_take(cost))[0]

    async def _try_take(self, cost: float) -> tuple[bool, bool]:
        """:meth:`try_acquire`, and whether Redis granted it (then :meth:`_refund_soon` can give
        it back) rather than the ``on_error`` policy."""
        cost = self._check_cost(cost)
        try:
            reply = await self._shielded(_LUA_ACQUIRE, self._try_args(cost), "try_acquire")
        except EvalCancelled as c:
            if c.reply is not None and _status(c.reply) == _GRANTED:
                await self._leave("-", cost)  # granted to a caller that is gone: give it back
            raise asyncio.CancelledError from None
        except RedisUnavailable as e:
            if not self._failed(e):
                raise
            return self._local is None or self._local.try_acquire(self._local_cost(cost)), False
        granted = self._read(reply, cost)[0] == _GRANTED
        return granted, granted

    def _try_args(self, cost: float) -> list[object]:
        return self._acquire_args(cost, "try", "-", "-", int(self._lease * 1000), -1)

    def _acquire_args(
        self, cost: float, mode: str, ticket: str, channel: str, lease_ms: int, timeout_us: int
    ) -> list[object]:
        """The acquire script's two arguments (see ``_LUA_ACQUIRE_ARGS``)."""
        head = f"{cost!r} {lease_ms} op {self._rate0!r} {self._burst0!r}"
        return [f"{head} {mode} {ticket} {timeout_us}", channel]

    async def acquire(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Wait for ``cost`` tokens, first come first served across every process, and take them.

        Cancelled or timed out, it has taken nothing and left nothing in Redis.  Uncontended it
        is one round trip (the first call on an event loop also subscribes to wake-ups).

        Args:
            cost: Tokens to take, ``0 < cost <= burst``.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            ValueError: If ``cost`` is not in (0, burst] (also when the burst in Redis is lowered
                below it while waiting), or ``timeout`` is negative or NaN.
            TypeError: If ``cost`` or ``timeout`` is not a number, or a Redis key of the bucket
                holds another type.
            TimeoutError: At once if the tokens of the waiters ahead plus ``cost`` cannot come
                within ``timeout``, else when it passes.
            RedisUnavailable: With ``on_error="raise"``, if Redis cannot be reached in time.
        """
        await self._take(cost, timeout)

    async def _take(self, cost: float, timeout: float | None) -> bool:
        """:meth:`acquire`; True if Redis granted the tokens (then :meth:`_refund_soon` can give
        them back), False if the ``on_error`` policy admitted the caller without Redis."""
        cost = self._check_cost(cost)
        timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            await self._acquire(cost, timeout, deadline, loop)
        except RedisUnavailable as e:
            if not self._failed(e):
                raise
            if self._local is not None:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await self._local.acquire(self._local_cost(cost), timeout=left)
            return False
        return True

    async def _acquire(
        self,
        cost: float,
        timeout: float | None,
        deadline: float | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        link = self._link
        ticket = link.new_ticket()
        inbox = _Inbox(loop)
        queued = False  # a ticket may be in Redis: remove it unless granted
        refund = 0.0  # granted to a caller cancelled meanwhile: give it back
        lease_ms = int(self._lease * 1000)
        timeout_us = -1 if timeout is None else int(timeout * 1e6)
        self._count_waiting(1)
        try:
            if not link.register(ticket, inbox.put):  # the loop's first: subscribe, confirmed
                await link.subscribe(ticket, inbox.put)
            args = self._acquire_args(cost, "wait", ticket, link.channel, lease_ms, timeout_us)
            queued = True
            try:
                reply = await self._shielded(_LUA_ACQUIRE, args, "acquire")
            except EvalCancelled as c:
                if c.reply is not None and _status(c.reply) == _GRANTED:
                    refund = cost
                raise asyncio.CancelledError from None
            status, wait = self._read(reply, cost)
            heartbeat = self._lease / 3
            while True:
                if status == _GRANTED:
                    queued = False
                    return
                if status == _TOO_LATE:
                    queued = False
                    raise self._too_late(wait, timeout)
                if status == _LOST:
                    # Our lease ran out (or Redis lost its data): queue again, at the back.
                    remaining = None if deadline is None else max(0.0, deadline - loop.time())
                    t_us = -1 if remaining is None else int(remaining * 1e6)
                    args = self._acquire_args(cost, "wait", ticket, link.channel, lease_ms, t_us)
                    lua = _LUA_ACQUIRE
                else:
                    # _HEAD: sleep exactly until our cost conforms; _QUEUED: until told.
                    delay = min(wait, heartbeat) if status == _HEAD else heartbeat
                    if deadline is not None:
                        left = deadline - loop.time()
                        if left <= 0:
                            raise self._too_late(wait, timeout)
                        delay = min(delay, left)
                    told = await _wait_event(inbox, delay)
                    if told:
                        payload = inbox.items.popleft()
                        if not inbox.items and inbox.event is not None:
                            inbox.event.clear()
                        if payload != RECHECK and payload.startswith("h "):
                            status, wait = _HEAD, int(payload[2:]) / 1e6
                            if wait > 0:
                                continue
                    elif deadline is not None and loop.time() >= deadline:
                        raise self._too_late(wait, timeout)
                    args = self._args(ticket, lease_ms)
                    lua = _LUA_CLAIM
                try:
                    reply = await self._shielded(lua, args, "acquire")
                except EvalCancelled as c:
                    if c.reply is not None and _status(c.reply) == _GRANTED:
                        refund = cost
                    raise asyncio.CancelledError from None
                status, wait = self._read(reply, cost)
        except RedisUnavailable:
            # Removing the ticket would wait for Redis again: its lease will expire instead.
            queued = False
            raise
        finally:
            self._count_waiting(-1)
            link.unsubscribe(ticket)
            if queued or refund:
                await self._leave(ticket, refund)

    def _shielded(self, lua: str, args: list[object], what: str) -> Awaitable[Any]:
        """Run a script that the caller's cancellation must not cut in half: if cancelled, wait
        for its reply (``op_timeout`` at most) and raise :class:`EvalCancelled` carrying it."""
        return self._link.eval_shielded(lua, self._keys, args, self._what(what))

    async def _leave(self, ticket: str, refund: float) -> None:
        """Remove ``ticket`` (and give back ``refund``), shielded from cancellation; a failure is
        left to the ticket's lease."""
        args = self._args(ticket, int(self._lease * 1000), _fmt(refund))
        task = asyncio.ensure_future(self._eval(_LUA_LEAVE, args, "leave"))
        self._pending.add(task)
        task.add_done_callback(_forget(self._pending))
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    async def configure(
        self, *, rate: float | str | None = None, burst: float | None = None
    ) -> None:
        """Change the rate and/or the burst in Redis, for every process using the key.

        The last call wins (see the module docstring); the head waiter is told its new wait.

        Raises:
            ValueError, TypeError: As for the constructor's ``rate`` and ``burst``.
            RedisUnavailable: If Redis cannot be reached in time (whatever ``on_error`` says:
                nothing was changed).
        """
        args = self._configure_args(rate, burst)
        try:
            reply = await self._eval(_LUA_CONFIGURE, args, "configure")
        except RedisUnavailable:
            with self._counting:
                self._errors += 1
            raise
        self._read(reply, 0.0)
        self._configure_local()

    async def aclose(self) -> None:
        """Release the Redis clients (the last object using a link closes the clients it made;
        a client passed in is never closed).  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        await self._link.arelease()

    async def __aenter__(self) -> None:
        """``async with bucket:`` takes one token, as a local :class:`~poolkit.TokenBucket`
        does (it is spent: leaving gives nothing back).  To close the bucket at the end of a
        block, ``async with contextlib.aclosing(bucket):``."""
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        return None

    # ----------------------------------------------------------------- threads

    def _eval_blocking(self, lua: str, args: list[object], what: str) -> Any:
        return self._link.eval_blocking(lua, self._keys, args, self._what(what))

    def try_acquire_blocking(self, cost: float = 1) -> bool:
        """Thread form of :meth:`try_acquire`."""
        return self._try_take_blocking(cost)[0]

    def _try_take_blocking(self, cost: float) -> tuple[bool, bool]:
        """Thread form of :meth:`_try_take`."""
        cost = self._check_cost(cost)
        try:
            reply = self._eval_blocking(_LUA_ACQUIRE, self._try_args(cost), "try_acquire")
        except RedisUnavailable as e:
            if not self._failed(e):
                raise
            return self._local is None or self._local.try_acquire(self._local_cost(cost)), False
        granted = self._read(reply, cost)[0] == _GRANTED
        return granted, granted

    def acquire_blocking(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until the tokens are taken.

        Raises:
            RuntimeError: If called in a thread that runs an event loop (it would freeze it).
            ValueError, TypeError, TimeoutError, RedisUnavailable: As :meth:`acquire`.
        """
        self._take_blocking(cost, timeout)

    def _take_blocking(self, cost: float, timeout: float | None) -> bool:
        """Thread form of :meth:`_take`."""
        cost = self._check_cost(cost)
        timeout = check_timeout(timeout)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError(
                "acquire_blocking() would block the event loop running in this thread; "
                "await acquire() instead"
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._acquire_blocking(cost, timeout, deadline)
        except RedisUnavailable as e:
            if not self._failed(e):
                raise
            if self._local is not None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._local.acquire_blocking(self._local_cost(cost), timeout=left)
            return False
        return True

    def _acquire_blocking(self, cost: float, timeout: float | None, deadline: float | None) -> None:
        link = self._link
        ticket = link.new_ticket()
        inbox = _Inbox(None)
        link.subscribe_blocking(ticket, inbox.put)
        lease_ms = int(self._lease * 1000)
        timeout_us = -1 if timeout is None else int(timeout * 1e6)
        queued = True
        self._count_waiting(1)
        try:
            args = self._acquire_args(cost, "wait", ticket, link.channel, lease_ms, timeout_us)
            status, wait = self._read(self._eval_blocking(_LUA_ACQUIRE, args, "acquire"), cost)
            heartbeat = self._lease / 3
            while True:
                if status == _GRANTED:
                    queued = False
                    return
                if status == _TOO_LATE:
                    queued = False
                    raise self._too_late(wait, timeout)
                if status == _LOST:
                    remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
                    t_us = -1 if remaining is None else int(remaining * 1e6)
                    args = self._acquire_args(cost, "wait", ticket, link.channel, lease_ms, t_us)
                    lua = _LUA_ACQUIRE
                else:
                    delay = min(wait, heartbeat) if status == _HEAD else heartbeat
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise self._too_late(wait, timeout)
                        delay = min(delay, left)
                    event = inbox.event
                    assert isinstance(event, threading.Event)
                    told = event.wait(delay)
                    if told and inbox.items:
                        payload = inbox.items.popleft()
                        if not inbox.items:
                            event.clear()
                        if payload != RECHECK and payload.startswith("h "):
                            status, wait = _HEAD, int(payload[2:]) / 1e6
                            if wait > 0:
                                continue
                    elif deadline is not None and time.monotonic() >= deadline:
                        raise self._too_late(wait, timeout)
                    args = self._args(ticket, lease_ms)
                    lua = _LUA_CLAIM
                status, wait = self._read(self._eval_blocking(lua, args, "acquire"), cost)
        except RedisUnavailable:
            queued = False
            raise
        finally:
            self._count_waiting(-1)
            link.unsubscribe(ticket)
            if queued:
                with contextlib.suppress(Exception):
                    args = self._args(ticket, lease_ms, "0")
                    self._eval_blocking(_LUA_LEAVE, args, "leave")

    def configure_blocking(
        self, *, rate: float | str | None = None, burst: float | None = None
    ) -> None:
        """Thread form of :meth:`configure`."""
        args = self._configure_args(rate, burst)
        try:
            reply = self._eval_blocking(_LUA_CONFIGURE, args, "configure")
        except RedisUnavailable:
            with self._counting:
                self._errors += 1
            raise
        self._read(reply, 0.0)
        self._configure_local()

    def close(self) -> None:
        """Blocking form of :meth:`aclose`: releases the blocking client and listener thread
        (asyncio clients of closed loops are dropped; use ``aclose()`` from a running loop).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._link.release()

    def __enter__(self) -> None:
        """``with bucket:`` in a thread takes one token (see ``__aenter__``); to close the
        bucket at the end of a block, ``with contextlib.closing(bucket):``."""
        self.acquire_blocking()

    def __exit__(self, *exc: object) -> None:
        return None

    # ----------------------------------------------------------------- Limits and PerKey

    def _refund_soon(self, cost: float) -> None:
        """Give back ``cost`` tokens that Redis granted (``_take`` said True) to an acquisition
        that then failed or was cancelled (a ``Limits`` whose later member did not grant), from
        synchronous code, without waiting: the bucket's ``tat`` moves back by ``cost``, so the
        tokens are there again, never beyond the burst.

        The leave script runs in a task of the running loop (which :meth:`aclose` waits for), or
        in this call on a thread without a loop, or in poolkit's deferred-work thread when
        neither fits (a garbage collection, or a loop's thread and only a blocking client).  If
        Redis cannot be reached the tokens stay spent (it fails closed).
        """
        args = self._args("-", int(self._lease * 1000), _fmt(cost))

        def start_task(loop: asyncio.AbstractEventLoop) -> None:
            task = loop.create_task(self._eval(_LUA_LEAVE, args, "refund"))
            self._pending.add(task)
            task.add_done_callback(_settled(self._pending))

        self._link.send_soon(start_task, lambda: self._refund_blocking(args))

    def _refund_blocking(self, args: list[object]) -> None:
        try:
            self._eval_blocking(_LUA_LEAVE, args, "refund")
        except (RedisUnavailable, RuntimeError):
            with self._counting:
                self._errors += 1

    def _is_idle(self) -> bool:
        """Whether nobody waits in this object and nothing of it is in flight, so that a
        ``PerKey`` may forget it: the bucket's state lives in Redis, not here."""
        return not self._waiting and not self._pending

    def _retire(self) -> None:
        """Close an idle object without waiting (a ``PerKey`` forgetting it; called holding no
        lock): its share of the link is let go."""
        if self._closed:
            return
        self._closed = True
        self._link.release_soon()

    # ----------------------------------------------------------------- configuration

    def _configure_args(self, rate: float | str | None, burst: float | None) -> list[object]:
        if rate is None and burst is None:
            raise ValueError("configure() needs rate=, burst= or both")
        r = "" if rate is None else _fmt(_check_rate(rate))
        b = "" if burst is None else _fmt(_check_burst(burst))
        if self._closed:
            raise RuntimeError(f"{self._label()} was closed; make a new one")
        return ["configure", r, b, _fmt(self._rate0), _fmt(self._burst0), int(self._lease * 1000)]

    def _configure_local(self) -> None:
        local = self._local
        if local is not None:
            share = local.rate / self._rate0 if self._rate0 else 1.0
            local.rate = self._rate * share
            local.burst = max(1.0, self._burst * share)
            self._rate0 = self._rate
            self._burst0 = self._burst


async def _wait_event(inbox: _Inbox, delay: float) -> bool:
    """Wait for a message to ``inbox`` at most ``delay`` seconds: True if one came."""
    if inbox.items:
        return True
    event = inbox.event
    if event is None:
        event = inbox.event = asyncio.Event()
    assert isinstance(event, asyncio.Event)
    try:
        async with asyncio.timeout(delay):
            await event.wait()
    except TimeoutError:
        return bool(inbox.items)
    return True


def _settled(tasks: set[asyncio.Task[Any]]) -> Any:
    """A done callback that forgets a task nobody awaits, and reads its outcome (a failure is
    counted by whoever made it, never reported as unretrieved)."""

    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if not task.cancelled():
            task.exception()

    return done


def _forget(tasks: set[asyncio.Task[Any]]) -> Any:
    def done(task: asyncio.Task[Any]) -> None:
        tasks.discard(task)

    return done


def _fmt(x: float) -> str:
    return repr(float(x))


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _status(reply: Any) -> int:
    """The status of a script reply: an array, or the fast path's string "1 0 rate burst"."""
    if isinstance(reply, (bytes, str)):
        return int(reply.split()[0])
    return int(reply[0])
