"""Composite limits: ``Limits`` (several limits as one) and ``PerKey`` (a limit per key).

Limits
------
``Limits(TokenBucket("10/s"), TokenBucket("500/min"), CapacityLimiter(4))`` admits work at most
10 times a second, 500 times a minute and 4 at a time.  An acquisition of ``cost``:

1. takes ``cost`` from every concurrency limiter, one after the other, in one global order (by
   object identity), so that two ``Limits`` sharing limiters can never deadlock;
2. then waits until *every* token bucket can grant ``cost`` at once and takes from all of them in
   one step.  No bucket's tokens are taken while waiting for another bucket, and no tokens are
   taken before the concurrency slots are held: the work starts right after its tokens are
   granted, so the rates hold where they matter, at the start of the work.  (The slots are held
   while waiting for tokens; the other order would spend tokens on work that then waits, and the
   starts would bunch up later, beyond the rate.)  In each bucket it queues like any other waiter.

A failure or cancellation gives back the slots already taken; tokens are taken only in the last
step, so none are spent.  ``release(cost)`` gives the slots back; tokens are spent for good.

A member may be a ``PerKey``: then each call names a ``key=`` and that key's limit takes part,
in the same two steps.  ``Limits(CapacityLimiter(64), PerKey(lambda: Limits(CapacityLimiter(2),
TokenBucket("5/s"))))`` is a scraper's "64 in all, 2 per host, 5 a second per host".

aiolimiter members
------------------
An ``aiolimiter.AsyncLimiter`` may be a member too (also inside a nested ``Limits``, or made by a
``PerKey`` factory), for code that already has them;
:mod:`poolkit._primitives._aiolimiter_support` says what such a limiter does on its own (its heap
of waiters ordered by cost starves a heavy acquisition behind light ones in a loop; a newcomer
with room goes ahead of its waiters).  It
cannot join the buckets' one atomic step, and what it has granted it cannot give back, so an
acquisition takes, in this order:

1. the concurrency slots, as above;
2. each AsyncLimiter's part, one after the other in the order given, with
   ``await limiter.acquire(cost)`` (within what is left of ``timeout``);
3. every poolkit bucket in one step, as above.

A failure, timeout or cancellation while waiting in step 2 takes nothing from that limiter, but
the parts already granted by earlier AsyncLimiters are spent; one in step 3 likewise leaves every
AsyncLimiter's part spent (the slots are given back, and no poolkit token is taken).  The
AsyncLimiters come before the buckets so that poolkit's own rule stays whole: no bucket's tokens
are ever held while waiting for anything.  The price: an AsyncLimiter's rate holds where it
grants, and a wait for a bucket after that can push the start of the work later, so starts can
bunch up by that wait.  Put the rates that must hold at the start of the work in
``TokenBucket`` objects.  ``release(cost)`` gives nothing back to an AsyncLimiter.

``try_acquire`` is atomic even so: it asks each AsyncLimiter whether ``cost`` fits now
(``has_capacity``), takes the buckets' tokens, and only then the AsyncLimiters' parts, with
nothing awaited in between; it must run on the AsyncLimiters' event loop (a task or callback
there).  An AsyncLimiter is asyncio-only and bound to the first loop that uses it, so a
``Limits`` holding one refuses what it cannot do right: ``acquire_blocking``, ``hold_blocking``,
``with`` and ``try_acquire`` from a thread with no running loop raise ``TypeError`` saying why,
and any call from a task on another loop that is still open raises ``RuntimeError`` (checked
before anything is taken).  A ``ThreadPool`` refuses such a ``limit=`` when it is made
(:func:`pool_limits`).

``statistics()`` shows an AsyncLimiter member as an :class:`~poolkit.AsyncLimiterStatistics`
(``max_rate``, ``time_period``, the drip ``rate``, the ``level`` now and how many wait), read
without changing it, from any thread; ``repr`` shows the same.  The metrics and the debug
endpoint report poolkit's objects only: the ``Limits``' statistics there include the
AsyncLimiter's, but it gets no series of its own.

Redis members
-------------
A :class:`~poolkit.redis.RedisCapacityLimiter` or :class:`~poolkit.redis.RedisTokenBucket` may be
a member too (also nested, or made by a ``PerKey`` factory), so one ``Limits`` can say "4 at a time
in this process, 16 over every process, 5 a second over every process".  Redis cannot join the
local buckets' atomic step, nor one Redis key another's script, so an acquisition takes, in order:

1. the concurrency slots: the local limiters (by identity), then the Redis limiters by Redis key
   (``{prefix}:{key}``, the same order in every process, so that two processes sharing two Redis
   limiters never wait for each other's; local first, so that a task waiting for a local slot
   holds nothing every process shares);
2. each Redis bucket's tokens, one after the other in the order given (each a FIFO queue across
   processes, within what is left of ``timeout``);
3. each AsyncLimiter's part, as above;
4. the local buckets in one step, as above.

Redis members give back what they took: if the acquisition fails, times out or is cancelled
after a Redis limiter granted its slots, they are released; after a Redis bucket granted its
tokens, they are *refunded* (its state moves back by ``cost``, never beyond the burst), so a
cancelled acquisition has spent nothing there either.  The giving back never waits: it runs in a
task of the loop (which the member's ``aclose()`` waits for), or in the thread itself for the
blocking forms.  Two limits: tokens granted by an ``on_error`` fallback (Redis unreachable) are
not refunded, and a refund that cannot reach Redis leaves them spent (fails closed).  And as with
AsyncLimiters, a Redis bucket's tokens are taken before the waits of the later steps, so its rate
holds where it grants: put the rate that must hold at the start of the work last, in a local
``TokenBucket``, or alone.

``release(cost)`` is synchronous, as it must be for pools.  A Redis limiter's weight leaves the
object's books at once and Redis hears of it in a task of the running loop started there and
then (one round trip later; :meth:`RedisCapacityLimiter.aclose` waits for those in flight), or,
from a thread without a loop, in the call itself.  Until the script runs Redis still counts the
weight, so the cap is never exceeded, only a hair late to reopen; if it cannot run (Redis
unreachable), the weight comes back with the lease's expiry.  What a holder of a ``Limits`` gets
when a Redis lease is lost is the limiter's ``on_lease_lost`` callback and ``lease_lost`` flag;
its task is not cancelled (that is for ``async with limiter:`` blocks).

The blocking forms (``acquire_blocking``, ``hold_blocking``, ``with``, a ``ThreadPool``) use the
members' blocking forms and refuse to run on an event loop's thread.  ``try_acquire`` with a Redis
member needs a round trip per Redis member, so it works from threads; on an event loop's thread it
raises ``RuntimeError``, and ``await try_acquire_async()`` is its form there (for any members).  A
Redis member made with a client of one kind only (``redis.asyncio.Redis``: tasks; ``redis.Redis``:
threads) is refused by the pool that cannot use it.  ``statistics()`` shows each Redis member's
own statistics, read without calling Redis.  The user closes the Redis members they made
(``aclose()``); a ``PerKey`` closes those its factory made.

PerKey
------
A key's limit is made by the factory the first time the key is used.  It is forgotten once it is
*idle*: nobody is waiting in it, nothing is borrowed from it, and (for a token bucket) it has
refilled to full, so that a new one made later behaves exactly the same.  A limit left idle by a
release is forgotten there and then; every use also looks at a few of the least recently used
keys and forgets those that have become idle (token buckets do as time passes).  So a million
distinct keys seen over a day do not keep a million limits alive, only those still carrying
state; ``sweep()`` forgets every idle key at once.  A key's limit is pinned while an acquisition
on it is in flight, so it is never forgotten between being looked up and being used, also with
several threads.

"Full" follows the rate, and is exact (the level refills to exactly ``burst``): a bucket a hair
short of full is kept, because forgiving the hair at every forgetting would let a key take a
millionth of its burst at a time for ever.  A bucket with an infinite rate is always full, so it
is forgotten as soon as nobody waits in it.  A bucket with rate 0 is a fixed budget that never
refills: once drawn from it is never full again, so it is kept for as long as the ``PerKey``
lives (forgetting it would hand the key a new, full budget); only a budget never drawn from is
forgotten.  So a ``PerKey`` of fixed budgets grows with the keys that used theirs, by design: use
a rate if budgets should come back.  A bucket with reservations not yet due is not idle either (a
new one would not know what they were promised).  Nor is a limit whose settings were changed
after the factory made it (a bucket's ``rate`` or ``burst``, a limiter's ``total`` assigned): a
new one would not have the change, so such a key is kept for as long as the ``PerKey`` lives.
Waiters stranded on a closed event loop do not count: they wait for nothing.

A Redis member keeps its state in Redis, so forgetting it loses nothing: it is idle when this
object holds nothing through it, nobody of this process waits in it and no call of it is in flight
(a release or refund still on its way counts as in flight; such a key is forgotten by a later
sweep).  A forgotten Redis limit is closed at once, holding no lock: its heartbeat stops, its
wake-up registrations are gone with its waiters, and it lets go of its share of the connections
(which the ``PerKey`` keeps open while it lives, so a new key does not reconnect).  The factory
gets the key with ``PerKey(factory, with_key=True)``, to name the Redis key; the Redis keys expire
by themselves once idle (a bucket's once full again plus 12 s, a limiter's 10 minutes after its
last use), so a million hosts leave nothing behind in Redis either.  ``aclose()`` (or ``close()``)
closes the Redis limits still alive.

An ``aiolimiter.AsyncLimiter`` follows the same rule: it is idle when its level has drained to
exactly 0 (a new one starts empty), nobody waits in it, and its ``max_rate`` and ``time_period``
are as the factory made them.  Forgetting one that has not drained would give the key a fresh,
empty limiter: a burst beyond its rate.  Its state is not thread-safe, so it is looked at only
on its own event loop's thread (or once that loop is closed); from anywhere else (``sweep()``
from another thread, say) it counts as not idle and is kept.

Nothing under a lock
--------------------
Waiting, waking and the locks go through :mod:`poolkit._core._wait`.  The factory runs holding no
lock.
The clean-up of an acquisition that is being closed (``GeneratorExit``: its task was stranded on
a closed event loop and is being destroyed, perhaps by the garbage collector in a thread that
holds one of these locks) never waits for a lock: the slots of concurrency limiters are given
back, and the key's pin is dropped, at once if the lock is free and otherwise by the deferred-work
thread once it is.  ``release()`` (also from ``hold()``) called by such a clean-up, during a
collection that interrupted this thread holding a lock it needs, is deferred the same way.  A
``Limits`` gives back the slots of a failed ``try_acquire`` after letting go of the buckets' lock.
The idle check reads a bucket's clock under the ``PerKey``'s own lock (not the buckets').
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeAlias, TypeVar, final, overload

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import NotAcquired
from poolkit._core._registry import register, unregistered
from poolkit._core._wait import (
    GC_PHASE,
    Busy,
    enter,
    give_up,
    graveyard,
    lay_to_rest,
    monotonic,
    refuse_in_loop,
    take,
    take_or_defer,
)

from . import _aiolimiter_support as aio
from ._aiolimiter_support import AsyncLimiterStatistics
from ._limiter import CapacityLimiter, CapacityLimiterStatistics, check_weight
from ._ratelimit import (
    LOCK,
    TokenBucket,
    TokenBucketStatistics,
    enqueue,
    try_take,
    wait_async,
    wait_thread,
)
from ._redis_bucket import RedisTokenBucket, RedisTokenBucketStatistics
from ._redis_limiter import RedisCapacityLimiter, RedisCapacityLimiterStatistics

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = [
    "Limits",
    "LimitsStatistics",
    "PerKey",
    "PerKeyStatistics",
    "TaskLimit",
    "pool_limits",
]

K = TypeVar("K", bound=Hashable)
L = TypeVar(
    "L",
    bound="CapacityLimiter | TokenBucket | Limits | AsyncLimiter | RedisCapacityLimiter | "
    "RedisTokenBucket",
)

Redis: TypeAlias = "RedisCapacityLimiter | RedisTokenBucket"
Simple: TypeAlias = "CapacityLimiter | TokenBucket | AsyncLimiter | Redis"
MemberStatistics: TypeAlias = (
    "CapacityLimiterStatistics | TokenBucketStatistics | AsyncLimiterStatistics | "
    "RedisCapacityLimiterStatistics | RedisTokenBucketStatistics"
)
TaskLimit: TypeAlias = (
    "CapacityLimiter | TokenBucket | Limits | PerKey[Any, Any] | AsyncLimiter | Redis"
)
"""What a pool takes as ``limit=`` (a ``ThreadPool`` refuses an ``AsyncLimiter``: see
:func:`pool_limits`)."""

# `"a" not in GC_PHASE`: no garbage collection runs now (see poolkit._core._wait).


# ======================================================================= PerKey


class _Entry(Generic[L]):
    __slots__ = ("limit", "ops", "pins", "redis")

    def __init__(
        self, limit: L, ops: CapacityLimiter | TokenBucket | Limits, redis: tuple[Redis, ...]
    ) -> None:
        self.limit: L = limit  # what the factory made (statistics_for shows it)
        # What acquisitions go through: the limit itself, or for an aiolimiter.AsyncLimiter or
        # a Redis limit a Limits around it (which knows how to wait on it and tell when idle).
        self.ops = ops
        self.pins = 0
        self.redis = redis  # its Redis limits, closed when it is forgotten (the PerKey's own)


@dataclass(frozen=True, slots=True)
class PerKeyStatistics:
    """A snapshot of a :class:`PerKey`, from :meth:`PerKey.statistics`."""

    name: str | None
    """The name given to it, if any."""
    keys: int
    """Keys whose limit is alive right now."""
    created_total: int
    """Limits made by the factory so far (a key forgotten and used again counts twice)."""
    forgotten_total: int
    """Idle limits forgotten so far."""
    acquired_total: int
    """Successful acquisitions over all keys (also those made through a ``Limits``)."""


@final
class PerKey(Generic[K, L]):
    """A limit per key: ``PerKey(lambda: TokenBucket("2/s"))`` paces each host on its own.

    ``factory`` is called with no arguments (or, with ``with_key=True``, with the key) to make
    the limit of a new key: a :class:`CapacityLimiter`, a :class:`TokenBucket`, a
    :class:`Limits` (for a cap *and* a rate per key), an ``aiolimiter.AsyncLimiter`` (asyncio
    only: see the module docstring), or a ``RedisCapacityLimiter`` / ``RedisTokenBucket``
    (which need the key to name theirs in Redis: ``PerKey(lambda host:
    RedisTokenBucket(URL, f"host:{host}", "5/s"), with_key=True)``; see "Redis members" in the
    module docstring).  The ``PerKey`` owns the Redis limits its factory makes: it closes those
    it forgets, and :meth:`aclose` (or :meth:`close` from a thread) closes the rest.
    ``await acquire(key, cost)``, ``try_acquire``, ``acquire_blocking`` and ``release(key,
    cost)`` act on that key's limit; ``async with per_key.hold(key):`` (or ``hold_blocking`` in a
    thread) pairs them.  Releasing a token bucket or an AsyncLimiter does nothing (what they
    grant is spent).  It can also be a member of a :class:`Limits`.  ``statistics()`` sums over
    keys; ``statistics_for(key)`` is one key's.  See the module docstring for when a limit is
    forgotten.

    Args:
        factory: Makes a new key's limit: called with no arguments, or with the key if
            ``with_key`` is true.
        with_key: Whether ``factory`` takes the key (``factory(key)``); default False
            (``factory()``).
        name: A name for dumps, metrics and ``repr``.
        sweep_per_use: How many of the least recently used keys each use checks for idleness
            (forgetting them if idle); at least 1.

    Raises:
        TypeError: If ``factory`` is not callable, ``with_key`` is not a bool,
            ``sweep_per_use`` is not an int, or ``name`` is not a str.
        ValueError: If ``sweep_per_use`` is below 1.
    """

    __slots__ = (
        "__weakref__",
        "_acquired",
        "_closed",
        "_created",
        "_entries",
        "_factory",
        "_forgotten",
        "_links",
        "_lock",
        "_name",
        "_rate_only",
        "_retired",
        "_sweep",
        "_with_key",
    )

    @overload
    def __init__(
        self,
        factory: Callable[[], L],
        *,
        with_key: Literal[False] = False,
        name: str | None = None,
        sweep_per_use: int = 4,
    ) -> None: ...

    @overload
    def __init__(
        self,
        factory: Callable[[K], L],
        *,
        with_key: Literal[True],
        name: str | None = None,
        sweep_per_use: int = 4,
    ) -> None: ...

    def __init__(
        self,
        factory: Callable[..., L],
        *,
        with_key: bool = False,
        name: str | None = None,
        sweep_per_use: int = 4,
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be a callable that makes a limit, got {factory!r}")
        if not isinstance(with_key, bool):
            raise TypeError(
                f"with_key must be a bool (True: the factory is called with the key), got "
                f"{with_key!r}"
            )
        if isinstance(sweep_per_use, bool) or not isinstance(sweep_per_use, int):
            raise TypeError(f"sweep_per_use must be an int, got {sweep_per_use!r}")
        if sweep_per_use < 1:
            raise ValueError(f"sweep_per_use must be >= 1, got {sweep_per_use!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._factory: Callable[..., L] = factory
        self._with_key = with_key
        self._name = name
        self._sweep = sweep_per_use
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, _Entry[L]] = OrderedDict()
        self._created = 0
        self._forgotten = 0
        self._acquired = 0
        # Set by the first limit made: True if it holds nothing to give back (token buckets
        # only), so that release() has nothing to do even for a key forgotten meanwhile.
        self._rate_only: bool | None = None
        # Redis members: the links of those made (kept open while this PerKey is: see
        # RedisLink.retain), and those forgotten under the lock, closed once it is let go.
        self._links: dict[int, Any] = {}
        self._retired: list[_Entry[L]] = []
        self._closed = False
        register(self, "per_key")

    # ----------------------------------------------------------------- keys

    def _make(self, key: K) -> _Entry[L]:
        if self._closed:
            raise RuntimeError(f"{self!r} was closed (aclose()/close()); make a new one")
        ops: CapacityLimiter | TokenBucket | Limits
        with unregistered():  # reported through this PerKey, not one by one
            limit = self._factory(key) if self._with_key else self._factory()
            if aio.is_async_limiter(limit) or isinstance(
                limit, (RedisCapacityLimiter, RedisTokenBucket)
            ):
                ops = Limits(limit)
            elif isinstance(limit, (CapacityLimiter, TokenBucket, Limits)):
                ops = limit
            else:
                raise TypeError(
                    f"the factory must return a CapacityLimiter, TokenBucket or Limits (or an "
                    f"aiolimiter.AsyncLimiter, RedisCapacityLimiter or RedisTokenBucket), got "
                    f"{limit!r}"
                )
        if isinstance(limit, Limits) and limit._keyed:
            raise TypeError("the factory's Limits may not itself contain a PerKey")
        redis: tuple[Redis, ...] = ()
        if isinstance(ops, Limits) and ops._redis:
            redis = (*ops._rlimiters, *ops._rbuckets)
            for m in redis:
                link = m._link
                if id(link) not in self._links:
                    link.retain()
                    if self._links.setdefault(id(link), link) is not link:
                        link.release_soon()  # another thread kept it first
        if self._rate_only is None:
            self._rate_only = isinstance(ops, TokenBucket) or (
                isinstance(ops, Limits) and not ops._limiters and not ops._rlimiters
            )
        return _Entry(limit, ops, redis)

    def _pin(self, key: K) -> _Entry[L]:
        lock = self._lock
        take(lock, "PerKey")
        try:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                entry.pins += 1
                self._forget_some()
        finally:
            lock.release()
        if graveyard:  # waiters stranded in the limits looked at, dropped: let them go now
            lay_to_rest()
        if self._retired:
            self._retire()
        if entry is not None:
            return entry
        fresh = self._make(key)  # the factory is the user's code: it runs holding no lock
        take(lock, "PerKey")
        try:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = fresh
                self._created += 1
            else:  # another thread made the key's limit meanwhile: that one is the key's
                self._entries.move_to_end(key)
                if fresh.redis:
                    self._retired.append(fresh)
            entry.pins += 1
            self._forget_some()
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()
        if self._retired:
            self._retire()
        return entry

    def _retire(self) -> None:
        """Close the Redis limits of the keys forgotten (called holding no lock: closing stops
        heartbeats and lets go of links, without waiting)."""
        lock = self._lock
        if not take_or_defer(lock, self._retire):
            return
        try:
            entries, self._retired = self._retired, []
        finally:
            lock.release()
        for entry in entries:
            for m in entry.redis:
                m._retire()

    def _unpin(self, entry: _Entry[L], acquired: bool) -> None:
        lock = self._lock
        if not take_or_defer(lock, self._unpin, entry, acquired):
            return  # in a garbage collection that holds the lock: done as soon as it is free
        try:
            self._unpin_locked(entry, acquired)
        finally:
            lock.release()

    def _unpin_locked(self, entry: _Entry[L], acquired: bool) -> None:
        entry.pins -= 1
        if acquired:
            self._acquired += 1

    def _forget_some(self) -> None:
        """Look at a few least recently used keys: forget the idle ones, rotate the others."""
        entries = self._entries
        for _ in range(min(self._sweep, len(entries) - 1)):
            key, entry = entries.popitem(last=False)
            if entry.pins or not entry.ops._is_idle():
                entries[key] = entry  # busy: to the back of the line
            else:
                self._forgotten += 1
                if entry.redis:
                    self._retired.append(entry)  # closed once the lock is let go

    def _forget_if_idle(self, key: K, entry: _Entry[L]) -> None:
        lock = self._lock
        if not take_or_defer(lock, self._forget_if_idle, key, entry):
            return
        try:
            if self._entries.get(key) is entry and not entry.pins and entry.ops._is_idle():
                del self._entries[key]
                self._forgotten += 1
                if entry.redis:
                    self._retired.append(entry)
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()
        if self._retired:
            self._retire()

    def sweep(self) -> int:
        """Forget every idle key now; return how many were forgotten."""
        take(self._lock, "PerKey.sweep()")
        try:
            idle = [k for k, e in self._entries.items() if not e.pins and e.ops._is_idle()]
            for k in idle:
                entry = self._entries.pop(k)
                if entry.redis:
                    self._retired.append(entry)
            self._forgotten += len(idle)
        finally:
            self._lock.release()
        if graveyard:
            lay_to_rest()
        if self._retired:
            self._retire()
        return len(idle)

    def _close_all(self) -> tuple[list[Redis], list[Any]]:
        """Forget every key; return the Redis limits to close and the links to let go."""
        take(self._lock, "PerKey.aclose()")
        try:
            self._closed = True
            entries = [*self._entries.values(), *self._retired]
            self._entries.clear()
            self._retired = []
            links = list(self._links.values())
            self._links.clear()
        finally:
            self._lock.release()
        return [m for e in entries for m in e.redis], links

    async def aclose(self) -> None:
        """Forget every key and close the Redis limits the factory made (their ``aclose()``:
        what they hold is given back in Redis, their heartbeats stop); idempotent.

        Only a ``PerKey`` with Redis members needs it (for the others it just forgets every
        key).  Acquisitions still holding are not waited for; a new key after it raises
        ``RuntimeError``.
        """
        limits, links = self._close_all()
        for m in limits:
            await m.aclose()
        for link in links:
            await link.arelease()

    def close(self) -> None:
        """Thread form of :meth:`aclose` (for Redis limits used from threads)."""
        limits, links = self._close_all()
        for m in limits:
            m.close()
        for link in links:
            link.release()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        """The keys whose limit is alive, least recently used first."""
        take(self._lock, "PerKey.keys()")
        try:
            return list(self._entries)
        finally:
            self._lock.release()

    # ----------------------------------------------------------------- acquire / release

    async def acquire(self, key: K, cost: float = 1, *, timeout: float | None = None) -> None:
        """``acquire(cost)`` on ``key``'s limit (made now if the key is new).

        Args:
            key: Whose limit; any hashable.
            cost: The weight or tokens to take.
            timeout: Seconds to wait at most (``None``: no limit).

        Raises:
            ValueError, TimeoutError, BudgetExhausted: What the key's limit raises (a cost that
                can never fit, a timeout, a spent fixed budget); nothing is held then.
            Busy: If called during a garbage collection that interrupted this thread holding
                the lock of the keys.
        """
        entry = self._pin(key)
        try:
            await entry.ops.acquire(cost, timeout=timeout)  # type: ignore[arg-type]
        except BaseException as exc:
            # (Being closed, perhaps by the garbage collector while this thread holds the lock,
            # it never waits for it.)
            give_up(exc, self._lock, self._unpin_locked, entry, False)
            raise
        self._unpin(entry, True)

    def try_acquire(self, key: K, cost: float = 1) -> bool:
        """``try_acquire(cost)`` on ``key``'s limit; never blocks.

        Args:
            key: Whose limit; any hashable.
            cost: The weight or tokens to take.

        Returns:
            True if taken; False if it would have to wait (nothing is taken).

        Raises:
            ValueError: If ``cost`` can never fit the key's limit.
        """
        try:
            entry = self._pin(key)
        except Busy:  # a garbage collection interrupted this thread holding the lock
            return False
        ok = False
        try:
            ok = entry.ops.try_acquire(cost)  # type: ignore[arg-type]
        finally:
            self._unpin(entry, ok)
        return ok

    async def try_acquire_async(self, key: K, cost: float = 1) -> bool:
        """:meth:`try_acquire` from a task, for keys whose limits are kept in Redis: it waits
        for Redis' answers (a round trip or so), never for room.

        Raises:
            ValueError: If ``cost`` can never fit the key's limit.
            RedisUnavailable: As the key's Redis limit raises it (``on_error="raise"``).
        """
        entry = self._pin(key)
        ok = False
        try:
            if isinstance(entry.ops, Limits):
                ok = await entry.ops.try_acquire_async(cost)
            else:
                ok = entry.ops.try_acquire(cost)  # type: ignore[arg-type]
        finally:
            self._unpin(entry, ok)
        return ok

    def acquire_blocking(self, key: K, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`.

        Raises:
            RuntimeError: If called on a thread running an event loop, where it would wait.
            TypeError: If the key's limit is an ``aiolimiter.AsyncLimiter`` (asyncio only).
            ValueError, TimeoutError, BudgetExhausted, Busy: As :meth:`acquire`.
        """
        entry = self._pin(key)
        ok = False
        try:
            entry.ops.acquire_blocking(cost, timeout=timeout)  # type: ignore[arg-type]
            ok = True
        finally:
            self._unpin(entry, ok)

    def release(self, key: K, cost: float = 1) -> None:
        """``release(cost)`` on ``key``'s limit (nothing for a token bucket: tokens are spent).

        Called during a garbage collection that interrupted this thread holding a lock it
        needs, it is done as soon as that lock is free instead.

        Args:
            key: Whose limit.
            cost: What was acquired.

        Raises:
            NotAcquired: If the key holds nothing, or less than ``cost``.
        """
        lock = self._lock
        if not take_or_defer(lock, self.release, key, cost):
            return
        try:
            entry = self._entries.get(key)
        finally:
            lock.release()
        if entry is None:
            if self._rate_only:
                return  # a token bucket, full again and forgotten: nothing to give back
            raise NotAcquired(f"release({cost}) for key {key!r}, which holds nothing")
        ops = entry.ops
        if not isinstance(ops, TokenBucket):
            ops.release(cost)  # type: ignore[arg-type]
        self._forget_if_idle(key, entry)

    @asynccontextmanager
    async def hold(self, key: K, cost: float = 1) -> AsyncIterator[None]:
        """``async with per_key.hold(key):`` acquires ``cost`` on ``key`` and releases it after.

        Raises:
            ValueError, TimeoutError, BudgetExhausted, Busy: As :meth:`acquire`.
        """
        await self.acquire(key, cost)
        try:
            yield
        finally:
            self.release(key, cost)

    @contextmanager
    def hold_blocking(self, key: K, cost: float = 1) -> Iterator[None]:
        """Thread form of :meth:`hold`."""
        self.acquire_blocking(key, cost)
        try:
            yield
        finally:
            self.release(key, cost)

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        """The name given when it was made, if any (dumps and metrics label it with it)."""
        return self._name

    def statistics(self) -> PerKeyStatistics:
        """Counts over all keys, read in one step.

        Raises:
            Busy: If called during a garbage collection that interrupted this thread holding
                the lock of the keys.
        """
        take(self._lock, "PerKey.statistics()")
        try:
            return PerKeyStatistics(
                name=self._name,
                keys=len(self._entries),
                created_total=self._created,
                forgotten_total=self._forgotten,
                acquired_total=self._acquired,
            )
        finally:
            self._lock.release()

    def statistics_for(self, key: K) -> MemberStatistics | LimitsStatistics | None:
        """The statistics of ``key``'s limit.

        Args:
            key: Whose limit.

        Returns:
            Its statistics (an :class:`~poolkit.AsyncLimiterStatistics` for an
            ``aiolimiter.AsyncLimiter``), or ``None`` if the key has no limit alive.

        Raises:
            Busy: As :meth:`statistics`.
        """
        take(self._lock, "PerKey.statistics_for()")
        try:
            entry = self._entries.get(key)
        finally:
            self._lock.release()
        if entry is None:
            return None
        limit = entry.limit
        return limit.statistics() if isinstance(limit, Limits) else _member_statistics(limit)

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<PerKey{name} keys={s.keys} created={s.created_total} "
            f"forgotten={s.forgotten_total} acquired={s.acquired_total}>"
        )


