"""ThreadDoor: how threads that are not a WorkerPool's hand it jobs (``submit_blocking``).

A ``WorkerPool`` lives on one event loop and takes no lock on its per-job path, so a thread
never touches its queue.  It asks the loop instead (``call_soon_threadsafe``) to queue the job,
waits in its thread for the loop's verdict, and gets a ``concurrent.futures.Future`` that the
job's outcome reaches.  The loop decides alone whether the job got in, so a timeout or a
shutdown never leaves it half-submitted.

The door keeps the requests that have no verdict yet.  Once the pool stops taking jobs from
threads (shut down, its workers cancelled from outside, its loop gone), the door is closed with
the reason, and every request, waiting or new, is refused with it at once.  Jobs whose outcome
has not reached their thread yet are kept too (``linked``): a job's done-callbacks cannot run
once its loop is closed, so the pool settles those itself when it lets that loop go.

It is a part of the pool (composition, not a base class): its state (a lock, the requests, the
reason it is closed, the linked futures) is its own, and the pool reaches it through four calls
(``submit``, ``close``, ``open``, ``let_go``).  It reaches the pool through :class:`DoorHost`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import threading
from collections.abc import Callable
from typing import Any, Protocol

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import PoolClosed
from poolkit._core._registry import record_origin

from ._pool_core import CLOSING, DONE, NEW

__all__ = ["DoorHost", "ThreadDoor"]

_NOTHING = "nothing was submitted"


class _Job(Protocol):
    """A ``WorkerPool`` job's handle, as the door uses it: an ``asyncio.Future`` with a phase."""

    _phase: int

    def done(self) -> bool: ...

    def cancelled(self) -> bool: ...

    def cancel(self, msg: Any | None = None) -> bool: ...

    def exception(self) -> BaseException | None: ...

    def result(self) -> Any: ...

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...


class _Queue(Protocol):
    def offer(self, job: Any) -> bool: ...


