"""The code a ``ProcessPool`` worker process runs: receive batches of calls, run them, report.

This is the whole of the child's side; everything else is in ``poolkit._pools._process_pool``.
The protocol, over two one-way pipes (``multiprocessing`` connections):

* parent → child: one message per batch, ``pickle.dumps((fn, calls, star))``: ``fn(*args,
  **kwargs)`` for each ``(args, kwargs)`` in ``calls`` if ``star``, else ``fn(item)`` for each
  item (a ``map()`` chunk).  An empty message asks the worker to exit.
* child → parent: ``(READY, pid)`` once, when the worker can take work; then, per batch, one or
  more ``(first, values, errors, seconds, rss)`` messages: ``values[i]`` is the result of call
  ``first + i``, ``errors`` maps such an ``i`` to ``(exception, traceback text)`` for the calls
  that raised, ``seconds`` is the time the calls took, ``rss`` the worker's resident memory in
  bytes (0 unless asked for).  A batch that runs longer than :data:`FLUSH_AFTER` reports what it
  has so far before going on, so that a long chunk whose worker then dies loses little.

Before each call of a multi-call batch, the worker writes the call's index into ``progress``,
a shared integer: if the process dies, the parent reads there which call it was running (that
call failed; the ones after it never started and are run elsewhere).

The worker ignores SIGINT (Ctrl-C in a terminal reaches the whole process group; the parent
decides what happens to running jobs) and exits by itself when the pool's process dies, even
by SIGKILL, in two ways:

* On Linux, the kernel kills it (``PR_SET_PDEATHSIG``) when its parent ends: the fork server,
  or, with ``"spawn"`` and ``"fork"``, the pool's slot thread that started it (a slot always
  outlives its worker).  That needs no cooperation from the worker, so it also stops one that
  is stuck in C code holding the GIL.  The fork server ends when the pool's process does, once
  no child of its holds the server's own lifeline (the write end that ``multiprocessing``
  hands every child it forks): the worker closes its copy first thing.
* Everywhere, a thread reads the pool's *lifeline*, a pipe whose only write end the pool's
  process holds, and exits when it reads end-of-file.  (Watching ``os.getppid()`` is not
  enough: with the fork server the parent is that server.)  A worker started with ``"fork"``
  inherits every descriptor, the lifeline's write end too, so it checks ``os.getppid()`` every
  :data:`PARENT_POLL` seconds instead: its parent is the pool's process itself.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["FLUSH_AFTER", "PARENT_POLL", "READY", "RemoteTraceback", "main", "portable_error"]

_PR_SET_PDEATHSIG = 1
_libc: Any = None
if sys.platform.startswith("linux"):
    try:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    except (ImportError, OSError):
        pass

READY = "ready"
FLUSH_AFTER = 0.05  # seconds of a batch's work after which finished results are sent early
PARENT_POLL = 0.2  # seconds between checks that the parent is still alive


class RemoteTraceback(Exception):
    """The traceback of an exception raised in a worker process, as text: it is the
    ``__cause__`` of the exception a ``ProcessPool`` job raises, so that the report shows where
    in the worker it came from."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f"\n\nin the worker process:\n{self.text}"


def portable_error(exc: BaseException) -> tuple[BaseException, str]:
    """``exc`` and its traceback as text, with ``exc`` replaced by a ``RuntimeError`` that
    names it if it cannot make the trip back through pickle."""
    try:
        text = "".join(traceback.format_exception(exc))
    except Exception as why:  # a __str__ that raises, say
        text = f"{type(exc).__qualname__} (its traceback could not be formatted: {_safe(why)})\n"
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception as why:
        exc = RuntimeError(
            f"the job raised {type(exc).__qualname__}: {_safe(exc, str)}; that exception "
            f"could not be sent back from the worker process ({type(why).__name__}: "
            f"{_safe(why, str)})"
        )
    return exc, text


