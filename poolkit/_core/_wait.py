"""How a task or thread waits in a poolkit primitive and is woken: one mechanism for all of them.

The channel, the capacity limiter, the token bucket and the composite limits keep only their own
bookkeeping (queues, counts, what each waiter was promised); sleeping, waking, giving up and
taking their locks go through this module.

Sleeping and waking
-------------------
A :class:`Sleeper` is whom to wake.  A task sleeps on a future of its own event loop; a thread on
a ``threading.Lock`` that it holds and tries to acquire again.  Whoever wakes it (holding the
primitive's lock, possibly in another thread or for another loop) calls :meth:`Sleeper.wake`,
which resolves the future in the loop's own thread (``call_soon_threadsafe`` from elsewhere) or
releases the lock.  Nobody polls.

Stranded waiters
----------------
A task whose event loop was closed without cancelling it can never run again.  ``wake()`` says
so (False) and leaves its future alone: resolving it would drop the future's callback, the last
reference to the task, and destroy the task on the spot, under the waker's lock -- its
coroutine's clean-up wants that very lock, and the loop's "Task was destroyed" report is foreign
code.  The primitive takes such a waiter out of its queue and parks it with :func:`bury`; whoever
releases the lock then calls ``if graveyard: lay_to_rest()``, which destroys those tasks holding
no lock.

Giving up
---------
A waiter that stops waiting (cancelled, timed out, interrupted) withdraws through :func:`give_up`:
it undoes, under the primitive's lock, whatever it was granted or promised, so an operation that
raised has not happened.  A coroutine being *closed* (``GeneratorExit``) never waits for the lock:
the garbage collector may close it in the middle of code that holds that lock in this very thread.
:func:`locked_soon` withdraws at once if the lock is free and otherwise hands the withdrawal to the
deferred-work thread (below): nothing waits, and nothing is left undone.

Locks and the garbage collector
-------------------------------
A collection can start at any allocation, also inside a primitive's critical section, and it runs
foreign code there: finalizers, and the clean-up of the coroutines it closes (the exit of an
``async with limiter:`` or ``async with send_handle:``, a ``finally:``).  If that code calls the
same primitive, waiting for its lock would wait for this very thread, for ever.  So every public
entry point takes its lock in one of two ways.  While no collection runs anywhere (the usual case)
it calls ``lock.acquire()``, after testing ``"a" not in GC_PHASE``: :data:`GC_PHASE` is a set
that ``gc.callbacks`` refill at each phase with the letters of the phase's name, ``"start"`` or
``"stop"`` (and the names of the collector's info keys), so it holds ``"a"`` exactly while a
collection runs.  Measured on CPython 3.11-3.13, the test costs 5-10 ns; trying
``lock.acquire(False)`` first would cost 40.  During a collection :func:`enter` waits for the
lock unless the collection runs in this thread (:func:`collecting_here`); then it takes the lock
only if it is free.  When it is not, the entry point does not wait: work that returns nothing
(``release()``, ``close()``, assigning a rate) is :func:`defer`-red, a non-blocking form answers
that it would block (``WouldBlock``, ``False``), and the others raise :class:`~poolkit.Busy` (a
``RuntimeError``).  Internal paths that only a running task or thread can reach (after a
wake-up) take the lock as usual.

The callbacks are C functions (bound methods of a set and a dict, and ``setattr`` on a
thread-local), not Python functions: the main thread runs a pending signal handler at the entry
of the next Python function, and a ``KeyboardInterrupt`` raised inside a ``gc`` callback is
printed as "ignored" and lost, so a Ctrl-C that arrived while C code allocated would be
swallowed (measured: one Ctrl-C in ten, in a loop of ``ProcessPool.submit``).

Not covered: a Python signal handler (``signal.signal``) runs between two bytecodes of the main
thread, also inside a critical section; one that calls a primitive can deadlock like a finalizer,
and nothing tells the two apart.  Use ``loop.add_signal_handler`` (it runs as a callback of the
loop), or have the handler only set a flag.

Deferred work
-------------
Work that must not wait for a lock is queued, and one daemon thread at a time
(``poolkit-deferred``), which holds no lock when it waits for one, runs it in order and then lays
the buried waiters to rest; it ends as soon as the queue is empty, so it never outlives the work.
An error raised by deferred work is reported through ``threading.excepthook``.  At interpreter
shutdown, when no thread can start, the work is dropped: nothing will wait on the primitive again.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ._exceptions import Busy

__all__ = [
    "GC_PHASE",
    "Busy",
    "Sleeper",
    "bury",
    "busy_error",
    "collecting_here",
    "defer",
    "discard",
    "enter",
    "give_up",
    "graveyard",
    "lay_to_rest",
    "locked_soon",
    "refuse_in_loop",
    "resolve",
    "take",
    "take_or_defer",
    "thread_deadline",
    "thread_wait",
]

get_ident = threading.get_ident
monotonic = time.monotonic
Lock = threading.Lock

# A thread cannot wait longer than this in one lock.acquire(); longer timeouts mean "forever".
TIMEOUT_MAX = threading.TIMEOUT_MAX


class Sleeper:
    """Whom to wake: a task (a future on its loop) or a thread (a held lock it waits on).

    ``Sleeper(loop)`` is for the task running on ``loop``, in this thread; ``Sleeper(None)`` then
    :meth:`arm_thread` is for the calling thread.  A primitive's waiter subclasses it and adds its
    own bookkeeping.
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

    def stranded(self) -> bool:
        """True if it is a task whose event loop is closed: it will never run again."""
        loop = self.loop
        return loop is not None and loop.is_closed()

    def wake(self) -> bool:
        """Wake the owner; call it holding the primitive's lock.  False if the owner can never
        run again (its event loop is closed): then the future is left alone (see "Stranded
        waiters"), and the caller buries the waiter."""
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
                if not fut.done():  # done: cancelled (the owner is withdrawing), or woken already
                    fut.set_result(None)
            else:  # raises before it touches the future if the loop is closed
                loop.call_soon_threadsafe(resolve, fut)
        except (RuntimeError, asyncio.InvalidStateError):  # "Event loop is closed"
            return False
        return True


