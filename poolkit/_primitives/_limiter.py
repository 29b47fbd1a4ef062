"""CapacityLimiter: how many at once (Go's ``x/sync/semaphore``), for tasks and threads.

Waiters form one FIFO queue.  The waiter at the head is served first even if it is heavy: while
it does not fit, nobody behind it is served, so a heavy request is never starved by a stream of
light ones.  When capacity frees up, the head is granted its weight at once (``borrowed`` counts
it) and woken; if a cancellation or timeout reaches it before it runs, the grant is undone and
passed on.  So an ``acquire`` that raises holds nothing, including at the instant of the grant
(the bug of CPython gh-90155 and gh-112202).

A waiter whose event loop is closed can never run: it is dropped when the queue is served with it
at the head, whether it fits or not (by the next release at the latest), and ``try_acquire``,
``acquire`` and the idle check of ``PerKey`` look at the head first, so a waiter stranded there
(a heavy one, say) holds up nobody; nor is it counted in ``statistics().waiting``.

The contended path is measured against ``asyncio.Semaphore`` (``python -m benchmarks --only
contended``).  A release that finds the limiter full and, at the head, a task of the loop running
here that wants exactly the weight released hands that weight straight over: ``borrowed`` stays
equal to ``total``, so nobody behind the head can fit and the queue needs no other look.  A task
that has to wait takes the lock once, queues a waiter made without running Python code
(``_Waiter``), and, woken, knows it was granted without taking the lock again.  What remains
above the semaphore is mostly the lock (two turns per contended pair, about 3 % of it on CPython
3.11, which parses the arguments of ``Lock.acquire()`` and reads the clock), the price of being
shared with threads and of noticing a garbage collection that interrupted this thread inside it.

Waiting, waking and the lock go through :mod:`poolkit._core._wait`: nothing that can block or run
foreign code happens under the lock (a stranded waiter is dropped only after it is released,
because dropping it destroys its task, whose clean-up wants this lock); a waiter being closed
(``GeneratorExit``, perhaps by the garbage collector in a thread that holds the lock) withdraws
without waiting for the lock, so a grant made to a task that will never run is still given
back; and ``release()`` called by a finalizer during a collection that interrupted this thread
holding the lock is deferred rather than deadlocking.
"""

from __future__ import annotations

import asyncio
import types
from asyncio import InvalidStateError, get_running_loop
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Awaitable, Generator
from dataclasses import dataclass
from threading import Lock, get_ident
from types import TracebackType
from typing import TYPE_CHECKING, cast

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import NotAcquired
from poolkit._core._registry import register
from poolkit._core._wait import (
    GC_PHASE,
    Sleeper,
    bury,
    busy_error,
    defer,
    discard,
    enter,
    give_up,
    graveyard,
    lay_to_rest,
    refuse_in_loop,
    take,
    take_or_defer,
    thread_deadline,
    thread_wait,
)

__all__ = ["CapacityLimiter", "CapacityLimiterStatistics"]

_WAITING = 0
_GRANTED = 1  # holds its weight; it returns when it runs
_TIMED_OUT = 2
_TOO_HEAVY = 3  # total shrank below its weight
_GONE = 4  # cancelled, completed, or stranded on a closed event loop

# `"a" not in GC_PHASE`: no garbage collection runs now (see poolkit._core._wait).


class _Waiter(Sleeper):
    """One queued ``acquire``: whom to wake, its weight and what became of it.

    Made bare, ``_Waiter()``, then filled in: by :func:`_waiter`, or inline in ``acquire`` and
    ``__aenter__`` for a task (the waiter of every contended acquire).  Its ``__init__`` is
    ``object.__init__``, so that making one runs no Python code: on CPython 3.11 the two
    ``__init__`` frames of ``Sleeper`` cost more than the future itself.  A test keeps the
    inline form in step with :meth:`Sleeper.__init__`.
    """

    __slots__ = ("state", "weight")

    if TYPE_CHECKING:

        def __init__(self) -> None: ...

    else:
        __init__ = object.__init__

    state: int
    weight: int


@types.coroutine
def _done() -> Generator[None, None, None]:
    return
    yield  # (which makes it a generator)


# An awaitable that is done: ``await _DONE`` returns None at once, however often, in any thread.
# It is an exhausted generator-based coroutine (types.coroutine), which CPython's await resumes
# through the same code as any coroutine and which answers "finished, None" every time.  What
# __aexit__ returns: measured on CPython 3.11, 1-2 % of a contended ``async with`` pair cheaper
# than making an ``async def`` coroutine per call, and cheaper than an object with ``__await__``.
_DONE: Awaitable[None] = _done()
for _ in cast("Generator[None, None, None]", _DONE):
    pass


