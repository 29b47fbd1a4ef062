"""PoolCore: what every poolkit pool shares, whatever its workers are.

``WorkerPool`` (asyncio tasks) and ``ThreadPool`` (threads) are one design with two kinds of
worker, and a process pool is to follow.  They used to be two copies of it, and the copies
drifted (named states in one, bare integers in the other; an idle timeout of ``inf`` in one,
``None`` in the other).  So the design lives here, once, and each pool inherits it:

* the options (``workers``, ``queue_size``, ``name``, ``limit``/``key``, ``timeout``, ``retry``,
  ``fail_fast``, ``min_workers``/``idle_timeout``), checked with messages that name the argument
  and the value;
* the lifecycle states and the counters, and from them ``statistics()``, ``__repr__`` and the
  accounting identity (see ``poolkit._pools._pool``);
* the messages a pool's errors carry, what ``map()`` raises for a job the pool stopped, and the
  record of jobs handed back;
* the checks of ``resize()``, and ``fail_fast``'s first failure;
* the first attempt that runs without tenacity (``first_attempt_is_free``), and its replay into
  tenacity when it fails (``poolkit._pools._retry.show_as_first`` and ``keep_result``, used by both
  pools' retry loops: one awaits each attempt, the other calls it).

A pool keeps apart only what really differs: how a worker waits for a job and runs it, how
submitters wait for room, and how shutdown waits for the workers (awaiting on an event loop,
blocking in a thread).

Why inheritance rather than a core object the pools hold: the per-job path reads options and
updates counters several times per job, and an attribute of ``self`` is one lookup where a held
core would be two, on a path whose whole budget is about a microsecond and a half.  And the
pools *are* the design the core describes, not users of a service: ``statistics()`` and
``closed`` are theirs.  The core holds no event loop, no thread and no future, so a process
pool can build on it as well.  (What is a separate part is held, not inherited: the
``submit_blocking()`` door of a ``WorkerPool``, in ``poolkit._pools._bridge``.)

``BlockingPoolCore`` adds what the two pools whose workers are threads of this process share
(``ThreadPool``; ``ProcessPool``, whose worker threads each own a process): ``with`` and
``async with`` around their blocking ``shutdown()`` and loop-friendly ``shutdown_async()``.

Each pool's ``_Worker`` is the part that really differs: how a worker waits for a job and runs
it (a task awaiting, a thread calling).

Counters are plain attributes.  ``_lock`` is :data:`NO_LOCK` (``with`` on it does nothing), right
for a pool on one event loop; a pool whose counters change on several threads sets a
``threading.Lock`` in its ``_setup()`` and changes them under it.  ``statistics()`` and
``handed_back`` take ``_lock``; methods here that change counters expect the caller to hold it.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures as cf
import math
import threading
from collections.abc import Callable, Hashable
from types import TracebackType
from typing import Any, ClassVar, Generic, Self, TypeVar

import tenacity

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import JobHandedBack, PoolClosed, QueueFull
from poolkit._primitives._composite import Limits, TaskLimit, pool_limits

from ._jobs import PoolStatistics, UnstartedJob, fn_name
from ._retry import RetryPolicy, check_policy, first_attempt_is_free

__all__ = [
    "CANCELLING",
    "CLOSED",
    "CLOSING",
    "DONE",
    "NEW",
    "NO_LOCK",
    "OPEN",
    "QUEUED",
    "RUNNING",
    "BlockingPoolCore",
    "Limit",
    "PoolCore",
    "check_count",
    "check_plain_fn",
    "in_loop",
    "refuse_in_loop",
]

# A pool's lifecycle.
NEW = 0  # not started: no worker yet
OPEN = 1  # accepting jobs
CLOSING = 2  # shutting down (or fail_fast tripped): accepts no more jobs
CLOSED = 3  # shut down: every worker has exited

# A job's, where a pool tracks it itself (a WorkerPool's; a ThreadJob is a concurrent future).
QUEUED = 0
RUNNING = 1
CANCELLING = 2  # running, and its cancellation has been requested
DONE = 3

Limit = TaskLimit
RetryingT = TypeVar("RetryingT", bound=tenacity.BaseRetrying)


class _NoLock:
    """``with`` on it does nothing: the ``_lock`` of a pool that lives on one event loop."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None


NO_LOCK = _NoLock()


