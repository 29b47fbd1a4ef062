"""Every exception poolkit raises on purpose.

The tree::

    PoolkitError                 base of everything below; never raised itself
    ├── WouldBlock               a *_nowait() call could not proceed without waiting
    │   └── QueueFull            submit_nowait(): the pool's queue is full (counted as rejected)
    ├── PoolClosed               you submitted to a pool that is shutting down or shut down
    ├── JobHandedBack            awaiting a job that never started: the pool was shut down
    │                            (cancel=True, or a drain that ran out of time) and handed it
    │                            back to the caller of shutdown()
    ├── WorkerCrashed            a ProcessPool's worker process died while running the job
    │                            (a segfault, os._exit, the OOM killer): .exitcode / .signal
    ├── NotPicklable             (also a TypeError) a job for a ProcessPool cannot be sent to a
    │                            worker process: its function or an argument cannot be pickled
    ├── ChannelClosed            you (or your side of the program) closed the channel, or your
    │                            handle of it, and then tried to use it: send on it, receive
    │                            through the closed handle, make a new handle
    ├── ReceiversGone            the other side went away: every receive handle of the channel
    │                            was closed, so nothing sent would ever be received; the item
    │                            was not delivered
    ├── EndOfChannel             the channel was closed and every item in it has been received:
    │                            the data ran out, nobody did anything wrong
    ├── BudgetExhausted          a token bucket with rate 0 (a fixed budget) cannot cover the
    │                            cost any more: the tokens would never come; nobody's fault
    ├── NotAcquired              (also a RuntimeError) you released a limiter more than you
    │                            had acquired from it
    ├── LeakError                (also an AssertionError) tasks or threads outlived a
    │                            ``no_leaks()`` block; ``.snapshot`` says which and where
    ├── HeapAnalysisUnavailable  (also a RuntimeError) ``find_blocked`` cannot run on this
    │                            interpreter: its heap analysis is not verified here
    ├── RedisUnavailable         a limit kept in Redis (``poolkit.redis``) could not reach Redis
    │                            in time, and its ``on_error`` is "raise": nothing was granted;
    │                            ``__cause__`` is redis-py's error
    ├── LeaseLost                a ``RedisCapacityLimiter`` lost the lease under which Redis
    │                            counted this process's weight (Redis restarted, or the lease
    │                            could not be renewed in time): others may now use that weight
    └── Busy                     (also a RuntimeError) a finalizer or a coroutine's clean-up,
                                 run by a garbage collection in the middle of a primitive's
                                 critical section, called that primitive in a way that could
                                 only wait for the lock its own thread holds

Timeouts raise the builtin :class:`TimeoutError`; cancellation is asyncio's own
:class:`asyncio.CancelledError`.  Bad arguments raise :class:`ValueError` or :class:`TypeError`
naming the argument and the value received.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poolkit._leaks._introspect import Snapshot

__all__ = [
    "BudgetExhausted",
    "Busy",
    "ChannelClosed",
    "EndOfChannel",
    "HeapAnalysisUnavailable",
    "JobHandedBack",
    "LeakError",
    "LeaseLost",
    "NotAcquired",
    "NotPicklable",
    "PoolClosed",
    "PoolkitError",
    "QueueFull",
    "ReceiversGone",
    "RedisUnavailable",
    "WorkerCrashed",
    "WouldBlock",
]


class PoolkitError(Exception):
    """Base class of every poolkit exception: ``except poolkit.PoolkitError`` catches them all."""


class WouldBlock(PoolkitError):
    """Raised by a ``*_nowait()`` operation that could only complete by waiting.

    Nobody is at fault: the same call may succeed later, or the blocking twin (``send`` for
    ``send_nowait``, and so on) can be awaited instead.
    """


class ChannelClosed(PoolkitError):
    """Raised when sending on a channel that has been closed, or using a handle that was closed.

    It is the caller's side that is at fault: ``close()`` promises that no more items will be sent
    (by anybody, for ``Channel.close``; through that handle, for a handle's ``close``).  Senders
    that were blocked when the channel was closed get this error too; their item was *not*
    delivered.  Receiving through a closed :class:`~poolkit.ReceiveHandle`, making a send handle
    of a channel that is already closed (or a receive handle of one whose receivers have gone),
    and a ``select`` case made through a closed handle raise it as well; the message says which.
    """


class ReceiversGone(PoolkitError):
    """Raised when sending on a channel whose receivers have all gone away (or making a send
    handle of it).

    The receiving side is at fault, not the sender: the last :class:`~poolkit.ReceiveHandle` of
    the channel was closed, so nothing sent now would ever be received.  Senders that were
    blocked at that moment get it too, instead of waiting forever; their item was *not*
    delivered (it is still theirs).  Items that were already buffered were handed back to
    whoever closed the last receive handle (its ``close()`` returned them; they are also in
    ``channel.handed_back``).
    """


class EndOfChannel(PoolkitError):
    """Raised by ``receive`` once the channel is closed and every buffered item has been taken.

    This is the normal end of a stream, not an error: ``async for`` and ``for`` loops over a
    channel stop quietly when they meet it.
    """


class NotAcquired(PoolkitError, RuntimeError):
    """Raised by ``release()`` when it would give back more than is held.

    The caller is at fault: every release must match an earlier successful acquire.  The
    limiter's count is left unchanged.
    """


class QueueFull(WouldBlock):
    """Raised by ``submit_nowait()`` when the pool's queue is full.

    Nobody is at fault; the pool counts the job as rejected.  ``await submit()`` waits instead.
    """


class PoolClosed(PoolkitError):
    """Raised when submitting to a pool that is shutting down or has shut down.

    The caller is at fault: the job was not accepted, and nothing was counted.  Submitters that
    were waiting for room in the queue when the shutdown began get this error too.
    """


class JobHandedBack(PoolkitError):
    """Raised by awaiting a job that never started because the pool was shut down first: with
    ``cancel=True``, or by a drain whose ``timeout`` ran out (which then cancels).

    Nobody did anything wrong with the job: it was handed back, with its function and arguments,
    in the list that ``shutdown()`` returned (and in ``pool.handed_back``), so that it can be
    stored or submitted again.
    """


class WorkerCrashed(PoolkitError):
    """The outcome of a ``ProcessPool`` job whose worker process died while running it: a
    segfault, ``os._exit()``, a signal such as the OOM killer's ``SIGKILL``.

    Whose fault it is, the pool cannot tell (the job's code, a C extension, the machine's
    memory); only this job fails: the pool starts a new worker, and the other jobs go on.
    ``exitcode`` is the process's exit status (``None`` if a signal ended it), ``signal`` the
    number of the signal that ended it (``None`` otherwise), ``pid`` its process id.
    """

    def __init__(
        self, message: str, *, pid: int | None, exitcode: int | None, signal: int | None
    ) -> None:
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode
        self.signal = signal

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_crashed, (self.args[0], self.pid, self.exitcode, self.signal))


def _rebuild_crashed(
    message: str, pid: int | None, exitcode: int | None, signal: int | None
) -> WorkerCrashed:
    return WorkerCrashed(message, pid=pid, exitcode=exitcode, signal=signal)


class NotPicklable(PoolkitError, TypeError):
    """Raised by ``ProcessPool.submit()`` and ``map()`` when a job's function, an argument or
    an item cannot be pickled, so it could never reach a worker process.

    The caller is at fault, and is told at once rather than by a worker failing later: the
    message names what could not be pickled (the function, which argument, which item) and the
    usual fix (a function defined at the top level of a module instead of a lambda or a local
    function; a path instead of an open file).  ``__cause__`` is pickle's own error.  Nothing
    was queued.  A function (or an argument's class) defined in a ``__main__`` that a worker
    cannot import (``python -c``, a REPL, a notebook) pickles by name but could not be found
    there: ``submit()`` refuses that too.  What only the worker can find out (a module it cannot
    import) fails the job itself with this error, its ``__cause__`` the worker's.
    """


class LeakError(PoolkitError, AssertionError):
    """Raised by :func:`poolkit.no_leaks` when tasks or threads started in its block are still
    alive once its time budget has run out.

    The code in the block is at fault: it started work and did not wait for it to finish (or
    never told it to stop).  The message is a grouped dump of what leaked, and ``snapshot``
    holds it as data (:class:`poolkit.leaks.Snapshot`).  It is an :class:`AssertionError` so
    that test runners report it as a failure rather than an error.
    """

    def __init__(self, message: str, snapshot: Snapshot) -> None:
        super().__init__(message)
        self.snapshot = snapshot

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.args[0], self.snapshot))


class HeapAnalysisUnavailable(PoolkitError, RuntimeError):
    """Raised by :func:`poolkit.leaks.find_blocked` (and ``snapshot(blocked=True)``) on an
    interpreter where its heap analysis has not been shown sound and safe: another Python
    implementation, a free-threaded build, or a CPython version that poolkit's CI does not run.

    Nobody did anything wrong; the message names the interpreter and the reason.  Everything
    else in :mod:`poolkit.leaks` still works there, and :func:`poolkit.no_leaks` still reports
    leaks, only without marking which are blocked forever.
    """


class BudgetExhausted(PoolkitError):
    """Raised by ``acquire`` on a token bucket whose rate is 0 when the tokens left cannot cover
    the cost: they would never come.

    Nobody did anything wrong: a bucket with rate 0 is a fixed budget of ``burst`` tokens, and it
    is spent (or what is left is owed to the waiters ahead and to reservations).  Nothing was
    taken.  ``try_acquire`` returns False in the same situation.  Waiters queued when the rate is
    assigned 0 get it too, once the tokens left have served those ahead of them.
    """


class Busy(PoolkitError, RuntimeError):
    """Raised when a primitive is called during a garbage collection in this thread (from a
    finalizer, or the clean-up of a coroutine the collector closes) and the lock it needs is
    taken, perhaps by this very thread, which the collection interrupted in the middle of a
    critical section: waiting would wait for ever.

    Only calls that can neither be done later nor answer "would block" raise it (``acquire()``,
    ``send()``, ``statistics()``...).  ``release()``, ``close()`` and assigning a rate are done
    as soon as the lock is free; ``*_nowait()`` and ``try_acquire()`` answer that they would
    block.  Outside a collection, and from other threads, nothing changes.
    """


class RedisUnavailable(PoolkitError):
    """Raised by a limit kept in Redis when Redis cannot be reached in time and the limit's
    ``on_error`` is ``"raise"`` (the default): refused, reset, timed out (``op_timeout``),
    loading, or a read-only replica.

    Nobody using the limit is at fault; the operation failed closed: nothing was granted to the
    caller.  ``__cause__`` is the exception redis-py (or asyncio) raised.  A ticket the caller had
    queued before the failure, if any, expires by itself (its lease) if it cannot be removed.
    """


class LeaseLost(PoolkitError):
    """Raised inside (at the exit of) a block holding a ``RedisCapacityLimiter`` whose lease
    was lost: Redis no longer counts this process's weight, so others may be using it.

    Nobody using the limiter is at fault: Redis restarted without its data, or this process could
    not renew its lease within ``lease_ttl`` (a partition, a paused process or server).  The weight
    is forfeited (its ``release`` does nothing in Redis).  ``__cause__`` says why, if known.
    """
