"""How a blocked task or thread is put to sleep and woken: shared by every poolkit primitive.

A task sleeps on a future of its own event loop; a thread sleeps on a ``threading.Lock`` that it
holds and tries to acquire again.  Whoever wakes it (possibly from another thread or another
event loop) resolves the future with ``call_soon_threadsafe``, or releases the lock.  Nobody polls.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

__all__ = [
    "LockedSleeper",
    "Sleeper",
    "bury",
    "discard",
    "graveyard",
    "lay_to_rest",
    "locked_soon",
    "refuse_in_loop",
    "resolve",
    "thread_deadline",
    "thread_wait",
]

get_ident = threading.get_ident
monotonic = time.monotonic

# A thread cannot wait longer than this in one lock.acquire(); longer timeouts mean "forever".
TIMEOUT_MAX = threading.TIMEOUT_MAX


class Sleeper:
    """Whom to wake: a task (a future on its loop) or a thread (a held lock it waits on).

    ``Sleeper(loop)`` is for the task running on ``loop``; ``Sleeper(None)`` then
    :meth:`arm_thread` is for the calling thread.
    """

    __slots__ = ("fut", "loop", "thread", "tlock")

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.loop = loop
        if loop is not None:
            self.fut: asyncio.Future[None] | None = loop.create_future()
            self.thread = get_ident()
        else:
            self.fut = None
            self.thread = 0
        self.tlock: threading.Lock | None = None

    def arm_thread(self) -> None:
        self.tlock = threading.Lock()
        self.tlock.acquire()

    def wake(self) -> bool:
        """Wake the owner.  False if it can never run again (its event loop is closed)."""
        tlock = self.tlock
        if tlock is not None:
            if tlock.locked():
                tlock.release()
            return True
        fut = self.fut
        loop = self.loop
        assert fut is not None
        assert loop is not None
        try:
            if self.thread == get_ident():
                if not fut.done():  # done means cancelled: the owner is already withdrawing
                    fut.set_result(None)
            else:
                loop.call_soon_threadsafe(resolve, fut)
        except RuntimeError:  # "Event loop is closed": the task that waited is gone for good
            return False
        return True


class LockedSleeper(Sleeper):
    """A :class:`Sleeper` that is woken while a primitive's lock is held, and never lets its task
    die there.

    When the owner's event loop is closed, ``Sleeper.wake`` resolves the future anyway; the
    loop refuses to schedule the task, the future drops its callback, and with it the last
    reference to the task, which is destroyed on the spot (its coroutine's clean-up and the
    loop's "Task was destroyed" report run under the waker's lock).  This ``wake`` leaves the
    future alone in that case and returns False; the caller parks the waiter (:func:`bury`),
    and :func:`lay_to_rest` destroys the task once the lock is released.
    """

    __slots__ = ()

    def wake(self) -> bool:
        """Wake the owner.  False if it can never run again (its event loop is closed)."""
        tlock = self.tlock
        if tlock is not None:
            if tlock.locked():
                tlock.release()
            return True
        fut = self.fut
        loop = self.loop
        assert fut is not None
        assert loop is not None
        try:
            if self.thread == get_ident():
                if loop.is_closed():
                    return False
                if not fut.done():  # done means cancelled: the owner is already withdrawing
                    fut.set_result(None)
            else:  # raises before it touches the future if the loop is closed
                loop.call_soon_threadsafe(resolve, fut)
        except RuntimeError:  # "Event loop is closed"
            return False
        return True


def resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def discard(q: deque[Any], w: object) -> None:
    """Remove ``w`` from ``q`` if it is still there."""
    try:
        q.remove(w)
    except ValueError:
        pass  # already popped by whoever woke it


def locked_soon(lock: threading.Lock, fn: Callable[..., object], *args: Any) -> None:
    """Call ``fn(*args)`` holding ``lock``: at once if the lock is free, else as soon as it is.

    For the clean-up of a coroutine that is being closed (``GeneratorExit``), which must never
    block: the garbage collector may close it in the middle of code that holds this very lock in
    this very thread (an allocation there can start a collection), so waiting for the lock could
    deadlock.  When the lock is taken, a short-lived thread waits for it instead and runs ``fn``;
    the holder is never kept waiting and nothing is left undone.  At interpreter shutdown, when
    no thread can start, the work is dropped: nothing will wait on the primitive again.
    """
    if lock.acquire(False):
        try:
            fn(*args)
        finally:
            lock.release()
        return

    def later() -> None:
        with lock:
            fn(*args)

    try:
        threading.Thread(target=later, name="poolkit-withdraw", daemon=True).start()
    except RuntimeError:  # "can't create new thread at interpreter shutdown"
        pass


# Waiters taken out of a queue under a primitive's lock that may hold the last reference to a task
# that can never run again (a LockedSleeper whose loop is closed, or a stale select registration).
# Dropping that reference destroys the task, which runs foreign code: the coroutine's clean-up
# (which wants the very same lock) and the loop's exception handler.  So they are parked here
# under the lock, and whoever releases it lets them go: ``if graveyard: lay_to_rest()``.
graveyard: deque[Sleeper] = deque()
bury = graveyard.append


def lay_to_rest() -> None:
    """Let go of the waiters parked by :func:`bury`.  Call it holding no primitive's lock.

    A task stranded on a closed event loop is destroyed here and now: its future is resolved,
    which fails to schedule it and drops its callback, the last reference to it.  (Merely
    dropping the waiter would leave the task and its future in a reference cycle, for the
    garbage collector to close at some later moment, perhaps under a lock.)
    """
    pop = graveyard.popleft
    try:
        while graveyard:
            w = pop()
            fut = w.fut
            if fut is not None and not fut.done():
                loop = w.loop
                if loop is not None and loop.is_closed():
                    try:
                        fut.set_result(None)
                    except RuntimeError:  # "Event loop is closed": as expected
                        pass
            del w, fut  # the references die here, outside every lock
    except IndexError:  # another thread took the last one
        pass


def refuse_in_loop(what: str) -> None:
    """Raise ``RuntimeError`` if this thread runs an event loop: blocking would freeze it."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"{what}() would block the event loop running in this thread; "
        f"await the asynchronous form instead"
    )


def thread_deadline(timeout: float | None) -> float | None:
    """The monotonic deadline of a thread wait (``None``: forever, also past ``TIMEOUT_MAX``)."""
    if timeout is None or timeout > TIMEOUT_MAX:
        return None
    return monotonic() + timeout


def thread_wait(tlock: threading.Lock, deadline: float | None) -> bool:
    """Block until ``tlock`` is released to us or ``deadline`` passes; True if woken."""
    if deadline is None:
        return tlock.acquire()
    return tlock.acquire(True, max(0.0, deadline - monotonic()))
