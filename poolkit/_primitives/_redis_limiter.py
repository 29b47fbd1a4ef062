"""RedisCapacityLimiter: how many at once, shared by every process that names the same key.

What Redis keeps
----------------
Every key of one limiter carries one hash tag (:func:`key_of`), so one script touches one Cluster
slot::

    {prefix}:{key}:s   hash   total, used (the sum of the weights held), seq (queue numbering)
    {prefix}:{key}:h   hash   lease id -> weight held under that lease
    {prefix}:{key}:e   zset   lease id -> expiry, in Redis TIME microseconds
    {prefix}:{key}:q   zset   ticket -> place in the FIFO queue
    {prefix}:{key}:d   hash   ticket -> "weight lease channel" (whose it is, whom to wake)
    {prefix}:{key}:o   zset   "ticket:x" (dropped: too heavy) and "ticket:w" (withdrawn) marks,
                              forgotten after a while

One lease per limiter object
----------------------------
Each limiter object (in practice, each process) holds at most one lease: ``acquire(w)`` adds
``w`` to it, ``release(w)`` takes ``w`` away, so ``release`` stays anonymous as it is on the local
:class:`CapacityLimiter` and a process with a thousand holders renews one lease, not a thousand.
While the object holds weight or has waiters, a heartbeat renews the lease every ``lease_ttl / 3``
with one command (which also renews its waiters' queue entries: they live and die with the
lease).  Only Redis's clock decides expiry (``TIME`` inside the scripts), so client clocks do not
matter.  Every script first purges the leases that have expired: a holder that died gives its
weight back once its lease expires, ``lease_ttl`` after its last heartbeat.  A waiter at the head
of the queue is told, by the script that made it the head, when the earliest lease holding weight
expires, and sets a *local* timer for then to run the claim script once; so the weight of a dead
holder comes back within ``lease_ttl`` plus one heartbeat, and nobody polls.

Acquire and wake-ups
--------------------
Uncontended, ``acquire`` is one EVALSHA: purge, then, if nobody is queued and ``used + w <=
total``, add ``w`` to the lease; else queue a ticket.  Waiting is pushed: a script that frees room
grants the head(s) of the queue *itself* -- the weight moves onto the waiter's lease in the same
script -- and PUBLISHes the ticket to the owner's wake-up channel (one per process, see
:mod:`poolkit._primitives._redis_link`).  A lost message loses no grant: on a pub/sub reconnect
every local waiter runs the claim script once, which says whether its ticket was granted.  A
waiter sends no command while it waits, apart from its process's lease heartbeat and (at the
head, behind a holder) one claim when the earliest lease would expire.

FIFO: nobody behind the head is granted while the head does not fit, so a heavy request is not
starved by light ones.  Why pub/sub rather than a list per waiter with a blocking pop:
a blocking pop holds a connection per waiting task, and a grant pushed to a list whose waiter has
gone must be found and undone; with pub/sub a process has one subscribed connection, the grant
itself lives in Redis (on the lease), and the message is only a hint, safe to lose.

Cancellation and timeouts
-------------------------
A cancelled or timed-out ``acquire`` holds nothing, in Redis too: the acquire script call is
shielded (a cancelled acquire lets it finish, at most ``op_timeout``, in a task of its own that a
second cancellation cannot stop, so its outcome is known), and the withdraw script, also shielded,
removes the ticket or -- if a grant raced the cancellation -- gives the granted weight back.  It
is idempotent by ticket (the ``:w`` mark).

A call whose outcome cannot be learnt (Redis unreachable, or a cancelled ``try_acquire``) can only
leave Redis counting *more* under the lease than this object holds, never less: it fails closed.
Whenever the object holds nothing, has nobody queued and no call in flight, it moves on to a new
lease id (the release or withdraw that empties it deletes the old one, with whatever Redis counted
under it; an old lease that could not be deleted is not renewed, and expires).  So such excess
lasts at most until the object is next idle, plus ``lease_ttl``.

Lease loss is never silent
--------------------------
If a heartbeat finds the lease gone (Redis restarted empty, or a partition or pause longer than
``lease_ttl``), or cannot renew it before it expires, while this object holds weight:

1. ``on_lease_lost(exc)`` is called (if given) with the :class:`LeaseLost` exception, in the
   heartbeat's task or thread;
2. ``lease_lost`` becomes True (also in :meth:`RedisCapacityLimiter.statistics`), and the weight
   held is forfeited: later ``release()`` calls for it do nothing in Redis;
3. every task inside ``async with limiter:`` or ``async with limiter.hold(w):`` is cancelled, and
   the block raises :class:`LeaseLost` instead of :class:`asyncio.CancelledError`; a thread inside
   ``with limiter:`` gets :class:`LeaseLost` at the block's exit.

The next acquire starts a new lease; ``lease_lost`` stays True as a record.

Where the heartbeat runs
------------------------
In a task of the event loop that made the first acquire of a holding period, or in a thread of its
own (``poolkit redis lease <key>``) when that acquire was a blocking one; it ends by itself once
the object holds nothing and nobody of it waits, and ``aclose()`` / ``close()`` stop it.  A limiter
used from an event loop that then ends while it still holds weight loses its heartbeat: close it
first.

In Limits and PerKey
--------------------
A :class:`~poolkit.Limits` takes Redis limiters after its local slots, in the order of their
Redis keys (:meth:`RedisCapacityLimiter._order`), the same in every process.  Its ``release`` is
synchronous: :meth:`RedisCapacityLimiter._release_soon` takes the weight off this object's books
at once and sends the release script in a task of the running loop (tracked: ``aclose()`` waits
for it), or in the call from a thread; Redis counts the weight until then, so the cap holds.  A
``PerKey`` forgets an object that holds nothing, has no waiter and no call in flight
(``_is_idle``), and closes it without waiting (``_retire``): the heartbeat is stopped, the link let
go.  ``release()`` itself runs its script in such a task, so a cancelled release still reaches
Redis.

When Redis is unavailable
-------------------------
``on_error="raise"`` (default): :class:`RedisUnavailable` (cause attached) within ``op_timeout``.
``"allow"``: the acquire succeeds without Redis (fail open).  ``"local"``: the acquire goes to a
local :class:`CapacityLimiter` of ``local_share * total`` (at least 1).  ``release`` gives weight
back to wherever it came from.  Keys expire once idle (``_KEEP_MS`` after the last script; empty
hashes and sets vanish at once).

If Redis fails while a ticket is queued and the withdraw cannot reach it either, the ticket stays
in Redis until its lease expires; while the object holds other weight its heartbeat keeps that
lease, so the ticket may still be granted, and that weight is then counted in Redis but held by
nobody (it fails closed) until the object next goes idle (see above).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, final

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import LeaseLost, NotAcquired
from poolkit._core._registry import register, unregistered
from poolkit._primitives._limiter import CapacityLimiter, check_weight
from poolkit._primitives._redis_link import (
    RECHECK,
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

__all__ = ["RedisCapacityLimiter", "RedisCapacityLimiterStatistics"]


# Keys are kept this long after the last script touched them (an idle PerKey leaves nothing).
_KEEP_MS = 600_000
# Withdraw and drop marks are kept this long (they only guard retries of one call).
_MARKS_US = 600_000_000

_logger = logging.getLogger("poolkit.redis")

_GRANTED = 1
_HEAD = 2
_QUEUED = 3
_NOT_NOW = 0
_GONE = -1  # the ticket's lease expired: it is not in the queue any more
_TOO_HEAVY = -2
_WRONG_TYPE = -9

# KEYS: s h e q d o.  ARGV[1]: the total this object was made with (written if absent),
# ARGV[2]: keep (ms).  Leaves locals: now, total, used.
_PRELUDE = """
local s, h, e, q, d, o = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
-- The other keys are made with s: look at their types only when s is not there yet.
local ty = redis.call('TYPE', s)['ok']
if ty ~= 'hash' then
  if ty ~= 'none' then return {-9, 0, s, ty} end
  local want = {h='hash', e='zset', q='zset', d='hash', o='zset'}
  for name, k in pairs({h=h, e=e, q=q, d=d, o=o}) do
    ty = redis.call('TYPE', k)['ok']
    if ty ~= 'none' and ty ~= want[name] then return {-9, 0, k, ty} end
  end
