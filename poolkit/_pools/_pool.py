"""WorkerPool: long-lived asyncio workers with a bounded queue, limits, retries and clean shutdown.

How it works
------------
Jobs wait in a FIFO queue of ``queue_size``: ``submit`` waits while it is full (backpressure),
blocked submitters get room in the order they came, and a submitter or a worker that is cancelled
while waiting has taken nothing.  It is a ``poolkit.Channel`` in spirit, without its locks: a
``WorkerPool`` lives on one event loop, and on the per-job path the channel's thread safety cost
about a third of a microsecond per job (measured), a fifth of the whole budget.  Each worker is a
task that takes a job and runs it inline, awaiting the function's coroutine (plain functions are
called as they are).  The handle ``submit`` returns is a :class:`Job`, an
``asyncio.Future`` that also knows where its job is: cancelling a queued job removes it, cancelling
a running job cancels its worker's current await (the worker survives and takes the next job).

Accounting
----------
Every job accepted by ``submit`` is counted once in ``submitted`` and is, at every moment a caller
can observe, in exactly one of: queued, running, succeeded, failed, cancelled, timed out, handed
back.  So ``submitted == queued + running + succeeded + failed + cancelled + timed_out +
handed_back`` always holds (the tests check it after every step).  ``rejected`` counts
``submit_nowait`` calls refused for a full queue (never submitted); ``retried`` counts attempts
beyond the first.  ``queue_wait_total``/``run_time_total`` are wall-clock seconds
(``time.monotonic``), whatever loop the pool runs on.

Shutdown
--------
``await shutdown()`` drains: it stops accepting, lets the workers finish every queued and running
job, and waits for them to exit.  ``await shutdown(cancel=True)`` stops accepting, cancels the
running jobs and hands back the ones that never started: their handles raise
:class:`~poolkit.JobHandedBack`, and the list returned (also ``pool.handed_back``) holds their
function, arguments and handle, to be stored or submitted again.  A drain with a ``timeout``
turns into a cancel when the time is up (two-phase, as in aiojobs); a cancel with a ``timeout``
raises ``TimeoutError`` if a job still ignores its cancellation that long after (so a drain with
``timeout=t`` returns or raises within ``2t``).  If the task waiting in ``shutdown()`` is
cancelled, the shutdown takes the cancel path and still waits for the workers to exit before
the cancellation propagates.  ``async with`` drains when the body succeeds and cancels when it
raises or is cancelled; afterwards no worker task remains.  With ``fail_fast``, the first
failure is what ``async with`` (and ``map()``) raise, not the cancellations it caused.

Resizing
--------
``resize(n)`` retires idle workers at once and busy ones when their job ends; workers told to
retire take no more jobs and are not counted towards the new size, so ``resize(1)`` followed by
``resize(4)`` takes them back (or starts new ones) and the pool settles on exactly ``n``.  An
elastic pool below its size starts a worker whenever a submitter would otherwise wait.

Event loops
-----------
A pool is bound to the loop it starts on, and moves to another loop only once that one has
finished: closed (as at the end of ``asyncio.run``), or stopped with none of the pool's workers
left on it.  So a module-level pool serves one ``asyncio.run`` after another (a CLI command each,
a test each), while two loops that are alive at once cannot share it.  When a loop ends it
cancels every task, the pool's workers among them; the pool then hands back the jobs still
queued (nobody is left to run them; they are in ``handed_back``) and starts new workers at its
next use.  Jobs that were running are cancelled, as every other task of that loop is.

The per-job path checks the loop for no more than it cost before: on Python 3.12+ it reads the
running loop (cheaper than the thread's ident it used to read); on 3.11, where reading the running
loop costs a ``getpid()`` system call, it reads the thread's ident and asks the pool's loop
whether it runs (only one loop runs in a thread at a time).

From other threads
------------------
``submit_blocking()`` hands a job to the pool from a thread that is not the pool's: it asks the
loop (``call_soon_threadsafe``) to queue the job, waits in its thread for room, and returns a
``concurrent.futures.Future`` that the job's outcome reaches.  The loop decides alone whether the
job got in, so a timeout or a shutdown never leaves it half-submitted (``poolkit._pools._bridge``).

What is not about asyncio (the options, the counters, the messages) is shared with ``ThreadPool``
in ``poolkit._pools._pool_core``; ``map()``'s machinery is in ``poolkit._pools._map``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import logging
import math
import sys
import threading
import time
import types
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, ClassVar, Literal, ParamSpec, TypeVar, final, overload

import tenacity

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import JobHandedBack, PoolClosed
from poolkit._core._registry import record_origin, register

from ._bridge import ThreadDoor
from ._jobs import Outcome, UnstartedJob
from ._jobs import fn_name as _fn_name
from ._map import _Feed, _MapItem, map_async
from ._pool_core import (
    CANCELLING,
    CLOSED,
    CLOSING,
    DONE,
    NEW,
    OPEN,
    QUEUED,
    RUNNING,
    PoolCore,
)
from ._retry import async_retrying, keep_result, show_as_first

__all__ = ["Job", "WorkerPool"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
logger = logging.getLogger("poolkit.pool")

_CoroutineType = types.CoroutineType
_monotonic = time.monotonic
# How the per-job path tells that it runs where the pool is bound (see "Event loops" above).
_loop_mark: Callable[[], object]
if sys.version_info >= (3, 12):
    # About 40 ns, cheaper than the thread's ident.  The variant that returns None outside a loop,
    # so that a call from a plain thread reaches _start() and its error that says what to do.
    _loop_mark = asyncio._get_running_loop
else:
    _loop_mark = threading.get_ident  # get_running_loop() calls getpid() on 3.11 (~0.2 µs)
# On 3.11 the thread alone does not tell a later loop in the same thread from the pool's: the
# pool's loop must also be running (only one loop runs in a thread at a time).
_ON_311 = sys.version_info < (3, 12)

# Workers resolve jobs through these: Job overrides its public twins to refuse its users.
_future_set_result = asyncio.Future.set_result
_future_set_exception = asyncio.Future.set_exception

_LOOP_ENDED = (
    "the workers of {pool} were cancelled from outside (as asyncio.run does to every task when "
    "it ends) before this job started; it is in pool.handed_back"
)
_LOOP_GONE = (
    "the event loop of {pool} finished (closed, or stopped with none of the pool's workers left) "
    "before this job started; the pool moved to a new loop and handed the job back (it is in "
    "pool.handed_back)"
)


class Job(asyncio.Future[T]):
    """The handle of a submitted job: ``await job`` for its result.

    ``job.cancel()`` cancels the job wherever it is: a queued job never starts, a running job's
    await is cancelled (its worker survives).  Awaiting a job and being cancelled cancels the job,
    as with any task; use ``asyncio.shield(job)`` to wait without that.  A job handed back by
    ``shutdown(cancel=True)`` raises :class:`~poolkit.JobHandedBack`.

    The pool owns a job's outcome: ``set_result()`` and ``set_exception()`` raise
    ``asyncio.InvalidStateError`` (``cancel()`` is how a user stops a job).
    """

    # (Not "_state": asyncio.Future has one, and asyncio's helpers read it.)
    __slots__ = ("_args", "_fn", "_kwargs", "_phase", "_pool", "_queued_at")

    _fn: Callable[..., Any]
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any] | None
    _pool: WorkerPool
    _queued_at: float
    _phase: int

    @property
    def fn(self) -> Callable[..., Any]:
        """The function the job runs."""
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """The positional arguments; released (empty) once the job has run, so that a handle
        kept for its result does not keep its arguments alive."""
        return self._args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments; released (empty) once the job has run, as ``args``."""
        return {} if self._kwargs is None else dict(self._kwargs)

    def set_result(self, result: T, /) -> None:
        """Refused: the pool sets the result when the job's function returns.

        Raises:
            asyncio.InvalidStateError: always; call ``cancel()`` to stop the job.
        """
        raise asyncio.InvalidStateError(self._owned("set_result"))

    def set_exception(self, exception: type | BaseException, /) -> None:
        """Refused: the pool sets the exception when the job's function raises.

        Raises:
            asyncio.InvalidStateError: always; call ``cancel()`` to stop the job.
        """
        raise asyncio.InvalidStateError(self._owned("set_exception"))

    def _owned(self, what: str) -> str:
        return (
            f"{what}() on a job of {self._pool._label()} ({_fn_name(self._fn)}): the pool sets "
            f"a job's outcome itself when its function returns or raises; to stop the job, "
            f"call job.cancel()"
        )

    def cancel(self, msg: Any | None = None) -> bool:
        phase = self._phase
        if phase == QUEUED:
            self._phase = DONE
            self._pool._cancelled_in_queue()
            return super().cancel(msg)
        if phase == RUNNING:
            self._phase = CANCELLING
            self._pool._cancel_run(self, msg)
            return True
        if phase == CANCELLING:
            return True
        return super().cancel(msg)

    # How a worker settles a job (the same three methods on map() items).
    def _resolve(self, value: Any) -> None:
        if not self.done():
            _future_set_result(self, value)

    def _reject(self, exc: BaseException) -> None:
        if not self.done():
            _future_set_exception(self, exc)

    def _drop(self) -> None:
        super().cancel()