# ======================================================================= Limits


@dataclass(frozen=True, slots=True)
class LimitsStatistics:
    """A snapshot of a :class:`Limits`: the statistics of each member, in the order given."""

    name: str | None
    """The name given to the combination, if any."""
    members: tuple[MemberStatistics | PerKeyStatistics, ...]
    """Each member's own statistics (an :class:`~poolkit.AsyncLimiterStatistics` for an
    ``aiolimiter.AsyncLimiter``)."""


class _Plan:
    """What one acquisition takes part in: the fixed members plus, per key, the keyed ones."""

    __slots__ = ("aio", "buckets", "entries", "limiters", "rbuckets", "redis", "rlimiters")

    def __init__(
        self,
        limiters: tuple[CapacityLimiter, ...],
        aio: tuple[AsyncLimiter, ...],
        buckets: tuple[TokenBucket, ...],
        entries: list[tuple[PerKey[Any, Any], _Entry[Any]]],
        rlimiters: tuple[RedisCapacityLimiter, ...] = (),
        rbuckets: tuple[RedisTokenBucket, ...] = (),
    ) -> None:
        self.limiters = limiters
        self.aio = aio
        self.buckets = buckets
        self.entries = entries
        self.rlimiters = rlimiters
        self.rbuckets = rbuckets
        self.redis = bool(rlimiters or rbuckets)  # then the acquisition takes the Redis path


