"""ProcessPool: the pool model for CPU-bound work, on worker processes that can really be stopped.

Each of the pool's ``workers`` is a *slot*: a thread in this process that owns one worker
process (``poolkit._pools._process_child``), takes work from the pool's queue, sends it down a
pipe and waits for the answer, the process's death, the job's deadline or a request to stop,
whichever comes first.  What that buys over ``concurrent.futures.ProcessPoolExecutor`` and
``multiprocessing.Pool``:

* **A timeout stops the job.**  At a job's deadline the job fails with ``TimeoutError`` and its
  worker process is sent SIGTERM, then SIGKILL after ``kill_grace`` seconds if it is still
  there; then the slot starts a new process.  The old one is gone before the new one starts, so
  no more than ``workers`` worker processes ever run.
* **A dead worker fails one job.**  A segfault, ``os._exit()`` or the OOM killer's SIGKILL fails
  the job the worker was running with :class:`~poolkit.WorkerCrashed` (with the exit code or the
  signal); the slot starts a new process and the pool goes on.  Nothing marks the pool broken and
  nothing hangs: the slot waits on the process's sentinel as well as on its pipe.
* **Cancelling a running job stops it** (the worker is killed and replaced), where a thread
  cannot be interrupted; ``job.cancel()`` returns True.
* **Recycling**: ``max_jobs_per_worker`` and ``max_memory`` (resident bytes, reported by the
  worker after each batch) retire a worker between jobs and start a fresh one.
* **Errors at submit**: the job's function and arguments are pickled by ``submit()`` itself (the
  bytes are what the worker receives, so nothing is pickled twice), and a function, argument or
  item that cannot be pickled raises :class:`~poolkit.NotPicklable` there, naming it.
* **A lazy, bounded ``map``**: items are read as room frees, sent in chunks; at most
  ``workers + queue_size`` chunks are in flight, whatever the input's length.

Chunks
------
``map`` sends items in chunks: one message out and one back for many calls, which is what makes
tiny jobs cheap (the executor's ``chunksize``).  With ``chunksize="auto"`` (the default) the
first chunk holds one item; from then on each chunk holds as many items as the worker ran in
about :data:`CHUNK_SECONDS` by the running mean of the calls' own time in the worker (at most
:data:`MAX_CHUNK`).  Measured on two cores: a chunk's fixed cost (pickling, two pipe messages,
waking the slot) is about 100 µs, so chunks of 10 ms keep it near 1 % while still spreading work
evenly.  A worker that dies in the middle of a chunk fails the call it was running; the calls
after it never started and are queued again (nothing runs twice); the calls before it that had
finished but not yet been reported fail with ``WorkerCrashed`` too, saying so, since their
results died with the process.  A worker reports what it has at least every
:data:`~poolkit._pools._process_child.FLUSH_AFTER` seconds, which bounds that loss; with
``chunksize=1`` each call is reported on its own.  With ``timeout=`` or ``retry=`` every call
is its own chunk: a deadline and a retry are per job.

What runs where
---------------
Counters are kept under one lock, as in ``ThreadPool``.  A job counts as started when its batch
is sent to a worker.  ``busy`` counts the slots whose worker is running a batch; ``workers`` the
slots whose worker process is up.

Start methods
-------------
``start_method=None`` picks ``"forkserver"`` on Linux and ``"spawn"`` elsewhere: never plain
``"fork"`` by default, since a pool always has threads (its slots) and forking a process with
threads can copy a lock that another thread holds (Python 3.12+ warns about it).  With the fork
server, a new worker starts in about 25 ms (it is forked from a small server process that has
already imported poolkit; the pool adds this module to the server's preload list if the server is
not running yet); with ``"spawn"``, each worker is a fresh interpreter that imports your module
(slower, about 100 ms and up, the only choice on Windows and the default on macOS).
``"fork"`` is accepted: the fastest start, and the job's function need not be importable, but
only safe if nothing else in the process holds a lock across the fork.

Shutting down, and process lifetimes
------------------------------------
``shutdown()`` drains: queued jobs run, then each worker is told to exit.  ``cancel=True`` hands
back every queued job and stops the running ones (their workers are killed; the jobs end
cancelled).  A drain with ``timeout=`` that runs out does the same with what is left.  Either way
``shutdown`` returns once every worker process has exited, and the accounting identity holds.
KeyboardInterrupt in ``with ProcessPool()`` takes the cancel path.  Workers ignore SIGINT (the
pool decides what happens to their jobs) and exit by themselves when this process dies, even by
SIGKILL (see ``poolkit._pools._process_child``).  A pool still running when the interpreter exits
is stopped at exit, its workers killed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import functools
import logging
import math
import multiprocessing
import multiprocessing.connection as mpc
import os
import pickle
import signal
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from itertools import islice
from typing import Any, ClassVar, Generic, Literal, ParamSpec, TypeVar, overload

import tenacity

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import JobHandedBack, NotPicklable, WorkerCrashed
from poolkit._core._registry import record_origin, register

from . import _process_child as child
from ._jobs import Outcome, PoolStatistics, UnstartedJob, cancel_future, fn_name
from ._pool_core import (
    CLOSED,
    CLOSING,
    NEW,
    OPEN,
    BlockingPoolCore,
    check_count,
    check_plain_fn,
    in_loop,
    refuse_in_loop,
)
from ._retry import keep_result, sync_retrying

__all__ = ["ProcessJob", "ProcessMap", "ProcessPool", "ProcessPoolStatistics"]

T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")
logger = logging.getLogger("poolkit.pool")
_monotonic = time.monotonic
_dumps = pickle.dumps
_loads = pickle.loads
_PROTOCOL = pickle.HIGHEST_PROTOCOL

CHUNK_SECONDS = 0.01  # what an auto-sized chunk aims to take in its worker
MAX_CHUNK = 10_000  # the most items an auto-sized chunk holds
_CHILD_MODULE = child.__name__
_STARTING = threading.Lock()  # one worker starts at a time, so none sees another in _children

# A batch's state, under the pool's lock.
_WAITING = 0  # a submit waiting for room in the queue (from an event loop's thread)
_QUEUED = 1
_RUNNING = 2
_DONE = 3
_DROPPED = 4  # cancelled or handed back while queued (counted then); a slot skips it

# The outcomes of consecutive calls: their values, and the errors of those that failed by index.
Results = tuple[list[Any], dict[int, BaseException] | None]
_DEADLINE = "_poolkit_deadline"  # marks the TimeoutError of a job the pool stopped at its deadline

# Why a slot stops its worker while it runs a batch (set by another thread, then woken).
_USER_CANCEL = "cancel"
_POOL_CANCEL = "pool"

_cf_set_result = cf.Future.set_result
_cf_set_exception = cf.Future.set_exception
_cf_done = cf.Future.done


@dataclass(frozen=True, slots=True)
class ProcessPoolStatistics(PoolStatistics):
    """A snapshot of a :class:`ProcessPool`: the counters every pool has (``workers`` is the
    worker processes up now), and its processes."""

    worker_pids: tuple[int, ...]
    """The process ids of the worker processes alive now."""
    crashed: int
    """Workers that died by themselves (a segfault, ``os._exit``, a signal from outside)."""
    killed: int
    """Workers the pool stopped: a job ran past its timeout, or a running job was cancelled."""
    recycled: int
    """Workers retired between jobs by ``max_jobs_per_worker`` or ``max_memory``."""
    start_method: str
    """How worker processes start: ``"forkserver"``, ``"spawn"`` or ``"fork"``."""


# ----------------------------------------------------------------------- pickling, with names


def _not_picklable(what: str, value: object, error: BaseException) -> NotPicklable:
    hint = (
        "define the function at the top level of a module (not a lambda, a local function or a "
        "method of a local class), so that the worker can import it by name"
        if callable(value)
        else "pass plain data instead (a path rather than an open file, say), and make what "
        "cannot travel inside the job"
    )
    exc = NotPicklable(
        f"{what} cannot be sent to a worker process: {value!r:.200} cannot be pickled "
        f"({type(error).__name__}: {error}); {hint}"
    )
    exc.__cause__ = error
    return exc


def _find_unpicklable(fn: Callable[..., Any], parts: Iterable[tuple[str, object]]) -> None:
    """Raise the :class:`NotPicklable` that names what in a job cannot be pickled."""
    for what, value in ((f"the function {fn_name(fn)}", fn), *parts):
        try:
            _dumps(value, _PROTOCOL)
        except Exception as error:
            raise _not_picklable(what, value, error) from error


def _pickle_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    try:
        return _dumps((fn, [(args, kwargs)], True), _PROTOCOL)
    except Exception as error:
        _find_unpicklable(
            fn,
            [
                *((f"argument {i} of {fn_name(fn)}", a) for i, a in enumerate(args)),
                *((f"keyword argument {k}= of {fn_name(fn)}", v) for k, v in kwargs.items()),
            ],
        )
        raise _not_picklable(f"the job {fn_name(fn)}", (fn, args, kwargs), error) from error


def _pickle_chunk(fn: Callable[..., Any], items: list[Any], base: int) -> bytes:
    try:
        return _dumps((fn, items, False), _PROTOCOL)
    except Exception as error:
        _find_unpicklable(fn, ((f"map() item {base + i}", x) for i, x in enumerate(items)))
        raise _not_picklable("a map() chunk", items, error) from error


def _main_unimportable() -> bool:
    """Whether ``__main__`` is one a worker process cannot import (``python -c``, a REPL, a
    notebook kernel): what is defined there pickles by name, but cannot be found by it."""
    main = sys.modules.get("__main__")
    return main is not None and getattr(main, "__file__", None) is None


def _check_loadable(payload: bytes, fn: Callable[..., Any], what: str, fork: bool) -> None:
    """Raise :class:`NotPicklable` if ``payload`` refers to something defined in a ``__main__``
    that a worker cannot import (unless workers are forked: they have it)."""
    if fork or b"__main__" not in payload or not _main_unimportable():
        return
    where = (
        f"the function {fn_name(fn)} is defined"
        if getattr(fn, "__module__", None) == "__main__"
        else f"{what} holds an object whose class or function is defined"
    )
    raise NotPicklable(
        f"{where} in the __main__ of `python -c`, an interactive session or a notebook, which a "
        f"worker process cannot import, so it could not be found there; define it in a module "
        f"file and import it from there, or use start_method='fork'"
    )


def _unloadable(error: BaseException) -> BaseException:
    """The error of the calls of a batch that the worker could not unpickle."""
    exc = NotPicklable(
        f"the worker process could not load the job ({type(error).__name__}: {error}); a job's "
        f"function and the classes of its arguments must be importable by name in the worker: "
        f"defined at the top level of a module that the worker can import (not in `python -c`, "
        f"an interactive session or a notebook)"
    )
    exc.__cause__ = error
    return exc


def _remote(error: tuple[BaseException, str]) -> BaseException:
    exc, text = error
    exc.__cause__ = child.RemoteTraceback(text)
    return exc


# ----------------------------------------------------------------------- jobs and batches


class ProcessJob(cf.Future[T]):
    """The handle of a job submitted to a :class:`ProcessPool`: a ``concurrent.futures.Future``
    that can also be awaited (``await job`` gives its result, on any event loop).

    ``cancel()`` stops the job whether it is queued or running: a running job's worker process
    is killed (and replaced), so unlike a thread's call it really stops; it returns False once
    the job has finished.  ``running()`` says whether a worker has it now.  The pool owns the
    job's outcome: ``set_result()``, ``set_exception()`` and ``set_running_or_notify_cancel()``
    raise ``concurrent.futures.InvalidStateError``.

    Besides what the function itself raises (with the worker's traceback as its
    ``__cause__``), a job can end with:

    * ``TimeoutError``: it ran past the pool's ``timeout``; its worker was killed;
    * :class:`~poolkit.WorkerCrashed`: its worker process died (``.exitcode``, ``.signal``);
    * ``concurrent.futures.CancelledError``: ``cancel()``, or ``shutdown(cancel=True)`` while
      it ran, or ``fail_fast``;
    * :class:`~poolkit.JobHandedBack`: it was still queued when the pool was shut down with
      ``cancel=True`` (it never ran; ``shutdown`` returned it);
    * :class:`~poolkit.NotPicklable`: the worker could not load it (a module it cannot import);
    * ``RuntimeError`` or ``TypeError``: its result or exception could not be sent back
      (cannot be pickled, or unpickled here), saying so.
    """

    def __init__(
        self,
        pool: ProcessPool,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        payload: bytes,
    ) -> None:
        super().__init__()
        self._pool = pool
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._batch = _Batch(self, 0, 1, payload)
        self._settled = False  # its outcome is decided (under the pool's lock)

    @property
    def fn(self) -> Callable[..., Any]:
        """The job's function."""
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        """The job's positional arguments."""
        return self._args

    @property
    def kwargs(self) -> dict[str, Any]:
        """The job's keyword arguments (a copy)."""
        return dict(self._kwargs)

    def running(self) -> bool:
        """Whether a worker process has the job now (sent to it, not finished)."""
        return self._batch.state == _RUNNING and not self.done()

    def __await__(self) -> Generator[Any, None, T]:
        """``await job``: its result, or its exception raised (on any event loop)."""
        return asyncio.wrap_future(self).__await__()

    def cancel(self) -> bool:
        """Stop the job: a queued job never runs; a running one's worker process is killed
        (SIGTERM, then SIGKILL after the pool's ``kill_grace``) and replaced, so the job really
        stops.  ``concurrent.futures.wait()`` and ``as_completed()`` see it as done.

        Returns:
            True if the job is cancelled (now or before); False if it had already finished.
        """
        pool = self._pool
        slot = None
        with pool._lock:
            if self._settled:
                return self.cancelled()
            batch = self._batch
            state = batch.state
            if state == _RUNNING:
                slot = batch.slot
                pool._cancelled_running += 1
            elif state in (_QUEUED, _WAITING):
                pool._drop_queued(batch)
                pool._cancelled_queued += 1
            else:
                return False
            self._settled = True
        if slot is not None:
            slot.stop(_USER_CANCEL, batch)
        return cancel_future(self)

    def set_result(self, result: T) -> None:
        """Refused: the pool sets the result when the job's function returns.

        Raises:
            concurrent.futures.InvalidStateError: always.
        """
        raise cf.InvalidStateError(self._owned("set_result"))

    def set_exception(self, exception: BaseException | None) -> None:
        """Refused: the pool sets the exception when the job's function raises.

        Raises:
            concurrent.futures.InvalidStateError: always.
        """
        raise cf.InvalidStateError(self._owned("set_exception"))

    def set_running_or_notify_cancel(self) -> bool:
        """Refused: the pool marks the job running when a worker takes it.

        Raises:
            concurrent.futures.InvalidStateError: always.
        """
        raise cf.InvalidStateError(self._owned("set_running_or_notify_cancel"))

    def _cancel_now(self) -> None:
        cancel_future(self)

    def _owned(self, what: str) -> str:
        return (
            f"{what}() on a job of {self._pool._label()} ({fn_name(self._fn)}): the pool sets a "
            f"job's state and outcome itself; to stop it, call job.cancel()"
        )

    # ------------------------------------------------------------- as a batch's owner

    def _outcome(self, value: Any, error: BaseException | None) -> Callable[[], None]:
        """Record the job's outcome (lock held, counted by the caller); the returned call
        resolves the future once the lock is released."""
        self._settled = True
        self._batch.payload = b""  # a kept handle must not pin what it sent
        if error is None:
            return lambda: _cf_set_result(self, value)
        if isinstance(error, cf.CancelledError):
            return self._cancel_now
        return lambda: _cf_set_exception(self, error)


