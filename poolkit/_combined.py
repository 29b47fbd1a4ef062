"""Limits: several limits enforced as one ("10/s and 500/min and at most 4 at once").

How an acquisition of ``cost`` proceeds:

1. It takes ``cost`` from every concurrency limiter, one after the other, in one global order
   (by object identity), so that two ``Limits`` sharing limiters can never deadlock.
2. Then it waits until *every* token bucket can grant ``cost`` at once and takes from all of them
   in one step.  No bucket's tokens are taken while it waits for another bucket, and no tokens
   are taken before the concurrency slots are held: the work starts right after its tokens are
   granted, so the rates hold where they matter, at the start of the work.  (The slots are held
   while waiting for tokens; the other order would spend tokens on work that then waits.)
3. In each bucket it queues like any other waiter, so single-bucket users behind it wait their
   turn, and it waits its turn behind theirs.

A failure or cancellation anywhere gives back the slots already taken; tokens are only ever
taken in the last step, so nothing is spent.  ``release(cost)`` gives the slots back; tokens are
spent for good.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import final

from ._checks import check_timeout
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
from ._wait import monotonic, refuse_in_loop

__all__ = ["Limits", "LimitsStatistics"]


@dataclass(frozen=True, slots=True)
class LimitsStatistics:
    """A snapshot of a :class:`Limits`: the statistics of each member, in the order given."""

    name: str | None
    """The name given to the combination, if any."""
    members: tuple[CapacityLimiterStatistics | TokenBucketStatistics, ...]
    """Each member's own statistics."""