def _waiter(weight: int, loop: asyncio.AbstractEventLoop | None) -> _Waiter:
    """A waiter for the task running on ``loop``, or (``None``) for the calling thread."""
    w = _Waiter()
    Sleeper.__init__(w, loop)
    w.weight = weight
    w.state = _WAITING
    return w


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
    waiters whose weight no longer fits at all get ``ValueError``.  A limiter whose ``total`` was
    assigned is never forgotten by a ``PerKey`` (its factory would not make it so again).

    Args:
        total: The capacity, an ``int`` of at least 1.
        name: A label for ``repr``, statistics and metrics.

    Raises:
        TypeError: If ``total`` is not an ``int``, or ``name`` is not a ``str``.
        ValueError: If ``total`` is less than 1.
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
        "_tuned",
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
        self._tuned = False  # total assigned after construction
        register(self, "limiter")

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        """The name given at construction, shown in ``repr`` and statistics."""
        return self._name

    @property
    def total(self) -> int:
        """The capacity.  Assign to change it at run time (see the class docstring).

        Assigned during a garbage collection that interrupted this thread holding the lock, it
        changes as soon as the lock is free.

        Raises:
            TypeError: If the value assigned is not an ``int``.
            ValueError: If the value assigned is less than 1.
        """
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        check_weight(value, "total")
        self._set_total(value)

    def _set_total(self, value: int) -> None:
        lock = self._lock
        if not take_or_defer(lock, self._set_total, value):
            return  # in a garbage collection that holds the lock: done as soon as it is free
        try:
            self._total = value
            self._tuned = True
            for w in [w for w in self._queue if w.weight > value]:
                w.state = _TOO_HEAVY
                self._queue.remove(w)
                if not w.wake():
                    bury(w)
            self._serve()
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()

    @property
    def borrowed(self) -> int:
        """Weight held right now."""
        return self._borrowed

    def _is_idle(self) -> bool:
        """Nothing borrowed, nobody waiting (stranded waiters do not count) and ``total`` as
        made: forgetting it changes nothing (for PerKey, which holds its own lock: it lays the
        waiters buried here to rest once it lets go of it)."""
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            return False  # cannot tell: keep it
        try:
            if self._queue and self._borrowed == 0:
                self._drop_stranded()
            return self._borrowed == 0 and not self._queue and not self._tuned
        finally:
            lock.release()

    def statistics(self) -> CapacityLimiterStatistics:
        """Return a consistent snapshot of the limiter's counters.

        Returns:
            A frozen :class:`CapacityLimiterStatistics`.

        Raises:
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        take(self._lock, "CapacityLimiter.statistics()")
        try:
            return CapacityLimiterStatistics(
                name=self._name,
                total=self._total,
                borrowed=self._borrowed,
                waiting=sum(1 for w in self._queue if not w.stranded()),
                peak_borrowed=self._peak,
                acquired_total=self._acquired,
            )
        finally:
            self._lock.release()

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
                # A head that does not fit holds up the rest, as it should, unless it will never
                # run.  (w.stranded(), inlined: this is the path of every contended release.)
                loop = w.loop
                if loop is None or not loop.is_closed():
                    return
                q.popleft()
                w.state = _GONE
                bury(w)
                continue
            q.popleft()
            w.state = _GRANTED
            self._borrowed += w.weight
            if w.wake():
                self._acquired += 1
                if self._borrowed > self._peak:
                    self._peak = self._borrowed
            else:  # its event loop is closed: it will never run
                w.state = _GONE
                self._borrowed -= w.weight
                bury(w)  # maybe the last reference to its task: drop it after the lock

    def _drop_stranded(self) -> None:
        """Drop the waiters stranded at the head of the queue, then serve whoever is first."""
        q = self._queue
        while q and q[0].stranded():
            w = q.popleft()
            w.state = _GONE
            bury(w)
        self._serve()

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

    def _give_back(self, weight: int) -> None:
        """``release(weight)`` by an owner that knows it holds ``weight`` (lock held)."""
        self._borrowed -= weight
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

    def _not_acquired(self, weight: int) -> NotAcquired:
        return NotAcquired(
            f"release({weight}) on {self._label()}, but only {self._borrowed} is borrowed"
        )

    # ----------------------------------------------------------------- acquire / release

    def try_acquire(self, weight: int = 1) -> bool:
        """Take ``weight`` if it fits now and nobody is queued; never blocks.  Thread-safe.

        Args:
            weight: The units to take, at least 1 and at most ``total``.

        Returns:
            True if it was taken; False if not (also when the lock is taken during a garbage
            collection in this thread).

        Raises:
            TypeError: If ``weight`` is not an ``int``.
            ValueError: If ``weight`` is less than 1 or more than ``total``.
        """
        self._check(weight)
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            return False  # a garbage collection interrupted this thread holding the lock
        try:
            if self._queue and self._borrowed + weight <= self._total:
                self._drop_stranded()  # they are not "queued": they will never run
            if not self._queue and self._borrowed + weight <= self._total:
                self._take(weight)
                return True
            return False
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()

    async def acquire(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Wait (in arrival order) until ``weight`` fits, then take it.

        If it raises, is cancelled or times out, nothing is held.

        Args:
            weight: The units to take, at least 1 and at most ``total``.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            TypeError: If ``weight`` is not an ``int``, or ``timeout`` is not a number.
            ValueError: If ``weight`` is less than 1 or more than ``total`` (also when ``total``
                is lowered below it while waiting), or ``timeout`` is negative or NaN.
            TimeoutError: If ``weight`` did not fit within ``timeout`` seconds.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        if weight.__class__ is not int or weight > self._total or weight < 1:
            self._check(weight)
        if timeout is not None:
            timeout = check_timeout(timeout)
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("CapacityLimiter.acquire()")
        try:
            if not self._queue and self._borrowed + weight <= self._total:
                self._borrowed += weight  # _take() inlined
                self._acquired += 1
                if self._borrowed > self._peak:
                    self._peak = self._borrowed
                return
            loop = get_running_loop()
            if (self._queue and self._borrowed + weight <= self._total) or weight > self._total:
                w = self._queue_up(weight, timeout, loop)  # (the unusual cases)
            else:
                if timeout == 0:
                    raise TimeoutError(f"{self._label()}: no capacity right now")
                w = _Waiter()  # _waiter(weight, loop), inlined
                w.loop = loop
                w.fut = loop.create_future()
                w.thread = get_ident()
                w.tlock = None
                w.weight = weight
                w.state = _WAITING
                self._queue.append(w)
        finally:
            lock.release()
        if w is None:
            if graveyard:
                lay_to_rest()
            return
        fut = w.fut
        assert fut is not None
        timer = None if timeout is None else loop.call_later(timeout, self._expire, w)
        try:
            await fut
        except BaseException as exc:
            give_up(exc, lock, self._withdraw, w)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if w.state == _GRANTED:  # _outcome(), inlined for the usual outcome
            w.state = _GONE
            return
        self._outcome(w, timeout)

    def _queue_up(
        self, weight: int, timeout: float | None, loop: asyncio.AbstractEventLoop | None
    ) -> _Waiter | None:
        """With the lock held, past the fast path: take ``weight`` if only stranded waiters were
        in the way (None), or queue a waiter for it."""
        if self._queue and self._borrowed + weight <= self._total:
            self._drop_stranded()
            if not self._queue:
                self._take(weight)
                return None
        if weight > self._total:  # again, under the lock: another thread may have lowered it
            self._check(weight)
        if timeout == 0:
            raise TimeoutError(f"{self._label()}: no capacity right now")
        if loop is None:
            refuse_in_loop("acquire_blocking")
        w = _waiter(weight, loop)
        if loop is None:
            w.arm_thread()
        self._queue.append(w)
        return w

    def acquire_blocking(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until ``weight`` fits.

        If it raises, nothing is held.

        Args:
            weight: The units to take, at least 1 and at most ``total``.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            RuntimeError: If it would have to wait in a thread whose event loop is running.
            TypeError, ValueError, TimeoutError, Busy: As :meth:`acquire`.
        """
        self._check(weight)
        timeout = check_timeout(timeout)
        lock = self._lock
        take(lock, "CapacityLimiter.acquire_blocking()")
        try:
            if not self._queue and self._borrowed + weight <= self._total:
                self._take(weight)
                return
            w = self._queue_up(weight, timeout, None)
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()
        if w is None:
            return
        tlock = w.tlock
        assert tlock is not None
        try:
            woke = thread_wait(tlock, thread_deadline(timeout))
        except BaseException as exc:  # KeyboardInterrupt in the main thread
            give_up(exc, lock, self._withdraw, w)
            raise
        try:
            with lock:
                if not woke and w.state == _WAITING:
                    self._withdraw(w)
                    w.state = _TIMED_OUT
                self._outcome(w, timeout)
        finally:
            if graveyard:
                lay_to_rest()

    def release(self, weight: int = 1) -> None:
        """Give back ``weight``; wakes waiters that now fit.  Thread-safe; never blocks.

        Called during a garbage collection that interrupted this thread holding the lock (from a
        finalizer, or the exit of an ``async with`` whose coroutine is being closed), it is done
        as soon as the lock is free instead (a ``NotAcquired`` is then reported through
        ``threading.excepthook``, not raised).

        Args:
            weight: The units to give back, at least 1.

        Raises:
            NotAcquired: If ``weight`` is more than is borrowed in all (nothing is given back).
            TypeError: If ``weight`` is not an ``int``.
            ValueError: If ``weight`` is less than 1.
        """
        if weight.__class__ is not int or weight < 1:
            check_weight(weight)
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()  # explicit acquire/release: ~80 ns cheaper than "with" on CPython 3.11
        elif not enter(lock):
            defer(self.release, weight)
            return
        try:
            borrowed = self._borrowed
            if weight > borrowed:
                raise self._not_acquired(weight)
            q = self._queue
            if not q:
                self._borrowed = borrowed - weight
                return  # nobody waits: nothing was buried
            w = q.popleft()  # (cheaper than q[0]; put back below if it is not handed over)
            loop = w.loop
            if (
                loop is _get_running_loop()
                and w.weight == weight
                and borrowed == self._total
                and loop is not None
            ):
                # The contended case: handed over as in __aexit__ (see there).
                w.state = _GRANTED
                try:
                    w.fut.set_result(None)  # type: ignore[union-attr]  # (a task's waiter)
                except InvalidStateError:  # cancelled: its owner will give the grant back
                    pass
                self._acquired += 1
                return
            q.appendleft(w)
            self._borrowed = borrowed - weight
            self._serve()
        finally:
            lock.release()
        if graveyard:  # waiters skipped because their loop is closed: let them go now
            lay_to_rest()

    async def __aenter__(self) -> None:
        # acquire(1) inlined: no second coroutine frame, and one turn of the lock (calling
        # acquire() took it twice), whether there is room (the usual case) or not.
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("CapacityLimiter.__aenter__()")
        try:
            if not self._queue and self._borrowed < self._total:
                self._borrowed += 1
                self._acquired += 1
                if self._borrowed > self._peak:
                    self._peak = self._borrowed
                return
            loop = get_running_loop()
            if self._borrowed < self._total:  # so the queue is not empty
                w = self._queue_up(1, None, loop)  # (stranded waiters ahead, perhaps)
                fut = None if w is None else w.fut
            else:
                w = _Waiter()  # _waiter(1, loop), inlined
                w.loop = loop
                w.fut = fut = loop.create_future()
                w.thread = get_ident()
                w.tlock = None
                w.weight = 1
                w.state = _WAITING
                self._queue.append(w)
        finally:
            lock.release()
        if fut is None:  # taken: only waiters stranded on a closed loop were ahead
            if graveyard:
                lay_to_rest()
            return
        try:
            await fut
        except BaseException as exc:
            give_up(exc, lock, self._withdraw, w)
            raise
        # Woken: granted, the only outcome of acquire(1) without a timeout (it is never too
        # heavy, and only a timeout or a lowered total wakes a waiter without a grant).

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        # release(1) without a second call (~50 ns), as __aenter__ inlines acquire(1).  Not a
        # coroutine: it releases when called (which ``async with`` does just before awaiting
        # what it returns) and returns _DONE, which saves making a coroutine per exit.
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            defer(self.release, 1)
            return _DONE
        try:
            borrowed = self._borrowed
            if not borrowed:
                raise self._not_acquired(1)
            q = self._queue
            if not q:
                self._borrowed = borrowed - 1
                return _DONE  # nobody waits: nothing was buried
            w = q.popleft()  # (cheaper than q[0]; put back below if it is not handed over)
            loop = w.loop
            if (
                loop is _get_running_loop()
                and w.weight == 1
                and borrowed == self._total
                and loop is not None
            ):
                # The contended case: the unit goes straight to the head, a task of the loop
                # running here, which is therefore open and in this thread (what _serve() and
                # Sleeper.wake() would find out at greater length).  ``borrowed`` does not
                # change; as it equals ``total``, nobody behind the head fits.  (A waiter behind
                # it that is stranded on a closed loop, now the head, is dropped by the next
                # release: a stranded waiter counts nowhere meanwhile.)
                w.state = _GRANTED
                try:
                    w.fut.set_result(None)  # type: ignore[union-attr]  # (a task's waiter)
                except InvalidStateError:  # cancelled: its owner will give the grant back
                    pass
                self._acquired += 1
                return _DONE
            q.appendleft(w)
            self._borrowed = borrowed - 1
            self._serve()
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()
        return _DONE

    def __enter__(self) -> None:
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