class _Chunk:
    """``size`` consecutive items of a map(), sent to a worker together (or in parts, if a
    worker died in the middle and the rest was queued again)."""

    __slots__ = ("errors", "items", "left", "owner", "values")

    def __init__(self, owner: ProcessMap[Any], items: list[Any]) -> None:
        self.owner = owner
        self.items = items
        self.values: list[Any] = [None] * len(items)
        self.errors: dict[int, BaseException] | None = None
        self.left = len(items)

    def _outcome(self, i: int, value: Any, error: BaseException | None) -> None:  # lock held
        if error is None:
            self.values[i] = value
        else:
            if self.errors is None:
                self.errors = {}
            self.errors[i] = error
        self.left -= 1


class _Batch:
    """What a slot sends to its worker in one message: calls ``offset`` to ``offset + size`` of
    its owner (a job: one call; a map chunk: several)."""

    __slots__ = ("offset", "owner", "payload", "queued_at", "size", "slot", "state")

    def __init__(self, owner: Any, offset: int, size: int, payload: bytes) -> None:
        self.owner = owner
        self.offset = offset
        self.size = size
        self.payload = payload
        self.state = _QUEUED
        self.queued_at = _monotonic()
        self.slot: _Slot | None = None


# ----------------------------------------------------------------------- slots

# What a slot's wait ended with (and _UNREADABLE: a message from the worker that could not be
# loaded here, which leaves the slot unable to tell which calls it covered).
_RESULT, _DIED, _WOKEN, _TIMEOUT, _UNREADABLE = range(5)


