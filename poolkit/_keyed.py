"""PerKey: one limit per key (say, per host), created on first use, forgotten when idle.

A key's limit is made by the factory the first time the key is used.  It is forgotten once it is
*idle*: nobody is waiting in it, nothing is borrowed from it, and (for a token bucket) it has
refilled to full, so that a new one made later would behave exactly the same.  Forgetting is
lazy: a limit left idle by ``release`` is forgotten there and then, and every use also looks at a
few of the least recently used keys and forgets those that have become idle (token buckets do so
as time passes).  So a million distinct keys seen over a day do not keep a million limits alive,
only those still carrying state.  ``sweep()`` forgets every idle key at once.

A key's limit is pinned while an ``acquire`` on it is in flight, so that it is never forgotten
between being looked up and being used, also with several threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar, final

from ._combined import Limits, LimitsStatistics
from ._exceptions import NotAcquired
from ._limiter import CapacityLimiter, CapacityLimiterStatistics
from ._ratelimit import TokenBucket, TokenBucketStatistics

__all__ = ["PerKey", "PerKeyStatistics"]

K = TypeVar("K", bound=Hashable)
L = TypeVar("L", bound=CapacityLimiter | TokenBucket | Limits)


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
    """Successful acquisitions through this object, over all keys."""


@final
class PerKey(Generic[K, L]):
    """A limit per key: ``PerKey(lambda: TokenBucket("2/s"))`` paces each host on its own.

    ``factory`` is called with no arguments to make the limit of a new key: a
    :class:`CapacityLimiter`, a :class:`TokenBucket` or a :class:`Limits` (for a cap *and* a rate
    per key).  ``await acquire(key, cost)``, ``try_acquire``, ``acquire_blocking`` and
    ``release(key, cost)`` act on that key's limit; ``async with per_key.hold(key):`` (or
    ``with``) pairs them.  Releasing a token bucket is a no-op (tokens are spent).
    ``statistics()`` sums over keys; ``statistics_for(key)`` is one key's.  See the module
    docstring for when a key's limit is forgotten.
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

    # ----------------------------------------------------------------- keys

    def _make(self) -> L:
        limit = self._factory()
        if not isinstance(limit, (CapacityLimiter, TokenBucket, Limits)):
            raise TypeError(
                f"the factory must return a CapacityLimiter, TokenBucket or Limits, got {limit!r}"
            )
        return limit

    def _pin(self, key: K) -> _Entry[L]:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(self._make())
                self._created += 1
            else:
                self._entries.move_to_end(key)
            entry.pins += 1
            self._forget_some()
            return entry

    def _unpin(self, entry: _Entry[L]) -> None:
        with self._lock:
            entry.pins -= 1

    def _forget_some(self) -> None:
        """Look at a few least recently used keys: forget the idle ones, rotate the others."""
        entries = self._entries
        for _ in range(min(self._sweep, len(entries) - 1)):
            key, entry = entries.popitem(last=False)
            if entry.pins or not entry.limit._is_idle():
                entries[key] = entry  # busy: to the back of the line
            else:
                self._forgotten += 1

    def sweep(self) -> int:
        """Forget every idle key now; return how many were forgotten."""
        with self._lock:
            idle = [k for k, e in self._entries.items() if not e.pins and e.limit._is_idle()]
            for k in idle:
                del self._entries[k]
            self._forgotten += len(idle)
            return len(idle)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def keys(self) -> list[K]:
        """The keys whose limit is alive, least recently used first."""
        with self._lock:
            return list(self._entries)

    # ----------------------------------------------------------------- acquire / release

    async def acquire(self, key: K, cost: float = 1, *, timeout: float | None = None) -> None:
        """``acquire(cost)`` on ``key``'s limit (made now if the key is new)."""
        entry = self._pin(key)
        try:
            await entry.limit.acquire(cost, timeout=timeout)  # type: ignore[arg-type]
        finally:
            self._unpin(entry)
        self._acquired += 1

    def try_acquire(self, key: K, cost: float = 1) -> bool:
        entry = self._pin(key)
        try:
            ok = entry.limit.try_acquire(cost)  # type: ignore[arg-type]
        finally:
            self._unpin(entry)
        if ok:
            self._acquired += 1
        return ok

    def acquire_blocking(self, key: K, cost: float = 1, *, timeout: float | None = None) -> None:
        entry = self._pin(key)
        try:
            entry.limit.acquire_blocking(cost, timeout=timeout)  # type: ignore[arg-type]
        finally:
            self._unpin(entry)
        self._acquired += 1

    def release(self, key: K, cost: float = 1) -> None:
        """``release(cost)`` on ``key``'s limit; :class:`~poolkit.NotAcquired` if it has none."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise NotAcquired(f"release({cost}) for key {key!r}, which holds nothing")
        limit = entry.limit
        if not isinstance(limit, TokenBucket):
            limit.release(cost)  # type: ignore[arg-type]
        with self._lock:  # idle now?  Forget it at once rather than when the sweep gets to it.
            if self._entries.get(key) is entry and not entry.pins and limit._is_idle():
                del self._entries[key]
                self._forgotten += 1

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

    def statistics(self) -> PerKeyStatistics:
        with self._lock:
            return PerKeyStatistics(
                name=self._name,
                keys=len(self._entries),
                created_total=self._created,
                forgotten_total=self._forgotten,
                acquired_total=self._acquired,
            )

    def statistics_for(
        self, key: K
    ) -> CapacityLimiterStatistics | TokenBucketStatistics | LimitsStatistics | None:
        """The statistics of ``key``'s limit, or ``None`` if it has none alive."""
        with self._lock:
            entry = self._entries.get(key)
        return None if entry is None else entry.limit.statistics()

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<PerKey{name} keys={s.keys} created={s.created_total} "
            f"forgotten={s.forgotten_total} acquired={s.acquired_total}>"
        )