end
-- Keys written by this script get their expiry renewed (the heartbeat renews them all).
local touched = {}
local function touch(k) touched[k] = true end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local conf = redis.call('HMGET', s, 'total', 'used')
local total = tonumber(conf[1])
if not total then
  total = tonumber(ARGV[1])
  redis.call('HSET', s, 'total', total)
  touch(s)
end
local used = tonumber(conf[2] or '0')
local used0 = used
local dead = redis.call('ZRANGEBYSCORE', e, '-inf', now, 'LIMIT', 0, 100)
for _, lease in ipairs(dead) do
  used = used - tonumber(redis.call('HGET', h, lease) or '0')
  redis.call('HDEL', h, lease)
  redis.call('ZREM', e, lease)
end
if used < 0 then used = 0 end
-- Marks (withdrawn, dropped) are kept MARKS_US; old ones are cleared when one is added.
local function mark(ticket, what)
  redis.call('ZREMRANGEBYSCORE', o, '-inf', now - MARKS_US)
  redis.call('ZADD', o, now, ticket .. what)
  touch(o)
end
-- The head of the queue, looked up once until the queue changes.
local head_known, head_ticket = false, nil
local function head()
  if not head_known then
    head_ticket = redis.call('ZRANGE', q, 0, 0)[1]
    head_known = true
  end
  return head_ticket
end
local function unqueue(ticket)
  redis.call('ZREM', q, ticket)
  redis.call('HDEL', d, ticket)
  head_known = false
end
local function wake_in()
  local list = redis.call('ZRANGE', e, 0, 31, 'WITHSCORES')
  for i = 1, #list, 2 do
    if tonumber(redis.call('HGET', h, list[i]) or '0') > 0 then
      return tonumber(list[i + 1]) - now
    end
  end
  return -1
end
-- Grant the head while it fits (strict FIFO); drop heads whose lease died or that can never fit.
local function serve()
  while true do
    local ticket = head()
    if not ticket then return end
    local data = redis.call('HGET', d, ticket)
    local w, lease, ch
    if data then w, lease, ch = string.match(data, '^(%d+) (%S+) (%S+)$') end
    if not data or not redis.call('ZSCORE', e, lease) then
      unqueue(ticket)
      if ch then redis.call('PUBLISH', ch, ticket .. ' r') end
    elseif tonumber(w) > total then
      unqueue(ticket)
      mark(ticket, ':x')
      redis.call('PUBLISH', ch, ticket .. ' x ' .. total)
    elseif used + tonumber(w) <= total then
      unqueue(ticket)
      redis.call('HINCRBY', h, lease, w)
      touch(h)
      used = used + tonumber(w)
      redis.call('PUBLISH', ch, ticket .. ' g')
    else
      return
    end
  end
end
-- After serve(): tell a new head (not ``mine``) when to claim.
local function notify(old, mine)
  local new = head()
  if new and new ~= old and new ~= mine then
    local data = redis.call('HGET', d, new)
    local ch = string.match(data, '^%d+ %S+ (%S+)$')
    redis.call('PUBLISH', ch, new .. ' h ' .. wake_in())
  end
end
local function finish()
  if used ~= used0 then
    redis.call('HSET', s, 'used', used)
    touch(s)
  end
  for k, _ in pairs(touched) do redis.call('PEXPIRE', k, ARGV[2]) end
end
local old = head()
""".replace("MARKS_US", str(_MARKS_US))

# ARGV[3..]: lease, ticket, weight, channel, ttl (us), mode ("try" or "wait")
_ACQUIRE = (
    _PRELUDE
    + """
local lease, ticket, w, ch, ttl = ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], ARGV[7]
if w > total then finish(); return {-2, total} end
serve()
local reply
if not head() and used + w <= total then
  redis.call('HINCRBY', h, lease, w)
  used = used + w
  redis.call('ZADD', e, now + ttl, lease)
  touch(h)
  touch(e)
  reply = {1, total}
elseif ARGV[8] == 'try' then
  reply = {0, total}
else
  local seq = redis.call('HINCRBY', s, 'seq', 1)
  redis.call('ZADD', q, seq, ticket)
  head_known = false
  redis.call('HSET', d, ticket, w .. ' ' .. lease .. ' ' .. ch)
  redis.call('ZADD', e, now + ttl, lease)
  touch(q)
  touch(d)
  touch(e)
  if head() == ticket then reply = {2, total, wake_in()} else reply = {3, total} end
end
notify(old, ticket)
finish()
return reply
"""
)

# ARGV[3..]: the ticket's lease, ticket
_CLAIM = (
    _PRELUDE
    + """
local lease, ticket = ARGV[3], ARGV[4]
serve()
notify(old, ticket)
local reply
if redis.call('ZSCORE', q, ticket) and not redis.call('ZSCORE', e, lease) then
  unqueue(ticket)
  reply = {-1, total}
elseif redis.call('ZSCORE', q, ticket) then
  if head() == ticket then reply = {2, total, wake_in()} else reply = {3, total} end
elseif redis.call('ZSCORE', o, ticket .. ':x') then
  reply = {-2, total}
elseif redis.call('ZSCORE', e, lease) then
  reply = {1, total}
else
  reply = {-1, total}
end
finish()
return reply
"""
)

# ARGV[3..]: the ticket's lease, ticket, weight, drop ("1": the object has moved on to a new lease
# and holds nothing under this one: delete it, whatever Redis counts under it)
_WITHDRAW = (
    _PRELUDE
    + """
local lease, ticket, w = ARGV[3], ARGV[4], tonumber(ARGV[5])
local reply = {0, total}
if not redis.call('ZSCORE', o, ticket .. ':w') then
  mark(ticket, ':w')
  if redis.call('ZSCORE', q, ticket) then
    unqueue(ticket)
  elseif not redis.call('ZSCORE', o, ticket .. ':x') and redis.call('ZSCORE', e, lease) then
    local left = redis.call('HINCRBY', h, lease, -w)
    used = used - w
    if left <= 0 then redis.call('HDEL', h, lease) end
    reply = {1, total}
  end