class _Unreadable(Exception):
    """A message from a worker could not be unpickled here (``error`` says why)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class _Slot:
    """One worker: a thread of this process that owns a worker process and feeds it batches."""

    def __init__(self, pool: ProcessPool, ident: int) -> None:
        self.pool = pool
        self.ident = ident
        self.process: Any = None  # multiprocessing.Process (BaseProcess)
        self.pid: int | None = None
        self.jobs_w: mpc.Connection | None = None
        self.results_r: mpc.Connection | None = None
        self.progress: Any = pool._ctx.RawValue("i", -1)
        self.wake_r, self.wake_w = mpc.Pipe(duplex=False)
        self.batch: _Batch | None = None
        self.stop_reason: str | None = None  # set (lock held), then woken
        self.start_error: Exception | None = None  # why the last worker could not start
        self.starting = False  # starting a worker process (stop() may interrupt it)
        self.calls = 0  # calls run by the current process
        self.rss = 0
        self.began = False  # its thread runs (it ends by _slot_gone)
        self.abandoned = False  # its thread's start() failed: never counted again (see _abandon)
        self.thread = threading.Thread(
            target=self.run, name=f"poolkit {pool._label()} worker {ident}", daemon=True
        )

    # ------------------------------------------------------------- the loop

    def run(self) -> None:
        pool = self.pool
        with pool._lock:
            if self.abandoned:
                return  # its start() raised in the pool's thread: it is off the books
            self.began = True
        try:
            if pool._state == OPEN:
                self._start_process()  # warm, before the first job asks
            while True:
                batch = pool._take(self)
                if batch is None:
                    return
                self._run(batch)
        except BaseException:
            logger.exception("%s: worker %d failed", pool._label(), self.ident)
            raise
        finally:
            self._end_process("ask")
            self.wake_r.close()
            self.wake_w.close()
            pool._slot_gone(self)

    def stop(self, reason: str, batch: _Batch | None) -> None:
        """Ask the slot to kill its worker if it still runs ``batch``, or, with None, if it is
        starting one between batches (any thread)."""
        with self.pool._lock:
            if self.batch is not batch or self.stop_reason is not None:
                return  # done with it meanwhile (a stale stop must not hit the next batch)
            if batch is None and not self.starting:
                return
            self.stop_reason = reason
        try:
            self.wake_w.send_bytes(b"!")
        except OSError:
            pass  # the slot has finished already

    # ------------------------------------------------------------- processes

    def _start_process(self) -> bool:
        """Start a worker process and wait until it is ready; False if it died first."""
        pool = self.pool
        with pool._lock:
            self.starting = True
        try:
            return self._launch(pool._ctx)
        except Exception as exc:  # fork or pipe failed (EMFILE, ENOMEM), or multiprocessing refused
            logger.warning("%s: worker %d could not start: %r", pool._label(), self.ident, exc)
            self.start_error = exc
            return False
        finally:
            with pool._lock:
                self.starting = False
                if self.batch is None:
                    self.stop_reason = None  # (a stop meant for this start, now done)

    def _launch(self, ctx: Any) -> bool:
        pool = self.pool
        jobs_r, jobs_w = ctx.Pipe(duplex=False)
        results_r, results_w = ctx.Pipe(duplex=False)
        process = ctx.Process(
            target=child.main,
            args=(
                jobs_r,
                results_w,
                self.progress,
                pool._max_memory is not None,
                pool._initializer,
                pool._initargs,
                pool._lifeline_r,
                pool._start_method == "forkserver",
            ),
            name=f"poolkit {pool._label()} worker {self.ident}",
        )
        try:
            with _STARTING:
                process.start()
                # Out of multiprocessing's books: Process.start() and active_children(), in any
                # thread, poll every process in them, and a poll racing the slot's own join() (a
                # worker that just died) loses its exit status, or reads the next worker's pid
                # from a reused descriptor (measured: exit code 255 for a SIGKILL, or a slot
                # waiting for ever in its next start()).  The slot alone waits for its worker.
                _mp_children = getattr(multiprocessing.process, "_children", None)
                if _mp_children is not None:
                    _mp_children.discard(process)
        finally:
            jobs_r.close()
            results_w.close()
        self.start_error = None
        self.process, self.jobs_w, self.results_r = process, jobs_w, results_r
        self.calls = 0
        self.rss = 0
        while True:
            what = self._wait(math.inf)
            if what == _RESULT:
                try:
                    _, pid = _loads(results_r.recv_bytes())
                except (EOFError, OSError):
                    what = _DIED
                else:
                    with pool._lock:
                        self.pid = pid
                        pool._pids[self.ident] = pid
                    return True
            if what == _WOKEN:
                if self.stop_reason is None:
                    continue
                self._kill()
                return False
            self._reap()
            return False

    def _wait(self, deadline: float) -> int:
        """Wait for the worker's answer, its death, a wake-up, or ``deadline``."""
        assert self.results_r is not None
        sentinel = self.process.sentinel
        while True:
            left = None if deadline == math.inf else deadline - _monotonic()
            if left is not None and left <= 0:
                return _TIMEOUT
            ready = mpc.wait([self.results_r, sentinel, self.wake_r], left)
            if self.results_r in ready:
                return _RESULT
            if self.wake_r in ready:
                while self.wake_r.poll():
                    self.wake_r.recv_bytes()
                if self.stop_reason is not None:
                    return _WOKEN
                continue
            if sentinel in ready:
                return _DIED
            if not ready:
                return _TIMEOUT

    def _close_pipes(self) -> None:
        for conn in (self.jobs_w, self.results_r):
            if conn is not None:
                conn.close()
        self.jobs_w = self.results_r = None

    def _reap(self) -> tuple[int | None, int | None]:
        """The worker died by itself: collect it, and return ``(exitcode, signal)``."""
        return self._end_process("reap", "_crashed")

    def _kill(self) -> None:
        """Stop the worker now: SIGTERM, then SIGKILL after the pool's ``kill_grace``."""
        self._end_process("term", "_killed")

    def _end_process(self, how: str, counter: str | None = None) -> tuple[int | None, int | None]:
        """End the worker process and take it off the books (counted as ``counter``): ``"ask"``
        it to exit, send it SIGTERM (``"term"``), collect one that died by itself (``"reap"``),
        or ``"kill"`` it; one still there after the pool's ``kill_grace`` gets SIGKILL.
        Returns ``(exitcode, signal)``."""
        process = self.process
        if process is None:
            return None, None
        if how == "ask" and self.jobs_w is not None:
            try:
                self.jobs_w.send_bytes(b"")
            except OSError:
                pass
            process.join(self.pool._kill_grace)
        elif how == "term":
            process.terminate()
            process.join(self.pool._kill_grace)
        elif how == "reap":
            process.join()
        if process.exitcode is None:
            process.kill()
            process.join()
        code = process.exitcode
        self._close_pipes()
        process.close()
        pool = self.pool
        with pool._lock:
            pool._pids.pop(self.ident, None)
            if counter is not None:
                setattr(pool, counter, getattr(pool, counter) + 1)
        self.pid = None
        self.process = None
        if code is not None and code < 0:
            return None, -code
        return code, None

    # ------------------------------------------------------------- running batches

    def _run(self, batch: _Batch) -> None:
        pool = self.pool
        started = _monotonic()
        try:
            if self.process is None and not self._start_process():
                if self.stop_reason == _POOL_CANCEL:
                    pool._requeue(self, batch, 0)  # never started: handed back
                elif self.stop_reason == _USER_CANCEL:
                    pool._settle(batch, 0, [None], {0: cf.CancelledError()})
                else:
                    pool._settle(batch, 0, *self._start_failed(batch, ""))
            elif pool._retry is not None:
                self._run_retrying(batch)
            else:
                self._exchange(batch, settle=True)
        except Exception as exc:  # a bug of ours: the batch fails with it rather than hang
            logger.exception("%s: worker %d failed", pool._label(), self.ident)
            self._end_process("kill")
            pool._settle(batch, 0, [None] * batch.size, dict.fromkeys(range(batch.size), exc))
        finally:
            pool._release(self, started)
        self._after_batch(batch)

    def _start_failed(self, batch: _Batch, why: str) -> Results:
        cause = self.start_error
        if cause is not None:
            why = f": {type(cause).__name__}: {cause}"
        error = WorkerCrashed(
            f"a worker process of {self.pool._label()} could not start, or exited before it was "
            f"ready{why} (an initializer that failed, a module it could not import, a script "
            f"that starts the pool without `if __name__ == '__main__':`?)",
            pid=None,
            exitcode=None,
            signal=None,
        )
        error.__cause__ = cause
        return [None] * batch.size, dict.fromkeys(range(batch.size), error)

    def _after_batch(self, batch: _Batch) -> None:
        pool = self.pool
        if self.process is None:
            if pool._state == OPEN:
                self._start_process()  # the replacement, at once: it is ready when work comes
            return
        self.calls += batch.size
        recycle = (pool._max_jobs is not None and self.calls >= pool._max_jobs) or (
            pool._max_memory is not None and self.rss > pool._max_memory
        )
        if recycle:
            self._end_process("ask", "_recycled")
            if pool._state == OPEN:
                self._start_process()

    def _run_retrying(self, batch: _Batch) -> None:
        """A job with a retry policy (one call): each attempt is a fresh exchange."""
        pool = self.pool
        assert pool._retry is not None
        owner = batch.owner
        outcome: Results | None = None
        try:
            for attempt in sync_retrying(pool._retry):
                if outcome is not None:  # a retry
                    if getattr(owner, "_settled", False):
                        break  # cancelled meanwhile
                    with pool._lock:
                        pool._retried += 1
                    if self.process is None and not self._start_process():
                        outcome = self._start_failed(batch, "")
                        break
                with attempt:
                    outcome = self._exchange(batch, settle=False)
                    if outcome is None:
                        return  # its worker died before it got the job: queued again
                    errors = outcome[1]
                    error = None if errors is None else errors.get(0)
                    if error is not None and not isinstance(error, cf.CancelledError):
                        raise error
                keep_result(attempt, outcome[0][0])
        except Exception:
            pass  # the last attempt's failure is the outcome
        if outcome is not None:
            pool._settle(batch, 0, *outcome)

    def _exchange(self, batch: _Batch, settle: bool) -> Results | None:
        """Send ``batch`` to the worker and see each call to its outcome, settled as it comes
        (or, for a retry loop to judge, returned: one call).  Calls that never started because
        the worker died are queued again; None if that was all of them."""
        pool = self.pool
        n = batch.size
        done = 0
        deadline = math.inf if pool._timeout is None else _monotonic() + pool._timeout
        if n > 1:
            self.progress.value = -1
        assert self.jobs_w is not None and self.results_r is not None
        try:
            self.jobs_w.send_bytes(batch.payload)
        except OSError:
            self._reap()  # dead before it got the batch: nothing started
            pool._requeue(self, batch, 0)
            return None
        results: Results | None = None
        unreadable: BaseException | None = None
        while done < n:
            what = self._wait(deadline)
            if what == _RESULT:
                try:
                    data = self.results_r.recv_bytes()
                except (EOFError, OSError):
                    what = _DIED
                else:
                    try:
                        first, values, errors = self._received(batch, data, done)
                    except _Unreadable as bad:
                        unreadable = bad.error
                        what = _UNREADABLE
                    else:
                        if first != done or first + len(values) > n:
                            values, errors = self._out_of_step(batch, done, first, len(values))
                            first = done
                        if settle:
                            pool._settle(batch, first, values, errors)
                        else:
                            results = values, errors
                        done = first + len(values)
                        continue
            if what == _TIMEOUT and settle and n == 1:
                # The job fails at its deadline, not once its worker is gone: one that ignores
                # SIGTERM takes kill_grace more to stop (the slot takes no job meanwhile).
                pool._settle(batch, done, [None], {0: self._expired(batch)})
                self._kill()
                break
            values, errors = self._stopped(batch, what, done, unreadable)
            if settle:
                pool._settle(batch, done, values, errors)
            else:
                results = values, errors
            break
        return results

    def _out_of_step(self, batch: _Batch, done: int, first: int, count: int) -> Results:
        """The worker answered for calls it was not running (a bug, of ours or of a job that
        wrote to its pipe): it cannot be trusted, so it is stopped, and the calls left fail."""
        logger.error(
            "%s: worker %d answered for calls %d-%d while %d-%d were due; it is replaced",
            self.pool._label(),
            self.ident,
            first,
            first + count,
            done,
            batch.size,
        )
        self._end_process("kill", "_crashed")
        error = RuntimeError(
            f"the worker process running this job answered out of step (calls {first}-"
            f"{first + count} of a batch of {batch.size}, at {done}); it was replaced"
        )
        left = batch.size - done
        return [None] * left, dict.fromkeys(range(left), error)

    def _received(
        self, batch: _Batch, data: bytes, done: int
    ) -> tuple[int, list[Any], dict[int, BaseException] | None]:
        """A message from the worker: ``(first, values, errors)`` of the calls it reports."""
        try:
            first, values, errors, seconds, rss = _loads(data)
        except BaseException as exc:  # a result whose class this process cannot load, say
            raise _Unreadable(exc) from exc
        if rss:
            self.rss = rss
        if errors is not None:
            if -1 in errors:  # the batch could not be loaded there: every call fails with it
                left = batch.size - done
                error = _unloadable(_remote(errors[-1]))
                return done, [None] * left, dict.fromkeys(range(left), error)
            errors = {i: _remote(e) for i, e in errors.items()}
        if values and isinstance(batch.owner, _Chunk):
            self.pool._observe(batch.owner, len(values), seconds)
        return first, values, errors

    def _expired(self, batch: _Batch) -> TimeoutError:
        """The error of a job whose worker is stopped at its deadline."""
        error = TimeoutError(
            self.pool._timed_out_message(
                _fn_of(batch), f"; its worker process (pid {self.pid}) was killed and replaced"
            )
        )
        setattr(error, _DEADLINE, True)  # counted as timed out, not failed
        return error

    def _stopped(
        self, batch: _Batch, what: int, done: int, unreadable: BaseException | None = None
    ) -> Results:
        """The worker stopped in the middle of ``batch`` (``done`` calls reported): the outcomes
        of the calls up to the one it was running; the rest (never started) are queued again,
        or handed back if the pool is cancelling.  With ``_UNREADABLE``, the worker sent a
        message that could not be loaded (``unreadable`` says why): which calls it answered is
        unknown, so the worker is stopped, and the calls it had run fail with that error."""
        pool = self.pool
        pid = self.pid
        n = batch.size
        running = done if n == 1 else max(done, self.progress.value)
        label = pool._label()
        if what == _WOKEN:
            reason = self.stop_reason
            self._kill()
            error: BaseException = (
                cf.CancelledError()
                if reason == _USER_CANCEL
                else cf.CancelledError(f"{label} was shut down, cancelling its running jobs")
            )
            lost = error
        elif what == _TIMEOUT:
            self._kill()
            error = lost = self._expired(batch)
        elif what == _UNREADABLE:
            self._kill()
            running = done if n == 1 else max(done, self.progress.value)
            error = lost = RuntimeError(
                f"a result that the worker process (pid {pid}) of {label} sent back could not be "
                f"unpickled here ({type(unreadable).__name__}: {unreadable}); the worker was "
                f"replaced, since what else that message held was lost with it (return plain "
                f"data, of classes this process can import)"
            )
            error.__cause__ = unreadable
        else:
            code, sig = self._reap()
            how = (
                f"was killed by signal {sig} ({_signal_name(sig)})"
                if sig is not None
                else f"exited with code {code}"
            )
            error = WorkerCrashed(
                f"the worker process (pid {pid}) of {label} {how} while running this job; the "
                f"pool started a new worker",
                pid=pid,
                exitcode=code,
                signal=sig,
            )
            lost = WorkerCrashed(
                f"this job finished, but its worker process (pid {pid}) of {label} {how} before "
                f"it could send the result back; the result was lost with it",
                pid=pid,
                exitcode=code,
                signal=sig,
            )
        k = running - done
        errors = dict.fromkeys(range(k), lost)
        errors[k] = error
        if running + 1 < n:
            pool._requeue(self, batch, running + 1)
        return [None] * (k + 1), errors