def resolve(fut: asyncio.Future[None]) -> None:
    """Resolve ``fut`` unless it is done already (in the thread of its loop)."""
    if not fut.done():
        fut.set_result(None)


def discard(q: deque[Any], w: object) -> None:
    """Remove ``w`` from ``q`` if it is still there."""
    try:
        q.remove(w)
    except ValueError:
        pass  # already popped by whoever woke it


# ----------------------------------------------------------------------- stranded waiters

# Waiters taken out of a queue under a primitive's lock that may hold the last reference to a task
# that can never run again (one whose loop is closed, or a stale select registration).  Appended
# to only with a primitive's lock held; emptied by lay_to_rest(), holding none.
graveyard: deque[Sleeper] = deque()
bury = graveyard.append


def lay_to_rest() -> None:
    """Let go of the waiters parked by :func:`bury`.  Call it holding no primitive's lock.

    A task stranded on a closed event loop is destroyed here and now: its future is resolved,
    which fails to schedule it and drops its callback, the last reference to it.  (Merely
    dropping the waiter would leave the task and its future in a reference cycle, for the
    garbage collector to close at some later moment, perhaps under a lock.)  The registrations
    of one ``select`` share a future, and two threads may lay two of them to rest at once: the
    second finds the future resolved, which is as good.
    """
    pop = graveyard.popleft
    try:
        while graveyard:
            w = pop()
            fut = w.fut
            if fut is not None and not fut.done() and w.stranded():
                try:
                    fut.set_result(None)
                except (RuntimeError, asyncio.InvalidStateError):  # as expected; or raced
                    pass
            del w, fut  # the references die here, outside every lock
    except IndexError:  # another thread took the last one
        pass


# ----------------------------------------------------------------------- the garbage collector

# What the collector's callbacks record (see "Locks and the garbage collector"): GC_PHASE holds
# "a" exactly while a collection runs; the thread running it has _this_thread.start set to the
# info dict of its "start", which _started["start"] holds too.
GC_PHASE: set[str] = set()
_this_thread = threading.local()
_started: dict[str, object] = {}
gc.callbacks[:0] = [
    GC_PHASE.intersection_update,  # (the letters of the phase, and no key name, are in common)
    GC_PHASE.update,
    functools.partial(setattr, _this_thread),
    _started.__setitem__,
]


def collecting_here() -> bool:
    """Whether a garbage collection runs in this thread now (in a finalizer, or the clean-up of
    a coroutine it closes)."""
    return "a" in GC_PHASE and getattr(_this_thread, "start", None) is _started.get("start")


def enter(lock: Lock) -> bool:
    """Take ``lock`` for a public entry point while a collection runs (``"a" in GC_PHASE``).

    Waits for it if the collection runs in another thread.  In this thread it returns False at
    once if the lock is taken: the collection may have interrupted this thread holding it.
    """
    if not collecting_here():
        lock.acquire()
        return True
    return lock.acquire(False)