@final
class Limits:
    """Several :class:`CapacityLimiter` and :class:`TokenBucket` limits enforced as one.

    ``Limits(TokenBucket("10/s"), TokenBucket("500/min"), CapacityLimiter(4))`` admits work at
    most 10 times a second, 500 times a minute and 4 at a time.  ``async with limits:`` (or
    ``with`` in a thread) holds one unit; ``acquire(cost)``/``release(cost)`` charge ``cost`` to
    every member (an ``int`` when there are concurrency limiters).  See the module docstring for
    the order in which limits are taken and why no token is held while waiting for another limit.

    Nested ``Limits`` are flattened.  The same limiter may appear only once; token buckets must
    share one clock.  A bucket or limiter may also be shared with other ``Limits`` and used on
    its own at the same time.
    """

    __slots__ = ("__weakref__", "_buckets", "_limiters", "_members", "_name")

    _members: tuple[CapacityLimiter | TokenBucket, ...]

    def __init__(
        self, *limits: CapacityLimiter | TokenBucket | Limits, name: str | None = None
    ) -> None:
        members: list[CapacityLimiter | TokenBucket] = []
        for limit in limits:
            if isinstance(limit, Limits):
                members.extend(limit._members)
            elif isinstance(limit, (CapacityLimiter, TokenBucket)):
                members.append(limit)
            else:
                raise TypeError(
                    f"Limits() takes CapacityLimiter, TokenBucket or Limits objects, got {limit!r}"
                )
        if not members:
            raise ValueError("Limits() needs at least one limit")
        if len({id(m) for m in members}) != len(members):
            raise ValueError("Limits() got the same limit twice; it would be charged twice")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._members = tuple(members)
        self._limiters = tuple(
            sorted((m for m in members if isinstance(m, CapacityLimiter)), key=id)
        )
        self._buckets = tuple(m for m in members if isinstance(m, TokenBucket))
        if len({id(b._clock) for b in self._buckets}) > 1:
            raise ValueError("the token buckets in one Limits() must share one clock")
        self._name = name

    @property
    def members(self) -> tuple[CapacityLimiter | TokenBucket, ...]:
        """The limits enforced, in the order given (nested ``Limits`` flattened)."""
        return self._members

    @property
    def name(self) -> str | None:
        return self._name

    def statistics(self) -> LimitsStatistics:
        return LimitsStatistics(self._name, tuple(m.statistics() for m in self._members))

    def __repr__(self) -> str:
        name = f" {self._name!r}" if self._name is not None else ""
        return f"<Limits{name} {' & '.join(repr(m) for m in self._members)}>"

    def _is_idle(self) -> bool:
        return all(m._is_idle() for m in self._members)

    # ----------------------------------------------------------------- helpers

    def _check(self, cost: float) -> None:
        if self._limiters:
            check_weight(cost, "cost")  # type: ignore[arg-type]
        for m in self._members:
            if isinstance(m, CapacityLimiter):
                m._check(cost)  # type: ignore[arg-type]
            else:
                m._check_cost(cost)

    def _parts(self, cost: float) -> tuple[tuple[TokenBucket, float], ...]:
        return tuple((b, cost) for b in self._buckets)

    def _label(self) -> str:
        return "limits" if self._name is None else f"limits {self._name!r}"

    def _give_back(self, held: list[CapacityLimiter], cost: float) -> None:
        for lim in reversed(held):
            lim.release(cost)  # type: ignore[arg-type]

    # ----------------------------------------------------------------- acquire / release

    def try_acquire(self, cost: float = 1) -> bool:
        """Take ``cost`` from every member if that needs no waiting anywhere; else take nothing."""
        self._check(cost)
        held: list[CapacityLimiter] = []
        for lim in self._limiters:
            if not lim.try_acquire(cost):  # type: ignore[arg-type]
                self._give_back(held, cost)
                return False
            held.append(lim)
        if self._buckets:
            clock = self._buckets[0]._clock
            with LOCK:
                now = clock() if clock is not None else self._buckets[0]._now()
                if not try_take(self._parts(cost), now):
                    self._give_back(held, cost)
                    return False
        return True

    async def acquire(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Wait until ``cost`` can be taken from every member, and take it (see the module).

        Raises ``ValueError`` if ``cost`` can never fit a member, :class:`TimeoutError` after
        ``timeout`` seconds in all (at once if the buckets cannot make it).  If it raises or is
        cancelled, nothing is held and no token is spent.
        """
        self._check(cost)
        timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        held: list[CapacityLimiter] = []
        try:
            for lim in self._limiters:
                left = None if deadline is None else max(0.0, deadline - loop.time())
                await lim.acquire(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
            if self._buckets:
                clock = self._buckets[0]._clock
                parts = self._parts(cost)
                with LOCK:
                    now = clock() if clock is not None else loop.time()
                    if try_take(parts, now):
                        return
                    left = None if deadline is None else max(0.0, deadline - loop.time())
                    w = enqueue(parts, loop, now, left, self._label())
                await wait_async(
                    w, loop, clock, None if left is None else now + left, self._label()
                )
        except BaseException:
            self._give_back(held, cost)
            raise

    def acquire_blocking(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`.  Raises ``RuntimeError`` on a thread running a loop."""
        self._check(cost)
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else monotonic() + timeout
        held: list[CapacityLimiter] = []
        try:
            for lim in self._limiters:
                left = None if deadline is None else max(0.0, deadline - monotonic())
                lim.acquire_blocking(cost, timeout=left)  # type: ignore[arg-type]
                held.append(lim)
            if self._buckets:
                clock = self._buckets[0]._clock
                parts = self._parts(cost)
                with LOCK:
                    now = clock() if clock is not None else monotonic()
                    if try_take(parts, now):
                        return
                    refuse_in_loop("acquire_blocking")
                    left = None if deadline is None else max(0.0, deadline - monotonic())
                    w = enqueue(parts, None, now, left, self._label())
                    w.arm_thread()
                wait_thread(w, clock, None if left is None else now + left, self._label())
        except BaseException:
            self._give_back(held, cost)
            raise

    def release(self, cost: float = 1) -> None:
        """Give back ``cost`` to every concurrency limiter (tokens stay spent)."""
        self._give_back(list(self._limiters), cost)

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