def _fn_of(batch: _Batch) -> Callable[..., Any]:
    owner = batch.owner
    return owner._fn if isinstance(owner, ProcessJob) else owner.owner._fn


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "unknown"


# ----------------------------------------------------------------------- map


class ProcessMap(Generic[R]):
    """The stream of results of :meth:`ProcessPool.map`: iterate it with ``for`` in plain code
    or ``async for`` on an event loop (one or the other, once).

    Leaving the loop early (``break``, an exception) cancels the chunks still queued, once the
    iterator is closed: at once for ``for`` (CPython closes the generator when the loop drops
    it), when the async generator is finalised for ``async for`` (or call ``aclose()``).
    """

    def __init__(
        self,
        pool: ProcessPool,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        ordered: bool,
        outcomes: bool,
        chunksize: int | None,
    ) -> None:
        self._pool = pool
        self._fn = fn
        self._iterable = iterable
        self._ordered = ordered
        self._outcomes = outcomes
        self._fixed = chunksize  # None: auto
        self._per_item: float | None = None  # running mean of a call's time in the worker
        self._chunks: deque[_Chunk] = deque()  # in flight, in input order
        self._finished: deque[_Chunk] = deque()  # done, in completion order (unordered)
        self._read = 0  # items read from the input
        self._exhausted = False
        self._used = False
        self._closed = False
        # How the slots wake the consumer: a lock it sleeps on (plain), or a future (async).
        self._sleeper: threading.Lock | None = None
        self._waker: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def _claim(self) -> None:
        if self._used:
            raise RuntimeError("a ProcessPool.map() result can be iterated only once")
        self._used = True

    def __iter__(self) -> Iterator[R]:
        self._claim()
        if isinstance(self._iterable, AsyncIterable) and not isinstance(self._iterable, Iterable):
            raise TypeError(
                "map() was given an async iterable: iterate the result with `async for`"
            )
        return self._sync()

    def __aiter__(self) -> AsyncIterator[R]:
        self._claim()
        return self._async()

    # ------------------------------------------------------------- sizing and feeding

    def _size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        per_item = self._per_item
        if per_item is None:
            return 1
        if per_item <= 0:
            return MAX_CHUNK
        return max(1, min(MAX_CHUNK, int(CHUNK_SECONDS / per_item)))

    def _observe(self, n: int, seconds: float) -> None:  # lock held
        per = seconds / n
        old = self._per_item
        self._per_item = per if old is None else 0.7 * old + 0.3 * per

    def _window_open(self) -> bool:
        return not self._exhausted and len(self._chunks) < self._pool._window()

    def _send(self, items: list[Any]) -> None:
        base = self._read
        self._read += len(items)
        chunk = _Chunk(self, items)
        payload = _pickle_chunk(self._fn, items, base)
        pool = self._pool
        _check_loadable(payload, self._fn, f"map() item {base} or a later one", pool._forks)
        pool._put_chunk(chunk, payload)  # (which puts it in _chunks too)

    def _fill(self, it: Iterator[Any]) -> None:
        while self._window_open():
            size = self._size()
            items = list(islice(it, size))
            if len(items) < size:
                self._exhausted = True
            if items:
                self._send(items)

    async def _afill(self, it: AsyncIterator[Any]) -> None:
        while self._window_open():
            size = self._size()
            items: list[Any] = []
            while len(items) < size:
                try:
                    items.append(await it.__anext__())
                except StopAsyncIteration:
                    self._exhausted = True
                    break
            if items:
                self._send(items)

    # ------------------------------------------------------------- results

    def _ready(self) -> _Chunk | None:  # lock held
        if self._ordered:
            if self._chunks and self._chunks[0].left == 0:
                return self._chunks.popleft()
            return None
        if self._finished:
            chunk = self._finished.popleft()
            self._chunks.remove(chunk)
            return chunk
        return None

    def _chunk_done(self, chunk: _Chunk) -> Callable[[], None] | None:  # lock held
        """A chunk is complete: what wakes the consumer, to call once the lock is released."""
        if not self._ordered:
            self._finished.append(chunk)
        elif self._chunks and chunk is not self._chunks[0]:
            return None
        sleeper, self._sleeper = self._sleeper, None
        if sleeper is not None:
            return sleeper.release
        waker, self._waker = self._waker, None
        if waker is not None:
            loop, fut = waker
            return lambda: _wake_soon(loop, fut)
        return None

    def _yield(self, chunk: _Chunk) -> Iterator[Any]:
        errors = chunk.errors
        if errors is None and not self._outcomes:
            return iter(chunk.values)
        return self._yield_each(chunk, errors)

    def _yield_each(self, chunk: _Chunk, errors: dict[int, BaseException] | None) -> Iterator[Any]:
        pool = self._pool
        for i, item in enumerate(chunk.items):
            error = None if errors is None else errors.get(i)
            if self._outcomes:
                value = chunk.values[i]
                yield Outcome(item, None if error is not None else value, error)
            elif error is not None:
                self._stop()
                raise pool._map_error(error)
            else:
                yield chunk.values[i]

    def _sync(self) -> Iterator[R]:
        pool = self._pool
        it = iter(self._iterable)  # type: ignore[arg-type]
        try:
            while True:
                self._fill(it)
                with pool._lock:
                    chunk = self._ready()
                    if chunk is None:
                        if not self._chunks:
                            return
                        sleeper = threading.Lock()
                        sleeper.acquire()
                        self._sleeper = sleeper
                if chunk is None:
                    sleeper.acquire()
                    continue
                yield from self._yield(chunk)
        finally:
            self._stop()

    async def _async(self) -> AsyncIterator[R]:
        pool = self._pool
        source = self._iterable
        ait = source.__aiter__() if isinstance(source, AsyncIterable) else None
        it = None if ait is not None else iter(source)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        try:
            while True:
                if ait is not None:
                    await self._afill(ait)
                else:
                    assert it is not None
                    self._fill(it)
                with pool._lock:
                    chunk = self._ready()
                    if chunk is None:
                        if not self._chunks:
                            return
                        fut: asyncio.Future[None] = loop.create_future()
                        self._waker = (loop, fut)
                if chunk is None:
                    try:
                        await fut
                    finally:
                        with pool._lock:
                            if self._waker is not None and self._waker[1] is fut:
                                self._waker = None
                    continue
                for value in self._yield(chunk):
                    yield value
        finally:
            self._stop()

    def _stop(self) -> None:
        """Cancel what is still queued; drop the results still to come."""
        if self._closed:
            return
        self._closed = True
        self._pool._drop_map(self)