def _flatten(limit: object) -> list[Simple]:
    if isinstance(limit, Limits):
        return list(limit._members)
    if isinstance(
        limit, (CapacityLimiter, TokenBucket, RedisCapacityLimiter, RedisTokenBucket)
    ) or aio.is_async_limiter(limit):
        return [limit]
    raise TypeError(
        f"Limits() takes CapacityLimiter, TokenBucket, PerKey or Limits objects, got {limit!r} "
        f"(aiolimiter.AsyncLimiter objects are taken too); so are RedisCapacityLimiter and "
        f"RedisTokenBucket objects (poolkit.redis)"
    )


def _member_statistics(m: Simple) -> MemberStatistics:
    if isinstance(m, (CapacityLimiter, TokenBucket, RedisCapacityLimiter, RedisTokenBucket)):
        return m.statistics()
    return aio.statistics(m)


def _member_repr(m: Simple | PerKey[Any, Any]) -> str:
    if isinstance(
        m, (CapacityLimiter, TokenBucket, PerKey, RedisCapacityLimiter, RedisTokenBucket)
    ):
        return repr(m)
    return aio.statistics_repr(aio.statistics(m))


def _give_back_redis(
    held: list[RedisCapacityLimiter], refunds: list[RedisTokenBucket], cost: float
) -> None:
    """Give back what a failed or cancelled acquisition took in Redis, without waiting (see
    ``_release_soon`` and ``_refund_soon``); every member gets its share even if one fails."""
    # The acquisition's own error is the one raised: these are only given their chance.
    for r in reversed(held):
        with contextlib.suppress(Exception):
            r._release_soon(cost)  # type: ignore[arg-type]
    for b in refunds:
        with contextlib.suppress(Exception):
            b._refund_soon(cost)