end
if ARGV[6] == '1' then
  used = used - tonumber(redis.call('HGET', h, lease) or '0')
  redis.call('HDEL', h, lease)
  redis.call('ZREM', e, lease)
end
serve()
notify(old, nil)
finish()
return reply
"""
)

# ARGV[3..]: lease, weight, drop ("1": the object has moved on to a new lease and holds nothing
# under this one: delete it, with whatever Redis counts under it -- more than ``weight`` only after
# a call whose outcome the object could not learn)
_RELEASE = (
    _PRELUDE
    + """
local lease, w = ARGV[3], tonumber(ARGV[4])
local reply = {-1, total}
if redis.call('ZSCORE', e, lease) then
  local held = tonumber(redis.call('HGET', h, lease) or '0')
  if w > held or ARGV[5] == '1' then w = held end
  used = used - w
  if held - w <= 0 then redis.call('HDEL', h, lease) else redis.call('HINCRBY', h, lease, -w) end
  if ARGV[5] == '1' then redis.call('ZREM', e, lease) end
  reply = {1, total}
end
serve()
notify(old, nil)
finish()
return reply
"""
)

# ARGV[3..]: lease, ttl (us)
_HEARTBEAT = (
    _PRELUDE
    + """
local lease, ttl = ARGV[3], tonumber(ARGV[4])
local reply
if redis.call('ZSCORE', e, lease) then
  redis.call('ZADD', e, now + ttl, lease)
  for _, k in ipairs({s, h, e, q, d, o}) do touch(k) end
  reply = {1, total}
else
  reply = {-1, total}
end
serve()
notify(old, nil)
finish()
return reply
"""
)

# ARGV[3]: the new total
_CONFIGURE = (
    _PRELUDE
    + """
total = tonumber(ARGV[3])
redis.call('HSET', s, 'total', total)
touch(s)
serve()
notify(old, nil)
finish()
return {1, total}
"""
)


@dataclass(frozen=True, slots=True)
class RedisCapacityLimiterStatistics:
    """A snapshot of a :class:`RedisCapacityLimiter`, from its ``statistics()``; Redis is not
    asked (``total`` is the last value a script reported)."""

    name: str | None
    """The name given to the limiter, if any."""
    key: str
    """The limit's key (without prefix): every object naming it shares the limit."""
    total: int
    """The capacity shared by every process, as last seen in Redis."""
    held: int
    """Weight this object holds in Redis under its lease."""
    held_without_redis: int
    """Weight held by ``on_error="allow"`` or ``"local"`` while Redis was unavailable."""
    waiting: int
    """Tasks and threads of this object waiting in ``acquire``."""
    lease: str
    """This object's current lease id in Redis."""
    lease_lost: bool
    """Whether a lease of this object has ever been lost (see the module docstring)."""
    acquired_total: int
    """Successful acquisitions through Redis."""
    errors_total: int
    """Operations that found Redis unavailable."""
    fallbacks_total: int
    """Acquisitions that ``on_error="allow"`` or ``"local"`` served without Redis."""


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no event loop running in this thread
        return None