def _wake_soon(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[None]) -> None:
    def wake() -> None:
        if not fut.done():
            fut.set_result(None)

    try:
        loop.call_soon_threadsafe(wake)
    except RuntimeError:
        pass  # the loop is closed: nobody waits any more


# ----------------------------------------------------------------------- the pool

_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()


def _stop_all_at_exit() -> None:
    for pool in list(_live_pools):
        pool._kill_everything()


atexit.register(_stop_all_at_exit)


def _default_start_method() -> str:
    return "forkserver" if sys.platform.startswith("linux") else "spawn"


def _preload(ctx: Any) -> None:
    """Have the fork server import poolkit before it forks workers (if it is not running yet),
    so that a worker starts in milliseconds instead of importing poolkit each time."""
    from multiprocessing import forkserver

    server = getattr(forkserver, "_forkserver", None)
    if server is None or getattr(server, "_forkserver_pid", None) is not None:
        return
    current = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if _CHILD_MODULE not in current:
        ctx.set_forkserver_preload([*current, _CHILD_MODULE])


class ProcessPool(BlockingPoolCore[tenacity.Retrying]):
    """A pool of worker processes for CPU-bound work: ``submit``, a streaming ``map``, per-job
    timeouts that stop the job, crashes that fail one job.

    ``with ProcessPool() as pool:`` in plain code, ``async with`` on an event loop (where
    ``await pool.submit_async(fn, x)`` waits for room, ``await job`` for a result, and ``async
    for r in pool.map(...)`` streams).  Jobs are plain functions that can be pickled and that a
    worker can import by name: top-level functions of a module, not lambdas, local functions or
    functions defined in ``python -c`` or a notebook (refused at submit, with the fix).

    Each worker is a process owned by a thread of this pool.  A job past its ``timeout`` fails
    with ``TimeoutError`` and its process is killed (SIGTERM, SIGKILL after ``kill_grace``) and
    replaced; a process that dies fails only the job it was running (``WorkerCrashed``); never
    more than ``workers`` processes run.  Workers ignore SIGINT (the pool decides what happens
    to their jobs) and exit by themselves if this process dies, even by SIGKILL.

    Start methods: the default is ``"forkserver"`` on Linux (a worker starts in about 25 ms,
    forked from a small server that has imported poolkit) and ``"spawn"`` elsewhere (a fresh
    interpreter per worker, which imports the job's module: 100 ms and more).  Plain ``"fork"``
    is never the default: the pool always has threads, and forking a process with threads can
    copy a lock that one of them holds.  ``start_method="fork"`` is accepted, and the job's
    function then need not be importable.

    ``map`` sends items in chunks (``chunksize="auto"``: as many as run in about 10 ms, by
    measurement), reads its input only as room frees, and keeps at most ``workers +
    queue_size`` chunks in flight.  A worker that dies in a chunk fails the item it was
    running; the items after it run elsewhere; finished items not yet reported (a worker
    reports at least every 50 ms) fail with ``WorkerCrashed`` saying their result was lost.

    Args:
        workers: How many worker processes (default: ``os.cpu_count()``).
        queue_size: How many jobs may wait for a worker (default: ``workers``): jobs queued
            and running together stay within ``workers + queue_size``; ``submit`` blocks (in
            plain code) while they would not.  ``map`` keeps at most that many chunks in flight.
        name: The pool's name, in messages, dumps and metrics.
        timeout: Seconds a job may run in its worker; past it the worker is killed and replaced
            and the job fails with ``TimeoutError``.  ``None``: no limit.
        retry: A :class:`~poolkit.RetryPolicy` or ``tenacity.Retrying``: failed jobs (an
            exception, a timeout, a crash) run again, in a fresh exchange with a worker.
        fail_fast: The first job that fails cancels every queued and running job and closes
            the pool; ``with`` raises that failure.
        chunksize: Items per message for ``map``: ``"auto"`` (measured; see the module
            docstring) or an int >= 1.  With ``timeout`` or ``retry``, chunks hold one item.
        max_jobs_per_worker: Retire a worker process after this many jobs (a fresh one takes
            its place): for jobs that leak memory or state.
        max_memory: Retire a worker, between jobs, once its resident memory passes this many
            bytes.
        start_method: ``"forkserver"``, ``"spawn"`` or ``"fork"`` (default: ``"forkserver"`` on
            Linux, ``"spawn"`` elsewhere; see the module docstring for the trade-off).
        kill_grace: Seconds between SIGTERM and SIGKILL when a worker must be stopped.
        initializer: Called with ``initargs`` in each new worker process before its first job.
        initargs: The initializer's arguments.

    Raises:
        TypeError, ValueError: For a bad argument, naming it and the value.
    """

    _MAP_CANCELLED: ClassVar[tuple[type[BaseException], ...]] = (cf.CancelledError,)
    _RETRYING = tenacity.Retrying
    _THREADS = True

    def __init__(
        self,
        *,
        workers: int | None = None,
        queue_size: int | None = None,
        name: str | None = None,
        timeout: float | None = None,
        retry: Any = None,
        fail_fast: bool = False,
        chunksize: int | Literal["auto"] = "auto",
        max_jobs_per_worker: int | None = None,
        max_memory: int | None = None,
        start_method: str | None = None,
        kill_grace: float = 1.0,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
    ) -> None:
        if chunksize != "auto":
            check_count(chunksize, "chunksize", 1)
        self._chunksize: int | None = None if chunksize == "auto" else int(chunksize)
        self._max_jobs = (
            None
            if max_jobs_per_worker is None
            else check_count(max_jobs_per_worker, "max_jobs_per_worker", 1)
        )
        self._max_memory = None if max_memory is None else check_count(max_memory, "max_memory", 1)
        if start_method is None:
            start_method = _default_start_method()
        if start_method not in multiprocessing.get_all_start_methods():
            raise ValueError(
                f"start_method must be one of {multiprocessing.get_all_start_methods()} on this "
                f"platform, got {start_method!r}"
            )
        self._start_method = start_method
        self._forks = start_method == "fork"  # (a forked worker has this process's __main__)
        if isinstance(kill_grace, bool) or not isinstance(kill_grace, (int, float)):
            raise TypeError(f"kill_grace must be a number of seconds, got {kill_grace!r}")
        if not 0 <= kill_grace < math.inf:
            raise ValueError(
                f"kill_grace must be a finite number of seconds >= 0, got {kill_grace!r}"
            )
        self._kill_grace = float(kill_grace)
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable or None, got {initializer!r}")
        if not isinstance(initargs, tuple):
            raise TypeError(f"initargs must be a tuple, got {initargs!r}")
        self._initializer = initializer
        self._initargs = initargs
        if initializer is not None:
            _find_unpicklable(initializer, ((f"initargs[{i}]", a) for i, a in enumerate(initargs)))
        if workers is None:
            workers = os.cpu_count() or 1
        super().__init__(
            workers=workers,
            queue_size=queue_size,
            name=name,
            timeout=timeout,
            retry=retry,
            fail_fast=fail_fast,
        )

    def _setup(self) -> None:
        self._lock = threading.RLock()  # (statistics() nests it)
        self._work = threading.Condition(self._lock)  # idle slots wait on it
        self._queue: deque[_Batch] = deque()
        self._queued_jobs = 0  # submitted jobs in _queue, not dropped (for queue_size)
        self._waiting: deque[ProcessJob[Any]] = deque()  # submits waiting for room, in order
        # Submits that wait for room without counting as submitted yet (a blocked thread, or a
        # task in submit_async), each with what wakes it (any thread, lock held).
        self._putters: deque[tuple[ProcessJob[Any], Callable[[], None]]] = deque()
        self._slots: list[_Slot] = []
        self._pids: dict[int, int] = {}
        self._busy = 0
        self._workers_gone = threading.Event()
        self._workers_gone.set()
        self._gone_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._maps: weakref.WeakSet[ProcessMap[Any]] = weakref.WeakSet()
        self._crashed = self._killed = self._recycled = 0
        # Workers exit when they read end-of-file here: only this process holds the write end.
        self._lifeline_r: mpc.Connection | None = None
        self._lifeline_w: mpc.Connection | None = None
        self._ctx: Any = multiprocessing.get_context(self._start_method)
        _live_pools.add(self)
        register(self, "process_pool")

    # ------------------------------------------------------------- introspection

    def _busy_now(self) -> int:
        return self._busy

    @property
    def worker_pids(self) -> tuple[int, ...]:
        """The process ids of the worker processes alive now."""
        with self._lock:
            return tuple(self._pids.values())

    def statistics(self) -> ProcessPoolStatistics:
        """A consistent snapshot (see :class:`ProcessPoolStatistics`)."""
        with self._lock:
            base = super().statistics()
            pids = tuple(self._pids.values())
            fields = {f: getattr(base, f) for f in PoolStatistics.__dataclass_fields__}
            fields["workers"] = len(pids)
            fields["idle"] = max(0, len(pids) - base.busy)
            return ProcessPoolStatistics(
                **fields,
                worker_pids=pids,
                crashed=self._crashed,
                killed=self._killed,
                recycled=self._recycled,
                start_method=self._start_method,
            )

    # ------------------------------------------------------------- starting

    def _start(self) -> None:
        with self._lock:
            if self._state == OPEN:
                return
            if self._state != NEW:
                raise self._closed_error()
            self._state = OPEN
            if self._start_method == "forkserver":
                _preload(self._ctx)
            if self._start_method != "fork":  # (a forked worker would inherit the write end)
                self._lifeline_r, self._lifeline_w = self._ctx.Pipe(duplex=False)
            self._workers_gone.clear()
            for _ in range(self._target):
                self._next_id += 1
                slot = _Slot(self, self._next_id)
                self._slots.append(slot)
                self._live += 1
                record_origin(slot.thread, f"{self._label()} worker {slot.ident}")
            slots = list(self._slots)
        try:
            for slot in slots:
                slot.thread.start()
        except BaseException:  # no thread to be had, or KeyboardInterrupt: no pool either
            self._abandon(slots)
            self._begin_shutdown(cancel=True)
            self._workers_gone.wait()
            self._finish()
            raise

    def _abandon(self, slots: list[_Slot]) -> None:
        """Take the slots whose thread has not begun to run off the books (their ``start()``
        failed, or was interrupted before they ran: one that runs later sees it and returns)."""
        with self._lock:
            gone = [s for s in slots if not (s.began or s.abandoned)]
            for slot in gone:
                slot.abandoned = True
                self._slots.remove(slot)
                slot.wake_r.close()
                slot.wake_w.close()
        for slot in gone:
            self._slot_gone(slot)

    def _slot_gone(self, slot: _Slot) -> None:
        waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        with self._lock:
            self._live -= 1
            if self._live == 0:
                waiters, self._gone_waiters = self._gone_waiters, []
                self._workers_gone.set()  # (under the lock: _wait_gone checks it there)
        for loop, fut in waiters:
            _wake_soon(loop, fut)

    # ------------------------------------------------------------- the queue

    def _take(self, slot: _Slot) -> _Batch | None:
        """The next batch for ``slot``, marked running and counted; None when it should exit."""
        with self._lock:
            while True:
                queue = self._queue
                while queue:
                    batch = queue.popleft()
                    if batch.state != _QUEUED:
                        continue  # dropped while queued
                    if isinstance(batch.owner, ProcessJob):
                        self._queued_jobs -= 1  # (and busy + 1: no new room for a submit)
                    batch.state = _RUNNING
                    batch.slot = slot
                    slot.batch = batch
                    self._busy += 1
                    self._started += batch.size
                    self._wait_total += _monotonic() - batch.queued_at
                    return batch
                if self._state >= CLOSING:
                    return None
                self._work.wait()

    def _queue_batch(self, batch: _Batch) -> None:  # lock held
        batch.state = _QUEUED
        self._queue.append(batch)
        self._work.notify()

    def _has_room(self) -> bool:  # lock held
        """Whether a submitted job may enter: jobs queued and batches running stay within
        ``workers + queue_size`` (so ``queue_size=0`` hands a job to an idle worker)."""
        return self._queued_jobs + self._busy < self._queue_size + self._target

    def _admit(self) -> None:  # lock held
        """Room in the queue: let the next waiting submit in."""
        while self._has_room():
            if self._waiting:
                job = self._waiting.popleft()
                self._queued_jobs += 1
                self._queue_batch(job._batch)
            elif self._putters:
                job, wake = self._putters.popleft()
                self._submitted += 1
                self._queued_jobs += 1
                self._queue_batch(job._batch)
                wake()
            else:
                return

    def _drop_queued(self, batch: _Batch) -> None:  # lock held
        if batch.state == _WAITING:
            self._waiting.remove(batch.owner)
        else:
            self._queued_jobs -= 1
            self._admit()
        batch.state = _DROPPED

    def _requeue(self, slot: _Slot, batch: _Batch, start: int) -> None:
        """The calls of ``batch`` from ``start`` never started (their worker died first): they go
        back to the head of the queue, or are handed back if the pool is cancelling."""
        owner = batch.owner
        n = batch.size - start
        if isinstance(owner, ProcessJob):
            rest = _Batch(owner, 0, 1, batch.payload)
        else:
            first = batch.offset + start
            items = owner.items[first : batch.offset + batch.size]
            rest = _Batch(owner, first, n, _pickle_chunk(owner.owner._fn, items, 0))
        done: list[Callable[[], None]] = []
        with self._lock:
            self._started -= n
            if isinstance(owner, ProcessJob):
                owner._batch = rest
            if self._state >= CLOSING and slot.stop_reason == _POOL_CANCEL:
                rest.state = _DROPPED
                done = self._stop_unstarted(rest, hand_back=True)
            else:
                if isinstance(owner, ProcessJob):
                    self._queued_jobs += 1
                self._queue.appendleft(rest)
                self._work.notify()
        for call in done:
            call()

    def _put_chunk(self, chunk: _Chunk, payload: bytes) -> None:
        """Queue a map chunk (it does not count against ``queue_size``: the map bounds itself)."""
        with self._lock:
            if self._state != OPEN:
                raise self._closed_error()
            owner = chunk.owner
            if owner not in self._maps:
                self._maps.add(owner)
            self._submitted += len(chunk.items)
            # In the map's books in the same step: a worker may finish it before we return.
            owner._chunks.append(chunk)
            self._queue_batch(_Batch(chunk, 0, len(chunk.items), payload))

    def _drop_map(self, m: ProcessMap[Any]) -> None:
        """A map was closed: cancel its queued chunks; results still to come are dropped."""
        with self._lock:
            for batch in self._queue:
                owner = batch.owner
                if batch.state == _QUEUED and isinstance(owner, _Chunk) and owner.owner is m:
                    batch.state = _DROPPED
                    self._cancelled_queued += batch.size
            self._maps.discard(m)
            m._chunks.clear()
            m._finished.clear()

    def _observe(self, chunk: _Chunk, n: int, seconds: float) -> None:
        with self._lock:
            chunk.owner._observe(n, seconds)

    # ------------------------------------------------------------- outcomes

    def _settle(
        self,
        batch: _Batch,
        first: int,
        values: list[Any],
        errors: dict[int, BaseException] | None,
    ) -> None:
        """Record and count the outcomes of calls ``first``... of ``batch`` (their ``values``,
        and the ``errors`` of those that failed, by index from ``first``), and resolve what
        waits for them once the lock is released."""
        owner = batch.owner
        wake: Callable[[], None] | None = None
        fail_all = False
        with self._lock:
            if isinstance(owner, ProcessJob):
                if owner._settled:
                    return  # cancelled (and counted) meanwhile: the outcome is dropped
                error = None if errors is None else errors.get(0)
                wake = owner._outcome(values[0], error)
            else:
                base = batch.offset + first
                owner.values[base : base + len(values)] = values
                if errors is not None:
                    if owner.errors is None:
                        owner.errors = {}
                    for i, error in errors.items():
                        owner.errors[base + i] = error
                owner.left -= len(values)
                wake = self._chunk_wake(owner)
            if errors is None:
                self._succeeded += len(values)
            else:
                self._succeeded += len(values) - len(errors)
                for error in errors.values():
                    if isinstance(error, cf.CancelledError):
                        self._cancelled_running += 1
                    elif getattr(error, _DEADLINE, False):
                        self._timed_out += 1
                    else:
                        self._failed += 1
                        if self._first_failure(error):
                            fail_all = True
        if wake is not None:
            wake()
        if fail_all:
            self._fail_everything()

    def _release(self, slot: _Slot, started: float) -> None:
        """``slot`` is done with its batch (and may take another)."""
        with self._lock:
            batch = slot.batch
            if batch is not None:
                batch.state = _DONE
                if isinstance(batch.owner, _Chunk):
                    batch.payload = b""  # (a job keeps its own, for a retry or a requeue)
                self._busy -= 1
                self._run_total += _monotonic() - started
                if self._waiting or self._putters:
                    self._admit()
            slot.batch = None
            slot.stop_reason = None

    def _stop_unstarted(self, batch: _Batch, hand_back: bool) -> list[Callable[[], None]]:
        """Count the calls of a batch taken out of the queue as handed back, or as cancelled by
        the pool (lock held); return what resolves them, to call once the lock is released."""
        owner = batch.owner
        if isinstance(owner, ProcessJob):
            owner._settled = True
            if not hand_back:
                self._cancelled_queued += 1
                return [owner._cancel_now]
            message = self._hand_back(owner._fn, owner._args, owner._kwargs, owner)
            return [lambda: _cf_set_exception(owner, JobHandedBack(message))]
        fn = owner.owner._fn
        for i in range(batch.offset, batch.offset + batch.size):
            if hand_back:
                error: BaseException = JobHandedBack(
                    self._hand_back(fn, (owner.items[i],), {}, None)
                )
            else:
                self._cancelled_queued += 1
                error = cf.CancelledError()
            owner._outcome(i, None, error)
        wake = self._chunk_wake(owner)
        return [] if wake is None else [wake]

    def _chunk_wake(self, chunk: _Chunk) -> Callable[[], None] | None:  # lock held
        """What wakes the map of ``chunk``, if it is complete and the map still waits for it."""
        m = chunk.owner
        if chunk.left == 0 and m in self._maps:
            return m._chunk_done(chunk)
        return None

    # ------------------------------------------------------------- submitting

    def submit(self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> ProcessJob[R]:
        """Queue ``fn(*args, **kwargs)`` to run in a worker process.

        ``fn`` and the arguments are pickled here, so what cannot reach a worker is refused at
        once.  In plain code, ``submit`` blocks this thread while the queue is full.  On a
        thread that runs an event loop it never blocks: a job that finds the queue full waits
        for room in line, after the jobs already waiting (``await job`` waits for both, and
        ``statistics().queued`` counts it), and that line has no bound; a producer should use
        :meth:`submit_async`, which waits for room, or :meth:`submit_nowait` to be refused.

        Args:
            fn: A plain function that can be pickled, then its arguments.

        Returns:
            The job's :class:`ProcessJob` (a ``concurrent.futures.Future``; awaitable).

        Raises:
            NotPicklable: If ``fn`` or an argument cannot be pickled (named in the message).
            TypeError: If ``fn`` is not callable, or is an ``async def`` function.
            PoolClosed: If the pool is shutting down (also while this thread was waiting).
        """
        job = self._make(fn, args, kwargs)
        self._start_if_new()
        with self._lock:
            if self._offer(job):
                return job
            if in_loop():
                self._submitted += 1
                job._batch.state = _WAITING
                self._waiting.append(job)
                return job
            lock = threading.Lock()
            lock.acquire()
            putter = (job, lock.release)
            self._putters.append(putter)
        try:
            lock.acquire()
        except BaseException:  # KeyboardInterrupt while waiting: nothing is submitted
            self._withdraw(putter)
            raise
        return self._admitted(job)

    async def submit_async(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> ProcessJob[R]:
        """Queue ``fn(*args, **kwargs)``, waiting for room in the queue without blocking the
        event loop: the backpressure of :meth:`submit` in plain code, for ``async def`` code.

        It returns once the job is queued; ``await`` the returned job for its result.  A
        producer that submits with it holds at most ``workers + queue_size`` jobs in the pool
        however fast it goes, where :meth:`submit` on an event loop never waits (jobs that find
        the queue full line up, without bound).  Waiters enter in the order they came, after the
        jobs already in line.  If the awaiting task is cancelled while it waits, nothing is
        submitted (the job is not counted); if the job was let in at that moment, it is
        withdrawn (counted as cancelled) and the cancellation propagates.

        Returns:
            The job's :class:`ProcessJob`, queued.

        Raises:
            NotPicklable: If ``fn`` or an argument cannot be pickled (named in the message).
            TypeError: If ``fn`` is not callable, or is an ``async def`` function.
            PoolClosed: If the pool is shutting down (also while this task was waiting).
        """
        job = self._make(fn, args, kwargs)
        self._start_if_new()
        loop = asyncio.get_running_loop()
        room: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._offer(job):
                return job
            putter = (job, functools.partial(_wake_soon, loop, room))
            self._putters.append(putter)
        try:
            await room
        except BaseException:  # cancelled while waiting: nothing is submitted
            self._withdraw(putter)
            raise
        return self._admitted(job)

    def _withdraw(self, putter: tuple[ProcessJob[Any], Callable[[], None]]) -> None:
        """A waiting submit gave up: out of line, or, if it was let in meanwhile, cancelled."""
        job = putter[0]
        with self._lock:
            try:
                self._putters.remove(putter)
            except ValueError:  # admitted (or dropped by a shutdown) meanwhile
                admitted = job._batch.state != _DROPPED
            else:
                admitted = False
        if admitted:
            job.cancel()

    def _admitted(self, job: ProcessJob[R]) -> ProcessJob[R]:
        """A waiting submit was woken: its job, queued, or PoolClosed if a shutdown woke it."""
        if job._batch.state == _DROPPED and not job._settled:
            raise self._closed_error()
        return job

    def submit_nowait(
        self, fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs
    ) -> ProcessJob[R]:
        """Queue ``fn(*args, **kwargs)`` if there is room now, else raise
        :class:`~poolkit.QueueFull` (counted as rejected).  Never blocks.

        Raises:
            QueueFull: If the queue is full.
            NotPicklable, TypeError, PoolClosed: As :meth:`submit`.
        """
        job = self._make(fn, args, kwargs)
        self._start_if_new()
        with self._lock:
            if self._offer(job):
                return job
            self._rejected += 1
        raise self._queue_full()

    def _offer(self, job: ProcessJob[Any]) -> bool:  # lock held
        """Queue ``job`` if there is room and nobody waits for it before; raise if closed."""
        if self._state != OPEN:
            raise self._closed_error()
        if self._has_room() and not self._waiting and not self._putters:
            self._submitted += 1
            self._queued_jobs += 1
            self._queue_batch(job._batch)
            return True
        return False

    def _make(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> ProcessJob[Any]:
        _check_fn(fn)
        payload = _pickle_call(fn, args, kwargs)
        _check_loadable(payload, fn, f"an argument of {fn_name(fn)}", self._forks)
        return ProcessJob(self, fn, args, kwargs, payload)

    def _start_if_new(self) -> None:
        if self._state == NEW:
            self._start()

    # ------------------------------------------------------------- map

    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[False] = False,
        chunksize: int | Literal["auto"] | None = None,
    ) -> ProcessMap[R]: ...
    @overload
    def map(
        self,
        fn: Callable[[T], R],
        iterable: Iterable[T] | AsyncIterable[T],
        /,
        *,
        ordered: bool = True,
        outcomes: Literal[True],
        chunksize: int | Literal["auto"] | None = None,
    ) -> ProcessMap[Outcome[T, R]]: ...
    def map(
        self,
        fn: Callable[[Any], Any],
        iterable: Iterable[Any] | AsyncIterable[Any],
        /,
        *,
        ordered: bool = True,
        outcomes: bool = False,
        chunksize: int | Literal["auto"] | None = None,
    ) -> ProcessMap[Any]:
        """Run ``fn(item)`` in the worker processes for every item, streaming the results.

        ``for r in pool.map(fn, items)`` in plain code, ``async for`` on an event loop (the input
        may then be an async iterable).  The input is read lazily, in chunks (see the module
        docstring): at most ``workers + queue_size`` chunks are in flight however long it is.
        Results come in input order (``ordered=True``) or as chunks finish.  The first failure
        is raised (after the map's queued chunks are cancelled; running ones finish and their
        results are dropped) unless ``outcomes=True``, which yields an :class:`Outcome` per item
        instead.

        Args:
            fn: A plain function that can be pickled, called with each item.
            iterable: The items, read lazily; each must be picklable.
            ordered: Results in input order (True) or as they finish (False).
            outcomes: Yield an :class:`Outcome` per item instead of raising the first failure.
            chunksize: Items per message: ``"auto"``, an int >= 1, or ``None`` for the pool's.

        Returns:
            A :class:`ProcessMap`, iterated with ``for`` or ``async for``.

        Raises:
            NotPicklable: If ``fn`` cannot be pickled (at once), or an item (while iterating).
            TypeError, ValueError: For a bad argument (at once).
            Exception: While iterating, the first job's failure (unless ``outcomes=True``).
            PoolClosed: While iterating, if the pool is shut down under it.
        """
        _check_fn(fn)
        _find_unpicklable(fn, ())
        _check_loadable(_dumps(fn, _PROTOCOL), fn, "the function", self._forks)
        if not isinstance(iterable, (Iterable, AsyncIterable)):
            raise TypeError(f"map() needs an iterable or an async iterable, got {iterable!r}")
        if chunksize is None:
            size = self._chunksize
        elif chunksize == "auto":
            size = None
        else:
            size = check_count(chunksize, "chunksize", 1)
        if self._timeout is not None or self._retry is not None:
            size = 1  # a deadline, a retry, is per job
        self._start_if_new()
        if self._state != OPEN:
            raise self._closed_error()
        return ProcessMap(self, fn, iterable, ordered, outcomes, size)

    # ------------------------------------------------------------- stopping jobs

    def _fail_everything(self) -> None:
        """fail_fast's first failure: stop taking jobs, cancel the queued and running ones;
        a submit waiting for room raises PoolClosed (with the failure as its cause)."""
        with self._lock:
            if self._state == OPEN:
                self._state = CLOSING
            wakes = self._drop_putters()
        for wake in wakes:
            wake()
        self._stop_jobs(hand_back=False)

    def _drop_putters(self) -> list[Callable[[], None]]:  # lock held
        """Turn away the submits waiting for room (each raises PoolClosed once woken): what
        wakes them, to call once the lock is released."""
        putters, self._putters = self._putters, deque()
        for job, _ in putters:
            job._batch.state = _DROPPED
        return [wake for _, wake in putters]

    def _stop_jobs(self, hand_back: bool) -> None:
        """Take every queued job out (handed back, or cancelled by the pool) and stop the
        running ones."""
        calls: list[Callable[[], None]] = []
        with self._lock:
            waiting = [job._batch for job in self._waiting]
            self._waiting.clear()
            for batch in [*waiting, *self._queue]:
                if batch.state not in (_QUEUED, _WAITING):
                    continue
                batch.state = _DROPPED
                calls.extend(self._stop_unstarted(batch, hand_back))
            self._queue.clear()
            self._queued_jobs = 0
            # The slots running a batch, and those starting a worker between batches (an
            # initializer that hangs must not hang the shutdown).
            running = [(s, s.batch) for s in self._slots if s.batch is not None or s.starting]
            self._work.notify_all()
        for call in calls:
            call()
        for slot, busy in running:
            slot.stop(_POOL_CANCEL, busy)

    def _kill_everything(self) -> None:
        """At interpreter exit: kill every worker process at once, without waiting for slots."""
        with self._lock:
            self._state = CLOSED  # no slot starts a replacement now
        for slot in list(self._slots):
            process = slot.process
            if process is not None:
                try:
                    process.kill()
                    process.join(1.0)
                except (ValueError, OSError, AssertionError):
                    pass

    # ------------------------------------------------------------- shutting down

    def _begin_shutdown(self, cancel: bool) -> bool:
        """Close the pool to new jobs; False if it never started (nothing to wait for)."""
        with self._lock:
            state = self._state
            if state == NEW:
                self._state = CLOSED
                _live_pools.discard(self)
                return False
            if state == OPEN:
                self._state = CLOSING
            wakes = self._drop_putters()
            if not cancel:  # a drain runs the jobs waiting for room too
                while self._waiting:
                    job = self._waiting.popleft()
                    self._queued_jobs += 1
                    self._queue_batch(job._batch)
            self._work.notify_all()
        for wake in wakes:
            wake()  # each raises PoolClosed
        if cancel:
            self._stop_jobs(hand_back=True)
        return True

    def shutdown(self, *, cancel: bool = False, timeout: float | None = None) -> list[UnstartedJob]:
        """Stop accepting jobs, finish or stop the rest, and end every worker process.

        ``cancel=False`` drains: queued and running jobs finish; after ``timeout`` seconds
        (``None``: no limit) what is left is stopped as by ``cancel=True``.  ``cancel=True``
        hands back the queued jobs and stops the running ones at once (their workers are
        killed; the jobs end cancelled).  It returns when every worker process has exited.
        Idempotent.  KeyboardInterrupt while it waits takes the cancel path, then propagates.
        In ``async def`` code, use :meth:`shutdown_async`.

        Args:
            cancel: Hand back queued jobs and stop running ones, instead of draining.
            timeout: Seconds to drain before stopping what is left (``None``: no limit).

        Returns:
            The jobs handed back, as :class:`~poolkit.UnstartedJob`.

        Raises:
            RuntimeError: On a thread whose event loop is running, if there are workers to wait
                for: it would freeze the loop.
        """
        timeout = check_timeout(timeout)
        if not self._workers_gone.is_set():
            refuse_in_loop(
                "ProcessPool.shutdown()",
                "in async code use `async with ProcessPool(...)` or `await pool.shutdown_async()`",
            )
        if self._begin_shutdown(cancel):
            try:
                if not self._workers_gone.wait(timeout):
                    self._stop_jobs(hand_back=True)
                    self._workers_gone.wait()
            except BaseException:
                self._stop_jobs(hand_back=True)
                while not self._workers_gone.wait(0.1):
                    pass
                self._finish()
                raise
        return self._finish()

    async def shutdown_async(
        self, *, cancel: bool = False, timeout: float | None = None
    ) -> list[UnstartedJob]:
        """:meth:`shutdown` for ``async def`` code: the same arguments and result, and the
        event loop runs on meanwhile.  If the awaiting task is cancelled, the pool takes the
        cancel path and still waits for its workers to exit (which ``kill_grace`` bounds) before
        the cancellation propagates: no worker process outlives the pool.

        Returns:
            The jobs handed back, as :class:`~poolkit.UnstartedJob`.
        """
        timeout = check_timeout(timeout)
        if self._begin_shutdown(cancel):
            try:
                if not await self._wait_gone(timeout):
                    self._stop_jobs(hand_back=True)
                    await self._wait_gone(None)
            except asyncio.CancelledError:
                self._stop_jobs(hand_back=True)
                while not self._workers_gone.is_set():
                    try:
                        await self._wait_gone(None)
                    except asyncio.CancelledError:
                        continue
                self._finish()
                raise
        return self._finish()

    def _finish(self) -> list[UnstartedJob]:
        with self._lock:
            self._state = CLOSED
            slots = list(self._slots)
        for slot in slots:
            slot.thread.join()
        with self._lock:
            lifeline = (self._lifeline_r, self._lifeline_w)
            self._lifeline_r = self._lifeline_w = None
        for conn in lifeline:
            if conn is not None:
                conn.close()
        _live_pools.discard(self)
        return self.handed_back


def _check_fn(fn: object) -> None:
    check_plain_fn(
        fn,
        "a ProcessPool calls plain functions in its worker processes; call asyncio.run(...) "
        "inside a plain function submitted here",
    )
