"""CapacityLimiter: how many at once (Go's ``x/sync/semaphore``), for tasks and threads.

Waiters form one FIFO queue.  The waiter at the head is served first even if it is heavy: while
it does not fit, nobody behind it is served, so a heavy request is never starved by a stream of
light ones.  When capacity frees up, the head is granted its weight at once (``borrowed`` counts
it) and woken; if a cancellation or timeout reaches it before it runs, the grant is undone and
passed on.  So an ``acquire`` that raises holds nothing, including at the instant of the grant
(the bug of CPython gh-90155 and gh-112202).

Nothing that can block or run foreign code happens under the lock.  A waiter whose event loop
is closed is skipped, and the reference to it is dropped only after the lock is released
(:func:`~poolkit._wait.bury`): dropping it destroys its task, whose clean-up wants this lock.
That clean-up (``GeneratorExit``, perhaps from the garbage collector in a thread that holds the
lock) never waits for the lock: it withdraws through :func:`~poolkit._wait.locked_soon`, so a
grant made to a task that will never run is still given back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass
from threading import Lock
from types import TracebackType
from typing import final

from ._checks import check_timeout
from ._exceptions import NotAcquired
from ._registry import register
from ._wait import (
    LockedSleeper,
    bury,
    discard,
    graveyard,
    lay_to_rest,
    locked_soon,
    refuse_in_loop,
    thread_deadline,
    thread_wait,
)

__all__ = ["CapacityLimiter", "CapacityLimiterStatistics"]

_WAITING = 0
_GRANTED = 1  # holds its weight; it returns when it runs
_TIMED_OUT = 2
_TOO_HEAVY = 3  # total shrank below its weight
_GONE = 4  # cancelled, or completed


class _Waiter(LockedSleeper):
    __slots__ = ("state", "weight")

    def __init__(self, weight: int, loop: asyncio.AbstractEventLoop | None) -> None:
        LockedSleeper.__init__(self, loop)
        self.weight = weight
        self.state = _WAITING


def check_weight(weight: int, name: str = "weight") -> int:
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise TypeError(f"{name} must be a positive int, got {weight!r}")
    if weight < 1:
        raise ValueError(f"{name} must be >= 1, got {weight!r}")
    return weight


@dataclass(frozen=True, slots=True)
class CapacityLimiterStatistics:
    """A snapshot of a :class:`CapacityLimiter`, from :meth:`CapacityLimiter.statistics`."""

    name: str | None
    """The name given to the limiter, if any."""
    total: int
    """The capacity: the most weight that may be borrowed at once."""
    borrowed: int
    """Weight held right now (may exceed ``total`` for a while after ``total`` was lowered)."""
    waiting: int
    """Tasks and threads queued in ``acquire``."""
    peak_borrowed: int
    """The largest value ``borrowed`` has had."""
    acquired_total: int
    """Successful acquisitions since the limiter was created."""


@final
class CapacityLimiter:
    """At most ``total`` units of weight borrowed at once; FIFO; shared by tasks and threads.

    ``async with limiter:`` (or ``with limiter:`` in a thread) holds one unit for the block.
    ``await acquire(weight)`` waits for room, in arrival order; ``try_acquire(weight)`` takes it
    only if that needs no waiting and nobody is queued; ``acquire_blocking(weight)`` is the thread
    form.  Every ``acquire`` is paired with ``release(weight)``.

    A ``weight`` above ``total`` raises ``ValueError`` at once rather than waiting forever.
    ``timeout=`` raises :class:`TimeoutError`; a cancelled or timed-out acquire holds nothing.
    ``total`` can be changed at any time: growing it serves waiters at once; shrinking it lets
    the current holders finish (``borrowed`` may exceed ``total`` until they release), and
    waiters whose weight no longer fits at all get ``ValueError``.
    """

    __slots__ = (
        "__weakref__",
        "_acquired",
        "_borrowed",
        "_lock",
        "_name",
        "_peak",
        "_queue",
        "_total",
    )

    def __init__(self, total: int, *, name: str | None = None) -> None:
        self._total = check_weight(total, "total")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._name = name
        self._lock = Lock()
        self._queue: deque[_Waiter] = deque()
        self._borrowed = 0
        self._peak = 0
        self._acquired = 0
        register(self, "limiter")

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def total(self) -> int:
        """The capacity.  Assign to change it at run time (see the class docstring)."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        check_weight(value, "total")
        with self._lock:
            self._total = value
            for w in [w for w in self._queue if w.state == _WAITING and w.weight > value]:
                w.state = _TOO_HEAVY
                self._queue.remove(w)
                if not w.wake():
                    bury(w)
            self._serve()
        if graveyard:
            lay_to_rest()

    @property
    def borrowed(self) -> int:
        """Weight held right now."""
        return self._borrowed

    def _is_idle(self) -> bool:
        """Nothing borrowed and nobody waiting: forgetting it changes nothing (for PerKey)."""
        with self._lock:
            return self._borrowed == 0 and not self._queue

    def statistics(self) -> CapacityLimiterStatistics:
        with self._lock:
            return CapacityLimiterStatistics(
                name=self._name,
                total=self._total,
                borrowed=self._borrowed,
                waiting=len(self._queue),
                peak_borrowed=self._peak,
                acquired_total=self._acquired,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<CapacityLimiter{name} borrowed={s.borrowed}/{s.total} waiting={s.waiting} "
            f"peak={s.peak_borrowed}>"
        )

    # ----------------------------------------------------------------- core (lock held)

    def _take(self, weight: int) -> None:
        self._borrowed += weight
        self._acquired += 1
        if self._borrowed > self._peak:
            self._peak = self._borrowed

    def _serve(self) -> None:
        """Grant waiters from the head of the queue while the head fits (strict FIFO)."""
        q = self._queue
        while q:
            w = q[0]
            if self._borrowed + w.weight > self._total:
                return
            q.popleft()
            w.state = _GRANTED
            self._take(w.weight)
            if not w.wake():  # its event loop is closed: it will never run
                w.state = _GONE
                self._borrowed -= w.weight
                self._acquired -= 1
                bury(w)  # maybe the last reference to its task: drop it after the lock

    def _withdraw(self, w: _Waiter) -> None:
        """The owner of ``w`` gives up: leave the queue, or hand back what it was granted."""
        if w.state == _WAITING:
            w.state = _GONE
            was_head = bool(self._queue) and self._queue[0] is w
            discard(self._queue, w)
            if was_head:
                self._serve()  # whoever is behind it may fit now
        elif w.state == _GRANTED:
            w.state = _GONE
            self._borrowed -= w.weight
            self._acquired -= 1
            self._serve()

    def _expire(self, w: _Waiter) -> None:
        with self._lock:
            if w.state == _WAITING:
                self._withdraw(w)
                w.state = _TIMED_OUT
                w.wake()
        if graveyard:
            lay_to_rest()

    def _check(self, weight: int) -> None:
        check_weight(weight)
        if weight > self._total:
            raise ValueError(
                f"weight {weight} exceeds the limiter's total {self._total}; it could never fit"
            )

    def _outcome(self, w: _Waiter, timeout: float | None) -> None:
        state = w.state
        if state == _GRANTED:
            w.state = _GONE
            return
        if state == _TOO_HEAVY:
            raise ValueError(
                f"weight {w.weight} exceeds the limiter's total {self._total} (lowered while "
                f"waiting); it could never fit"
            )
        raise TimeoutError(f"{self._label()}: no capacity within {timeout} s")

    def _label(self) -> str:
        return "capacity limiter" if self._name is None else f"capacity limiter {self._name!r}"

    # ----------------------------------------------------------------- acquire / release

    def try_acquire(self, weight: int = 1) -> bool:
        """Take ``weight`` if it fits now and nobody is queued; never blocks.  Thread-safe."""
        self._check(weight)
        with self._lock:
            if not self._queue and self._borrowed + weight <= self._total:
                self._take(weight)
                return True
            return False

    async def acquire(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Wait (in arrival order) until ``weight`` fits, then take it.

        Raises ``ValueError`` if ``weight`` exceeds ``total``, :class:`TimeoutError` after
        ``timeout`` seconds.  If cancelled or timed out, nothing is held.
        """
        if weight.__class__ is not int or weight > self._total or weight < 1:
            self._check(weight)
        if timeout is not None:
            timeout = check_timeout(timeout)
        lock = self._lock
        lock.acquire()
        try:
            if not self._queue and self._borrowed + weight <= self._total:
                self._borrowed += weight  # _take() inlined
                self._acquired += 1
                if self._borrowed > self._peak:
                    self._peak = self._borrowed
                return
            if weight > self._total:  # again, under the lock: another thread may have lowered it
                self._check(weight)
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: no capacity right now")
            loop = asyncio.get_running_loop()
            w = _Waiter(weight, loop)
            self._queue.append(w)
        finally:
            lock.release()
        fut = w.fut
        assert fut is not None
        timer = None if timeout is None else loop.call_later(timeout, self._expire, w)
        try:
            await fut
        except GeneratorExit:
            # Being closed, perhaps by the garbage collector in a thread that holds this very lock
            # (an allocation there can start a collection): waiting for it could deadlock.  The
            # withdrawal runs as soon as the lock is free, so a grant is never lost.
            locked_soon(lock, self._withdraw, w)
            raise
        except BaseException:
            with lock:
                self._withdraw(w)
            if graveyard:
                lay_to_rest()
            raise
        finally:
            if timer is not None:
                timer.cancel()
        self._outcome(w, timeout)

    def acquire_blocking(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until ``weight`` fits.

        Raises ``RuntimeError`` if called in a thread whose event loop is running.
        """
        self._check(weight)
        timeout = check_timeout(timeout)
        with self._lock:
            if not self._queue and self._borrowed + weight <= self._total:
                self._take(weight)
                return
            if weight > self._total:  # again, under the lock: another thread may have lowered it
                self._check(weight)
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: no capacity right now")
            refuse_in_loop("acquire_blocking")
            w = _Waiter(weight, None)
            w.arm_thread()
            self._queue.append(w)
        tlock = w.tlock
        assert tlock is not None
        try:
            woke = thread_wait(tlock, thread_deadline(timeout))
        except BaseException:  # KeyboardInterrupt in the main thread
            with self._lock:
                self._withdraw(w)
            if graveyard:
                lay_to_rest()
            raise
        try:
            with self._lock:
                if not woke and w.state == _WAITING:
                    self._withdraw(w)
                    w.state = _TIMED_OUT
                self._outcome(w, timeout)
        finally:
            if graveyard:
                lay_to_rest()

    def release(self, weight: int = 1) -> None:
        """Give back ``weight``; wakes waiters that now fit.  Thread-safe; never blocks.

        Raises :class:`~poolkit.NotAcquired` if that is more than is borrowed.
        """
        if weight.__class__ is not int or weight < 1:
            check_weight(weight)
        lock = self._lock
        lock.acquire()  # explicit acquire/release: ~80 ns cheaper than "with" on CPython 3.11
        try:
            if weight > self._borrowed:
                raise NotAcquired(
                    f"release({weight}) on {self._label()}, but only {self._borrowed} is borrowed"
                )
            self._borrowed -= weight
            if not self._queue:
                return  # nobody waits: nothing was buried
            self._serve()
        finally:
            lock.release()
        if graveyard:  # waiters skipped because their loop is closed: let them go now
            lay_to_rest()

    async def __aenter__(self) -> None:
        # acquire(1) without a second coroutine frame when there is room (the usual case).
        lock = self._lock
        lock.acquire()
        try:
            if not self._queue and self._borrowed < self._total:
                self._borrowed += 1
                self._acquired += 1
                if self._borrowed > self._peak:
                    self._peak = self._borrowed
                return
        finally:
            lock.release()
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
