"""``aiolimiter.AsyncLimiter`` objects as members of poolkit's limits (``Limits``, ``PerKey``).

Users who already pace their code with aiolimiter can hand those limiters to poolkit wherever it
takes a limit.  poolkit's :class:`~poolkit.TokenBucket` does not build on aiolimiter (the
reasons, measured, are in :mod:`poolkit._primitives._ratelimit`); this module is only the
adapter, and it never imports aiolimiter: an ``AsyncLimiter`` object can exist only once its
module has been imported, so it is recognised through ``sys.modules``, and poolkit runs without
aiolimiter installed.

What an AsyncLimiter member means
---------------------------------
It is a leaky bucket of ``max_rate`` that drains at ``max_rate / time_period`` a second; an
acquisition of ``cost`` waits until ``cost`` fits and adds it to the level.  poolkit uses only its
public ``acquire(amount)`` and ``has_capacity(amount)`` to take capacity, so it behaves as
aiolimiter documents, with aiolimiter's own limits:

* Its waiters are a heap ordered by cost, not a queue: a heavy acquisition waits until no lighter
  one is waiting, so light acquisitions in a loop starve a heavy one for as long as they go on
  (a ``TokenBucket`` serves in arrival order whatever the cost).
* A newcomer that finds capacity takes it at once, ahead of the waiters.
* Capacity taken is spent: it cannot be given back, so a ``Limits`` cancelled or failing after
  the AsyncLimiter granted its part has spent that part (see :mod:`poolkit._primitives._composite`).
* It is asyncio-only and bound to the first event loop that uses it.  poolkit refuses to use it
  from a thread (``TypeError``) or from a task on another loop that is still open
  (``RuntimeError``) instead of letting it misbehave.  After its loop is closed, aiolimiter
  itself moves it to the next loop that uses it, with a ``RuntimeWarning``.  Two loops racing
  for its very first use cannot be told apart; make one per loop, as aiolimiter asks.
* Its drip rate is computed once, in its ``__init__``: assigning ``max_rate`` later makes the
  bucket bigger, not faster.

Reading its state
-----------------
aiolimiter keeps the level and the waiters private.  :func:`statistics` and the idle check of
``PerKey`` read them (``_level``, ``_last_check``, ``_rate_per_sec``, ``_waiters``,
``_event_loop``, the same in aiolimiter 1.2 and 1.3) without changing anything: the level is
drained to "now" by the same arithmetic aiolimiter uses, on the clock of its loop.  If a future
aiolimiter keeps them differently, the statistics show ``None`` and ``PerKey`` keeps such limits
rather than guess (correct, only not forgotten).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeGuard

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = [
    "AsyncLimiterStatistics",
    "can_take_now",
    "check_cost",
    "check_loop",
    "describe",
    "is_async_limiter",
    "is_idle",
    "refuse_thread",
    "running_loop",
    "settings",
    "statistics",
    "statistics_repr",
    "take_async",
    "take_now",
]


@dataclass(frozen=True, slots=True)
class AsyncLimiterStatistics:
    """A snapshot of an ``aiolimiter.AsyncLimiter`` that is a member of a :class:`~poolkit.Limits`
    (or a :class:`~poolkit.PerKey`'s limit), read without changing it.

    aiolimiter keeps no lock: read from another thread while its loop updates it, ``level`` may
    be a moment stale."""

    max_rate: float
    """Its ``max_rate``: the most its bucket holds, so the largest single cost."""
    time_period: float
    """Its ``time_period`` in seconds."""
    rate: float | None
    """How much drains a second, as computed in its ``__init__`` (``max_rate`` assigned later
    does not change it); ``None`` if this aiolimiter version does not say."""
    level: float | None
    """How full it is right now (0: ``max_rate`` can be taken at once), drained to this instant
    on its event loop's clock; ``None`` if this aiolimiter version keeps it differently."""
    waiting: int | None
    """Tasks waiting in its ``acquire`` (none once its loop is closed); ``None`` if unknown."""


def is_async_limiter(obj: object) -> TypeGuard[AsyncLimiter]:
    """Whether ``obj`` is an ``aiolimiter.AsyncLimiter`` (never imports aiolimiter)."""
    module = sys.modules.get("aiolimiter")
    cls = getattr(module, "AsyncLimiter", None)
    return isinstance(cls, type) and isinstance(obj, cls)


def describe(lim: AsyncLimiter) -> str:
    """``aiolimiter.AsyncLimiter(max_rate=10, time_period=1)``, for messages.

    aiolimiter's own ``repr`` is not used: it may look up the running loop, and it warns and
    rebinds the limiter if its loop was closed."""
    return f"aiolimiter.AsyncLimiter(max_rate={lim.max_rate!r}, time_period={lim.time_period!r})"


def settings(lim: AsyncLimiter) -> tuple[float, float]:
    """What ``PerKey`` compares to tell whether the limiter was changed after it was made."""
    return (lim.max_rate, lim.time_period)


# ----------------------------------------------------------------------- checks


def check_cost(lim: AsyncLimiter, cost: float) -> None:
    """Raise ``TypeError``/``ValueError`` for a ``cost`` this limiter could never grant."""
    if isinstance(cost, bool) or not isinstance(cost, (int, float)):
        raise TypeError(f"cost must be a number, got {cost!r}")
    if not 0 <= cost <= lim.max_rate:
        raise ValueError(
            f"cost must be >= 0 and at most the max_rate of {describe(lim)}, got {cost!r}; "
            f"it could never be granted"
        )


def _bound_loop(lim: AsyncLimiter) -> asyncio.AbstractEventLoop | None:
    loop: asyncio.AbstractEventLoop | None = getattr(lim, "_event_loop", None)
    return loop


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def check_loop(lim: AsyncLimiter, loop: asyncio.AbstractEventLoop, what: str) -> None:
    """Raise ``RuntimeError`` if ``lim`` is bound to an event loop other than ``loop`` that is
    still open: its futures and timers live there, and its state is not thread-safe."""
    bound = _bound_loop(lim)
    if bound is not None and bound is not loop and not bound.is_closed():
        raise RuntimeError(
            f"{what}: {describe(lim)} is bound to another event loop, which is still open "
            f"(an AsyncLimiter belongs to the first loop that uses it); make one AsyncLimiter "
            f"per event loop, or use a poolkit.TokenBucket, which any loop and thread can share"
        )


def refuse_thread(lim: AsyncLimiter, what: str) -> TypeError:
    """The error for a thread-side form (``acquire_blocking``, ``with``) or for ``try_acquire``
    from a thread that runs no event loop."""
    return TypeError(
        f"{what} cannot use {describe(lim)}: an AsyncLimiter is asyncio-only and belongs to one "
        f"event loop, so only a task on that loop can wait on it or take from it, never a "
        f"blocking call or a thread; await acquire() in a task on its loop, or use a "
        f"poolkit.TokenBucket, which threads and tasks share"
    )


# ----------------------------------------------------------------------- taking


async def take_async(
    lim: AsyncLimiter,
    cost: float,
    loop: asyncio.AbstractEventLoop,
    deadline: float | None,
    label: str,
) -> None:
    """``await lim.acquire(cost)``, giving up at ``deadline`` (on ``loop.time()``).

    Cancelled or timed out while waiting, it has taken nothing (aiolimiter adds to its level only
    once the capacity is there).  With no capacity and the deadline already passed it raises
    ``TimeoutError`` without queueing."""
    if deadline is None:
        await lim.acquire(cost)
        return
    if deadline <= loop.time() and not lim.has_capacity(cost):
        raise TimeoutError(f"{label}: no capacity in {describe(lim)} right now")
    try:
        async with asyncio.timeout_at(deadline) as scope:
            await lim.acquire(cost)
    except TimeoutError:
        if scope.expired():
            raise TimeoutError(
                f"{label}: no capacity in {describe(lim)} within the timeout"
            ) from None
        raise


def can_take_now(lim: AsyncLimiter, cost: float) -> bool:
    """Whether ``cost`` fits right now.  Call it on ``lim``'s loop (see :func:`check_loop`)."""
    return lim.has_capacity(cost)


def take_now(lim: AsyncLimiter, cost: float) -> None:
    """Take ``cost`` that :func:`can_take_now` just found, with nothing awaited since.

    aiolimiter's ``acquire`` completes without suspending when the capacity is there, so its
    coroutine is run to its end here, synchronously: only the public API is used."""
    coro = lim.acquire(cost)
    try:
        coro.send(None)
    except StopIteration:
        return
    coro.close()
    raise RuntimeError(
        f"{describe(lim)} did not grant {cost!r} at once although it had the capacity a moment "
        f"ago: something took from it in between"
    )


# ----------------------------------------------------------------------- state


def _level_now(lim: AsyncLimiter, bound: asyncio.AbstractEventLoop | None) -> float | None:
    try:
        level: float = lim._level
        last: float = lim._last_check
        rate: float = lim._rate_per_sec
    except AttributeError:
        return None
    if not level or bound is None:
        return float(level)
    # aiolimiter's own arithmetic (its _leak), without storing the result.
    return float(max(level - (bound.time() - last) * rate, 0))


def _waiting(lim: AsyncLimiter, bound: asyncio.AbstractEventLoop | None) -> int | None:
    try:
        waiters = list(lim._waiters)
    except AttributeError:
        return None
    if bound is not None and bound.is_closed():
        return 0  # stranded: they wait for nothing
    return sum(1 for entry in waiters if not entry[-1].done())


def statistics(lim: AsyncLimiter) -> AsyncLimiterStatistics:
    """A snapshot of ``lim``, read without changing it (from any thread)."""
    bound = _bound_loop(lim)
    rate = getattr(lim, "_rate_per_sec", None)
    return AsyncLimiterStatistics(
        max_rate=lim.max_rate,
        time_period=lim.time_period,
        rate=None if rate is None else float(rate),
        level=_level_now(lim, bound),
        waiting=_waiting(lim, bound),
    )


def statistics_repr(s: AsyncLimiterStatistics) -> str:
    """A live ``repr`` of an AsyncLimiter member, from its statistics."""
    level = "?" if s.level is None else f"{s.level:g}"
    waiting = "?" if s.waiting is None else str(s.waiting)
    return (
        f"<aiolimiter.AsyncLimiter max_rate={s.max_rate!r} time_period={s.time_period!r} "
        f"level={level} waiting={waiting}>"
    )


def is_idle(lim: AsyncLimiter, made: tuple[float, float]) -> bool:
    """Whether a new AsyncLimiter made with settings ``made`` would behave exactly as ``lim``:
    it is empty (level exactly 0, as a new one starts), nobody waits in it, and ``max_rate`` and
    ``time_period`` are as made.

    Its state is not thread-safe, so it is read only on its own loop's thread (or once that loop
    is closed); asked from anywhere else the answer is "not idle", and it is kept."""
    if settings(lim) != made:
        return False
    bound = _bound_loop(lim)
    if bound is None:
        return getattr(lim, "_level", None) == 0  # never used
    if not bound.is_closed() and running_loop() is not bound:
        return False
    return _level_now(lim, bound) == 0 and _waiting(lim, bound) == 0
