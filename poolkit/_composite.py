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

Nothing under a lock
--------------------
Waiting, waking and the locks go through :mod:`poolkit._wait`.  The factory runs holding no lock.
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
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, final

from ._checks import check_timeout
from ._exceptions import NotAcquired
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
from ._registry import register, unregistered
from ._wait import (
    Busy,
    enter,
    give_up,
    graveyard,
    lay_to_rest,
    mirror_collecting,
    monotonic,
    refuse_in_loop,
    take,
    take_or_defer,
)

__all__ = ["Limits", "LimitsStatistics", "PerKey", "PerKeyStatistics"]

K = TypeVar("K", bound=Hashable)
L = TypeVar("L", bound="CapacityLimiter | TokenBucket | Limits")

Simple = CapacityLimiter | TokenBucket

COLLECTING = 0  # the thread running a garbage collection, or 0: see poolkit._wait
mirror_collecting(globals())


# ======================================================================= PerKey


class _Entry(Generic[L]):
    __slots__ = ("limit", "pins")

    def __init__(self, limit: L) -> None:
        self.limit: L = limit
        self.pins = 0


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

    ``factory`` is called with no arguments to make the limit of a new key: a
    :class:`CapacityLimiter`, a :class:`TokenBucket` or a :class:`Limits` (for a cap *and* a rate
    per key).  ``await acquire(key, cost)``, ``try_acquire``, ``acquire_blocking`` and
    ``release(key, cost)`` act on that key's limit; ``async with per_key.hold(key):`` (or
    ``hold_blocking`` in a thread) pairs them.  Releasing a token bucket does nothing (tokens are
    spent).  It can also be a member of a :class:`Limits`.  ``statistics()`` sums over keys;
    ``statistics_for(key)`` is one key's.  See the module docstring for when a limit is forgotten.
    """

    __slots__ = (
        "__weakref__",
        "_acquired",
        "_created",
        "_entries",
        "_factory",
        "_forgotten",
        "_lock",
        "_name",
        "_rate_only",
        "_sweep",
    )

    def __init__(
        self, factory: Callable[[], L], *, name: str | None = None, sweep_per_use: int = 4
    ) -> None:
        if not callable(factory):
            raise TypeError(f"factory must be a callable that makes a limit, got {factory!r}")
        if isinstance(sweep_per_use, bool) or not isinstance(sweep_per_use, int):
            raise TypeError(f"sweep_per_use must be an int, got {sweep_per_use!r}")
        if sweep_per_use < 1:
            raise ValueError(f"sweep_per_use must be >= 1, got {sweep_per_use!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._factory: Callable[[], L] = factory
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
        register(self, "per_key")

    # ----------------------------------------------------------------- keys

    def _make(self) -> L:
        with unregistered():  # reported through this PerKey, not one by one
            limit = self._factory()
        if not isinstance(limit, (CapacityLimiter, TokenBucket, Limits)):
            raise TypeError(
                f"the factory must return a CapacityLimiter, TokenBucket or Limits, got {limit!r}"
            )
        if isinstance(limit, Limits) and limit._keyed:
            raise TypeError("the factory's Limits may not itself contain a PerKey")
        if self._rate_only is None:
            self._rate_only = isinstance(limit, TokenBucket) or (
                isinstance(limit, Limits) and not limit._limiters
            )
        return limit

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
        if entry is not None:
            return entry
        limit = self._make()  # the factory is the user's code: it runs holding no lock
        take(lock, "PerKey")
        try:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(limit)
                self._created += 1
            else:  # another thread made the key's limit meanwhile: that one is the key's
                self._entries.move_to_end(key)
            entry.pins += 1
            self._forget_some()
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()
        return entry

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
            if entry.pins or not entry.limit._is_idle():
                entries[key] = entry  # busy: to the back of the line
            else:
                self._forgotten += 1

    def _forget_if_idle(self, key: K, entry: _Entry[L]) -> None:
        lock = self._lock
        if not take_or_defer(lock, self._forget_if_idle, key, entry):
            return
        try:
            if self._entries.get(key) is entry and not entry.pins and entry.limit._is_idle():
                del self._entries[key]
                self._forgotten += 1
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()

    def sweep(self) -> int:
        """Forget every idle key now; return how many were forgotten."""
        take(self._lock, "PerKey.sweep()")
        try:
            idle = [k for k, e in self._entries.items() if not e.pins and e.limit._is_idle()]
            for k in idle:
                del self._entries[k]
            self._forgotten += len(idle)
        finally:
            self._lock.release()
        if graveyard:
            lay_to_rest()
        return len(idle)

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

        Raises what the key's limit raises (``ValueError``, :class:`TimeoutError`,
        :class:`~poolkit.BudgetExhausted` for a spent fixed budget); nothing is held then.
        """
        entry = self._pin(key)
        try:
            await entry.limit.acquire(cost, timeout=timeout)  # type: ignore[arg-type]
        except BaseException as exc:
            # (Being closed, perhaps by the garbage collector while this thread holds the lock,
            # it never waits for it.)
            give_up(exc, self._lock, self._unpin_locked, entry, False)
            raise
        self._unpin(entry, True)

    def try_acquire(self, key: K, cost: float = 1) -> bool:
        """``try_acquire(cost)`` on ``key``'s limit; never blocks."""
        try:
            entry = self._pin(key)
        except Busy:  # a garbage collection interrupted this thread holding the lock
            return False
        ok = False
        try:
            ok = entry.limit.try_acquire(cost)  # type: ignore[arg-type]
        finally:
            self._unpin(entry, ok)
        return ok

    def acquire_blocking(self, key: K, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`."""
        entry = self._pin(key)
        ok = False
        try:
            entry.limit.acquire_blocking(cost, timeout=timeout)  # type: ignore[arg-type]
            ok = True
        finally:
            self._unpin(entry, ok)

    def release(self, key: K, cost: float = 1) -> None:
        """``release(cost)`` on ``key``'s limit; :class:`~poolkit.NotAcquired` if it has none.

        Called during a garbage collection that interrupted this thread holding a lock it
        needs, it is done as soon as that lock is free instead."""
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
        limit = entry.limit
        if not isinstance(limit, TokenBucket):
            limit.release(cost)  # type: ignore[arg-type]
        self._forget_if_idle(key, entry)

    @asynccontextmanager
    async def hold(self, key: K, cost: float = 1) -> AsyncIterator[None]:
        """``async with per_key.hold(key):`` acquires ``cost`` on ``key`` and releases it after."""
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

    def statistics_for(
        self, key: K
    ) -> CapacityLimiterStatistics | TokenBucketStatistics | LimitsStatistics | None:
        """The statistics of ``key``'s limit, or ``None`` if it has none alive."""
        take(self._lock, "PerKey.statistics_for()")
        try:
            entry = self._entries.get(key)
        finally:
            self._lock.release()
        return None if entry is None else entry.limit.statistics()

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
    members: tuple[CapacityLimiterStatistics | TokenBucketStatistics | PerKeyStatistics, ...]
    """Each member's own statistics."""


class _Plan:
    """What one acquisition takes part in: the fixed members plus, per key, the keyed ones."""

    __slots__ = ("buckets", "entries", "limiters")

    def __init__(
        self,
        limiters: tuple[CapacityLimiter, ...],
        buckets: tuple[TokenBucket, ...],
        entries: list[tuple[PerKey[Any, Any], _Entry[Any]]],
    ) -> None:
        self.limiters = limiters
        self.buckets = buckets
        self.entries = entries


def _flatten(limit: object) -> list[Simple]:
    if isinstance(limit, Limits):
        return list(limit._members)
    if isinstance(limit, (CapacityLimiter, TokenBucket)):
        return [limit]
    raise TypeError(
        f"Limits() takes CapacityLimiter, TokenBucket, PerKey or Limits objects, got {limit!r}"
    )


@final
class Limits:
    """Several :class:`CapacityLimiter`, :class:`TokenBucket` and :class:`PerKey` limits as one.

    ``async with limits:`` (or ``with`` in a thread) holds one unit of every member;
    ``acquire(cost)``/``release(cost)`` charge ``cost`` to every member (an ``int`` when there are
    concurrency limiters).  With ``PerKey`` members, every call names a ``key=`` (and ``async
    with limits.hold(key):`` replaces the plain ``async with``).  See the module docstring for
    the order in which limits are taken and why no token is held while waiting for another limit.

    Nested ``Limits`` are flattened.  The same limit may appear only once; token buckets must
    share one clock.  A member may also be shared with other ``Limits`` and used on its own.
    """

    __slots__ = ("__weakref__", "_buckets", "_keyed", "_limiters", "_members", "_name")

    _members: tuple[Simple, ...]
    _keyed: tuple[PerKey[Any, Any], ...]

    def __init__(
        self,
        *limits: CapacityLimiter | TokenBucket | PerKey[Any, Any] | Limits,
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
        if len({id(b._clock) for b in self._buckets}) > 1:
            raise ValueError("the token buckets in one Limits() must share one clock")
        self._name = name
        register(self, "limits")

    @property
    def members(self) -> tuple[CapacityLimiter | TokenBucket | PerKey[Any, Any], ...]:
        """The limits enforced (nested ``Limits`` flattened; per-key members last)."""
        return (*self._members, *self._keyed)

    @property
    def name(self) -> str | None:
        return self._name

    def statistics(self) -> LimitsStatistics:
        return LimitsStatistics(self._name, tuple(m.statistics() for m in self.members))

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        return f"<Limits{name} {' & '.join(repr(m) for m in self.members)}>"

    def _is_idle(self) -> bool:
        return all(m._is_idle() for m in self._members)

    def _label(self) -> str:
        return "limits" if self._name is None else f"limits {self._name!r}"

    # ----------------------------------------------------------------- planning

    def _plan(self, key: object, cost: float) -> _Plan:
        """Resolve the per-key members for ``key`` (pinning them) and check ``cost`` on all."""
        if not self._keyed:
            if key is not None:
                raise ValueError("key= given, but these Limits have no PerKey member")
            plan = _Plan(self._limiters, self._buckets, [])
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
            buckets = list(self._buckets)
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
                    (limiters if isinstance(m, CapacityLimiter) else buckets).append(m)  # type: ignore[arg-type]
            limiters.sort(key=id)
            plan = _Plan(tuple(limiters), tuple(buckets), entries)
            if len({id(b._clock) for b in plan.buckets}) > 1:
                self._unpin(plan, False)
                raise ValueError("the token buckets of these Limits and key must share one clock")
        try:
            if plan.limiters:
                check_weight(cost, "cost")  # type: ignore[arg-type]
            for lim in plan.limiters:
                lim._check(cost)  # type: ignore[arg-type]
            for b in plan.buckets:
                b._check_cost(cost)
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
        """Take ``cost`` from every member if that needs no waiting anywhere; else take nothing."""
        plan = self._plan(key, cost)
        ok = False
        try:
            held: list[CapacityLimiter] = []
            for lim in plan.limiters:
                if not lim.try_acquire(cost):  # type: ignore[arg-type]
                    self._give_back(held, cost)
                    return False
                held.append(lim)
            if plan.buckets:
                parts = tuple((b, cost) for b in plan.buckets)
                now = plan.buckets[0]._now()  # the clock is the user's code: before the lock
                if not COLLECTING:
                    LOCK.acquire()
                elif not enter(LOCK):
                    self._give_back(held, cost)
                    return False
                try:
                    taken = try_take(parts, now)
                finally:
                    LOCK.release()
                if graveyard:
                    lay_to_rest()
                if not taken:
                    self._give_back(held, cost)  # after letting go of the buckets' lock
                    return False
            ok = True
            return True
        finally:
            self._unpin(plan, ok)

    async def acquire(
        self, cost: float = 1, *, key: object = None, timeout: float | None = None
    ) -> None:
        """Wait until ``cost`` can be taken from every member, and take it (see the module).

        Raises ``ValueError`` if ``cost`` can never fit a member (or a ``key=`` is missing or
        unexpected), :class:`TimeoutError` after ``timeout`` seconds in all (at once if the
        buckets cannot make it), :class:`~poolkit.BudgetExhausted` if a bucket with rate 0 cannot
        cover it.  If it raises or is cancelled, nothing is held and no token is spent.
        """
        timeout = check_timeout(timeout)
        plan = self._plan(key, cost)
        loop = asyncio.get_running_loop()
        label = self._label()
        deadline = None if timeout is None else loop.time() + timeout
        held: list[CapacityLimiter] = []
        ok = False
        try:
            for lim in plan.limiters:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await lim.acquire(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
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
            raise
        finally:
            self._unpin(plan, ok)

    def acquire_blocking(
        self, cost: float = 1, *, key: object = None, timeout: float | None = None
    ) -> None:
        """Thread form of :meth:`acquire`.  Raises ``RuntimeError`` on a thread running a loop."""
        timeout = check_timeout(timeout)
        plan = self._plan(key, cost)
        deadline = None if timeout is None else monotonic() + timeout
        held: list[CapacityLimiter] = []
        ok = False
        try:
            for lim in plan.limiters:
                left = None if deadline is None else max(0.0, deadline - monotonic())
                lim.acquire_blocking(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
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
            raise
        finally:
            self._unpin(plan, ok)

    def release(self, cost: float = 1, *, key: object = None) -> None:
        """Give ``cost`` back to every concurrency limiter, ``key``'s too (tokens are spent)."""
        if self._keyed and key is None:
            raise ValueError("these Limits have a PerKey member: pass key=")
        # Every member gets its share back, even if one of them complains.
        error: BaseException | None = None
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
        """``async with limits.hold(key):`` acquires ``cost`` and releases it afterwards."""
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
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