AnyJob = Job[Any] | _MapItem


class _Worker:
    """One worker: a task that takes jobs from the pool's queue and runs them inline.

    This is the part of a ``WorkerPool`` that is about asyncio: how a worker waits for a job
    (:meth:`_JobQueue.wait_for_job`), runs it (awaiting its coroutine, under the pool's limit,
    timeout and retry policy) and settles it, with what cancellation means on the way.  The
    books it keeps are the pool's.
    """

    __slots__ = (
        "fresh",
        "fut",
        "ident",
        "job",
        "killed",
        "pool",
        "retiring",
        "started",
        "task",
        "woken",
    )

    def __init__(self, pool: WorkerPool, ident: int) -> None:
        self.pool = pool
        self.ident = ident
        self.fut: asyncio.Future[Any] | None = None  # set while idle
        self.job: AnyJob | None = None
        self.retiring = False  # resize() asked it to exit; it takes no more jobs
        self.started = False  # its coroutine has begun (so its ``finally`` will run)
        self.killed = False  # it ended by an exception (cancelled from outside), not by choice
        self.task: asyncio.Task[None] | None = None
        self.woken = False  # woken for work (wake_worker), and has not run yet
        self.fresh = False  # woken for work, and has not taken a job since

    async def run(self) -> None:
        """The worker's task: take jobs and run them until the pool closes, resizes or idles it
        out (elastic), or the task is cancelled from outside."""
        pool = self.pool
        # The task as seen from inside: with an eager task factory this runs before
        # create_task() has returned, and a job that cancels itself at once must find it.
        me = self.task = asyncio.current_task()
        assert me is not None
        self.started = True
        logger.debug("%s: worker %d started", pool._label(), self.ident)
        jobs = pool._jobs
        items = jobs.items
        sources = jobs.sources  # the maps running in the pool (a list changed in place)
        # Module constants as locals: cheaper to read on the per-job path.
        queued, running, done = QUEUED, RUNNING, DONE
        monotonic, coroutine, job_class = _monotonic, _CoroutineType, Job
        set_result = _future_set_result
        try:
            while True:
                if self.retiring:
                    return  # resize() lowered the target while this worker was idle
                job: AnyJob | None = None
                if sources:
                    # A map's items are taken straight from its input.  When both a queued job
                    # and a map's item wait, workers take one of each in turn.
                    jobs.turn = not jobs.turn
                    if jobs.turn or not items:
                        job = sources[0].take() if len(sources) == 1 else pool._pull()
                if job is not None:
                    pool._submitted += 1  # and started at once: it never waited in the queue
                    t0 = monotonic()
                elif items:  # a job is waiting: the hot path
                    queued_job = items.popleft()
                    if jobs.putters:
                        jobs.admit()
                    if queued_job._phase != queued:
                        jobs.dead -= 1
                        continue  # cancelled while queued: already counted
                    job = queued_job
                    t0 = monotonic()
                    pool._wait_total += t0 - queued_job._queued_at
                else:
                    if jobs.closed:
                        return  # closed and drained
                    idle_for = (
                        pool._idle_timeout
                        if pool._elastic and pool._live > pool._min_workers
                        else math.inf
                    )
                    if (
                        not await jobs.wait_for_job(self, idle_for)
                        and not items  # a job may have come as the idle timer fired
                        and not sources  # a map is running: it may need this worker soon
                        and pool._live > pool._min_workers
                    ):
                        return  # idle for too long (elastic), and not needed to stay
                    continue
                # More jobs may wait: wake more workers, a few at a time (see _JobQueue).
                if self.fresh:
                    self.fresh = False
                    if items or sources:
                        jobs.fan_out()
                elif (items or sources) and jobs.idle and not jobs.waking:
                    jobs.wake_worker()
                if sources and pool._elastic and not jobs.idle:
                    pool._grow()  # an elastic pool below its size starts a worker
                job._phase = running
                self.job = job
                pool._started += 1
                try:
                    if pool._inline:
                        kwargs = job._kwargs
                        failed: Exception | None = None
                        try:
                            result = (
                                job._fn(*job._args)
                                if kwargs is None
                                else job._fn(*job._args, **kwargs)
                            )
                            if result.__class__ is coroutine or hasattr(result, "__await__"):
                                result = await result
                        except Exception as exc:
                            if pool._retry is None:
                                raise
                            failed = exc  # retried outside this block: no chaining to it
                        if failed is not None:
                            result = await self._retries(job, failed, t0)
                    else:
                        result = await self._attempts(job, t0)
                except BaseException as exc:
                    phase = job._phase
                    if phase == done:
                        raise  # let go with its closed loop (_abandon): nothing left to count
                    self._end(job, t0)
                    is_cancel = isinstance(exc, asyncio.CancelledError)
                    if phase == CANCELLING:
                        # The job was cancelled: that is its outcome, whatever it raised.
                        pool._cancelled_running += 1
                        job._drop()
                        if me.uncancel() > 0:
                            raise  # somebody cancelled the worker too
                        if not is_cancel:
                            await _take_pending_cancel(me)
                    elif is_cancel:
                        # The job's own code raised CancelledError (it awaited something that
                        # was cancelled): that ends the job, not the worker, unless the worker
                        # itself is being cancelled.
                        pool._cancelled_running += 1
                        job._drop()
                        if me.cancelling():
                            raise
                    elif exc.__class__ is _TimedOut:
                        pool._timed_out += 1
                        job._reject(TimeoutError(str(exc)))
                    else:
                        pool._failed += 1
                        job._reject(exc)
                        if pool._first_failure(exc):
                            if job.__class__ is job_class:
                                job.exception()  # async with raises it: it is not lost
                            pool._fail_everything()
                    if not is_cancel and not isinstance(exc, Exception):
                        raise  # KeyboardInterrupt, SystemExit: not the job's business to absorb
                else:
                    phase = job._phase
                    job._phase = done  # _end() inlined: the hot path
                    job._args = ()  # a kept handle must not pin its arguments
                    job._kwargs = None
                    self.job = None
                    pool._run_total += monotonic() - t0
                    if phase != running:
                        if phase == done:
                            return  # let go with its closed loop (_abandon)
                        # Cancelling: it finished anyway; the cancellation wins.
                        pool._cancelled_running += 1
                        job._drop()
                        if me.uncancel() > 0:
                            raise asyncio.CancelledError
                        await _take_pending_cancel(me)
                    else:
                        pool._succeeded += 1
                        if job.__class__ is job_class:  # Job._resolve() inlined; a running
                            set_result(job, result)  # Job is only resolved here (or cancelling)
                        else:
                            job._resolve(result)
                if pool._shrinking and pool._live - pool._retiring > pool._target:
                    return  # resize() lowered the target
        except BaseException:
            self.killed = True
            raise
        finally:
            pool._gone(self)

    def _end(self, job: AnyJob, t0: float) -> None:
        job._phase = DONE
        job._args = ()  # a kept handle must not pin its arguments
        job._kwargs = None
        self.job = None
        self.pool._run_total += _monotonic() - t0

    async def _attempts(self, job: AnyJob, started: float) -> Any:
        """Run ``job`` through the limit, the timeout and the retry policy (the slow path);
        ``started`` is when its first attempt began."""
        if self.pool._retry is None:
            return await self._attempt(job)
        failed: Exception | None = None
        if self.pool._retry_fast:  # the first attempt without tenacity (see first_attempt_is_free)
            try:
                return await self._attempt(job)
            except Exception as exc:
                failed = exc  # retried outside this block: no chaining to it
        return await self._retries(job, failed, started)

    async def _retries(self, job: AnyJob, replay: Exception | None, started: float) -> Any:
        """The attempts under tenacity; ``replay`` is the first attempt's error if that attempt
        was made without it (tenacity is then shown it as its own first attempt's)."""
        pool = self.pool
        policy = pool._retry
        assert policy is not None
        first = True
        result = None
        async for attempt in async_retrying(policy):
            if not first:
                if job._phase == CANCELLING:
                    # Cancelled, and the function turned that into an error: never retried.
                    raise asyncio.CancelledError
                pool._retried += 1
            first = False
            with attempt:
                if replay is not None:
                    error, replay = replay, None
                    show_as_first(attempt, error, started)
                result = await self._attempt(job)
            keep_result(attempt, result)
        return result

    async def _attempt(self, job: AnyJob) -> Any:
        pool = self.pool
        limit = pool._limit
        key = None
        if limit is not None:
            key = pool._key(job) if pool._key is not None else None
            await limit.acquire(1, key=key)
        try:
            kwargs = job._kwargs
            if pool._timeout is None:
                result = job._fn(*job._args) if kwargs is None else job._fn(*job._args, **kwargs)
                if result.__class__ is _CoroutineType or hasattr(result, "__await__"):
                    result = await result
                return result
            try:
                async with asyncio.timeout(pool._timeout) as scope:
                    result = (
                        job._fn(*job._args) if kwargs is None else job._fn(*job._args, **kwargs)
                    )
                    if result.__class__ is _CoroutineType or hasattr(result, "__await__"):
                        result = await result
                    return result
            except TimeoutError as exc:
                if scope.expired():
                    raise _TimedOut(pool._timed_out_message(job._fn)) from exc
                raise
        finally:
            if limit is not None:
                limit.release(1, key=key)