def pool_limits(limit: object, *, threads: bool = False) -> Limits:
    """What a pool's ``limit=`` becomes: ``Limits(limit)``, made unregistered (the user's limit
    is reported; this wrapper is the pool's).

    ``WorkerPool`` calls it with ``threads=False``: a :class:`CapacityLimiter`,
    :class:`TokenBucket`, :class:`Limits`, :class:`PerKey`, ``RedisCapacityLimiter``,
    ``RedisTokenBucket`` or ``aiolimiter.AsyncLimiter``.  A Redis limit must have a client the
    pool's workers can use (a URL serves both kinds).
    ``ThreadPool`` calls it with ``threads=True``: the same but for an ``AsyncLimiter``, alone or
    in a ``Limits``, which worker threads cannot wait on.  (A ``PerKey`` whose factory makes
    ``AsyncLimiter`` objects cannot be recognised before its first key; a thread's acquisition
    through it raises the same ``TypeError``, and the job fails with it.)

    Raises:
        TypeError: ``limit`` is none of these; or, with ``threads=True``, it is or holds an
            ``aiolimiter.AsyncLimiter``.  The message names the pool's argument and the value.
    """
    if not isinstance(
        limit,
        (CapacityLimiter, TokenBucket, Limits, PerKey, RedisCapacityLimiter, RedisTokenBucket),
    ) and not (aio.is_async_limiter(limit)):
        also = "" if threads else " (or an aiolimiter.AsyncLimiter)"
        raise TypeError(
            f"limit must be a CapacityLimiter, TokenBucket, Limits or PerKey{also}, got {limit!r}"
        )
    with unregistered():
        limits = Limits(limit)
    if threads and limits._aio:
        shown = aio.describe(limit) if aio.is_async_limiter(limit) else repr(limit)
        raise TypeError(
            f"limit={shown} cannot be used by a ThreadPool: it is or holds "
            f"{aio.describe(limits._aio[0])}, which is asyncio-only and belongs to one event "
            f"loop, so worker threads cannot wait on it; use a poolkit.TokenBucket (threads and "
            f"tasks share one), or a WorkerPool"
        )
    redis: tuple[Redis, ...] = (*limits._rlimiters, *limits._rbuckets)
    for m in redis:
        if threads and not m._link.serves_threads:
            raise TypeError(
                f"limit={limit!r} cannot be used by a ThreadPool: {m!r} was given a "
                f"redis.asyncio.Redis client, which worker threads cannot use; give it a URL or "
                f"a redis.Redis"
            )
        if not threads and not m._link.serves_tasks:
            raise TypeError(
                f"limit={limit!r} cannot be used by a WorkerPool: {m!r} was given a blocking "
                f"redis.Redis client, which tasks cannot use; give it a URL or a "
                f"redis.asyncio.Redis"
            )
    return limits