def check_count(value: object, name: str, minimum: int) -> int:
    """``value`` if it is an int of at least ``minimum``, else the error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


# inspect.CO_COROUTINE | inspect.CO_ASYNC_GENERATOR: read off the code object at submit (an
# inspect.iscoroutinefunction() call would cost more than the rest of the check).
_ASYNC_CODE = 0x80 | 0x200


def check_plain_fn(fn: object, refusal: str) -> None:
    """Refuse (``TypeError``) what is not callable, and ``async def`` functions, for a pool that
    calls plain functions; ``refusal`` says why and what to use instead."""
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    code = getattr(fn, "__code__", None)
    if code is not None and code.co_flags & _ASYNC_CODE:
        raise TypeError(f"{fn_name(fn)} is an async function: {refusal}")


def in_loop() -> bool:
    """Whether this thread runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def refuse_in_loop(what: str, instead: str) -> None:
    """Raise ``RuntimeError`` if this thread runs an event loop, which ``what`` would block;
    ``instead`` names what to use there."""
    if in_loop():
        raise RuntimeError(f"{what} would block the event loop running in this thread; {instead}")


class PoolCore(Generic[RetryingT]):
    """The options, counters, statistics and messages of a pool (see the module docstring).

    ``RetryingT`` is the tenacity class the pool runs its retries with (``AsyncRetrying`` or
    ``Retrying``); ``_RETRYING`` is that class, for the check of ``retry=``.  A pool sets up
    its queue and workers in :meth:`_setup`, which ``__init__`` calls once the options are
    checked, and may override :meth:`_busy_now`.
    """

    __slots__ = (
        "__weakref__",
        "_cancelled_queued",
        "_cancelled_running",
        "_elastic",
        "_fail_fast",
        "_failed",
        "_first_error",
        "_handed",
        "_handed_back",
        "_idle_timeout",
        "_key",
        "_limit",
        "_live",
        "_lock",
        "_min_workers",
        "_name",
        "_next_id",
        "_queue_size",
        "_rejected",
        "_retiring",
        "_retried",
        "_retry",
        "_retry_fast",
        "_run_total",
        "_started",
        "_state",
        "_submitted",
        "_succeeded",
        "_target",
        "_timed_out",
        "_timeout",
        "_wait_total",
    )

    # What map() sees when a job was cancelled, and what it says when the pool did that.
    _MAP_CANCELLED: ClassVar[tuple[type[BaseException], ...]] = (
        asyncio.CancelledError,
        cf.CancelledError,
    )
    _MAP_STOPPED: ClassVar[str] = "{pool} was shut down while map() was running"
    _RETRYING: ClassVar[type[tenacity.BaseRetrying]]
    # Whether the workers are threads: then limit= may not hold an aiolimiter.AsyncLimiter.
    _THREADS: ClassVar[bool] = False

    def __init__(
        self,
        *,
        workers: int = 8,
        queue_size: int | float | None = None,
        name: str | None = None,
        limit: Limit | None = None,
        key: Callable[[Any], Hashable] | None = None,
        timeout: float | None = None,
        retry: RetryPolicy | RetryingT | None = None,
        fail_fast: bool = False,
        min_workers: int | None = None,
        idle_timeout: float = 60.0,
    ) -> None:
        self._target = check_count(workers, "workers", 1)
        if queue_size is None:
            queue_size = workers
        elif queue_size != math.inf:
            check_count(queue_size, "queue_size", 0)
        self._queue_size: int | float = queue_size
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._name = name
        # pool_limits() checks the kind (threads cannot wait on an aiolimiter.AsyncLimiter) and
        # makes the Limits unregistered: the user's limit is registered; this wrapper is ours.
        self._limit: Limits | None = (
            None if limit is None else pool_limits(limit, threads=self._THREADS)
        )
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the job, got {key!r}")
        if key is not None and self._limit is None:
            raise ValueError(
                f"key= needs limit=: key gives each job's key for a per-key limit, and no limit "
                f"was given (got key={key!r}, limit=None); pass limit=PerKey(...), or drop key="
            )
        if self._limit is not None and self._limit._keyed and key is None:
            raise ValueError("limit has per-key parts: pass key=, a function of the job")
        self._key = key
        self._timeout = check_timeout(timeout, "timeout")
        if self._timeout == 0:
            raise ValueError("timeout must be > 0 seconds or None, got 0")
        check_policy(retry, self._RETRYING)
        self._retry: RetryPolicy | RetryingT | None = retry
        self._retry_fast = first_attempt_is_free(retry)
        if not isinstance(fail_fast, bool):
            raise TypeError(f"fail_fast must be a bool, got {fail_fast!r}")
        self._fail_fast = fail_fast
        self._elastic = min_workers is not None
        self._min_workers = 0 if min_workers is None else check_count(min_workers, "min_workers", 0)
        if self._min_workers > self._target:
            raise ValueError(f"min_workers ({min_workers}) must not exceed workers ({workers})")
        it = check_timeout(idle_timeout, "idle_timeout")
        self._idle_timeout: float = math.inf if it is None else it  # inf: never idle out
        self._lock: Any = NO_LOCK  # (a pool used from several threads sets its own in _setup)
        self._state = NEW
        self._next_id = 0
        self._live = 0  # workers alive (on the books)
        self._retiring = 0  # workers told to exit by resize() that have not exited yet
        self._handed: list[UnstartedJob] = []
        self._first_error: BaseException | None = None
        self._submitted = self._started = self._succeeded = self._failed = 0
        # Only totals that never go down are kept; queued and running are derived from them, so
        # the accounting identity holds by construction (and the per-job path updates less).
        self._cancelled_queued = self._cancelled_running = 0
        self._timed_out = self._rejected = self._retried = self._handed_back = 0
        self._wait_total = self._run_total = 0.0
        self._setup()

    def _setup(self) -> None:
        """Set up the pool's own parts (its queue, its books of workers), its options checked."""
        raise NotImplementedError

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        """The pool's name, if any (it names the pool in messages, dumps and metrics)."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether the pool has stopped accepting jobs."""
        return self._state >= CLOSING

    @property
    def handed_back(self) -> list[UnstartedJob]:
        """The jobs handed back by a cancelling shutdown (empty otherwise)."""
        with self._lock:
            return list(self._handed)

    @property
    def _queued(self) -> int:
        return self._submitted - self._started - self._cancelled_queued - self._handed_back

    @property
    def _running(self) -> int:
        return (
            self._started
            - self._succeeded
            - self._failed
            - self._cancelled_running
            - self._timed_out
        )

    def _busy_now(self) -> int:
        """Workers running a call: those running a job, unless a pool's differ (lock held)."""
        return self._running

    def statistics(self) -> PoolStatistics:
        """A consistent snapshot of the pool's counters (see :class:`~poolkit.PoolStatistics`)."""
        with self._lock:
            running = self._running
            busy = self._busy_now()
            return PoolStatistics(
                name=self._name,
                workers=self._live,
                busy=busy,
                idle=self._live - busy,
                target_workers=self._target,
                queued=self._queued,
                running=running,
                submitted=self._submitted,
                started=self._started,
                succeeded=self._succeeded,
                failed=self._failed,
                cancelled=self._cancelled_queued + self._cancelled_running,
                timed_out=self._timed_out,
                rejected=self._rejected,
                retried=self._retried,
                handed_back=self._handed_back,
                queue_wait_total=self._wait_total,
                run_time_total=self._run_total,
                closed=self._state >= CLOSING,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<{type(self).__name__}{name} workers={s.workers}/{s.target_workers} busy={s.busy} "
            f"queued={s.queued} closed={s.closed}>"
        )

    # ----------------------------------------------------------------- messages

    def _label(self) -> str:
        return "pool" if self._name is None else f"pool {self._name!r}"

    def _closed_error(self) -> PoolClosed:
        first = self._first_error
        if first is None:
            return PoolClosed(f"{self._label()} is shut down; it accepts no more jobs")
        # fail_fast closed it: say so, with the failure as the cause (a producer blocked in
        # submit() sees this, not the failure, which `with` raises only if the block ends).
        error = PoolClosed(
            f"{self._label()} stopped after a job failed (fail_fast=True): "
            f"{type(first).__name__}: {first}; it accepts no more jobs"
        )
        error.__cause__ = first
        return error

    def _queue_full(self) -> QueueFull:
        q = self._queue_size
        return QueueFull(
            f"the queue of {self._label()} is full ({q} job{'' if q == 1 else 's'} waiting)"
        )

    def _timed_out_message(self, fn: Callable[..., Any], more: str = "") -> str:
        return (
            f"job {fn_name(fn)} ran past the timeout of {self._timeout} s set on the "
            f"{self._label()}{more}"
        )

    def _map_error(self, error: BaseException) -> BaseException:
        """What map() raises for a job's error: a job the *pool* stopped says why it stopped."""
        if isinstance(error, (*self._MAP_CANCELLED, PoolClosed, JobHandedBack)):
            if self._first_error is not None:
                return self._first_error  # fail_fast stopped it: raise the failure itself
            if isinstance(error, self._MAP_CANCELLED):
                closed = PoolClosed(self._MAP_STOPPED.format(pool=self._label()))
                closed.__cause__ = error
                return closed
        return error

    def _window(self) -> int:
        """How many of a map()'s items may be in the pool or waiting to be yielded at once."""
        q = self._queue_size
        return self._target + (self._target if q == math.inf else int(q))

    # ----------------------------------------------------------------- shared steps

    def _hand_back(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        handle: Any,
        why: str | None = None,
    ) -> str:
        """Record a job that never started as handed back (lock held), and return the message
        of the :class:`~poolkit.JobHandedBack` its handle gets (made outside the lock by the
        caller).  ``why`` says why, with ``{pool}`` for the pool, if not a shutdown."""
        self._handed_back += 1
        self._handed.append(UnstartedJob(fn, args, kwargs, handle))
        if why is not None:
            return why.format(pool=self._label())
        return (
            f"{self._label()} was shut down (cancelling, or a drain that ran out of time) before "
            f"this job started; it is in the list shutdown() returned and in pool.handed_back"
        )

    def _first_failure(self, error: BaseException) -> bool:
        """Whether ``error`` is the failure that makes a ``fail_fast`` pool stop everything
        (lock held); it is kept, for ``with`` and ``map()`` to raise."""
        if self._fail_fast and self._first_error is None:
            self._first_error = error
            return True
        return False

    def _check_resize(self, workers: int) -> None:
        """The argument checks of ``resize()``."""
        check_count(workers, "workers", 1)
        if workers < self._min_workers:
            raise ValueError(
                f"workers ({workers}) must not be below min_workers ({self._min_workers})"
            )

    def _resize_closed(self, workers: int) -> PoolClosed:
        return PoolClosed(f"{self._label()} is shut down; resize({workers}) cannot change it")