class _TimedOut(TimeoutError):
    """An attempt ran past the pool's timeout (becomes a TimeoutError on the job's handle)."""


class _JobQueue:
    """The pool's queue: FIFO, bounded, for one event loop, without locks.

    An idle worker counts as room (so ``queue_size=0`` hands jobs straight to idle workers, like
    an unbuffered channel).  Wake-ups are lazy.  A job that arrives while workers are idle wakes
    the first idle worker, unless one is on its way already (``waking`` counts them); it takes
    whatever is at the head when it runs.  Room that frees up
    is kept (``reserved``) for the first blocked submitter, which puts its job in when it runs;
    newcomers do not take kept room.  Whoever is cancelled after being woken passes the wake-up
    on, so nothing is lost and nobody waits beside work or room.  A job cancelled while queued
    stays in ``items`` until a worker pops it (removing it from the middle would cost O(n)), but
    it is counted in ``dead`` and takes no room.

    ``sources`` are the running maps, whose items workers take without queueing them.  For
    queued jobs and maps alike, a worker woken for work that takes a job while more wait wakes
    two more (:meth:`fan_out`), and any worker that takes one while more wait and no wake-up is
    in flight wakes one.  So a burst of jobs that wait on I/O has every worker going within a
    few turns of the loop (doubling each turn), while a flood of quick jobs, which the first
    worker clears by itself, costs a few wake-ups instead of one per job.
    """

    __slots__ = (
        "closed",
        "dead",
        "idle",
        "items",
        "loop",
        "putters",
        "reserved",
        "size",
        "sources",
        "turn",
        "waking",
    )

    def __init__(self, size: float) -> None:
        self.items: deque[Job[Any]] = deque()
        self.size = size
        self.idle: deque[_Worker] = deque()  # workers waiting for a job
        self.putters: deque[asyncio.Future[None]] = deque()  # submitters waiting for room
        self.reserved = 0  # room kept for woken submitters
        self.dead = 0  # cancelled jobs still in items
        self.closed = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sources: list[_Feed] = []  # running maps, whose items workers take directly
        self.turn = False  # flips at each take while maps run: queue and maps take turns
        self.waking = 0  # idle workers woken for work that have not run yet

    def offer(self, job: Job[Any]) -> bool:
        """Put ``job`` in if there is room and nobody is ahead; never waits."""
        items = self.items
        if self.putters or len(items) - self.dead + self.reserved >= self.size + len(self.idle):
            return False
        items.append(job)
        if self.idle and not self.waking:
            self.wake_worker()
        return True

    async def put(self, job: Job[Any], closed: Callable[[], PoolClosed]) -> None:
        """Put ``job`` in, waiting for room in arrival order.  Raises ``closed()`` on close."""
        loop = self.loop
        assert loop is not None
        fut = loop.create_future()
        self.putters.append(fut)
        # Room may have come since the caller looked: a worker started for this very job (with
        # an eager task factory it is idle already, and nobody else would admit us).
        self.admit()
        try:
            await fut
        except BaseException:
            if fut.cancelled() or not fut.done():
                try:
                    self.putters.remove(fut)
                except ValueError:
                    pass
            elif fut.exception() is None:  # woken with kept room, then cancelled: pass it on
                self.reserved -= 1
                self.admit()
            raise
        self.reserved -= 1
        if self.closed:
            raise closed()
        self.items.append(job)
        if self.idle and not self.waking:
            self.wake_worker()

    def admit(self) -> None:
        """Keep freed room for blocked submitters, first come first served."""
        putters = self.putters
        while putters and len(self.items) - self.dead + self.reserved < self.size + len(self.idle):
            fut = putters.popleft()
            if not fut.done():
                self.reserved += 1
                fut.set_result(None)

    def wake_worker(self) -> bool:
        """Wake the first idle worker for work; False if there was none."""
        idle = self.idle
        while idle:
            w = idle.popleft()
            fut = w.fut
            w.fut = None  # off the idle list already (wait_for_job need not look for it)
            if fut is not None and not fut.done():
                fut.set_result(None)
                w.woken = True
                self.waking += 1
                return True
        return False

    def fan_out(self) -> None:
        """A worker woken for work took a job and more may wait: wake up to two more (for queued
        jobs, only while they outnumber the wake-ups in flight)."""
        for _ in range(2):
            if not self.idle or (not self.sources and len(self.items) <= self.waking):
                return
            self.wake_worker()

    async def wait_for_job(self, w: _Worker, timeout: float) -> bool:
        """Where an idle worker sleeps until a job may be there (dumps show this frame as the
        worker's idle state); False if ``timeout`` seconds passed first."""
        loop = self.loop
        assert loop is not None
        fut = w.fut = loop.create_future()
        self.idle.append(w)
        if self.putters:
            self.admit()  # an idle worker is room too
        timer = None if timeout == math.inf else loop.call_later(timeout, _settle, fut, False)
        try:
            got = await fut
        except BaseException:
            if w.woken:  # woken for work, then cancelled: somebody else takes it
                w.woken = False
                self.waking -= 1
                if self.items or self.sources:
                    self.wake_worker()
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if w.fut is not None:  # not woken by wake_worker(), which took it off the list
                w.fut = None
                try:
                    self.idle.remove(w)
                except ValueError:
                    pass
        if w.woken:
            w.woken = False
            self.waking -= 1
            w.fresh = True
        return got is not False

    def close(self, error: Callable[[], PoolClosed]) -> None:
        """No more jobs: blocked submitters fail, running maps stop taking items, idle workers
        wake up to find out."""
        self.closed = True
        for feed in list(self.sources):
            feed.end(error())
        while self.putters:
            fut = self.putters.popleft()
            if not fut.done():
                fut.set_exception(error())
                fut.exception()
        while self.idle:
            self.wake_worker()