def _safe(value: object, how: Callable[[object], str] = repr, limit: int = 200) -> str:
    """``how(value)``, at most ``limit`` characters, or a placeholder if it raises: a job's
    result or exception must not take the worker down by failing to print itself."""
    try:
        text = how(value)
    except Exception as why:
        return f"<{type(value).__qualname__} that cannot be shown: {type(why).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _die_with_parent(parent: int, forkserver_child: bool) -> None:
    """Have the kernel SIGKILL this process when its parent (thread) ends, on Linux; and, in a
    child of the fork server, let that server end with the pool's process (see the module
    docstring)."""
    if forkserver_child:
        from multiprocessing import forkserver

        server = getattr(forkserver, "_forkserver", None)
        fd = getattr(server, "_forkserver_alive_fd", None)
        if isinstance(fd, int):
            try:
                os.close(fd)
            except OSError:
                pass
            server._forkserver_alive_fd = None  # type: ignore[union-attr]
    if _libc is None:
        return
    try:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (AttributeError, OSError):  # (not Linux after all)
        return
    if os.getppid() != parent:  # the parent ended before the request: too late for the kernel
        os._exit(70)


def _watch_parent(parent: int, lifeline: Connection | None) -> None:
    if lifeline is not None:
        try:
            lifeline.recv_bytes()  # nothing is ever sent: this returns when the pool's end closes
        except (EOFError, OSError):
            pass
        os._exit(70)  # orphaned: the pool's process is gone
    while True:
        time.sleep(PARENT_POLL)
        if os.getppid() != parent:
            os._exit(70)


def _send(results: Connection, message: tuple[Any, ...]) -> None:
    try:
        data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    except Exception:
        data = pickle.dumps(_picklable(message), pickle.HIGHEST_PROTOCOL)
    results.send_bytes(data)


def _picklable(message: tuple[Any, ...]) -> tuple[Any, ...]:
    """``message`` with each result that cannot be pickled replaced by an error saying so."""
    first, values, errors, seconds, rss = message
    errors = dict(errors or {})
    for i, value in enumerate(values):
        try:
            pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        except Exception as why:
            values[i] = None
            errors[i] = portable_error(
                TypeError(
                    f"the job's result {_safe(value)} could not be pickled to send it back from "
                    f"the worker process ({type(why).__name__}: {_safe(why, str)}); return "
                    f"plain data"
                )
            )
    return first, values, errors, seconds, rss


def _rss() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class _Reporter:
    """Sends a batch's results: what is finished every :data:`FLUSH_AFTER` seconds (from a
    thread of its own, so the loop over the calls pays nothing for it), the rest at the end.

    The calling thread only appends to ``values`` and records ``errors`` (an error is recorded
    before its ``None`` is appended), so a snapshot taken under the GIL is consistent."""

    def __init__(self, results: Connection) -> None:
        self.results = results
        self.lock = threading.Lock()
        self.values: list[Any] | None = None  # the running batch's results, None between
        self.errors: dict[int, tuple[BaseException, str]] = {}
        self.n = 0  # calls in the running batch
        self.sent = 0  # values already sent
        self.since = 0.0  # when what is not sent yet began
        # An idle worker's reporter parks on `wake` rather than waking every FLUSH_AFTER; a
        # busy one never parks, so a stream of batches costs it no wake-ups.
        self.wake = threading.Event()
        self.parked = False
        self.batches = 0  # batches begun (the reporter parks after a period with none)

    def begin(self, values: list[Any], n: int) -> None:
        with self.lock:
            self.values = values
            self.n = n
            self.errors = {}
            self.sent = 0
            self.since = time.perf_counter()
            self.batches += 1
            if self.parked:
                self.parked = False
                self.wake.set()

    def _flush(self, values: list[Any], rss: int) -> None:  # lock held
        end = len(values)
        first = self.sent
        errors = {k - first: e for k, e in self.errors.items() if first <= k < end} or None
        now = time.perf_counter()
        _send(self.results, (first, values[first:end], errors, now - self.since, rss))
        self.sent = end
        self.since = now

    def end(self, rss: int) -> None:
        with self.lock:
            values, self.values = self.values, None
            assert values is not None
            self._flush(values, rss)

    def run(self) -> None:
        seen = -1
        while True:
            time.sleep(FLUSH_AFTER)
            seen, idle = self.tick(seen)
            if idle:
                self.wake.wait()

    def tick(self, seen: int) -> tuple[int, bool]:
        """One period: send what is finished, if the batch is still running.  ``seen`` is the
        count of batches at the last tick; returns the count now, and whether the worker was
        idle all period (the reporter then parks until the next batch)."""
        with self.lock:
            values = self.values
            # Never all of them: the last call's result goes in end()'s message, the one that
            # tells the pool the batch is over (an early flush of everything, then an empty final
            # message, would be read as the start of the next batch's answer).
            if values is not None and self.sent < len(values) < self.n:
                self._flush(values, 0)
            idle = values is None and self.batches == seen
            if idle:
                self.parked = True
                self.wake.clear()
            return self.batches, idle