def take(lock: Lock, what: str) -> None:
    """``lock.acquire()`` for an entry point that can neither defer its work nor answer "would
    block": raises :class:`Busy` rather than wait during a collection in this thread."""
    if "a" not in GC_PHASE:
        lock.acquire()
    elif not enter(lock):
        raise busy_error(what)


def busy_error(what: str) -> Busy:
    return Busy(
        f"{what} was called during a garbage collection (from a finalizer, or the clean-up of a "
        f"coroutine being closed) while the lock it needs was taken, perhaps by this very thread, "
        f"which the collection interrupted: it cannot wait for it"
    )


def take_or_defer(lock: Lock, fn: Callable[..., object], *args: Any) -> bool:
    """``lock.acquire()`` and True; or, during a collection in this thread with the lock taken,
    ``fn(*args)`` is deferred (it will take the lock itself) and False.  For entry points whose
    work returns nothing, such as ``release()``."""
    if "a" not in GC_PHASE:
        lock.acquire()
        return True
    if enter(lock):
        return True
    defer(fn, *args)
    return False


# ----------------------------------------------------------------------- giving up


def give_up(exc: BaseException, lock: Lock, withdraw: Callable[..., object], *args: Any) -> None:
    """The owner of a waiter stops waiting because of ``exc``: ``withdraw(*args)``, holding
    ``lock``, undoes what it was granted or promised; then the buried waiters are laid to rest.

    A coroutine being closed (``GeneratorExit``) never waits for the lock (:func:`locked_soon`).
    """
    if isinstance(exc, GeneratorExit) or collecting_here():
        locked_soon(lock, withdraw, *args)
        return
    with lock:
        withdraw(*args)
    if graveyard:
        lay_to_rest()


def locked_soon(lock: Lock, fn: Callable[..., object], *args: Any) -> None:
    """Call ``fn(*args)`` holding ``lock``, without ever waiting for it: at once if the lock is
    free, else from the deferred-work thread as soon as it is.

    For the clean-up of a coroutine that is being closed, which must never block (see "Giving
    up").  The waiters ``fn`` buries are laid to rest after the lock is released: here, or, in a
    collection (which may have interrupted a critical section of this thread), by the
    deferred-work thread.
    """
    if lock.acquire(False):
        try:
            fn(*args)
        finally:
            lock.release()
        if graveyard:
            if collecting_here():
                defer(lay_to_rest)
            else:
                lay_to_rest()
        return
    defer(_locked_call, lock, fn, args)


def _locked_call(lock: Lock, fn: Callable[..., object], args: tuple[Any, ...]) -> None:
    with lock:
        fn(*args)


# ----------------------------------------------------------------------- deferred work

_work: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
# Held while a deferred-work thread runs: taken (without waiting) by whoever starts one, released
# by the thread when the queue is empty, after which it looks once more (see _drain).
_working = threading.Lock()


def defer(fn: Callable[..., object], *args: Any) -> None:
    """Run ``fn(*args)`` soon in the deferred-work thread, which holds no lock; never blocks.

    Raises ``RuntimeError`` if no thread can be started (the work stays queued for the next
    one), except at interpreter shutdown, when the work is dropped.
    """
    if sys.is_finalizing():
        # Nothing will wait on any primitive again, so the work can be dropped; and no thread
        # can start: Python 3.11's Thread.start() would wait for it for ever, hanging the exit
        # (3.12+ raise RuntimeError, handled below).
        return
    _work.append((fn, args))
    if not _working.acquire(False):
        return  # the running thread will find it: it looks again after letting go of _working
    try:
        threading.Thread(target=_drain, name="poolkit-deferred", daemon=True).start()
    except BaseException as exc:
        _working.release()
        if isinstance(exc, RuntimeError) and (
            sys.is_finalizing() or "interpreter shutdown" in str(exc)
        ):
            _work.clear()  # nothing will wait on any primitive again
            return
        raise


def _drain() -> None:
    pop = _work.popleft
    while True:
        while _work:
            try:
                fn, args = pop()
            except IndexError:
                break
            try:
                fn(*args)
            except BaseException as exc:  # reported, and the queue goes on
                threading.excepthook(
                    threading.ExceptHookArgs(
                        (type(exc), exc, exc.__traceback__, threading.current_thread())
                    )
                )
            del fn, args
            if graveyard:
                lay_to_rest()
        _working.release()
        # Work queued after the last look, whose caller found _working taken, is ours to run.
        if not _work or not _working.acquire(False):
            return


# ----------------------------------------------------------------------- threads


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
