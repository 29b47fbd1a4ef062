"""ThreadPool: the WorkerPool model for blocking code, on threads.

Jobs wait in the pool's queue (FIFO, bounded: ``submit`` blocks the calling thread while it is
full); each worker is a thread that takes a job and calls it.  The handle ``submit`` returns is
a :class:`ThreadJob`, a ``concurrent.futures.Future``, so existing code and
``asyncio.wrap_future`` work with it; workers follow the executor protocol
(``set_running_or_notify_cancel``), so a job cancelled while queued never runs.

Options, counters and the accounting identity are those of ``WorkerPool`` (see
``poolkit._pools._pool``; both keep them in ``poolkit._pools._pool_core``); here they are kept under
one lock, so a snapshot taken from any thread is consistent.  The queue is kept under the same
lock (see :class:`_JobQueue`), so a job is queued and counted in one step.

Threads start as jobs need them, as in ``ThreadPoolExecutor``: a job that arrives when no idle
thread can take it starts one, up to ``workers``; threads then stay (an elastic pool lets those
beyond ``min_workers`` go after ``idle_timeout``).  A pool of 10,000 workers that runs one job
starts one thread, and starting one costs the same however many run (the list of threads to
join is pruned of finished ones only when it has doubled: amortised O(1)).

Idle threads are woken as ``WorkerPool``'s idle workers are (see :class:`_JobQueue`): a few at a
time, more as long as jobs wait, rather than one per job.  Threads join as long as there is work
for them, and a flood of quick calls, which one thread clears by itself, does not wake every
thread for every call.  (Measured: 100k trivial calls through ``map`` at the default settings
used to wake a sleeping thread for 45% of the calls; on two cores each wake-up cost more than
the call.)

A ThreadPool runs plain functions.  An ``async def`` function is refused at ``submit`` with a
``TypeError``, and a call that returns an awaitable (a ``functools.partial`` of one, say) fails
its job with one: there is no event loop in a worker thread to await it, and a coroutine left
unawaited is a silent bug.  Use a ``WorkerPool`` for those, or ``asyncio.run`` inside the job.

In ``async def`` code, ``async with ThreadPool(...)`` and ``await pool.shutdown_async()`` shut the
pool down without blocking the event loop (the plain forms refuse to run there).

What a timeout means for a thread
---------------------------------
A thread cannot be interrupted.  With ``timeout=``, the job's future fails with ``TimeoutError``
at the deadline (the job counts as timed out, and whoever waits for it is released), but the call
goes on in its thread until it returns; its result is then discarded.  Its worker stays occupied
meanwhile, so the pool never runs more than ``workers`` calls at once (``busy`` counts it,
``running`` no longer does).  For the same reason the timeout bounds the whole job, all retries
included, and cancelling a running job is not possible (``cancel()`` returns False, as for
``concurrent.futures``): a cancelling shutdown hands back the queued jobs and then waits for the
running calls to return.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import heapq
import logging
import math
import threading
import time
import types
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, final, overload

import tenacity

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import JobHandedBack
from poolkit._core._registry import record_origin, register
from poolkit._core._wait import resolve

from ._jobs import Outcome, UnstartedJob, cancel_future
from ._jobs import fn_name as _fn_name
from ._map import map_threads
from ._pool_core import (
    CLOSED,
    CLOSING,
    NEW,
    OPEN,
    BlockingPoolCore,
    check_plain_fn,
    refuse_in_loop,
)
from ._retry import keep_result, show_as_first, sync_retrying

__all__ = ["ThreadJob", "ThreadPool"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
logger = logging.getLogger("poolkit.pool")
_monotonic = time.monotonic

_LEAVE: Any = object()  # what _take() returns to a worker that has left the books: exit
# A queued job's fate once it is taken out of the queue other than by a worker, decided under
# the pool's lock before its future is resolved outside it.
_HANDED_BACK = 1  # by a cancelling shutdown
_POOL_CANCELLED = 2  # by fail_fast's first failure
_USER_CANCELLED = 3  # by its own cancel(); it stays in the queue (counted dead) until taken
_TIMEOUT_MAX = threading.TIMEOUT_MAX
_CoroutineType = types.CoroutineType

# Workers resolve jobs through these: ThreadJob overrides its public twins to refuse its users.
_cf_set_result = cf.Future.set_result
_cf_set_exception = cf.Future.set_exception
_cf_set_running = cf.Future.set_running_or_notify_cancel


def _wake_gone(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
    """Tell the loops waiting for a pool's workers to be gone that they are."""
    for loop, fut in waiters:
        try:
            loop.call_soon_threadsafe(resolve, fut)
        except RuntimeError:
            pass  # that loop is closed: nobody waits there any more


def _refuse_in_loop(what: str, instead: str) -> None:
    refuse_in_loop(f"ThreadPool.{what}()", instead)