def _false() -> bool:
    return False


def _settle(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _quietly(resolve: Callable[[], object]) -> None:
    """Resolve a future whose loop may be closed: it is resolved all the same, only its
    callbacks cannot be scheduled (and nobody is left on that loop to run them)."""
    try:
        resolve()
    except RuntimeError:
        pass


async def _take_pending_cancel(me: asyncio.Task[Any]) -> None:
    """Absorb a cancellation of the worker that was meant for its job and is still pending.

    When a job cancels itself (its own handle, say, through a "cancel the group" helper) the
    worker task is cancelled while it runs, so the request waits for the task's next await.
    ``uncancel()`` withdraws it from the count, but before Python 3.13 not from the task: the
    next job (or the idle wait) would receive it.  One extra step receives it here instead.
    """
    try:
        await asyncio.sleep(0)
    except asyncio.CancelledError:
        if me.cancelling():
            raise  # somebody cancelled the worker meanwhile


@final
class WorkerPool(PoolCore[tenacity.AsyncRetrying]):
    """A pool of long-lived asyncio workers: ``async with WorkerPool(workers=8) as pool:``.

    Args (all keyword-only):
        workers: How many jobs run at once (in an elastic pool, the most); at least 1.
        queue_size: Jobs waiting for a worker before ``submit`` waits; default ``workers``,
            ``math.inf`` for no bound.  ``map`` keeps ``workers + queue_size`` items in flight.
            The default was chosen by measurement (``python -m benchmarks.queue_depths``):
            since ``map`` reads its input in the workers and idle workers are woken a few at
            a time, a deeper queue changes ``map``'s cost per job little and saves about a
            fifth of ``submit``'s for jobs that do nothing at all, while every queued job
            (with its arguments) and every result ``map`` holds for a slow consumer costs
            memory, backpressure reaches the submitter later, and a shutdown has more to
            drain or hand back.  Go deeper for floods of tiny jobs; go to 0 for a hand-off
            (``submit`` returns once a worker is free to take the job).
        name: A name for dumps, metrics, logs and ``repr``.
        limit: A :class:`CapacityLimiter`, :class:`TokenBucket`, :class:`Limits`,
            :class:`PerKey` or ``aiolimiter.AsyncLimiter``, acquired for every attempt of
            every job.
        key: A function of the :class:`Job` giving its key, for per-key limits.
        timeout: Seconds per attempt; a job past it ends with ``TimeoutError``.
        retry: A :class:`RetryPolicy` or a ``tenacity.AsyncRetrying``.
        fail_fast: The first failure cancels everything else, like Go's errgroup, and
            ``async with`` raises it.
        min_workers: Makes the pool elastic: workers beyond this many exit after
            ``idle_timeout`` idle seconds (as in ants).
        idle_timeout: Seconds an elastic pool's extra worker stays idle before it exits.

    Workers start on ``async with`` or on the first submit, on the running event loop, and the
    pool is bound to that loop.  Used from another loop while that one is alive, it raises
    ``RuntimeError`` ("belongs to another event loop"); once the loop it is bound to has
    finished (closed, as at the end of ``asyncio.run``, or stopped with none of the pool's
    workers left on it) the pool moves to the loop that uses it next, with new workers.  So a
    module-level pool may serve one ``asyncio.run`` after another, e.g. one per CLI command or
    one per test.  When a loop ends it cancels the pool's workers with every other task: jobs
    still queued are handed back (``handed_back``) rather than left to nobody.  ``async with``
    (or ``await pool.shutdown()``) before the loop ends remains the clean way.

    Threads that are not the loop's submit with :meth:`submit_blocking`, which returns a
    ``concurrent.futures.Future``.

    Worker start and exit are logged at DEBUG on the ``poolkit.pool`` logger with the pool's
    name and the worker's number.  See the module docstring for the accounting identity and the
    two shutdown modes.

    Raises:
        TypeError, ValueError: For a bad option, naming it and the value received; ``key``
            without ``limit`` is a ``ValueError``.
    """

    __slots__ = (
        "_door",
        "_inline",
        "_jobs",
        "_loop",
        "_loop_running",
        "_mark",
        "_ready",
        "_shrinking",
        "_stalled",
        "_workers",
        "_workers_gone",
    )

    _MAP_CANCELLED: ClassVar[tuple[type[BaseException], ...]] = (asyncio.CancelledError,)
    _MAP_STOPPED: ClassVar[str] = "{pool} was shut down with cancel=True while map() was running"
    _RETRYING = tenacity.AsyncRetrying

    def _setup(self) -> None:
        # No limit, no timeout, and no tenacity before a first attempt fails: _Worker.run()
        # calls the job's function itself (the hot path), and hands a failure to _retries() if
        # retrying.
        self._inline = (
            self._limit is None
            and self._timeout is None
            and (self._retry is None or self._retry_fast)
        )
        self._jobs = _JobQueue(self._queue_size)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._mark: object = None  # _loop_mark() where the pool is bound (see the module)
        self._loop_running: Callable[[], bool] = _false  # its is_running (3.11's check)
        # The per-job path may skip _start(): open, bound, and with workers.  Cleared whenever
        # the pool has no worker, or lost one to an outside cancellation.
        self._ready = False
        self._stalled = False  # workers were cancelled from outside (their loop is ending?)
        self._door = ThreadDoor(self)  # how other threads submit (submit_blocking)
        self._workers: dict[int, _Worker] = {}
        self._workers_gone: asyncio.Future[None] | None = None
        self._shrinking = False  # set by resize() while there are more workers than wanted
        register(self, "pool")

    # ----------------------------------------------------------------- workers

    def _start(self) -> None:
        """The slow path of every way in: start the pool on the running loop, or check it.

        A new pool binds to the running loop.  An open pool on another loop moves to this one if
        its loop has finished (else ``RuntimeError``); one that lost workers gets new ones.
        Raises :class:`~poolkit.PoolClosed` once the pool is shutting down, and
        ``RuntimeError`` outside a running event loop (threads use :meth:`submit_blocking`).
        """
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                f"{self._label()} runs on an event loop: use it from a task of that loop "
                f"(from another thread, submit with submit_blocking())"
            ) from None
        state = self._state
        if state == NEW:
            self._bind(loop)
            self._state = OPEN
        elif state != OPEN:
            raise self._closed_error()
        elif loop is not self._loop:
            self._move_to(loop)
        if self._stalled:
            self._stalled = False
            self._door.open()
        want = self._min_workers if self._elastic else self._target
        while self._live - self._retiring < want:
            self._spawn()
        # Fast again only while workers exist: a pool with none checks its loop at each use.
        self._ready = bool(self._workers)

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = self._jobs.loop = loop
        self._mark = _loop_mark()
        self._loop_running = loop.is_running

    def _move_to(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind an open (or closing) pool to ``loop`` if the loop it is bound to has finished."""
        old = self._loop
        assert old is not None
        if not old.is_closed():
            if old.is_running():
                raise RuntimeError(
                    f"{self._label()} belongs to another event loop, which is running in another "
                    f"thread; use the pool from that loop, or from a plain thread with "
                    f"submit_blocking()"
                )
            if self._workers or self._jobs.putters:
                raise RuntimeError(
                    f"{self._label()} belongs to another event loop, which has stopped but still "
                    f"holds {len(self._workers)} of the pool's workers (it was neither closed nor "
                    f"did it cancel its tasks); shut the pool down on that loop, or close it"
                )
        self._abandon()
        self._bind(loop)
        if self._state == OPEN:
            self._door.open()
        logger.debug("%s: moved to a new event loop (its own had finished)", self._label())

    def _abandon(self) -> None:
        """Let go of what the pool had on its finished loop.  Workers still on the books can
        never run again (their loop is closed): they leave, their running jobs counted as
        cancelled.  Jobs still queued are handed back, and submitters of that loop forgotten."""
        for w in self._workers.values():
            job = w.job
            w.job = None
            if job is not None and job._phase in (RUNNING, CANCELLING):
                job._phase = DONE  # the worker, should its coroutine ever be closed, sees this
                self._cancelled_running += 1
                _quietly(job._drop)
        self._workers.clear()
        self._live = self._retiring = 0
        self._shrinking = False
        jobs = self._jobs
        jobs.idle.clear()
        jobs.putters.clear()
        jobs.sources.clear()  # their consumers were on that loop: nobody is left to read them
        jobs.reserved = 0
        jobs.waking = 0
        self._drain_queue(hand_back=True, why=_LOOP_GONE)
        self._door.let_go()
        self._workers_gone = None

    def _spawn(self) -> None:
        loop = self._loop
        assert loop is not None
        self._next_id += 1
        w = _Worker(self, self._next_id)
        self._workers[w.ident] = w
        self._live += 1
        label = f"{self._label()} worker {w.ident}"
        # (With an eager task factory the worker runs up to its first wait inside create_task.)
        w.task = loop.create_task(w.run(), name=f"poolkit {label}")
        w.task.add_done_callback(lambda _: None if w.started else self._killed_early(w))
        record_origin(w.task, label)

    def _killed_early(self, w: _Worker) -> None:
        w.killed = True  # cancelled before its coroutine ever ran
        self._gone(w)

    def _gone(self, w: _Worker) -> None:
        """Take an exited worker off the books (from its ``finally``, or from its task's
        done-callback if the task was cancelled before its coroutine ever ran)."""
        if self._workers.get(w.ident) is not w:
            return  # let go with its closed loop (_abandon): the books are settled
        self._live -= 1
        if w.retiring:
            self._retiring -= 1
        if self._live - self._retiring <= self._target:
            self._shrinking = False
        del self._workers[w.ident]
        logger.debug("%s: worker %d exited", self._label(), w.ident)
        if w.killed and self._state == OPEN:
            self._stalled = True  # the next use from the loop starts new workers
            self._ready = False
        if not self._workers:
            self._ready = False
            if self._stalled and self._state == OPEN:
                self._orphaned()
        jobs = self._jobs
        if (jobs.items or jobs.sources) and jobs.idle:
            jobs.wake_worker()  # it may have been woken for a job left behind
        gone = self._workers_gone
        if not self._workers and gone is not None and not gone.done():
            gone.set_result(None)

    def _orphaned(self) -> None:
        """Every worker of the open pool was cancelled from outside, as ``asyncio.run`` does to
        every task when it ends: nobody is left to run the queued jobs, so they are handed back
        now, and ``submit_blocking()`` calls waiting for room give up, while the loop still
        runs to tell their owners."""
        self._drain_queue(hand_back=True, why=_LOOP_ENDED)
        self._door.close(self._door.stalled_error)
        for feed in self._jobs.sources:
            feed.wake_consumer()  # a map still running starts new workers (see map_async)

    def _fail_everything(self) -> None:
        """fail_fast: the first failure cancels every queued and running job; no more submits."""
        if self._state == OPEN:
            self._state = CLOSING
        self._ready = False
        self._door.close(self._closed_error)
        self._jobs.close(self._closed_error)
        self._drain_queue(hand_back=False)
        self._cancel_running()

    def _cancelled_in_queue(self) -> None:
        """A queued job was cancelled: count it, and give its room to a blocked submitter."""
        self._cancelled_queued += 1
        jobs = self._jobs
        jobs.dead += 1
        if jobs.putters:
            jobs.admit()

    def _drain_queue(self, hand_back: bool, why: str | None = None) -> None:
        """Take every queued job out: handed back (``why`` says why, if not a shutdown), or
        cancelled (``fail_fast``)."""
        items = self._jobs.items
        while items:
            job = items.popleft()
            if job._phase != QUEUED:
                self._jobs.dead -= 1
                continue
            job._phase = DONE
            if hand_back:
                kwargs = {} if job._kwargs is None else dict(job._kwargs)
                handle = job if isinstance(job, Job) else None
                message = self._hand_back(job._fn, job._args, kwargs, handle, why)
                try:
                    job._reject(JobHandedBack(message))
                except RuntimeError:
                    pass  # its loop is closed: resolved all the same (see _quietly)
                if handle is not None:
                    handle.exception()  # reported through that list: not "never retrieved"
            else:
                self._cancelled_queued += 1
                _quietly(job._drop)

    def _cancel_running(self) -> None:
        for w in list(self._workers.values()):
            job = w.job
            if job is not None and job._phase == RUNNING:
                job.cancel()

    def _cancel_run(self, job: AnyJob, msg: Any) -> None:
        """Cancel the await of the worker running ``job``.  (Cancelling is rare: a scan of the
        workers costs less, over all jobs, than keeping a worker reference on every job.)"""
        for w in self._workers.values():
            if w.job is job and w.task is not None:
                w.task.cancel(msg)
                return

    def resize(self, workers: int) -> None:
        """Change how many workers the pool keeps (the most, in elastic mode), at once.

        Growing starts workers now (in elastic mode, as jobs need them).  Shrinking retires idle
        workers now and busy ones when they finish their job; no job is lost or interrupted.
        Before the pool starts, it only sets the size it will start with.  Call it on the
        pool's event loop.

        Args:
            workers: The new size, at least 1 (and at least ``min_workers``).

        Raises:
            TypeError, ValueError: For a size that is not an int, or too small.
            PoolClosed: Once the pool is shutting down.
        """
        self._check_resize(workers)
        if self._state >= CLOSING:
            raise self._resize_closed(workers)
        if self._state != OPEN:
            self._target = workers
            return
        self._start()  # on the pool's loop (or its successor), and with its workers
        self._target = workers
        # Workers told to exit that have not yet exited are not counted: take them back first.
        for w in self._workers.values():
            if self._live - self._retiring >= workers:
                break
            if w.retiring:
                w.retiring = False
                self._retiring -= 1
        if not self._elastic:
            while self._live - self._retiring < workers:
                self._spawn()
        excess = self._live - self._retiring - workers
        for w in self._workers.values():
            if excess <= 0:
                break
            if w.job is None and not w.retiring:  # idle (or not started yet): exits at once
                w.retiring = True
                self._retiring += 1
                excess -= 1
                if w.fut is not None and not w.fut.done():
                    w.fut.set_result(None)
        self._shrinking = excess > 0  # busy workers exit when their job is done

    # ----------------------------------------------------------------- submitting

    def _make(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Job[Any]:
        """A new job's handle, once the pool is started here (the way in of every submit).
        Its loop check: open, with workers, and on the pool's loop (see "Event loops")."""
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not self._ready or _loop_mark() != self._mark or (_ON_311 and not self._loop_running()):
            self._start()
        job: Job[Any] = Job(loop=self._loop)
        job._fn = fn
        job._args = args
        job._kwargs = kwargs or None
        job._phase = QUEUED
        job._pool = self
        job._queued_at = _monotonic()
        return job

    def _accepted(self) -> None:
        self._submitted += 1
        if self._elastic:
            self._accepted_elastic()

    def _accepted_elastic(self) -> None:
        live = self._live - self._retiring  # retiring workers take no more jobs
        if self._queued > live - self._running and live < self._target:
            self._spawn()

    @overload
    async def submit(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...
    @overload
    async def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    async def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Queue ``fn(*args, **kwargs)`` and return its :class:`Job`; wait while the queue is full.

        ``fn`` is normally a coroutine function: the worker awaits its coroutine (or any
        awaitable ``fn`` returns).  A plain function is called in the worker *on the event
        loop's thread*: right for quick synchronous work, but one that blocks (``time.sleep``,
        file or socket I/O) freezes every task of the loop until it returns, and the pool's
        ``timeout`` cannot interrupt it.  Run blocking code in a :class:`~poolkit.ThreadPool`
        (or ``await asyncio.to_thread(...)`` inside an async job).  If cancelled while waiting
        for room, nothing was submitted.

        Args:
            fn: The function to run, then its positional and keyword arguments.

        Returns:
            The job's :class:`Job` handle: ``await`` it for the result.

        Raises:
            TypeError: If ``fn`` is not callable.
            PoolClosed: If the pool is shutting down (also for a submitter that was waiting).
            RuntimeError: If the pool belongs to another event loop that is still alive.
        """
        job = self._make(fn, args, kwargs)
        # _JobQueue.offer() and _accepted() inlined: this is the per-job path.
        jobs = self._jobs
        items = jobs.items
        if not jobs.putters and len(items) - jobs.dead + jobs.reserved < jobs.size + len(jobs.idle):
            items.append(job)
            if jobs.idle and not jobs.waking:
                jobs.wake_worker()
        else:
            await self._put(job)
        self._submitted += 1
        if self._elastic:
            self._accepted_elastic()
        return job

    # ----------------------------------------------------------------- map() sources

    def _add_source(self, feed: _Feed) -> None:
        """A map starts: workers take its items from now on."""
        self._jobs.sources.append(feed)
        self._source_ready()

    def _drop_source(self, feed: _Feed) -> None:
        try:
            self._jobs.sources.remove(feed)
        except ValueError:
            pass

    def _source_ready(self) -> None:
        """A map has items for the workers: wake an idle one (unless one is on its way), or
        start one in an elastic pool below its size.  Busy workers look when they finish."""
        jobs = self._jobs
        if jobs.waking or jobs.closed:
            return
        if jobs.idle:
            jobs.wake_worker()
        elif self._elastic:
            self._grow()

    def _grow(self) -> None:
        if self._live - self._retiring < self._target:
            self._spawn()

    def _pull(self) -> _MapItem | None:
        """A worker's turn at the maps when several run: the next item of the first that has
        one (with one map, the worker asks it directly)."""
        sources = self._jobs.sources
        for feed in list(sources):
            job = feed.take()
            if job is not None:
                if not feed.ended:  # the next worker asks the others first: round robin
                    sources.remove(feed)
                    sources.append(feed)
                return job
        return None

    async def _put(self, job: Job[Any]) -> None:
        """Wait for room for ``job``.  An elastic pool below its size starts a worker first:
        the workers it has are all busy, and with ``min_workers=0`` it may have none at all."""
        if self._elastic and self._live - self._retiring < self._target:
            self._spawn()
        await self._jobs.put(job, self._closed_error)

    @overload
    def submit_nowait(
        self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Job[R]: ...
    @overload
    def submit_nowait(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> Job[R]: ...
    def submit_nowait(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job[Any]:
        """Queue ``fn(*args, **kwargs)`` if there is room now, else raise
        :class:`~poolkit.QueueFull` (counted as rejected).

        Call it on the pool's event loop (from another thread use :meth:`submit_blocking`).

        Raises:
            QueueFull: If the queue is full.
            TypeError, PoolClosed, RuntimeError: As :meth:`submit`.
        """
        job = self._make(fn, args, kwargs)
        if not self._jobs.offer(job):
            self._rejected += 1
            job._phase = DONE
            raise self._queue_full()
        self._accepted()
        return job

    # ----------------------------------------------------------------- from other threads

    # Typed by the result only: a ParamSpec cannot have timeout= beside its keyword arguments.
    @overload
    def submit_blocking(
        self,
        fn: Callable[..., Awaitable[R]],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> cf.Future[R]: ...
    @overload
    def submit_blocking(
        self, fn: Callable[..., R], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> cf.Future[R]: ...
    def submit_blocking(
        self, fn: Callable[..., Any], /, *args: Any, timeout: float | None = None, **kwargs: Any
    ) -> cf.Future[Any]:
        """From a thread that is not the pool's: queue ``fn(*args, **kwargs)`` on the pool's
        event loop, blocking this thread while the queue is full, and return a
        ``concurrent.futures.Future`` for the job's result.

        The job is exactly one submitted with ``await pool.submit(...)`` on the loop: the same
        queue, order and counters.  Its outcome reaches the future: the result, the exception,
        a cancellation, or :class:`~poolkit.JobHandedBack` if the pool hands it back (at a
        cancelling shutdown, or when the loop ends and cancels the workers).  Cancelling the
        future cancels the job (queued, it never runs; running, its await is cancelled); the
        future is cancelled at once, as ``concurrent.futures`` does, while the pool's counters
        say what became of the job.  The loop alone decides whether the job got in, so an
        error raised here means it did not.  A loop closed before it got to the request (its
        pending callbacks are dropped) refuses it all the same; only a loop that stops without
        closing and never runs again leaves the thread waiting, as long as ``timeout``.
        ``fn``'s own keyword ``timeout`` cannot be passed through: bind it with
        ``functools.partial``.

        Args:
            fn: The function to run, then its positional and keyword arguments.
            timeout: Seconds to wait for room in the queue (``None``: as long as it takes;
                ``0``: not at all).

        Returns:
            A ``concurrent.futures.Future`` that the job's outcome reaches.

        Raises:
            TypeError: If ``fn`` is not callable.
            TimeoutError: If there was no room within ``timeout`` seconds.
            PoolClosed: If the pool is shutting down (also while this thread was waiting).
            RuntimeError: On the pool's own loop (waiting there would deadlock) or on a thread
                running another event loop (it would freeze it); if the pool has not started
                (it has no loop yet), or its loop is not running; or if its workers were
                cancelled from outside, as when its loop ends.
        """
        return self._door.submit(fn, args, kwargs, timeout)

    # ----------------------------------------------------------------- map

    @overload
    def map(
        self,
        fn: Callable[[T], Awaitable[R]],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[False] = False,
    ) -> AsyncIterator[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], Awaitable[R]],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[True],
    ) -> AsyncIterator[Outcome[T, R]]: ...
    @overload
    def map(  # a plain function, or outcomes= known only at run time
        self,
        fn: Callable[[T], Any],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: bool = False,
    ) -> AsyncIterator[Any]: ...
    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        outcomes: bool = False,
    ) -> AsyncIterator[Any]:
        """Run ``fn(item)`` for every item, streaming the results: ``async for r in pool.map(...)``.

        The input (a plain or an async iterable) is read lazily, so at most ``workers +
        queue_size`` items are in the pool or waiting to be yielded, however long it is.  The
        workers take the items straight from the input (no queue between them, as with Go's
        ``for job := range jobs``): a plain iterable is read by the worker that runs the item,
        so it must not block; an async iterable, a :class:`~poolkit.Channel` among them, is
        read ahead by one task, so ``pool.map(fn, channel)`` drains a channel through the
        workers until it is closed.  Like ``async for``, ``map`` does not close an async
        generator it stopped reading: close it yourself (``contextlib.aclosing``) if you leave
        early.  While several maps and ``submit`` share the pool, workers take from each in
        turn.  A map's items count in ``submitted`` and ``started`` when a worker takes them
        (they never wait in the queue).  Results
        come in input order (``ordered=True``) or as they finish.  The first job that fails
        raises its exception from the iterator, after the remaining jobs are cancelled; with
        ``outcomes=True`` every result is an :class:`Outcome` instead and nothing is raised for a
        failed job.  Leaving the loop early (``break``, an exception, cancellation) stops the
        feeding and cancels the jobs still in flight; wrap it in ``contextlib.aclosing`` to make
        that happen before the next line rather than when the iterator is collected.

        Args:
            fn: Called with each item (a coroutine function, or a quick plain one).
            iterable: The items, a plain or an async iterable, read lazily.
            ordered: Results in input order (True) or as they finish (False).
            outcomes: Yield an :class:`Outcome` per item instead of raising the first failure.

        Returns:
            An async iterator of the results (or of the outcomes).

        Raises:
            TypeError: If ``fn`` is not callable or ``iterable`` is not iterable (at once).
            Exception: While iterating, the first job's failure (unless ``outcomes=True``).
            PoolClosed: While iterating, if the pool is shut down under it.
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        if not hasattr(iterable, "__aiter__") and not hasattr(iterable, "__iter__"):
            raise TypeError(f"map() needs an iterable or an async iterable, got {iterable!r}")
        return map_async(self, fn, iterable, ordered, outcomes)

    # ----------------------------------------------------------------- shutting down

    async def shutdown(
        self, *, cancel: bool = False, timeout: float | None = None
    ) -> list[UnstartedJob]:
        """Stop accepting jobs and stop the workers; see the module docstring.

        ``cancel=False`` drains (finishes every queued and running job; after ``timeout``
        seconds, cancels what is left as below).  ``cancel=True`` cancels the running jobs and
        hands back the queued ones, which are returned (and kept in ``handed_back``); if a job
        still ignores its cancellation ``timeout`` seconds later, it raises ``TimeoutError``.
        Cancelling the caller turns a drain into a cancel; the workers are gone before the
        cancellation propagates.  Idempotent; safe to call while another shutdown is in
        progress, and from a later event loop once the pool's own has finished.

        Args:
            cancel: Cancel running jobs and hand back queued ones, instead of draining.
            timeout: Seconds for each phase (``None``: no limit).

        Returns:
            The jobs handed back, as :class:`~poolkit.UnstartedJob` (empty after a drain that
            finished in time).

        Raises:
            TimeoutError: If jobs still ignore their cancellation ``timeout`` seconds after it.
            RuntimeError: If the pool belongs to another event loop that is still alive.
        """
        timeout = check_timeout(timeout)
        self._ready = False
        if self._state == NEW:
            self._state = CLOSED
            self._jobs.close(self._closed_error)
            return []
        if self._state != CLOSED:
            loop = asyncio.get_running_loop()
            if loop is not self._loop:
                self._move_to(loop)  # its own loop has finished (else RuntimeError)
        if self._state == OPEN:
            self._state = CLOSING
        self._door.close(self._closed_error)  # submit_blocking() calls: waiting, or to come
        self._jobs.close(self._closed_error)  # fails blocked submitters
        if cancel:
            self._stop_jobs()
        try:
            waiting = self._door.waiting()
            if waiting:  # they end at once, refused; no task of the pool outlives it
                await asyncio.wait(waiting)
            done = await self._wait_for_workers(timeout)
            if not done and not cancel:  # the drain ran out of time: cancel what is left
                self._stop_jobs()
                done = await self._wait_for_workers(timeout)
        except asyncio.CancelledError:
            # Whoever waits for the shutdown was cancelled: take the cancel path, and still
            # leave no worker behind before passing the cancellation on.
            self._stop_jobs()
            await self._outlast_workers()
            raise
        if not done:
            stuck = [w.job for w in self._workers.values() if w.job is not None]
            raise TimeoutError(
                f"{self._label()}: {len(self._workers)} worker(s) still running {timeout} s "
                f"after their jobs were cancelled; these jobs ignore cancellation: {stuck!r}"
            )
        self._state = CLOSED
        return list(self._handed)

    def _stop_jobs(self) -> None:
        self._drain_queue(hand_back=True)
        self._cancel_running()

    async def _outlast_workers(self) -> None:
        """Wait until every worker has exited, however often the waiting task is cancelled."""
        while self._workers:
            try:
                await self._wait_for_workers(None)
            except asyncio.CancelledError:
                self._cancel_running()

    async def _wait_for_workers(self, timeout: float | None) -> bool:
        if not self._workers:
            return True
        loop = self._loop
        assert loop is not None
        if self._workers_gone is None or self._workers_gone.done():
            self._workers_gone = loop.create_future()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self._workers_gone)
        except TimeoutError:
            return False
        return True

    async def __aenter__(self) -> WorkerPool:
        self._start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: types.TracebackType | None,
    ) -> None:
        if exc_type is None and self._first_error is None:
            await self.shutdown()
        else:
            await self.shutdown(cancel=True)
        first = self._first_error
        if first is None:
            return
        if exc_type is None:
            raise first
        if issubclass(exc_type, asyncio.CancelledError):
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # Nobody cancelled this task: the body awaited a job that fail_fast cancelled.
                # The failure that caused it is the story, not that cancellation.
                raise first