class _Inbox:
    """Wake-up messages for one waiting ticket, for a task (``loop``) or a thread (None)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        self.items: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.event = asyncio.Event() if loop is not None else None

    def put(self, payload: str) -> None:  # in the loop (tasks) or the listener thread
        self.items.put(payload)
        if self.event is not None:
            self.event.set()

    async def get(self, delay: float | None) -> str | None:
        """The next message, or None after ``delay`` seconds (None: no limit)."""
        assert self.event is not None
        while True:
            with contextlib.suppress(queue.Empty):
                return self.items.get_nowait()
            self.event.clear()
            try:
                async with asyncio.timeout(delay):
                    await self.event.wait()
            except TimeoutError:
                with contextlib.suppress(queue.Empty):
                    return self.items.get_nowait()
                return None

    def get_blocking(self, delay: float | None) -> str | None:
        try:
            return self.items.get(timeout=delay)
        except queue.Empty:
            return None


def _text(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


@final
class RedisCapacityLimiter:
    """At most ``total`` units of weight held at once by every process sharing ``key``; FIFO.

    The shared twin of :class:`~poolkit.CapacityLimiter`, with the same API: ``async with
    limiter:`` / ``async with limiter.hold(w):``, ``await acquire(w)`` / ``try_acquire(w)`` /
    ``release(w)``, and ``acquire_blocking`` / ``try_acquire_blocking`` / ``release_blocking`` /
    ``with limiter:`` for threads.  How it works, and exactly what happens when a lease is lost or
    Redis is unavailable: see :mod:`poolkit._primitives._redis_limiter`.

    Args:
        redis: A Redis URL, a ``redis.asyncio.Redis`` (tasks only) or a ``redis.Redis`` (threads
            only).  A client passed in is used as it is: give a blocking one a
            ``socket_timeout`` and ``socket_connect_timeout``, and few retries (redis-py's default
            retries make each call to a dead server take seconds).
        key: The name of the limit; every object naming it (with the same ``prefix``) shares it.
        total: The capacity, an ``int`` of at least 1; written to Redis if the limit has none
            there (:meth:`configure` changes it for everybody).
        prefix: Prefix of every Redis key of the limit.
        lease_ttl: Seconds a lease lives unless renewed (renewed every ``lease_ttl / 3``): the
            longest a dead holder keeps its weight, and the longest pause survived.
        on_error: ``"raise"``, ``"allow"`` or ``"local"``: what to do when Redis is unavailable.
        local_share: With ``on_error="local"`` (and only then): the fraction in (0, 1] of
            ``total`` this object may hold on its own meanwhile.
        op_timeout: Seconds every Redis call may take; less than ``lease_ttl / 2``.
        on_lease_lost: Called with the :class:`LeaseLost` exception when the lease is lost while
            weight is held (in the heartbeat's task or thread; it must not block).
        name: A label for ``repr``, statistics and metrics.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If a value is out of range (``total`` < 1, ``lease_ttl`` outside
            [0.05, 86400], ``op_timeout`` not below ``lease_ttl / 2``, ``local_share`` missing
            with ``on_error="local"`` or given without it...), or ``redis`` is a malformed URL.
    """

    def __init__(
        self,
        redis: object,
        key: str,
        total: int,
        *,
        prefix: str = "poolkit",
        lease_ttl: float = 10.0,
        on_error: OnError = "raise",
        local_share: float | None = None,
        op_timeout: float = 1.0,
        on_lease_lost: Callable[[LeaseLost], object] | None = None,
        name: str | None = None,
    ) -> None:
        self._key = check_key(key)
        self._total = self._total0 = check_weight(total, "total")
        prefix = check_prefix(prefix)
        if isinstance(lease_ttl, bool) or not isinstance(lease_ttl, (int, float)):
            raise TypeError(f"lease_ttl must be a number of seconds, got {lease_ttl!r}")
        if not 0.05 <= lease_ttl <= 86_400:
            raise ValueError(f"lease_ttl must be between 0.05 and 86400 seconds, got {lease_ttl!r}")
        self._ttl = float(lease_ttl)
        self._on_error = check_on_error(on_error)
        share = check_local_share(local_share, self._on_error)
        op_timeout = check_op_timeout(op_timeout)
        if op_timeout >= self._ttl / 2:
            raise ValueError(
                f"op_timeout must be shorter than lease_ttl / 2 ({self._ttl / 2:g} s), so that a "
                f"heartbeat that times out leaves time for another, got {op_timeout!r}"
            )
        if on_lease_lost is not None and not callable(on_lease_lost):
            raise TypeError(f"on_lease_lost must be callable or None, got {on_lease_lost!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._name = name
        self._on_lease_lost = on_lease_lost
        self._keys = [key_of(prefix, self._key, part) for part in "sheqdo"]
        self._local: CapacityLimiter | None = None
        if share is not None:
            with unregistered():  # reported through this limiter, not as a limiter of its own
                self._local = CapacityLimiter(max(1, int(share * self._total)), name=name)
        self._link = RedisLink.shared(redis, prefix=prefix, op_timeout=op_timeout)
        self._lock = threading.Lock()
        self._epoch = 0
        self._lease = f"{self._link.token}:{id(self):x}:0"
        self._inboxes: dict[str, _Inbox] = {}
        self._held = 0  # in Redis, under the lease
        self._forfeited = 0  # held when the lease was lost: its release does nothing
        self._allowed = 0  # held by on_error="allow"
        self._local_held = 0  # held in self._local
        self._waiting = 0
        self._busy = 0  # script calls in flight whose effect on the lease is not yet known
        self._lost = False
        self._losses = 0
        self._acquired = 0
        self._errors = 0
        self._fallbacks = 0
        self._hb_task: asyncio.Task[None] | None = None
        self._hb_thread: threading.Thread | None = None
        self._hb_stop = threading.Event()
        self._blocks: dict[asyncio.Task[Any], int] = {}
        self._doomed: set[asyncio.Task[Any]] = set()
        self._undoing: set[asyncio.Task[None]] = set()  # cancelled acquires being undone
        self._releasing: set[asyncio.Task[None]] = set()  # releases sent in tasks of their own
        self._thread_blocks = threading.local()
        self._closed = False
        register(self, "redis_limiter")

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        """The name given at construction."""
        return self._name

    @property
    def key(self) -> str:
        """The limit's key (without prefix)."""
        return self._key

    @property
    def total(self) -> int:
        """The capacity as last seen in Redis (change it with :meth:`configure`)."""
        return self._total

    @property
    def lease_lost(self) -> bool:
        """Whether a lease of this object has been lost (see the module docstring)."""
        return self._lost

    def statistics(self) -> RedisCapacityLimiterStatistics:
        """Return a snapshot of this object's counters; never calls Redis."""
        with self._lock:
            return RedisCapacityLimiterStatistics(
                name=self._name,
                key=self._key,
                total=self._total,
                held=self._held,
                held_without_redis=self._allowed + self._local_held,
                waiting=self._waiting,
                lease=self._lease,
                lease_lost=self._lost,
                acquired_total=self._acquired,
                errors_total=self._errors,
                fallbacks_total=self._fallbacks,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<RedisCapacityLimiter{name} key={s.key!r} held={s.held}/{s.total} "
            f"waiting={s.waiting} lease_lost={s.lease_lost} on_error={self._on_error!r} "
            f"closed={self._closed}>"
        )

    def _label(self) -> str:
        n = f" {self._name!r}" if self._name is not None else ""
        return f"Redis capacity limiter{n} (key {self._key!r})"

    # ----------------------------------------------------------------- helpers

    def _check(self, weight: object) -> int:
        w = check_weight(weight)  # type: ignore[arg-type]
        if w > self._total:
            raise ValueError(
                f"weight {w} exceeds the limiter's total {self._total}; it could never fit"
            )
        if self._closed:
            raise RuntimeError(f"{self._label()} was closed (aclose()/close()); make a new one")
        return w

    def _args(self, *rest: object) -> list[object]:
        return [self._total0, _KEEP_MS, *rest]

    def _ttl_us(self) -> int:
        return int(self._ttl * 1e6)

    def _read(self, reply: Any, weight: int = 0) -> int:
        status = int(reply[0])
        if status == _WRONG_TYPE:
            key, kind = _text(reply[2]), _text(reply[3])
            raise TypeError(
                f"{self._label()}: Redis key {key!r} holds a {kind}, not what the limiter keeps "
                f"there; choose another key or prefix, or delete that key"
            )
        self._total = int(reply[1])
        if status == _TOO_HEAVY:
            raise ValueError(
                f"weight {weight} exceeds the limiter's total {self._total} (as configured in "
                f"Redis); it could never fit"
            )
        return status

    def _granted(self, weight: int, lease: str) -> bool:
        """Count a grant made under ``lease``; False if the object has moved on from that lease
        since (it was lost: the weight granted under it is not safely held, queue again)."""
        with self._lock:
            if lease != self._lease:
                return False
            self._held += weight
            self._acquired += 1
            return True

    def _failed(self, e: RedisUnavailable) -> None:
        """Count ``e``; re-raise it unless the policy admits the caller without Redis."""
        with self._lock:
            self._errors += 1
        if self._on_error == "raise":
            raise e

    def _rotate(self) -> str:
        """(Lock held.) Move on to a new lease; return the old one."""
        old = self._lease
        self._epoch += 1
        self._lease = f"{self._link.token}:{id(self):x}:{self._epoch}"
        return old

    def _drop_now(self) -> bool:
        """(Lock held.) Whether nothing is held, queued or in flight under the lease, so that
        the next call may delete it and later calls use a new one (``_rotate``)."""
        return self._held == 0 and self._waiting == 0 and self._busy == 0

    def _new_lease_if_idle(self) -> None:
        """After an outcome we could not learn (Redis may count more under the lease than this
        object holds, never less): if nothing is held, move on to a new lease; the old one, not
        renewed, expires by itself with whatever Redis counts under it."""
        with self._lock:
            if self._drop_now():
                self._rotate()

    # ----------------------------------------------------------------- heartbeat

    def _needs_heartbeat(self) -> bool:
        # (A call in flight does not: the acquire script sets the lease's expiry itself.)
        return self._held > 0 or self._waiting > 0

    def _start_heartbeat(self) -> None:
        """Make sure a heartbeat runs: a task if called in a loop, else a thread."""
        with self._lock:
            if (self._hb_task is not None and not self._hb_task.done()) or (
                self._hb_thread is not None and self._hb_thread.is_alive()
            ):
                return
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._hb_task = loop.create_task(
                    self._heartbeat(), name=f"poolkit redis lease {self._key}"
                )
            else:
                self._hb_stop.clear()
                self._hb_thread = threading.Thread(
                    target=self._heartbeat_thread,
                    name=f"poolkit redis lease {self._key}",
                    daemon=True,
                )
                self._hb_thread.start()

    def _beat_args(self) -> tuple[str, list[object]] | None:
        """The heartbeat's call, or None if nothing needs it any more (the heartbeat ends)."""
        with self._lock:
            if not self._needs_heartbeat() or self._closed:
                if threading.current_thread() is self._hb_thread:
                    self._hb_thread = None
                elif self._hb_task is not None and self._hb_task is _current_task():
                    self._hb_task = None
                return None
            return self._lease, self._args(self._lease, self._ttl_us())

    def _after_beat(
        self, lease: str, reply: Any, failed: Exception | None, deadline: float
    ) -> None:
        """Account for one heartbeat: renewed, failed (lost once past ``deadline``) or gone."""
        lost: LeaseLost | None = None
        doomed: list[asyncio.Task[Any]] = []
        with self._lock:
            if lease != self._lease:
                return
            if failed is None and int(reply[0]) == _GONE:
                cause: BaseException | None = None
                why = "its lease was gone from Redis (restarted, or not renewed in time)"
            elif failed is not None and time.monotonic() >= deadline:
                cause = failed
                why = f"its lease could not be renewed within lease_ttl={self._ttl:g} s"
            else:
                if failed is None:
                    self._total = int(reply[1])
                return
            if self._held > 0:
                lost = LeaseLost(f"{self._label()} lost {self._held} of weight: {why}")
                lost.__cause__ = cause
                self._forfeited += self._held
                self._held = 0
                self._lost = True
                self._losses += 1
                doomed = list(self._blocks)
            self._epoch += 1
            self._lease = f"{self._link.token}:{id(self):x}:{self._epoch}"
            inboxes = list(self._inboxes.values())
        for inbox in inboxes:  # their tickets went with the lease: they queue again
            if inbox.loop is None:
                inbox.put(RECHECK)
            else:
                with contextlib.suppress(RuntimeError):
                    inbox.loop.call_soon_threadsafe(inbox.put, RECHECK)
        for task in doomed:
            with contextlib.suppress(RuntimeError):
                task.get_loop().call_soon_threadsafe(self._doom, task)
        if lost is not None and self._on_lease_lost is not None:
            try:
                self._on_lease_lost(lost)
            except Exception:
                _logger.exception("%s: on_lease_lost raised", self._label())

    def _doom(self, task: asyncio.Task[Any]) -> None:
        """In ``task``'s loop: cancel it if it is still inside a held block (then suspended in
        the block's body, where the cancellation lands; ``_exit_block`` makes it LeaseLost)."""
        with self._lock:
            if task not in self._blocks:
                return
            self._doomed.add(task)
        task.cancel("poolkit: the Redis lease was lost")

    async def _heartbeat(self) -> None:
        period = self._ttl / 3
        deadline = time.monotonic() + self._ttl
        delay = period
        while True:
            await asyncio.sleep(delay)
            call = self._beat_args()
            if call is None:
                return
            lease, args = call
            started = time.monotonic()
            reply: Any = None
            failed: Exception | None = None
            try:
                reply = await self._link.eval(_HEARTBEAT, self._keys, args, "renew")
                self._read(reply)
            except (RedisUnavailable, TypeError) as e:
                failed = e
                with self._lock:
                    self._errors += 1
            else:
                deadline = started + self._ttl
            self._after_beat(lease, reply, failed, deadline)
            delay = period if failed is None else max(0.0, min(period, deadline - time.monotonic()))

    def _heartbeat_thread(self) -> None:
        period = self._ttl / 3
        deadline = time.monotonic() + self._ttl
        delay = period
        while not self._hb_stop.wait(delay):
            call = self._beat_args()
            if call is None:
                return
            lease, args = call
            started = time.monotonic()
            reply: Any = None
            failed: Exception | None = None
            try:
                reply = self._link.eval_blocking(_HEARTBEAT, self._keys, args, "renew")
                self._read(reply)
            except (RedisUnavailable, TypeError, RuntimeError) as e:
                failed = e
                with self._lock:
                    self._errors += 1
            else:
                deadline = started + self._ttl
            self._after_beat(lease, reply, failed, deadline)
            delay = period if failed is None else max(0.0, min(period, deadline - time.monotonic()))

    # ----------------------------------------------------------------- asyncio

    async def try_acquire(self, weight: int = 1) -> bool:
        """Take ``weight`` if it fits now and nobody is queued, in one round trip; never waits.

        Returns:
            True if taken (through Redis, or by the ``on_error`` policy); False if not.

        Raises:
            TypeError, ValueError: For a bad ``weight`` (or a wrong key type in Redis).
            RedisUnavailable: With ``on_error="raise"``, if Redis cannot be reached in time.
        """
        weight = self._check(weight)
        with self._lock:
            lease = self._lease
            self._busy += 1
        try:
            reply = await asyncio.shield(
                self._link.eval(
                    _ACQUIRE,
                    self._keys,
                    self._args(lease, "-", weight, "-", self._ttl_us(), "try"),
                    f"{self._label()}: try_acquire",
                )
            )
        except BaseException as e:
            self._unknown_outcome()
            if not isinstance(e, RedisUnavailable):
                raise
            self._failed(e)
            return self._fallback_try(weight)
        return self._tried(reply, weight, lease)

    def _unknown_outcome(self) -> None:
        """A call on the lease failed or was cancelled: Redis may count more under the lease."""
        with self._lock:
            self._busy -= 1
        self._new_lease_if_idle()

    def _tried(self, reply: Any, weight: int, lease: str) -> bool:
        try:
            granted = self._read(reply, weight) == _GRANTED
        finally:
            with self._lock:
                self._busy -= 1
        if granted and not self._granted(weight, lease):
            return False  # the lease was lost meanwhile: not safely held
        if granted:
            self._start_heartbeat()
        return granted

    def _fallback_try(self, weight: int) -> bool:
        if self._local is None:
            with self._lock:
                self._allowed += weight
                self._fallbacks += 1
            return True
        if self._local.try_acquire(min(weight, self._local.total)):
            with self._lock:
                self._local_held += weight
                self._fallbacks += 1
            return True
        return False

    async def acquire(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Wait (FIFO across every process) until ``weight`` fits, then add it to this object's
        lease.  One round trip when uncontended; no commands while waiting (see the module
        docstring).  If it raises, is cancelled or times out, nothing is held, in Redis either.

        Args:
            weight: The units to take, at least 1 and at most ``total``.
            timeout: Seconds to wait at most (``None``: as long as it takes).

        Raises:
            TypeError, ValueError: For bad arguments (also a weight above ``total`` as
                configured in Redis), or a wrong key type in Redis.
            TimeoutError: If ``weight`` did not fit within ``timeout``.
            RedisUnavailable: With ``on_error="raise"``, if Redis cannot be reached in time.
        """
        weight = self._check(weight)
        timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        try:
            await self._acquire(weight, deadline, timeout)
        except RedisUnavailable as e:
            self._new_lease_if_idle()
            self._failed(e)
            await self._fallback(weight, deadline)

    async def _fallback(self, weight: int, deadline: float | None) -> None:
        if self._local is None:
            with self._lock:
                self._allowed += weight
                self._fallbacks += 1
            return
        left = None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())
        await self._local.acquire(min(weight, self._local.total), timeout=left)
        with self._lock:
            self._local_held += weight
            self._fallbacks += 1

    async def _acquire(self, weight: int, deadline: float | None, timeout: float | None) -> None:
        link = self._link
        loop = asyncio.get_running_loop()
        ticket = link.new_ticket()
        inbox = _Inbox(loop)
        await link.subscribe(ticket, inbox.put)
        self._inboxes[ticket] = inbox
        what = f"{self._label()}: acquire"
        queued_lease: str | None = None
        done = False
        try:
            while True:  # once, unless the ticket's lease expired while it waited
                with self._lock:
                    lease = self._lease
                    self._busy += 1
                try:
                    mode = "try" if timeout == 0 else "wait"  # (0: never queue)
                    args = self._args(lease, ticket, weight, link.channel, self._ttl_us(), mode)
                    call = loop.create_task(link.eval(_ACQUIRE, self._keys, args, what))
                    try:
                        reply = await asyncio.shield(call)
                    except asyncio.CancelledError:
                        # Let the call finish, so that its outcome is known, then undo it (the
                        # withdraw script removes the ticket or gives back what was granted):
                        # in a task of its own, which a second cancellation cannot stop.
                        undo = loop.create_task(self._undo(call, lease, ticket, weight))
                        self._undoing.add(undo)
                        undo.add_done_callback(self._undoing.discard)
                        with contextlib.suppress(BaseException):
                            await asyncio.shield(undo)
                        raise
                finally:
                    with self._lock:
                        self._busy -= 1
                status = self._read(reply, weight)
                if status == _GRANTED:
                    if not self._granted(weight, lease):
                        continue
                    done = True
                    self._start_heartbeat()
                    return
                if status == _NOT_NOW:
                    raise TimeoutError(f"{self._label()}: no capacity right now")
                queued_lease = lease
                with self._lock:
                    self._waiting += 1
                self._start_heartbeat()
                try:
                    status = await self._wait(inbox, ticket, lease, weight, reply, deadline)
                finally:
                    with self._lock:
                        self._waiting -= 1
                if status == _GRANTED and self._granted(weight, lease):
                    done = True
                    self._start_heartbeat()
                    return
                if status in (_GRANTED, _GONE):
                    queued_lease = None
                    continue
                raise TimeoutError(f"{self._label()}: no capacity within {timeout} s")
        finally:
            link.unsubscribe(ticket)
            self._inboxes.pop(ticket, None)
            if not done and queued_lease is not None:
                await self._give_back_shielded(queued_lease, ticket, weight)
            if not done:
                self._new_lease_if_idle()

    async def _undo(self, call: asyncio.Task[Any], lease: str, ticket: str, weight: int) -> None:
        with contextlib.suppress(BaseException):
            reply = await call
            if int(reply[0]) in (_GRANTED, _HEAD, _QUEUED):
                await self._give_back_shielded(lease, ticket, weight)

    async def _give_back_shielded(self, lease: str, ticket: str, weight: int) -> None:
        """Withdraw ``ticket`` (or give back what it was granted), even when cancelled."""
        with self._lock:
            drop = "0"
            if self._drop_now() and lease == self._lease:
                drop = "1"
                self._rotate()
        call = asyncio.get_running_loop().create_task(
            self._link.eval(
                _WITHDRAW,
                self._keys,
                self._args(lease, ticket, weight, drop),
                f"{self._label()}: withdraw",
            )
        )
        try:
            await asyncio.shield(call)
        except asyncio.CancelledError:
            with contextlib.suppress(BaseException):
                await call
            raise
        except (RedisUnavailable, TypeError):
            self._new_lease_if_idle()

    async def _wait(
        self,
        inbox: _Inbox,
        ticket: str,
        lease: str,
        weight: int,
        reply: Any,
        deadline: float | None,
    ) -> int:
        """Wait for the ticket's grant; return _GRANTED, _GONE or _NOT_NOW (timed out)."""
        loop = asyncio.get_running_loop()
        status = int(reply[0])
        claim_at = None
        if status == _HEAD and int(reply[2]) >= 0:
            claim_at = loop.time() + int(reply[2]) / 1e6 + 0.002
        while True:
            now = loop.time()
            if deadline is not None and now >= deadline:
                return _NOT_NOW
            ends = [t for t in (claim_at, deadline) if t is not None]
            message = await inbox.get(None if not ends else max(0.0, min(ends) - now))
            if message is None and claim_at is not None and loop.time() >= claim_at:
                message = RECHECK
            if message is None:
                continue
            kind, _, rest = message.partition(" ")
            if kind == "g":
                return _GRANTED
            if kind == "x":
                self._read([_TOO_HEAVY, int(rest) if rest.isdigit() else self._total], weight)
            if kind == "h":
                wait = int(rest) if rest.lstrip("-").isdigit() else -1
                claim_at = None if wait < 0 else loop.time() + wait / 1e6 + 0.002
                continue
            # RECHECK, or the claim timer: look once.
            claim_at = None
            reply = await self._link.eval(
                _CLAIM, self._keys, self._args(lease, ticket), f"{self._label()}: claim"
            )
            status = self._read(reply, weight)
            if status in (_GRANTED, _GONE):
                return status
            if status == _HEAD and int(reply[2]) >= 0:
                claim_at = loop.time() + int(reply[2]) / 1e6 + 0.002

    async def release(self, weight: int = 1) -> None:
        """Give back ``weight`` (one round trip); waiters anywhere that now fit are granted.

        Cancelled, the release still finishes (in a task that :meth:`aclose` waits for).

        Raises:
            NotAcquired: If ``weight`` is more than this object holds.
            TypeError, ValueError: For a bad ``weight``.
            RedisUnavailable: Never: if Redis cannot be reached, the weight is given back by the
                heartbeat's repair, or by the lease's expiry.
        """
        call = self._release_local(weight)
        if call is None:
            return
        await asyncio.shield(self._release_task(asyncio.get_running_loop(), call[1]))

    def _release_task(
        self, loop: asyncio.AbstractEventLoop, args: list[object]
    ) -> asyncio.Task[None]:
        task = loop.create_task(self._send_release(args))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return task

    async def _send_release(self, args: list[object]) -> None:
        """The release script, for weight already taken off the books (``_busy`` counted)."""
        with self._sending_release():
            reply = await self._link.eval(_RELEASE, self._keys, args, f"{self._label()}: release")
            self._read(reply)

    def _send_release_blocking(self, args: list[object]) -> None:
        """Thread form of :meth:`_send_release`."""
        with self._sending_release():
            reply = self._link.eval_blocking(
                _RELEASE, self._keys, args, f"{self._label()}: release"
            )
            self._read(reply)

    @contextlib.contextmanager
    def _sending_release(self) -> Iterator[None]:
        """Around the release script: an unreachable Redis is counted (the lease's expiry gives
        the weight back); ``_busy`` is settled whatever happens; and after a failure (or a
        cancellation: its loop is shutting down, the outcome is unknown) an object that holds
        nothing moves on to a new lease."""
        failed = False
        try:
            yield
        except RedisUnavailable:
            failed = True
            with self._lock:
                self._errors += 1
        except BaseException:
            failed = True
            raise
        finally:
            with self._lock:
                self._busy -= 1
            if failed:  # (after _busy)
                self._new_lease_if_idle()

    def _release_soon(self, weight: int) -> None:
        """Give back ``weight`` from synchronous code without waiting for Redis (``Limits``).

        The weight leaves this object's books at once (releasing it a second time raises
        :class:`NotAcquired`); Redis hears of it

        * on a thread running an event loop: in a task of that loop, started now, which
          :meth:`aclose` waits for (so no release is lost, and none is left running);
        * on a thread without one: in this call, one round trip (a ``ThreadPool``'s worker);
        * during a garbage collection in this thread, or on a loop's thread when the limiter
          has only a blocking client: in poolkit's deferred-work thread.

        Until the script runs, Redis still counts the weight under the lease, so nobody is
        admitted early: the cap holds.  If it cannot run (Redis unreachable; or no loop, and
        only an asyncio client), the weight stays counted under the old lease, which this object
        stops renewing once it holds nothing: it comes back within ``lease_ttl`` (fails closed).

        Raises:
            NotAcquired: If ``weight`` is more than this object holds.
        """
        call = self._release_local(weight)
        if call is None:
            return
        args = call[1]
        if self._link.send_soon(
            lambda loop: self._release_task(loop, args),
            lambda: self._send_release_blocking(args),
        ):
            return
        with self._lock:  # nothing can send it now: the lease's expiry gives the weight back
            self._busy -= 1
            self._errors += 1
        self._new_lease_if_idle()

    # ----------------------------------------------------------------- Limits and PerKey

    def _order(self) -> tuple[str, int]:
        """Its place in the one order in which every ``Limits`` takes Redis limiters: by Redis
        key, the same in every process, so that two processes never wait for each other."""
        return (self._keys[0], id(self))

    def _is_idle(self) -> bool:
        """Whether this object holds nothing and has nobody waiting and nothing in flight, so
        that a ``PerKey`` may forget it (all else it knows lives in Redis)."""
        with self._lock:
            return not (
                self._held
                or self._waiting
                or self._busy
                or self._forfeited
                or self._allowed
                or self._local_held
                or self._undoing
                or self._releasing
                or self._inboxes
            )

    def _retire(self) -> None:
        """Close an idle object without waiting (a ``PerKey`` forgetting it; called holding no
        lock): its heartbeat is stopped (a task cancelled, a thread told, not joined), and its
        share of the link is let go."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            task, self._hb_task = self._hb_task, None
        self._hb_stop.set()
        if task is not None and not task.done():
            try:
                here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                here = None
            if task.get_loop() is here:
                task.cancel()
            else:
                with contextlib.suppress(RuntimeError):  # its loop is closed: nothing runs
                    task.get_loop().call_soon_threadsafe(task.cancel)
        self._link.release_soon()

    def _release_local(self, weight: int) -> tuple[str, list[object]] | None:
        """Take ``weight`` off the local books; return the release script's call, if Redis must
        hear of it (then ``_busy`` was counted up)."""
        weight = check_weight(weight)
        with self._lock:
            held = self._forfeited + self._allowed + self._local_held + self._held
            if weight > held:
                raise NotAcquired(
                    f"release({weight}) on {self._label()}, but this object holds only {held}"
                )
            w = weight
            take = min(w, self._forfeited)
            self._forfeited -= take
            w -= take
            take = min(w, self._allowed)
            self._allowed -= take
            w -= take
            local = min(w, self._local_held)
            self._local_held -= local
            w -= local
            if w == 0:
                redis_call = None
            else:
                self._held -= w
                lease, drop = self._lease, "0"
                if self._drop_now():
                    drop = "1"
                    self._rotate()
                self._busy += 1
                redis_call = (lease, self._args(lease, w, drop))
        if local and self._local is not None:
            self._local.release(min(local, self._local.borrowed))
        return redis_call

    # ----------------------------------------------------------------- held blocks

    def _enter_block(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            with self._lock:
                self._blocks[task] = self._blocks.get(task, 0) + 1

    def _exit_block(self, exc_type: type[BaseException] | None) -> bool:
        """Leave a held block; True if the block must raise LeaseLost."""
        task = asyncio.current_task()
        if task is None:
            return False
        with self._lock:
            n = self._blocks.get(task, 0) - 1
            if n > 0:
                self._blocks[task] = n
            else:
                self._blocks.pop(task, None)
            doomed = task in self._doomed
            if doomed and n <= 0:
                self._doomed.discard(task)
        if doomed and task.cancelling():
            task.uncancel()  # the cancellation was ours: it becomes LeaseLost
        return doomed

    @contextlib.asynccontextmanager
    async def hold(self, weight: int = 1) -> AsyncIterator[None]:
        """``async with limiter.hold(weight):`` acquires ``weight`` for the block.

        Raises:
            LeaseLost: At the block's exit, if the lease was lost meanwhile (the task was
                cancelled at the loss; the cancellation is turned into this).
            Otherwise as :meth:`acquire`.
        """
        await self.acquire(weight)
        self._enter_block()
        try:
            yield
        except BaseException as e:
            lost = self._exit_block(type(e))
            await self.release(weight)
            if lost:
                raise LeaseLost(f"{self._label()}: the lease was lost while held") from e
            raise
        lost = self._exit_block(None)
        await self.release(weight)
        if lost:
            raise LeaseLost(f"{self._label()}: the lease was lost while held")

    async def __aenter__(self) -> None:
        await self.acquire(1)
        self._enter_block()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        lost = self._exit_block(exc_type)
        await self.release(1)
        if lost:
            raise LeaseLost(f"{self._label()}: the lease was lost while held") from exc

    # ----------------------------------------------------------------- configure, close

    async def configure(self, *, total: int) -> None:
        """Set ``total`` in Redis, for every process; waiters that now fit are granted, and
        those that can never fit get ``ValueError``.

        Raises:
            TypeError, ValueError: For a bad ``total``.
            RedisUnavailable: If Redis cannot be reached in time (whatever ``on_error`` says).
        """
        total = check_weight(total, "total")
        reply = await self._link.eval(
            _CONFIGURE, self._keys, self._args(total), f"{self._label()}: configure"
        )
        self._read(reply)
        self._configure_local()

    def configure_blocking(self, *, total: int) -> None:
        """Thread form of :meth:`configure`."""
        total = check_weight(total, "total")
        reply = self._link.eval_blocking(
            _CONFIGURE, self._keys, self._args(total), f"{self._label()}: configure"
        )
        self._read(reply)
        self._configure_local()

    def _configure_local(self) -> None:
        if self._local is not None and self._local_share_total() != self._local.total:
            self._local.total = self._local_share_total()

    def _local_share_total(self) -> int:
        assert self._local is not None
        share = self._local.total / max(1, self._total0)
        return max(1, int(share * self._total))

    async def aclose(self) -> None:
        """Give back what this object holds in Redis, stop its heartbeat, release its link.
        Idempotent.  Holders still inside blocks are not waited for."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            held, self._held = self._held, 0
            lease = self._lease
        pending = self._undoing | self._releasing
        if pending:
            await asyncio.wait(list(pending), timeout=2 * self._link.op_timeout)
        task, self._hb_task = self._hb_task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        if self._hb_thread is not None:  # (blocking use): not joined in the event loop
            await asyncio.to_thread(self._stop_thread)
        if held:
            with contextlib.suppress(Exception):
                await self._link.eval(
                    _RELEASE, self._keys, self._args(lease, held, "1"), f"{self._label()}: close"
                )
        await self._link.arelease()

    def close(self) -> None:
        """Thread form of :meth:`aclose` (for a limiter used from threads)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            held, self._held = self._held, 0
            lease = self._lease
        task, self._hb_task = self._hb_task, None
        if task is not None and not task.done():
            with contextlib.suppress(RuntimeError):
                task.get_loop().call_soon_threadsafe(task.cancel)
        self._stop_thread()
        if held:
            with contextlib.suppress(Exception):
                self._link.eval_blocking(
                    _RELEASE, self._keys, self._args(lease, held, "1"), f"{self._label()}: close"
                )
        self._link.release()

    def _stop_thread(self) -> None:
        self._hb_stop.set()
        thread = self._hb_thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._ttl)

    # ----------------------------------------------------------------- threads

    def try_acquire_blocking(self, weight: int = 1) -> bool:
        """Thread form of :meth:`try_acquire`."""
        weight = self._check(weight)
        with self._lock:
            lease = self._lease
            self._busy += 1
        try:
            reply = self._link.eval_blocking(
                _ACQUIRE,
                self._keys,
                self._args(lease, "-", weight, "-", self._ttl_us(), "try"),
                f"{self._label()}: try_acquire",
            )
        except BaseException as e:
            self._unknown_outcome()
            if not isinstance(e, RedisUnavailable):
                raise
            self._failed(e)
            return self._fallback_try(weight)
        return self._tried(reply, weight, lease)

    def acquire_blocking(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until ``weight`` fits.

        Raises:
            As :meth:`acquire`.
        """
        weight = self._check(weight)
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._acquire_blocking(weight, deadline, timeout)
        except RedisUnavailable as e:
            self._new_lease_if_idle()
            self._failed(e)
            if self._local is None:
                with self._lock:
                    self._allowed += weight
                    self._fallbacks += 1
                return
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self._local.acquire_blocking(min(weight, self._local.total), timeout=left)
            with self._lock:
                self._local_held += weight
                self._fallbacks += 1

    def _acquire_blocking(self, weight: int, deadline: float | None, timeout: float | None) -> None:
        link = self._link
        ticket = link.new_ticket()
        inbox = _Inbox(None)
        link.subscribe_blocking(ticket, inbox.put)
        self._inboxes[ticket] = inbox
        what = f"{self._label()}: acquire"
        queued_lease: str | None = None
        done = False
        try:
            while True:
                with self._lock:
                    lease = self._lease
                    self._busy += 1
                try:
                    mode = "try" if timeout == 0 else "wait"  # (0: never queue)
                    args = self._args(lease, ticket, weight, link.channel, self._ttl_us(), mode)
                    reply = link.eval_blocking(_ACQUIRE, self._keys, args, what)
                finally:
                    with self._lock:
                        self._busy -= 1
                status = self._read(reply, weight)
                if status == _GRANTED:
                    if not self._granted(weight, lease):
                        continue
                    done = True
                    self._start_heartbeat()
                    return
                if status == _NOT_NOW:
                    raise TimeoutError(f"{self._label()}: no capacity right now")
                queued_lease = lease
                with self._lock:
                    self._waiting += 1
                self._start_heartbeat()
                try:
                    status = self._wait_blocking(inbox, ticket, lease, weight, reply, deadline)
                finally:
                    with self._lock:
                        self._waiting -= 1
                if status == _GRANTED and self._granted(weight, lease):
                    done = True
                    self._start_heartbeat()
                    return
                if status in (_GRANTED, _GONE):
                    queued_lease = None
                    continue
                raise TimeoutError(f"{self._label()}: no capacity within {timeout} s")
        finally:
            link.unsubscribe(ticket)
            self._inboxes.pop(ticket, None)
            if not done and queued_lease is not None:
                with self._lock:
                    drop = "0"
                    if self._drop_now() and queued_lease == self._lease:
                        drop = "1"
                        self._rotate()
                try:
                    link.eval_blocking(
                        _WITHDRAW,
                        self._keys,
                        self._args(queued_lease, ticket, weight, drop),
                        f"{self._label()}: withdraw",
                    )
                except (RedisUnavailable, TypeError):
                    pass
            if not done:
                self._new_lease_if_idle()

    def _wait_blocking(
        self,
        inbox: _Inbox,
        ticket: str,
        lease: str,
        weight: int,
        reply: Any,
        deadline: float | None,
    ) -> int:
        status = int(reply[0])
        claim_at = None
        if status == _HEAD and int(reply[2]) >= 0:
            claim_at = time.monotonic() + int(reply[2]) / 1e6 + 0.002
        while True:
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return _NOT_NOW
            ends = [t for t in (claim_at, deadline) if t is not None]
            message = inbox.get_blocking(None if not ends else max(0.0, min(ends) - now))
            if message is None and claim_at is not None and time.monotonic() >= claim_at:
                message = RECHECK
            if message is None:
                continue
            kind, _, rest = message.partition(" ")
            if kind == "g":
                return _GRANTED
            if kind == "x":
                self._read([_TOO_HEAVY, int(rest) if rest.isdigit() else self._total], weight)
            if kind == "h":
                wait = int(rest) if rest.lstrip("-").isdigit() else -1
                claim_at = None if wait < 0 else time.monotonic() + wait / 1e6 + 0.002
                continue
            claim_at = None
            reply = self._link.eval_blocking(
                _CLAIM, self._keys, self._args(lease, ticket), f"{self._label()}: claim"
            )
            status = self._read(reply, weight)
            if status in (_GRANTED, _GONE):
                return status
            if status == _HEAD and int(reply[2]) >= 0:
                claim_at = time.monotonic() + int(reply[2]) / 1e6 + 0.002

    def release_blocking(self, weight: int = 1) -> None:
        """Thread form of :meth:`release`."""
        call = self._release_local(weight)
        if call is not None:
            self._send_release_blocking(call[1])

    def __enter__(self) -> None:
        self.acquire_blocking(1)
        stack = getattr(self._thread_blocks, "stack", None)
        if stack is None:
            stack = self._thread_blocks.stack = []
        stack.append(self._losses)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        losses = self._thread_blocks.stack.pop()
        self.release_blocking(1)
        if self._losses != losses:
            raise LeaseLost(f"{self._label()}: the lease was lost while held") from exc