@final
class Limits:
    """Several :class:`CapacityLimiter`, :class:`TokenBucket` and :class:`PerKey` limits as one.

    A member may also be an ``aiolimiter.AsyncLimiter``; such ``Limits`` work from tasks on that
    limiter's event loop only (see "aiolimiter members" in the module docstring).  Or a
    ``RedisCapacityLimiter`` / ``RedisTokenBucket``, shared by every process: see "Redis members"
    (``try_acquire`` then works from threads, :meth:`try_acquire_async` from tasks).

    ``async with limits:`` (or ``with`` in a thread) holds one unit of every member;
    ``acquire(cost)``/``release(cost)`` charge ``cost`` to every member (an ``int`` when there are
    concurrency limiters).  With ``PerKey`` members, every call names a ``key=`` (and ``async
    with limits.hold(key):`` replaces the plain ``async with``).  See the module docstring for
    the order in which limits are taken and why no token is held while waiting for another limit.

    Nested ``Limits`` are flattened.  The same limit may appear only once; token buckets must
    share one clock.  A member may also be shared with other ``Limits`` and used on its own.

    Args:
        limits: The members: limiters, buckets, ``PerKey`` objects, other ``Limits``,
            ``aiolimiter.AsyncLimiter`` objects, Redis limiters and buckets.
        name: A name for dumps, metrics and ``repr``.

    Raises:
        TypeError: If a member is of another kind, or ``name`` is not a str.
        ValueError: If there is no member, the same one is given twice, or the token buckets
            do not share one clock.
    """

    __slots__ = (
        "__weakref__",
        "_aio",
        "_aio_made",
        "_buckets",
        "_fixed",
        "_keyed",
        "_limiters",
        "_members",
        "_name",
        "_rbuckets",
        "_redis",
        "_rlimiters",
    )

    _members: tuple[Simple, ...]
    _keyed: tuple[PerKey[Any, Any], ...]

    def __init__(
        self,
        *limits: CapacityLimiter | TokenBucket | PerKey[Any, Any] | Limits | AsyncLimiter | Redis,
        name: str | None = None,
    ) -> None:
        members: list[Simple] = []
        keyed: list[PerKey[Any, Any]] = []
        for limit in limits:
            if isinstance(limit, PerKey):
                keyed.append(limit)
            else:
                members.extend(_flatten(limit))
                if isinstance(limit, Limits):
                    keyed.extend(limit._keyed)
        if not members and not keyed:
            raise ValueError("Limits() needs at least one limit")
        ids = [id(m) for m in members] + [id(k) for k in keyed]
        if len(set(ids)) != len(ids):
            raise ValueError("Limits() got the same limit twice; it would be charged twice")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._members = tuple(members)
        self._keyed = tuple(keyed)
        self._limiters = tuple(
            sorted((m for m in members if isinstance(m, CapacityLimiter)), key=id)
        )
        self._buckets = tuple(m for m in members if isinstance(m, TokenBucket))
        self._aio: tuple[AsyncLimiter, ...] = tuple(m for m in members if aio.is_async_limiter(m))
        # Their settings as given, for the idle check of PerKey (see aio.is_idle).
        self._aio_made = tuple(aio.settings(a) for a in self._aio)
        self._rlimiters = tuple(
            sorted(
                (m for m in members if isinstance(m, RedisCapacityLimiter)),
                key=RedisCapacityLimiter._order,
            )
        )
        self._rbuckets = tuple(m for m in members if isinstance(m, RedisTokenBucket))
        self._redis = bool(self._rlimiters or self._rbuckets)
        # What an acquisition takes part in, when no PerKey adds to it (see _plan).
        self._fixed = _Plan(
            self._limiters, self._aio, self._buckets, [], self._rlimiters, self._rbuckets
        )
        if len({id(b._clock) for b in self._buckets}) > 1:
            raise ValueError("the token buckets in one Limits() must share one clock")
        self._name = name
        register(self, "limits")

    @property
    def members(self) -> tuple[Simple | PerKey[Any, Any], ...]:
        """The limits enforced (nested ``Limits`` flattened; per-key members last)."""
        return (*self._members, *self._keyed)

    @property
    def name(self) -> str | None:
        return self._name

    def statistics(self) -> LimitsStatistics:
        """Each member's statistics, in the order of :attr:`members`.

        An ``aiolimiter.AsyncLimiter`` member shows as an :class:`~poolkit.AsyncLimiterStatistics`
        read without changing it, so this may be called from any thread."""
        members: list[MemberStatistics | PerKeyStatistics] = [
            _member_statistics(m) for m in self._members
        ]
        members.extend(k.statistics() for k in self._keyed)
        return LimitsStatistics(self._name, tuple(members))

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        return f"<Limits{name} {' & '.join(_member_repr(m) for m in self.members)}>"

    def _is_idle(self) -> bool:
        return all(
            m._is_idle()
            for m in self._members
            if isinstance(m, (CapacityLimiter, TokenBucket, RedisCapacityLimiter, RedisTokenBucket))
        ) and all(aio.is_idle(a, made) for a, made in zip(self._aio, self._aio_made, strict=True))

    def _label(self) -> str:
        return "limits" if self._name is None else f"limits {self._name!r}"

    # ----------------------------------------------------------------- planning

    def _plan(self, key: object, cost: float) -> _Plan:
        """Resolve the per-key members for ``key`` (pinning them) and check ``cost`` on all."""
        if not self._keyed:
            if key is not None:
                raise ValueError("key= given, but these Limits have no PerKey member")
            plan = self._fixed  # read-only: shared by every acquisition
        else:
            if key is None:
                raise ValueError("these Limits have a PerKey member: pass key=")
            entries: list[tuple[PerKey[Any, Any], _Entry[Any]]] = []
            try:
                for pk in self._keyed:
                    entries.append((pk, pk._pin(key)))
            except BaseException:
                for pk, entry in entries:
                    pk._unpin(entry, False)
                raise
            seen = {id(m) for m in self._members}
            limiters = list(self._limiters)
            aios = list(self._aio)
            buckets = list(self._buckets)
            rlimiters = list(self._rlimiters)
            rbuckets = list(self._rbuckets)
            for _, entry in entries:
                for m in _flatten(entry.limit):
                    if id(m) in seen:
                        for pk, e in entries:
                            pk._unpin(e, False)
                        raise ValueError(
                            f"the limit for key {key!r} ({m!r}) is also another member of "
                            f"these Limits; it would be charged twice"
                        )
                    seen.add(id(m))
                    if isinstance(m, CapacityLimiter):
                        limiters.append(m)
                    elif isinstance(m, TokenBucket):
                        buckets.append(m)
                    elif isinstance(m, RedisCapacityLimiter):
                        rlimiters.append(m)
                    elif isinstance(m, RedisTokenBucket):
                        rbuckets.append(m)
                    else:
                        aios.append(m)
            limiters.sort(key=id)
            rlimiters.sort(key=RedisCapacityLimiter._order)
            plan = _Plan(
                tuple(limiters),
                tuple(aios),
                tuple(buckets),
                entries,
                tuple(rlimiters),
                tuple(rbuckets),
            )
            if len({id(b._clock) for b in plan.buckets}) > 1:
                self._unpin(plan, False)
                raise ValueError("the token buckets of these Limits and key must share one clock")
        try:
            if plan.limiters or plan.rlimiters:
                check_weight(cost, "cost")  # type: ignore[arg-type]
            for lim in plan.limiters:
                lim._check(cost)  # type: ignore[arg-type]
            for a in plan.aio:
                aio.check_cost(a, cost)
            for b in plan.buckets:
                b._check_cost(cost)
            if plan.redis:
                for r in plan.rlimiters:
                    r._check(cost)
                for rb in plan.rbuckets:
                    rb._check_cost(cost)
        except BaseException:
            self._unpin(plan, False)
            raise
        return plan

    def _unpin(self, plan: _Plan, acquired: bool) -> None:
        for pk, entry in plan.entries:
            pk._unpin(entry, acquired)

    @staticmethod
    def _give_back(held: list[CapacityLimiter], cost: float) -> None:
        for lim in reversed(held):
            lim.release(cost)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- acquire / release

    def try_acquire(self, cost: float = 1, *, key: object = None) -> bool:
        """Take ``cost`` from every member if that needs no waiting anywhere; else take nothing.

        Args:
            cost: The weight or tokens to take from each member.
            key: The key for ``PerKey`` members (required if there are any, refused if not).

        Returns:
            True if taken from every member; False if any would have to wait.

        With ``aiolimiter.AsyncLimiter`` members it must be called on their event loop's thread
        (from a task or a callback): each is asked whether ``cost`` fits, the buckets take
        theirs, and only then do the AsyncLimiters take theirs, with nothing awaited in between,
        so a ``False`` has spent nothing there either.

        Raises:
            ValueError, TypeError: for a ``cost`` that can never fit a member, or a ``key=``
                missing or unexpected.
            TypeError: an AsyncLimiter member, and this thread runs no event loop.
            RuntimeError: an AsyncLimiter member belongs to another event loop, still open; or
                a Redis member, and this thread runs an event loop (use
                :meth:`try_acquire_async` there).
            RedisUnavailable: a Redis member could not reach Redis (``on_error="raise"``).
        """
        plan = self._plan(key, cost)
        if plan.redis:
            return self._try_redis_blocking(plan, cost)
        ok = False
        try:
            if plan.aio:
                loop = aio.running_loop()
                if loop is None:
                    raise aio.refuse_thread(plan.aio[0], "Limits.try_acquire()")
                for a in plan.aio:
                    aio.check_loop(a, loop, "Limits.try_acquire()")
            held: list[CapacityLimiter] = []
            for lim in plan.limiters:
                if not lim.try_acquire(cost):  # type: ignore[arg-type]
                    self._give_back(held, cost)
                    return False
                held.append(lim)
            for a in plan.aio:
                if not aio.can_take_now(a, cost):
                    self._give_back(held, cost)
                    return False
            if plan.buckets and not self._try_buckets(plan, cost):
                self._give_back(held, cost)  # after letting go of the buckets' lock
                return False
            try:
                for a in plan.aio:
                    aio.take_now(a, cost)  # they had room above, and nothing was awaited since
            except BaseException:
                self._give_back(held, cost)
                raise
            ok = True
            return True
        finally:
            self._unpin(plan, ok)

    async def acquire(
        self, cost: float = 1, *, key: object = None, timeout: float | None = None
    ) -> None:
        """Wait until ``cost`` can be taken from every member, and take it (see the module).

        Args:
            cost: The weight or tokens to take from each member.
            key: The key for ``PerKey`` members (required if there are any, refused if not).
            timeout: Seconds to wait at most, in all (``None``: no limit).

        If it raises or is cancelled, nothing is held and no token of a poolkit bucket is spent;
        an ``aiolimiter.AsyncLimiter`` member that already granted its part has spent it (it
        cannot be given back: see "aiolimiter members" in the module docstring).

        Raises:
            ValueError: ``cost`` can never fit a member, or a ``key=`` is missing or unexpected.
            TimeoutError: after ``timeout`` seconds in all (at once if the buckets cannot make
                it).
            BudgetExhausted: a bucket with rate 0 cannot cover ``cost``.
            RuntimeError: an AsyncLimiter member belongs to another event loop, still open
                (checked before anything is taken).
        """
        timeout = check_timeout(timeout)
        plan = self._plan(key, cost)
        loop = asyncio.get_running_loop()
        label = self._label()
        deadline = None if timeout is None else loop.time() + timeout
        held: list[CapacityLimiter] = []
        taken: tuple[list[RedisCapacityLimiter], list[RedisTokenBucket]] | None = None
        ok = False
        try:
            for a in plan.aio:
                aio.check_loop(a, loop, "Limits.acquire()")
            for lim in plan.limiters:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await lim.acquire(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
            if plan.redis:  # Redis slots in key order, then each Redis bucket's tokens
                taken = rheld, refunds = [], []
                for r in plan.rlimiters:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    await r.acquire(cost, timeout=left)  # type: ignore[arg-type]
                    rheld.append(r)
                for rb in plan.rbuckets:
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    if await rb._take(cost, left):
                        refunds.append(rb)
            for a in plan.aio:  # spent once granted: see the module docstring
                await aio.take_async(a, cost, loop, deadline, label)
            if plan.buckets:
                clock = plan.buckets[0]._clock
                parts = tuple((b, cost) for b in plan.buckets)
                now = clock() if clock is not None else loop.time()  # before the lock
                left = None if deadline is None else max(0.0, deadline - loop.time())
                take(LOCK, "Limits.acquire()")
                try:
                    w = None if try_take(parts, now) else enqueue(parts, loop, now, left, label)
                finally:
                    LOCK.release()
                if graveyard:
                    lay_to_rest()
                if w is not None:
                    await wait_async(w, loop, clock, None if left is None else now + left, label)
            ok = True
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                # Closed by the garbage collector, perhaps while this thread holds the lock of
                # one of these limits: give back and unpin without ever waiting for a lock.
                for lim in reversed(held):
                    give_up(exc, lim._lock, lim._give_back, cost)
                for pk, entry in plan.entries:
                    give_up(exc, pk._lock, pk._unpin_locked, entry, False)
                plan.entries = []
            else:
                self._give_back(held, cost)
            if taken is not None:
                _give_back_redis(*taken, cost)  # never waits
            raise
        finally:
            self._unpin(plan, ok)

    def acquire_blocking(
        self, cost: float = 1, *, key: object = None, timeout: float | None = None
    ) -> None:
        """Thread form of :meth:`acquire`.

        Raises:
            RuntimeError: called on a thread running an event loop, where it would have to wait.
            TypeError: a member is an ``aiolimiter.AsyncLimiter``, which a thread cannot wait on
                (nothing is taken).
            ValueError, TimeoutError, BudgetExhausted: as :meth:`acquire`.
        """
        timeout = check_timeout(timeout)
        plan = self._plan(key, cost)
        deadline = None if timeout is None else monotonic() + timeout
        held: list[CapacityLimiter] = []
        taken: tuple[list[RedisCapacityLimiter], list[RedisTokenBucket]] | None = None
        ok = False
        try:
            if plan.aio:
                raise aio.refuse_thread(plan.aio[0], "Limits.acquire_blocking()")
            if plan.redis:
                refuse_in_loop("Limits.acquire_blocking")  # a Redis call would block the loop
            for lim in plan.limiters:
                left = None if deadline is None else max(0.0, deadline - monotonic())
                lim.acquire_blocking(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
            if plan.redis:  # Redis slots in key order, then each Redis bucket's tokens
                taken = rheld, refunds = [], []
                for r in plan.rlimiters:
                    left = None if deadline is None else max(0.0, deadline - monotonic())
                    r.acquire_blocking(cost, timeout=left)  # type: ignore[arg-type]
                    rheld.append(r)
                for rb in plan.rbuckets:
                    left = None if deadline is None else max(0.0, deadline - monotonic())
                    if rb._take_blocking(cost, left):
                        refunds.append(rb)
            if plan.buckets:
                clock = plan.buckets[0]._clock
                parts = tuple((b, cost) for b in plan.buckets)
                now = clock() if clock is not None else monotonic()  # before the lock
                left = None if deadline is None else max(0.0, deadline - monotonic())
                take(LOCK, "Limits.acquire_blocking()")
                try:
                    if try_take(parts, now):
                        w = None
                    else:
                        refuse_in_loop("acquire_blocking")
                        w = enqueue(parts, None, now, left, self._label())
                        w.arm_thread()
                finally:
                    LOCK.release()
                if graveyard:
                    lay_to_rest()
                if w is not None:
                    wait_thread(w, clock, None if left is None else now + left, self._label())
            ok = True
        except BaseException:
            self._give_back(held, cost)
            if taken is not None:
                _give_back_redis(*taken, cost)
            raise
        finally:
            self._unpin(plan, ok)

    # ----------------------------------------------------------------- with Redis members
    #
    # (See "Redis members" in the module docstring.)

    async def try_acquire_async(self, cost: float = 1, *, key: object = None) -> bool:
        """:meth:`try_acquire` from a task, also with Redis members: it awaits Redis' answers
        (a round trip per Redis member), never room.  Nothing is taken if it returns False, is
        cancelled or raises (what Redis granted meanwhile is given back).

        Raises:
            As :meth:`try_acquire`; and RedisUnavailable if a Redis member cannot reach Redis
            (``on_error="raise"``).
        """
        plan = self._plan(key, cost)
        if not plan.redis:
            self._unpin(plan, False)
            return self.try_acquire(cost, key=key)
        loop = asyncio.get_running_loop()
        held: list[CapacityLimiter] = []
        rheld: list[RedisCapacityLimiter] = []
        refunds: list[RedisTokenBucket] = []
        ok = False
        try:
            for a in plan.aio:
                aio.check_loop(a, loop, "Limits.try_acquire_async()")
            for lim in plan.limiters:
                if not lim.try_acquire(cost):  # type: ignore[arg-type]
                    return False
                held.append(lim)
            for r in plan.rlimiters:
                if not await r.try_acquire(cost):  # type: ignore[arg-type]
                    return False
                rheld.append(r)
            for rb in plan.rbuckets:
                granted, refundable = await rb._try_take(cost)
                if not granted:
                    return False
                if refundable:
                    refunds.append(rb)
            # From here on nothing is awaited, as in try_acquire: the AsyncLimiters' room holds.
            for a in plan.aio:
                if not aio.can_take_now(a, cost):
                    return False
            if plan.buckets and not self._try_buckets(plan, cost):
                return False
            for a in plan.aio:
                aio.take_now(a, cost)
            ok = True
            return True
        finally:
            if not ok:
                self._give_back(held, cost)
                _give_back_redis(rheld, refunds, cost)
            self._unpin(plan, ok)

    def _try_buckets(self, plan: _Plan, cost: float) -> bool:
        parts = tuple((b, cost) for b in plan.buckets)
        now = plan.buckets[0]._now()  # the clock is the user's code: before the lock
        if "a" not in GC_PHASE:
            LOCK.acquire()
        elif not enter(LOCK):
            return False
        try:
            taken = try_take(parts, now)
        finally:
            LOCK.release()
        if graveyard:
            lay_to_rest()
        return taken

    def _try_redis_blocking(self, plan: _Plan, cost: float) -> bool:
        """:meth:`try_acquire` with Redis members: from a thread, with their blocking forms."""
        held: list[CapacityLimiter] = []
        rheld: list[RedisCapacityLimiter] = []
        refunds: list[RedisTokenBucket] = []
        ok = False
        try:
            if plan.aio:
                raise aio.refuse_thread(plan.aio[0], "Limits.try_acquire() with Redis members")
            if aio.running_loop() is not None:
                raise RuntimeError(
                    f"{self!r}.try_acquire() would wait for Redis on the event loop's thread; "
                    f"await try_acquire_async() there"
                )
            for lim in plan.limiters:
                if not lim.try_acquire(cost):  # type: ignore[arg-type]
                    return False
                held.append(lim)
            for r in plan.rlimiters:
                if not r.try_acquire_blocking(cost):  # type: ignore[arg-type]
                    return False
                rheld.append(r)
            for rb in plan.rbuckets:
                granted, refundable = rb._try_take_blocking(cost)
                if not granted:
                    return False
                if refundable:
                    refunds.append(rb)
            if plan.buckets and not self._try_buckets(plan, cost):
                return False
            ok = True
            return True
        finally:
            if not ok:
                self._give_back(held, cost)
                _give_back_redis(rheld, refunds, cost)
            self._unpin(plan, ok)

    def release(self, cost: float = 1, *, key: object = None) -> None:
        """Give ``cost`` back to every concurrency limiter, ``key``'s too (tokens are spent).

        Every member gets its share back even if one complains; the first error is raised.

        Args:
            cost: What was acquired.
            key: The key it was acquired with, for ``PerKey`` members.

        Raises:
            ValueError: If there are ``PerKey`` members and no ``key``.
            NotAcquired: If a member holds less than ``cost``.
        """
        if self._keyed and key is None:
            raise ValueError("these Limits have a PerKey member: pass key=")
        # Every member gets its share back, even if one of them complains.
        error: BaseException | None = None
        for r in reversed(self._rlimiters):  # (none unless Redis members): Redis hears soon
            try:
                r._release_soon(cost)  # type: ignore[arg-type]
            except BaseException as exc:
                error = error or exc
        for lim in reversed(self._limiters):
            try:
                lim.release(cost)  # type: ignore[arg-type]
            except BaseException as exc:
                error = error or exc
        for pk in reversed(self._keyed):
            try:
                pk.release(key, cost)
            except BaseException as exc:
                error = error or exc
        if error is not None:
            raise error

    @asynccontextmanager
    async def hold(self, key: object = None, cost: float = 1) -> AsyncIterator[None]:
        """``async with limits.hold(key):`` acquires ``cost`` and releases it afterwards.

        Raises:
            ValueError, TimeoutError, BudgetExhausted, RuntimeError: As :meth:`acquire`.
        """
        await self.acquire(cost, key=key)
        try:
            yield
        finally:
            self.release(cost, key=key)

    @contextmanager
    def hold_blocking(self, key: object = None, cost: float = 1) -> Iterator[None]:
        """Thread form of :meth:`hold`."""
        self.acquire_blocking(cost, key=key)
        try:
            yield
        finally:
            self.release(cost, key=key)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __enter__(self) -> None:
        if self._aio:
            raise aio.refuse_thread(self._aio[0], "'with limits:'")
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