def main(
    jobs: Connection,
    results: Connection,
    progress: Any,
    report_rss: bool,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    lifeline: Connection | None,
    forkserver_child: bool = False,
) -> None:
    """The worker process: run batches until told to stop, or until the pool's process is
    gone (``lifeline``'s other end closes; without one, ``os.getppid()`` changes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    parent = os.getppid()
    _die_with_parent(parent, forkserver_child)
    threading.Thread(
        target=_watch_parent,
        args=(parent, lifeline),
        name="poolkit parent watch",
        daemon=True,
    ).start()
    if initializer is not None:
        initializer(*initargs)
    at = memoryview(progress).cast("B").cast("i")  # (faster to write than progress.value)
    reporter = _Reporter(results)
    threading.Thread(target=reporter.run, name="poolkit results", daemon=True).start()
    results.send_bytes(pickle.dumps((READY, os.getpid())))
    while True:
        try:
            data = jobs.recv_bytes()
        except (EOFError, OSError):
            return  # the parent closed its end: it is gone, or done with us
        if not data:
            return
        try:
            fn, calls, star = pickle.loads(data)
        except BaseException as exc:
            # The job cannot be loaded here (a module the worker cannot import, say): error -1
            # tells the parent that every call of the batch fails with it; the worker is fine.
            _send(results, (0, [], {-1: portable_error(exc)}, 0.0, 0))
            continue
        values: list[Any] = []
        reporter.begin(values, len(calls))
        errors = reporter.errors
        if star:  # submitted jobs: one call each
            for args, kwargs in calls:
                try:
                    value = fn(*args, **kwargs)
                except BaseException as exc:
                    errors[len(values)] = portable_error(exc)
                    value = None
                values.append(value)
        else:
            _run_items(fn, calls, values, errors, at)
        reporter.end(_rss() if report_rss else 0)


def _run_items(
    fn: Callable[[Any], Any],
    items: list[Any],
    values: list[Any],
    errors: dict[int, tuple[BaseException, str]],
    at: memoryview,
) -> None:
    """``values.append(fn(item))`` for each item, with ``at[0]`` the index of the item being run.

    ``values.extend(calls())`` runs the loop in C and keeps what it appended when ``fn`` raises
    (measured: faster than ``map(fn, ...)`` fed by a generator that writes the index, and about
    half the time per item of a plain ``for`` loop with ``try`` inside).  The calls are made in
    the generator, not by ``map``, because ``extend`` would take a ``StopIteration`` raised by
    ``fn`` for the end of the input; raised in a generator, it comes out as ``RuntimeError``
    (PEP 479), and the item fails with the ``StopIteration`` itself, as it would in
    ``submit``."""
    n = len(items)

    def calls() -> Iterator[Any]:
        for k in range(len(values), n):
            at[0] = k
            yield fn(items[k])

    while len(values) < n:
        try:
            values.extend(calls())
        except BaseException as exc:
            cause = exc.__cause__
            if type(exc) is RuntimeError and isinstance(cause, StopIteration):
                exc = cause  # (PEP 479's wrapping of fn's own StopIteration)
            errors[len(values)] = portable_error(exc)
            values.append(None)