class ThreadJob(cf.Future[T]):
    """The handle of a job submitted to a :class:`ThreadPool`: a ``concurrent.futures.Future``.

    ``job.result(timeout)`` waits for it; ``asyncio.wrap_future(job)`` awaits it from a task.
    ``cancel()`` succeeds only while the job is queued (a running call cannot be interrupted).
    The pool owns the job's outcome: ``set_result()``, ``set_exception()`` and
    ``set_running_or_notify_cancel()`` raise ``concurrent.futures.InvalidStateError``.
    """

    def __init__(
        self,
        pool: ThreadPool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        super().__init__()
        self._pool = pool
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._queued_at = _monotonic()
        self._in_queue = False  # in the pool's queue (changed under the pool's lock)
        self._expired = False  # failed by the watchdog; its call may still be running
        # Set (under the pool's lock) when it leaves the queue other than by a worker, before
        # its future is resolved outside the lock: _HANDED_BACK, _POOL_CANCELLED or
        # _USER_CANCELLED.
        self._fate = 0

    @property
    def fn(self) -> Callable[..., Any]:
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments; released (empty) once the call has returned."""
        return self._args

    def set_result(self, result: T) -> None:
        """Refused: the pool sets the result when the job's function returns.

        Raises:
            concurrent.futures.InvalidStateError: always; ``cancel()`` stops a queued job.
        """
        raise cf.InvalidStateError(self._owned("set_result"))

    def set_exception(self, exception: BaseException | None) -> None:
        """Refused: the pool sets the exception when the job's function raises.

        Raises:
            concurrent.futures.InvalidStateError: always; ``cancel()`` stops a queued job.
        """
        raise cf.InvalidStateError(self._owned("set_exception"))

    def set_running_or_notify_cancel(self) -> bool:
        """Refused: the pool's worker marks the job running when it starts it.

        Raises:
            concurrent.futures.InvalidStateError: always.
        """
        raise cf.InvalidStateError(self._owned("set_running_or_notify_cancel"))

    def _owned(self, what: str) -> str:
        return (
            f"{what}() on a job of {self._pool._label()} ({_fn_name(self._fn)}): the pool sets "
            f"a job's state and outcome itself; to stop a queued job, call job.cancel()"
        )

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments; released (empty) once the call has returned."""
        return dict(self._kwargs)

    def cancel(self) -> bool:
        pool = self._pool
        with pool._lock:  # decided and counted in one step with the workers' taking it
            fate = self._fate
            if not fate and self._in_queue:
                self._fate = fate = _USER_CANCELLED
                pool._cancelled_queued += 1
                pool._jobs.dead += 1  # no longer takes room; a worker drops it when it comes
                if pool._jobs.putters:
                    pool._jobs.admit()
        if fate == _HANDED_BACK:
            return False
        # Outside the lock: cancelling runs the future's done-callbacks.  A job that is running
        # or done is not cancelled (False), as for concurrent.futures.
        return cancel_future(self)


class _Worker:
    """One worker thread: takes jobs from the pool's queue and calls them.

    This is the part of a ``ThreadPool`` that is about threads: how a worker waits for a job
    (:meth:`ThreadPool._wait_for_job`, on a lock of its own that a waker releases), calls it
    (under the pool's limit and retry policy, its deadline watched by the pool's watchdog) and
    settles its future.  The books it keeps are the pool's, under the pool's lock.
    """

    __slots__ = (
        "abandoned",
        "deadline",
        "ident",
        "job",
        "lock",
        "patience",
        "pool",
        "started",
        "thread",
        "woken",
    )

    def __init__(self, pool: ThreadPool, ident: int) -> None:
        self.pool = pool
        self.ident = ident
        self.job: ThreadJob[Any] | None = None
        self.thread: threading.Thread | None = None
        self.deadline = math.inf
        self.started = 0.0  # when its current job started
        # Held, except while a waker has released it to wake the worker from its idle wait.
        self.lock = threading.Lock()
        self.lock.acquire()
        self.woken = False  # woken for the jobs in the queue (counted in the queue's `woken`)
        self.patience = math.inf  # how long its idle wait lasts (elastic pools)
        self.abandoned = False  # its thread's start() failed: off the books (see _spawn)

    def run(self) -> None:
        """The worker's thread: take jobs and run them until the pool closes, resizes or idles
        it out (elastic)."""
        pool = self.pool
        lock = pool._lock
        with lock:  # (held by _spawn until start() has returned or raised)
            if self.abandoned:
                return  # its start() raised in the spawning thread: it is off the books
        logger.debug("%s: worker %d started", pool._label(), self.ident)
        take = pool._take
        # A worker that decides to exit leaves the books in the same locked step (_take,
        # _idled_out), so that a submit never counts on a worker that is on its way out.
        left = False
        try:
            while True:
                with lock:
                    job = take(self)
                if job is None:  # parked, in the same locked step: wait to be woken
                    if not pool._wait_for_job(self, self.patience) and pool._idled_out(self):
                        left = True
                        return  # idle for too long (elastic), and no job is waiting
                elif job is _LEAVE:
                    left = True
                    return  # the pool is closed and drained, or resize() lowered the target
                else:
                    self._run(job)
        finally:
            if not left:
                with pool._lock:
                    pool._leave(self)
            logger.debug("%s: worker %d exited", pool._label(), self.ident)
            pool._exited()

    def _run(self, job: ThreadJob[Any]) -> None:
        """Call ``job``, which ``_take`` has marked running and counted as started."""
        pool = self.pool
        try:
            result = self._attempts(job)
            if hasattr(result, "__await__"):
                self._refuse_awaitable(job, result)
        except BaseException as exc:
            error: BaseException | None = exc
        else:
            error = None
        with pool._lock:
            pool._busy -= 1
            self.job = None
            self.deadline = math.inf
            job._args = ()  # a kept handle must not pin its arguments
            job._kwargs = {}
            pool._run_total += _monotonic() - self.started
            if job._expired:
                return  # timed out already (counted by the watchdog); the result is dropped
            if error is None:
                pool._succeeded += 1
            else:
                pool._failed += 1
                fail_everything = pool._first_failure(error)
        if error is None:
            _cf_set_result(job, result)
        else:
            _cf_set_exception(job, error)
            if fail_everything:
                job.exception()  # the with-block raises it: it is not lost
                pool._fail_everything()
            if not isinstance(error, Exception):
                raise error  # KeyboardInterrupt, SystemExit: not the job's business to absorb

    @staticmethod
    def _refuse_awaitable(job: ThreadJob[Any], result: Any) -> None:
        if result.__class__ is _CoroutineType:
            result.close()  # never awaited, on purpose: no "never awaited" warning later
        raise TypeError(
            f"job {_fn_name(job._fn)} returned {result!r}, an awaitable: a ThreadPool calls "
            f"plain functions on its threads and has no event loop to await it. Submit async "
            f"functions to a poolkit.WorkerPool, or run them inside the job with asyncio.run()"
        )

    def _attempts(self, job: ThreadJob[Any]) -> Any:
        pool = self.pool
        if pool._retry is None:
            return self._attempt(job)
        replay: Exception | None = None
        started = 0.0
        if pool._retry_fast:  # the first attempt without tenacity (see first_attempt_is_free)
            started = _monotonic()
            try:
                return self._attempt(job)
            except Exception as exc:
                replay = exc
        first = True
        result = None
        for attempt in sync_retrying(pool._retry):
            if not first:
                if job._expired or job.done():  # timed out: no more attempts
                    raise TimeoutError("timed out")
                with pool._lock:
                    pool._retried += 1
            first = False
            with attempt:
                if replay is not None:
                    error, replay = replay, None
                    show_as_first(attempt, error, started)
                result = self._attempt(job)
            keep_result(attempt, result)
        return result

    def _attempt(self, job: ThreadJob[Any]) -> Any:
        pool = self.pool
        limit = pool._limit
        key = None
        if limit is not None:
            key = pool._key(job) if pool._key is not None else None
            limit.acquire_blocking(1, key=key)
        try:
            return job._fn(*job._args, **job._kwargs)
        finally:
            if limit is not None:
                limit.release(1, key=key)


class _Watchdog:
    """Fails the jobs of a ``ThreadPool`` that run past its ``timeout``, from a thread of its own
    (their calls go on in their threads: see the module docstring).  It shares the pool's lock:
    a job's deadline is set, and its expiry decided, in the same locked steps as the books."""

    __slots__ = ("deadlines", "pool", "thread", "timeout", "wake")

    def __init__(self, pool: ThreadPool, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.deadlines: list[tuple[float, int, _Worker, ThreadJob[Any]]] = []  # a heap
        self.wake = threading.Condition(pool._lock)
        self.thread: threading.Thread | None = None

    def start(self) -> None:  # lock held
        if self.thread is None:
            label = f"{self.pool._label()} watchdog"
            self.thread = threading.Thread(target=self.run, name=f"poolkit {label}", daemon=True)
            record_origin(self.thread, label)
            self.thread.start()

    def watch(self, w: _Worker, job: ThreadJob[Any], started: float) -> None:
        """``w`` began ``job`` at ``started`` (lock held): it expires ``timeout`` s later."""
        w.deadline = started + self.timeout
        heapq.heappush(self.deadlines, (w.deadline, id(job), w, job))
        self.wake.notify()

    def run(self) -> None:
        """Fail jobs that run past their deadline, until the pool is closed and its workers gone."""
        pool = self.pool
        while True:
            expired: list[ThreadJob[Any]] = []
            with pool._lock:
                now = _monotonic()
                heap = self.deadlines
                while heap and (heap[0][2].job is not heap[0][3] or heap[0][0] <= now):
                    deadline, _, w, job = heapq.heappop(heap)
                    if w.job is job and deadline <= now and not job._expired:
                        job._expired = True  # decided here, under the lock: the worker defers
                        pool._timed_out += 1
                        expired.append(job)
                if not expired:
                    if pool._state >= CLOSED and not pool._workers:
                        return
                    self.wake.wait(None if not heap else max(0.0, heap[0][0] - now))
            for job in expired:  # resolved outside the lock: callbacks may call back into us
                _cf_set_exception(
                    job,
                    TimeoutError(
                        pool._timed_out_message(
                            job._fn, " (its thread goes on until the call returns)"
                        )
                    ),
                )


class _Putter:
    """A submitter waiting for room: it sleeps on ``lock``, which is released to wake it."""

    __slots__ = ("granted", "lock")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.granted = False  # woken with room kept for it (else woken by close)


class _JobQueue:
    """The queue of a :class:`ThreadPool`: FIFO, bounded, guarded by the pool's lock (every
    method expects it held), so that a job is queued and counted in one step.

    ``WorkerPool``'s queue (``poolkit._pools._pool._JobQueue``), for threads.  An idle worker
    counts as room, so ``queue_size`` counts the jobs that wait with no idle worker to take them
    (``queue_size=0`` hands jobs straight to idle workers).  Idle workers park on a lock of their
    own, the last to park on top, so that the threads that just ran take the work and those an
    elastic pool does not need idle out.  Wake-ups are lazy: a job that arrives while workers are
    idle wakes one (unless one is on its way already: ``woken`` counts them), which takes
    whatever is at the head when it runs.  A worker woken for the jobs that takes one while more
    wait wakes two more (:meth:`fan_out`), and any worker that takes one while more wait and no
    wake-up is in flight wakes one.  So a burst of calls that block on I/O has every thread going
    within a few rounds of wake-ups (doubling each round), while a flood of quick calls, which
    the first thread clears by itself, costs a few wake-ups instead of one per call.  A worker
    woken for jobs counts as room until it has looked, as an idle one does.

    Room that frees up is kept (``reserved``) for the first blocked submitter, which puts its job
    in when it runs; newcomers do not take kept room, nor go ahead of submitters that wait.  A
    job cancelled while queued stays in ``items`` until it reaches the head (taking it out of the
    middle would cost O(n)), but it is counted in ``dead`` and takes no room.
    """

    __slots__ = ("closed", "dead", "idle", "items", "putters", "reserved", "size", "woken")

    def __init__(self, size: float) -> None:
        self.items: deque[ThreadJob[Any]] = deque()
        self.size = size
        self.idle: list[_Worker] = []  # parked workers; the last to park is woken first
        self.putters: deque[_Putter] = deque()  # submitters waiting for room, in arrival order
        self.reserved = 0  # room kept for woken submitters
        self.dead = 0  # jobs in items cancelled by their users
        self.woken = 0  # workers woken for the jobs that have not looked for one yet
        self.closed = False

    def full(self) -> bool:
        """No room for a newcomer: none free, or submitters wait ahead of it."""
        return bool(self.putters) or (
            len(self.items) - self.dead + self.reserved >= self.size + len(self.idle) + self.woken
        )

    def waiting(self) -> int:
        """Jobs in the queue that a worker will run."""
        return len(self.items) - self.dead

    def wake_worker(self) -> None:
        """Wake the idle worker on top for the jobs (there is one)."""
        w = self.idle.pop()
        w.woken = True
        self.woken += 1
        w.lock.release()

    def fan_out(self) -> None:
        """A worker woken for the jobs took one and more wait: wake up to two more idle workers,
        while the jobs waiting outnumber the wake-ups in flight."""
        for _ in range(2):
            if not self.idle or len(self.items) - self.dead <= self.woken:
                return
            self.wake_worker()

    def admit(self) -> None:
        """Keep freed room for blocked submitters, first come first served."""
        putters = self.putters
        while putters and (
            len(self.items) - self.dead + self.reserved < self.size + len(self.idle) + self.woken
        ):
            p = putters.popleft()
            p.granted = True
            self.reserved += 1
            p.lock.release()

    def close(self) -> None:
        """No more jobs: blocked submitters wake to fail, idle workers to drain or exit."""
        self.closed = True
        while self.putters:
            self.putters.popleft().lock.release()
        while self.idle:
            self.idle.pop().lock.release()


@final
class ThreadPool(BlockingPoolCore[tenacity.Retrying]):
    """A pool of worker threads: ``with ThreadPool(workers=8) as pool:``.

    Args (all keyword-only, as :class:`WorkerPool`'s, except):
        limit: As ``WorkerPool``'s, except an ``aiolimiter.AsyncLimiter`` (asyncio only), which
            is refused with ``TypeError``.
        timeout: Seconds for the whole job; see the module docstring for what that means on a
            thread.
        retry: A :class:`RetryPolicy` or a ``tenacity.Retrying``.

    ``submit(fn, *args, **kwargs)`` returns a :class:`ThreadJob` and blocks the calling thread
    while the queue is full (it refuses to run on a thread whose event loop is running, where it
    would freeze the loop: use ``submit_nowait`` there, or ``asyncio.to_thread``).  ``map``
    streams results with bounded memory.  ``shutdown(cancel=...)`` drains or hands back queued
    jobs, as in ``WorkerPool``; ``with`` drains when the body succeeds and cancels when it
    raises.  In ``async def`` code use ``async with`` and ``await shutdown_async(...)``, which
    do the same without blocking the event loop.  No thread is left behind.

    Worker threads start as jobs need them, up to ``workers`` (see the module docstring), so
    ``statistics().workers`` counts the threads started and alive, never more than
    ``target_workers``.

    Raises:
        TypeError, ValueError: For a bad option, naming it and the value received; ``key``
            without ``limit`` is a ``ValueError``.
    """

    __slots__ = (
        "_busy",
        "_exiting",
        "_gone_waiters",
        "_jobs",
        "_prune_at",
        "_threads",
        "_watchdog",
        "_workers",
        "_workers_gone",
    )

    _MAP_CANCELLED: ClassVar[tuple[type[BaseException], ...]] = (cf.CancelledError,)
    _RETRYING = tenacity.Retrying
    _THREADS = True

    def _setup(self) -> None:
        self._lock = threading.Lock()
        self._jobs = _JobQueue(self._queue_size)  # under _lock, as the counters are
        self._workers: dict[int, _Worker] = {}
        self._threads: list[threading.Thread] = []  # every worker thread not yet joined
        self._prune_at = 64  # _threads is pruned of finished threads when it grows this long
        # Set once every worker has left the books *and* finished its last line (so joining
        # them then is immediate); _spawn() clears it.  Async waiters are woken with it.
        self._workers_gone = threading.Event()
        self._workers_gone.set()
        self._exiting = 0  # workers off the books, still running their last line
        self._gone_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._busy = 0  # workers in a call: timed-out calls too, which still hold their thread
        self._watchdog = None if self._timeout is None else _Watchdog(self, self._timeout)
        register(self, "thread_pool")

    def _busy_now(self) -> int:  # lock held
        return self._busy

    # ----------------------------------------------------------------- workers

    def _start(self) -> None:
        with self._lock:
            if self._state == NEW:
                self._state = OPEN
                for _ in range(self._min_workers):  # the rest start as jobs need them
                    self._spawn()
            elif self._state != OPEN:
                raise self._closed_error()

    def _spawn(self) -> None:  # lock held
        self._next_id += 1
        w = _Worker(self, self._next_id)
        self._workers[w.ident] = w
        self._live += 1
        self._workers_gone.clear()
        w.thread = threading.Thread(target=w.run, name=f"poolkit {self._label()} worker {w.ident}")
        threads = self._threads
        if len(threads) >= self._prune_at:  # amortised O(1): a scan only once it has doubled
            threads[:] = [t for t in threads if t.is_alive()]
            self._prune_at = max(64, 2 * len(threads))
        threads.append(w.thread)
        record_origin(w.thread, f"{self._label()} worker {w.ident}")
        try:
            w.thread.start()
        except BaseException:
            # No thread to be had (RuntimeError), or a Ctrl-C interrupted start(): the worker
            # leaves the books now (its thread cannot have begun, as that takes the lock held
            # here; if it runs later, it sees `abandoned` and returns), so that no shutdown
            # waits for it; the error propagates.
            w.abandoned = True
            self._live -= 1
            del self._workers[w.ident]
            threads.remove(w.thread)  # (joining a thread never started raises)
            _wake_gone(self._gone_if_last())  # (a callback scheduled, under the lock)
            raise
        if self._watchdog is not None:
            self._watchdog.start()

    def _take(self, w: _Worker) -> Any:  # lock held
        """The next job for ``w``, marked running and counted as started; or None, and ``w`` is
        parked (idle, in the same locked step); or ``_LEAVE``, and ``w`` has left the books."""
        jobs = self._jobs
        fresh = w.woken
        if fresh:  # the wake-up in flight has arrived
            w.woken = False
            jobs.woken -= 1
        items = jobs.items
        if self._retiring > 0:
            self._retiring -= 1
            self._leave(w)
            if jobs.idle and not jobs.woken and len(items) > jobs.dead:
                jobs.wake_worker()  # it may have been woken for them: pass that on
            return _LEAVE  # resize() lowered the target
        while items:
            job = items.popleft()
            job._in_queue = False
            if job._fate:  # cancelled by its user while queued: counted already
                jobs.dead -= 1
                continue
            if not _cf_set_running(job):  # cancelled behind ThreadJob.cancel()'s back
                self._cancelled_queued += 1
                continue
            t0 = _monotonic()
            self._started += 1
            self._busy += 1
            self._wait_total += t0 - job._queued_at
            w.job = job
            w.started = t0
            if self._watchdog is not None:
                self._watchdog.watch(w, job, t0)
            if jobs.putters:
                jobs.admit()
            if jobs.idle and len(items) > jobs.dead:  # more jobs wait: more workers join in
                if fresh:
                    jobs.fan_out()
                elif not jobs.woken:
                    jobs.wake_worker()
            return job
        if jobs.closed:
            self._leave(w)
            return _LEAVE  # closed and drained
        w.patience = (
            self._idle_timeout if self._elastic and self._live > self._min_workers else math.inf
        )
        jobs.idle.append(w)
        if jobs.putters:
            jobs.admit()  # an idle worker is room too
        return None

    def _wait_for_job(self, w: _Worker, timeout: float) -> bool:
        """Where an idle worker thread sleeps until it is woken (dumps show this frame as the
        worker's idle state); False if ``timeout`` seconds passed first."""
        if timeout > _TIMEOUT_MAX:
            return w.lock.acquire()
        return w.lock.acquire(True, timeout)

    def _idled_out(self, w: _Worker) -> bool:
        """``w``'s idle wait timed out: True if it has left the books (nothing waits for it)."""
        with self._lock:
            try:
                self._jobs.idle.remove(w)
            except ValueError:
                # Woken as the wait ran out: its lock was released (under this lock) after all.
                w.lock.acquire()
                return False
            if self._live > self._min_workers and self._queued <= 0:
                return self._leave(w)
            return False  # a job came (or it is needed): back to the queue

    def _leave(self, w: _Worker) -> bool:  # lock held
        self._live -= 1
        del self._workers[w.ident]
        self._exiting += 1
        return True

    def _exited(self) -> None:
        """A worker's last step, after its last line of code: the pool is gone once every
        worker has got here, so that joining the threads then never waits on a thread's code."""
        with self._lock:
            self._exiting -= 1
            waiters = self._gone_if_last()
        _wake_gone(waiters)  # outside the lock: nothing foreign runs under it

    def _gone_if_last(self) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        """If no worker is left on the books or running its last line, the pool's workers are
        gone: set that (lock held), and return the loops' waiters to wake."""
        if self._workers or self._exiting:
            return []
        self._workers_gone.set()
        if self._watchdog is not None:
            self._watchdog.wake.notify_all()
        waiters, self._gone_waiters = self._gone_waiters, []
        return waiters

    def _fail_everything(self) -> None:
        with self._lock:
            if self._state == OPEN:
                self._state = CLOSING
            self._jobs.close()
            stopped = self._take_queued(hand_back=False)
        self._settle(stopped)

    def _drain_queue(self, hand_back: bool) -> None:
        with self._lock:
            stopped = self._take_queued(hand_back)
        self._settle(stopped)

    def _take_queued(self, hand_back: bool) -> list[tuple[ThreadJob[Any], str | None]]:
        """Take every queued job out (lock held), handed back or cancelled by the pool, counted;
        :meth:`_settle` resolves their futures once the lock is released."""
        jobs = self._jobs
        items = jobs.items
        stopped: list[tuple[ThreadJob[Any], str | None]] = []
        while items:
            job = items.popleft()
            job._in_queue = False
            if job._fate:  # cancelled by its user while queued: counted already
                jobs.dead -= 1
                continue
            if hand_back:
                job._fate = _HANDED_BACK
                stopped.append((job, self._hand_back(job._fn, job._args, dict(job._kwargs), job)))
            else:
                job._fate = _POOL_CANCELLED
                self._cancelled_queued += 1
                stopped.append((job, None))
        if jobs.putters:
            jobs.admit()
        return stopped

    @staticmethod
    def _settle(stopped: list[tuple[ThreadJob[Any], str | None]]) -> None:
        for job, message in stopped:  # outside the lock: callbacks may call back into the pool
            if message is not None:
                _cf_set_exception(job, JobHandedBack(message))
            else:
                cancel_future(job)

    def resize(self, workers: int) -> None:
        """Change how many worker threads the pool may run (``target_workers``), at once.

        Shrinking retires idle threads now and busy ones when their call returns; growing
        starts threads for the jobs that wait with no idle thread to take them (the others
        start as jobs need them).  No job is lost or interrupted.  Any thread may call it.

        Args:
            workers: The new size, at least 1 (and at least ``min_workers``).

        Raises:
            TypeError, ValueError: For a size that is not an int, or too small.
            PoolClosed: Once the pool is shutting down.
        """
        self._check_resize(workers)
        with self._lock:
            if self._state >= CLOSING:
                raise self._resize_closed(workers)
            self._target = workers
            if self._state != OPEN:
                return
            # Workers told to retire that have not yet done so are not counted: take them back.
            self._retiring -= min(self._retiring, max(0, workers - (self._live - self._retiring)))
            live = self._live - self._retiring
            for _ in range(min(workers - live, self._queued - max(0, live - self._busy))):
                self._spawn()  # for jobs that wait with no idle thread to take them
            excess = self._live - self._retiring - self._target
            if excess > 0:
                self._retiring += excess
                idle = self._jobs.idle
                for _ in range(min(excess, len(idle))):
                    idle.pop().lock.release()  # wakes to retire; busy ones do after their job

    # ----------------------------------------------------------------- submitting

    def _make(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ThreadJob[Any]:
        _check_fn(fn)
        if self._state != OPEN:
            self._start()
        return ThreadJob(self, fn, args, kwargs)

    def _put(self, job: ThreadJob[Any]) -> bool:  # lock held
        """Queue ``job`` if there is room now and nobody waits ahead of it; False if not."""
        jobs = self._jobs
        if jobs.closed:
            raise self._closed_error()
        if jobs.full():
            return False
        self._queue(job)
        return True

    def _queue(self, job: ThreadJob[Any]) -> None:  # lock held
        jobs = self._jobs
        jobs.items.append(job)
        job._in_queue = True
        self._submitted += 1
        if jobs.idle:
            if not jobs.woken:
                jobs.wake_worker()  # one at a time: it wakes the next if more jobs wait
            return
        live = self._live - self._retiring
        if self._state == OPEN and live < self._target and self._queued > live - self._busy:
            self._spawn()  # no idle thread can take it: start one (lazily, as needed)

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> ThreadJob[R]:
        """Queue ``fn(*args, **kwargs)``; block this thread while the queue is full.

        ``fn`` is a plain (blocking) function, called on a worker thread.

        Args:
            fn: The function to run, then its positional and keyword arguments.

        Returns:
            The job's :class:`ThreadJob`, a ``concurrent.futures.Future``.

        Raises:
            TypeError: If ``fn`` is not callable, or is an ``async def`` function (submit those
                to a ``WorkerPool``, or call ``asyncio.run`` inside a plain function).
            PoolClosed: If the pool is shutting down (also while this thread was waiting).
            RuntimeError: If it would have to wait on a thread whose event loop is running (use
                ``submit_nowait`` there, or ``await asyncio.to_thread(pool.submit, ...)``).
                Also if the worker thread the job needs could not start (``can't start new
                thread``): the job stays queued, for a later worker to run or ``shutdown`` to
                hand back.
        """
        job = self._make(fn, args, kwargs)
        with self._lock:
            if self._put(job):
                return job
        _refuse_in_loop(
            "submit",
            f"the queue of {self._label()} is full. Use pool.submit_nowait() (it raises "
            f"QueueFull instead of waiting), or await asyncio.to_thread(pool.submit, ...)",
        )
        self._put_waiting(job)
        return job

    def _put_waiting(self, job: ThreadJob[Any]) -> None:
        """Queue ``job`` once there is room, waiting for it in arrival order."""
        lock = self._lock
        jobs = self._jobs
        with lock:
            if self._put(job):  # room came meanwhile
                return
            if self._state == OPEN and self._live - self._retiring < self._target:
                self._spawn()  # no thread was free to take it: start one (up to the cap)
            putter = _Putter()
            jobs.putters.append(putter)
        try:
            putter.lock.acquire()
        except BaseException:  # KeyboardInterrupt in the main thread: nothing was queued
            with lock:
                if putter.granted:
                    jobs.reserved -= 1
                    jobs.admit()  # the room kept for it goes to the next
                elif not jobs.closed:
                    jobs.putters.remove(putter)
            raise
        with lock:
            if putter.granted:
                jobs.reserved -= 1
            if jobs.closed:
                raise self._closed_error()
            self._queue(job)

    def submit_nowait(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> ThreadJob[R]:
        """Queue ``fn(*args, **kwargs)`` if there is room now, else raise
        :class:`~poolkit.QueueFull` (counted as rejected).  Never blocks; any thread, event
        loops included.

        Raises:
            QueueFull: If the queue is full.
            TypeError, PoolClosed: As :meth:`submit`.
        """
        job = self._make(fn, args, kwargs)
        with self._lock:
            if self._put(job):
                return job
            self._rejected += 1
        raise self._queue_full()

    # ----------------------------------------------------------------- map

    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[False] = False,
    ) -> Iterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[True],
    ) -> Iterator[Outcome[T, R]]: ...
    @overload
    def map(  # outcomes= known only at run time
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: bool = False,
    ) -> Iterator[R] | Iterator[Outcome[T, R]]: ...
    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any],
        /,
        *,
        ordered: bool = True,
        outcomes: bool = False,
    ) -> Iterator[Any]:
        """Run ``fn(item)`` for every item, streaming the results: ``for r in pool.map(...)``.

        As ``WorkerPool.map``: the input is read lazily (at most ``workers + queue_size`` items
        in flight however long it is, where ``ThreadPoolExecutor.map`` submits everything at
        once), results in input order or as they finish, the first failure raised after the
        queued jobs are cancelled (running calls finish; their results are dropped), or every
        result as an :class:`Outcome` with ``outcomes=True``.  Closing the generator early
        cancels what is still queued.

        Args:
            fn: A plain function, called with each item on a worker thread.
            iterable: The items, read lazily.
            ordered: Results in input order (True) or as they finish (False).
            outcomes: Yield an :class:`Outcome` per item instead of raising the first failure.

        Returns:
            An iterator of the results (or of the outcomes).

        Raises:
            TypeError: If ``fn`` is not callable or is an ``async def`` function, or
                ``iterable`` is not a plain iterable (at once).
            Exception: While iterating, the first job's failure (unless ``outcomes=True``).
            PoolClosed: While iterating, if the pool is shut down under it.
        """
        _check_fn(fn)
        if isinstance(iterable, AsyncIterable) or not isinstance(iterable, Iterable):
            raise TypeError(f"map() needs an iterable, got {iterable!r}")
        return map_threads(self, fn, iterable, ordered, outcomes)

    # ----------------------------------------------------------------- shutting down

    def shutdown(self, *, cancel: bool = False, timeout: float | None = None) -> list[UnstartedJob]:
        """Stop accepting jobs and stop the worker threads; see the module docstring.

        ``cancel=False`` drains (every queued and running job finishes; after ``timeout``
        seconds the queued ones left are handed back).  ``cancel=True`` hands back the queued
        jobs at once; running calls cannot be interrupted, so it waits for them to return (and
        raises ``TimeoutError`` if some are still running after ``timeout`` seconds; a later
        shutdown waits again).  Idempotent.  In ``async def`` code, use :meth:`shutdown_async`.

        Args:
            cancel: Hand back queued jobs at once, instead of draining.
            timeout: Seconds to wait for the threads (``None``: no limit).

        Returns:
            The jobs handed back, as :class:`~poolkit.UnstartedJob`.

        Raises:
            TimeoutError: If calls are still running after ``timeout`` seconds.
            RuntimeError: On a thread whose event loop is running, if there are threads to wait
                for (nothing is changed then): it would freeze the loop.
        """
        timeout = check_timeout(timeout)
        if self._workers:
            _refuse_in_loop("shutdown", _USE_ASYNC)
        if not self._begin_shutdown(cancel):
            return []
        if not self._workers_gone.is_set():
            _refuse_in_loop("shutdown", _USE_ASYNC)
        if not self._workers_gone.wait(timeout):
            # The deadline passed: hand back what never started; running calls cannot be
            # interrupted, so if some are left the caller is told (a later shutdown() waits).
            self._drain_queue(hand_back=True)
            if not self._workers_gone.wait(0):
                raise self._still_running(timeout)
        return self._finish()

    async def shutdown_async(
        self, *, cancel: bool = False, timeout: float | None = None
    ) -> list[UnstartedJob]:
        """:meth:`shutdown` for ``async def`` code: the same arguments, result and errors, and
        the event loop runs on while the threads finish.

        If the task awaiting it is cancelled, the shutdown takes the cancel path (queued jobs
        are handed back) and still waits for the running calls to return (at most ``timeout``
        seconds, if given) before the cancellation propagates, as ``WorkerPool.shutdown``
        does: threads cannot be interrupted, so this is the only way to leave none behind.

        Args:
            cancel: Hand back queued jobs at once, instead of draining.
            timeout: Seconds to wait for the threads (``None``: no limit).

        Returns:
            The jobs handed back, as :class:`~poolkit.UnstartedJob`.

        Raises:
            TimeoutError: If calls are still running after ``timeout`` seconds.
        """
        timeout = check_timeout(timeout)
        if not self._begin_shutdown(cancel):
            return []
        try:
            if not await self._wait_gone(timeout):
                self._drain_queue(hand_back=True)
                if not self._workers_gone.is_set():
                    raise self._still_running(timeout)
        except asyncio.CancelledError:
            self._drain_queue(hand_back=True)  # the cancel path, as WorkerPool takes
            loop = asyncio.get_running_loop()
            deadline = None if timeout is None else loop.time() + timeout
            while not self._workers_gone.is_set():
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    break
                try:
                    await self._wait_gone(left)
                except asyncio.CancelledError:
                    continue  # cancelled again: the threads still have to finish
            if self._workers_gone.is_set():
                self._finish()
            raise
        return self._finish()

    def _begin_shutdown(self, cancel: bool) -> bool:
        """Close the pool to new jobs; False if it never started (nothing to wait for)."""
        stopped: list[tuple[ThreadJob[Any], str | None]] = []
        with self._lock:
            state = self._state
            if state == NEW:
                self._state = CLOSED
            elif state == OPEN:
                self._state = CLOSING
            jobs = self._jobs
            jobs.close()
            if state != NEW:
                if cancel:  # in the same step as the close: no worker starts one of them
                    stopped = self._take_queued(hand_back=True)
                # An elastic pool may have no worker left (or only retiring ones) while jobs
                # queued before the close still wait: one worker drains them.
                elif self._live - self._retiring <= 0 and jobs.waiting() > 0:
                    self._spawn()
        self._settle(stopped)
        return state != NEW

    def _still_running(self, timeout: float | None) -> TimeoutError:
        with self._lock:
            running = [w.job for w in self._workers.values() if w.job is not None]
        return TimeoutError(
            f"{self._label()}: {len(running)} call(s) still running after {timeout} s "
            f"(threads cannot be interrupted): {running!r}"
        )

    def _finish(self) -> list[UnstartedJob]:
        """Every worker has run its last line: join the threads (at once) and close the books."""
        with self._lock:
            self._state = CLOSED
            watchdog = None
            if self._watchdog is not None:
                self._watchdog.wake.notify_all()
                watchdog = self._watchdog.thread
            threads, self._threads = self._threads, []
        for thread in threads:  # gone from the books already; now gone for real
            thread.join()
        if watchdog is not None:
            watchdog.join()
        return self.handed_back


_USE_ASYNC = (
    "in async code use `async with ThreadPool(...)`, or `await pool.shutdown_async(...)`, which "
    "wait for the threads without blocking the loop"
)


def _check_fn(fn: object) -> None:
    check_plain_fn(
        fn,
        "a ThreadPool calls plain functions on its threads and has no event loop to await a "
        "coroutine. Submit it to a poolkit.WorkerPool, or call asyncio.run(...) inside a plain "
        "function submitted here",
    )