class DoorHost(Protocol):
    """What the door uses of its ``WorkerPool``."""

    _state: int
    _stalled: bool

    @property
    def _loop(self) -> asyncio.AbstractEventLoop | None: ...

    @property
    def _jobs(self) -> _Queue: ...

    def _label(self) -> str: ...

    def _closed_error(self) -> PoolClosed: ...

    def _make(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any: ...

    def _accepted(self) -> None: ...

    async def _put(self, job: Any) -> None: ...


def settle_future(job: _Job, result: cf.Future[Any]) -> None:
    """Copy a finished job's outcome to the ``concurrent.futures.Future`` of its thread."""
    try:
        if job.cancelled():
            result.cancel()
        elif (exc := job.exception()) is not None:
            result.set_exception(exc)
        else:
            result.set_result(job.result())
    except cf.InvalidStateError:
        pass  # its caller cancelled the future meanwhile


class _FromThread:
    """One ``submit_blocking()`` call: the job it asks for, and what its thread waits on."""

    __slots__ = ("accepted", "args", "fn", "kwargs", "result", "task", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.timeout = timeout
        # Resolved on the loop: None once the job is in the queue, else why it is not.
        self.accepted: cf.Future[None] = cf.Future()
        self.result: cf.Future[Any] = cf.Future()  # the job's outcome, for the caller
        self.task: asyncio.Task[None] | None = None  # on the loop, while waiting for room

    def refuse(self, exc: BaseException) -> None:
        try:
            self.accepted.set_exception(exc)
        except cf.InvalidStateError:
            pass  # already decided


class _Ticket:
    """What ``submit_blocking()`` schedules on the loop (``call_soon_threadsafe``): calling it
    runs ``act(req)`` there.  A loop closed before it got to its callbacks drops them unrun,
    which frees the ticket (the loop holds the only reference): then it refuses the request,
    so the thread that waits for the loop's verdict is never left waiting for nobody."""

    __slots__ = ("act", "closed", "req")

    def __init__(
        self, act: Callable[[_FromThread], None], req: _FromThread, closed: BaseException
    ) -> None:
        self.act: Callable[[_FromThread], None] | None = act
        self.req = req
        self.closed = closed

    def __call__(self) -> None:
        act, self.act = self.act, None
        if act is not None:
            act(self.req)

    def __del__(self) -> None:
        if self.act is not None:
            self.req.refuse(self.closed)


class ThreadDoor:
    """The ``submit_blocking()`` side of one ``WorkerPool`` (see the module docstring)."""

    __slots__ = ("_gate", "_linked", "_lock", "_pool", "_requests")

    def __init__(self, pool: DoorHost) -> None:
        self._pool = pool
        # Requests without a verdict yet; _gate, once set, says why every one is refused.
        self._lock = threading.Lock()
        self._requests: set[_FromThread] = set()
        self._gate: Callable[[], BaseException] | None = None
        # Jobs in, whose outcome has not reached their thread yet.
        self._linked: dict[Any, cf.Future[Any]] = {}

    # ----------------------------------------------------------------- the pool's calls

    def submit(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        timeout: float | None,
    ) -> cf.Future[Any]:
        """``WorkerPool.submit_blocking``, in the calling thread."""
        pool = self._pool
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {fn!r}")
        timeout = check_timeout(timeout)
        loop = pool._loop
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None:
            if running is loop:
                raise RuntimeError(
                    f"submit_blocking() was called on the event loop of {pool._label()}: waiting "
                    f"there for room that only this loop can make would deadlock; use "
                    f"`await pool.submit(...)` or pool.submit_nowait(...) on the loop"
                )
            raise RuntimeError(
                "submit_blocking() would block the event loop running in this thread; call it "
                "through asyncio.to_thread(), or use "
                "asyncio.run_coroutine_threadsafe(pool.submit(...), <the pool's loop>)"
            )
        if pool._state >= CLOSING:
            raise pool._closed_error()
        if pool._state == NEW or loop is None:
            raise RuntimeError(
                f"{pool._label()} has not started, so it has no event loop to run jobs on; start "
                f"it on its loop first (`async with pool:`, or a first `await pool.submit(...)`)"
            )
        if loop.is_closed() or not loop.is_running():
            raise RuntimeError(
                f"the event loop of {pool._label()} is "
                f"{'closed' if loop.is_closed() else 'not running'}; {_NOTHING}"
            )
        req = _FromThread(fn, args, kwargs, timeout)
        with self._lock:
            gate = self._gate
            if gate is None:
                self._requests.add(req)
        if gate is not None:
            raise gate()
        try:
            self._schedule(loop, self._accept, req)
            accepted = req.accepted
            try:
                done, _ = cf.wait([accepted], timeout)
            except BaseException:  # KeyboardInterrupt, say: ask the loop to let it go; leave
                self._schedule(loop, self._withdraw, req)
                raise
            if not done:
                self._schedule(loop, self._withdraw, req)
            accepted.result()  # the loop's verdict: None, or why nothing was submitted
        finally:
            with self._lock:
                self._requests.discard(req)
        return req.result

    def close(self, error: Callable[[], BaseException]) -> None:
        """On the loop: refuse every ``submit_blocking()`` call without a verdict, and those to
        come, with ``error()``; a call waiting for room stops waiting (it has taken nothing)."""
        with self._lock:
            self._gate = error
            pending = list(self._requests)
        for req in pending:
            if req.accepted.done():
                continue
            # Refused here, not by its task: a task cancelled before its first step never runs
            # its coroutine at all.  A cancelled wait for room has taken nothing.
            req.refuse(error())
            if req.task is not None:
                req.task.cancel()

    def open(self) -> None:
        with self._lock:
            self._gate = None

    def waiting(self) -> list[asyncio.Task[None]]:
        """The tasks waiting on the loop for room for a thread's job."""
        with self._lock:
            return [req.task for req in self._requests if req.task is not None]

    def let_go(self) -> None:
        """The pool's loop has finished: refuse what was meant for it, and settle the futures
        of jobs it finished (or dropped) whose callbacks it will never run."""
        self.close(self.moved_error)  # their turn would come on the old loop, if ever
        linked, self._linked = self._linked, {}
        for job, result in linked.items():  # every one is done now; their callbacks may not run
            if job.done():
                settle_future(job, result)

    # ----------------------------------------------------------------- why a thread is refused

    def _loop_closed_error(self) -> RuntimeError:
        return RuntimeError(
            f"the event loop of {self._pool._label()} was closed before it took the job; {_NOTHING}"
        )

    def moved_error(self) -> RuntimeError:
        return RuntimeError(
            f"{self._pool._label()} moved to a new event loop before its old one took the job; "
            f"{_NOTHING}"
        )

    def stalled_error(self) -> RuntimeError:
        return RuntimeError(
            f"the workers of {self._pool._label()} were cancelled from outside (its event loop "
            f"is ending?); {_NOTHING}"
        )

    # ----------------------------------------------------------------- on the loop

    def _schedule(
        self, loop: asyncio.AbstractEventLoop, act: Callable[[_FromThread], None], req: _FromThread
    ) -> None:
        """From the calling thread: run ``act(req)`` on the loop.  If the loop is closed, or
        closes before it gets there, the request is refused (see :class:`_Ticket`)."""
        ticket = _Ticket(act, req, self._loop_closed_error())
        try:
            loop.call_soon_threadsafe(ticket)
        except RuntimeError:  # closed already; the ticket is dropped here, refusing it
            pass
        del ticket  # the loop holds the only reference now

    def _accept(self, req: _FromThread) -> None:
        """On the loop: queue a ``submit_blocking()`` job now, or start waiting for room."""
        if req.accepted.done():
            return  # refused meanwhile (the gate closed)
        pool = self._pool
        try:
            if pool._stalled:
                raise self.stalled_error()
            job = pool._make(req.fn, req.args, req.kwargs)
        except BaseException as exc:  # PoolClosed, or the pool is on another loop now
            req.refuse(exc)
            return
        if pool._jobs.offer(job):
            pool._accepted()
            self._link(job, req)
            return
        if req.timeout == 0:
            job._phase = DONE  # never queued, never counted
            req.refuse(TimeoutError(f"the queue of {pool._label()} is full; {_NOTHING}"))
            return
        loop = pool._loop
        assert loop is not None
        label = f"{pool._label()} submit_blocking"
        task = loop.create_task(self._put_from_thread(req, job), name=f"poolkit {label}")
        record_origin(task, label)
        if not task.done():  # (an eager task factory may have finished it already)
            req.task = task

    async def _put_from_thread(self, req: _FromThread, job: _Job) -> None:
        """On the loop: wait for room for a ``submit_blocking()`` job, as ``submit`` does (dumps
        show this frame as ``pool submit``)."""
        pool = self._pool
        try:
            await pool._put(job)
        except BaseException as exc:
            job._phase = DONE  # never queued, never counted
            if isinstance(exc, asyncio.CancelledError):
                req.refuse(  # unless whoever cancelled it refused it first, with its reason
                    RuntimeError(
                        f"the event loop of {pool._label()} cancelled the wait for room in its "
                        f"queue (the loop is ending?); {_NOTHING}"
                    )
                )
                raise
            req.refuse(exc)  # PoolClosed: told to the thread; the task itself ends quietly
            return
        finally:
            req.task = None
        pool._accepted()
        self._link(job, req)

    def _withdraw(self, req: _FromThread) -> None:
        """On the loop: the thread's ``timeout`` passed (or it was interrupted)."""
        if req.accepted.done():
            return  # the verdict came first: the job is in, or was refused
        req.refuse(
            TimeoutError(
                f"no room in the queue of {self._pool._label()} within {req.timeout} s; {_NOTHING}"
            )
        )
        if req.task is not None:
            req.task.cancel()  # a cancelled wait for room has taken nothing

    def _link(self, job: _Job, req: _FromThread) -> None:
        """On the loop, once ``job`` is in: its outcome reaches ``req.result``, and cancelling
        ``req.result`` cancels the job."""
        result = req.result
        loop = self._pool._loop
        assert loop is not None
        linked = self._linked
        linked[job] = result

        def settle(j: _Job) -> None:
            if linked.pop(j, None) is not None:
                settle_future(j, result)

        def withdraw(f: cf.Future[Any]) -> None:
            if f.cancelled():
                try:
                    loop.call_soon_threadsafe(job.cancel)
                except RuntimeError:
                    pass  # the loop is closed: the job went with it

        job.add_done_callback(settle)
        result.add_done_callback(withdraw)
        req.accepted.set_result(None)