class BlockingPoolCore(PoolCore[RetryingT]):
    """What the pools whose workers are threads of this process share (``ThreadPool``, and
    ``ProcessPool``, whose worker threads each own a process): ``with`` and ``async with``, and
    the wait of ``shutdown_async()`` for the workers to exit, which never blocks the loop.

    A pool sets, in its ``_setup()``, ``_workers_gone`` (set once every worker has exited,
    under ``_lock``) and ``_gone_waiters`` (the futures of loops waiting for that; the last
    worker takes the list under ``_lock`` and wakes each).  ``with`` ends in ``shutdown()``,
    ``async with`` in ``shutdown_async()``: a drain, or ``cancel=True`` if the block raised or
    ``fail_fast`` tripped, whose failure is then raised.
    """

    _workers_gone: threading.Event
    _gone_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]

    @abc.abstractmethod
    def _start(self) -> None:
        """Start the pool (``PoolClosed`` once it is shut down); nothing if it runs already."""

    @abc.abstractmethod
    def shutdown(self, *, cancel: bool = False, timeout: float | None = None) -> list[UnstartedJob]:
        """Shut the pool down, blocking this thread."""

    @abc.abstractmethod
    async def shutdown_async(
        self, *, cancel: bool = False, timeout: float | None = None
    ) -> list[UnstartedJob]:
        """Shut the pool down without blocking the event loop."""

    async def _wait_gone(self, timeout: float | None) -> bool:
        """Wait, without blocking the loop, until every worker has exited; False on timeout."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        entry = (loop, fut)
        with self._lock:
            if self._workers_gone.is_set():
                return True
            self._gone_waiters.append(entry)
        try:
            async with asyncio.timeout(timeout) as scope:
                await fut
        except TimeoutError:
            if scope.expired():
                return False
            raise
        finally:
            with self._lock:
                try:
                    self._gone_waiters.remove(entry)
                except ValueError:
                    pass  # taken by the last worker, which woke us
        return True

    def __enter__(self) -> Self:
        """Start the workers (plain code); the block's end shuts the pool down."""
        self._start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``shutdown()``: a drain if the block ended normally; ``cancel=True`` (queued jobs
        handed back, running ones stopped where the pool can) if it raised, KeyboardInterrupt
        included, or if ``fail_fast`` tripped, whose failure is then raised here."""
        if exc_type is None and self._first_error is None:
            self.shutdown()
        else:
            self.shutdown(cancel=True)
        if exc_type is None and self._first_error is not None:
            raise self._first_error

    async def __aenter__(self) -> Self:
        """Start the workers (``async def`` code); the block's end shuts the pool down."""
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """``await shutdown_async()``, as ``__exit__`` decides between a drain and a cancel;
        the event loop runs on while the workers exit."""
        if exc_type is None and self._first_error is None:
            await self.shutdown_async()
        else:
            await self.shutdown_async(cancel=True)
        if exc_type is None and self._first_error is not None:
            raise self._first_error
