"""``no_leaks()``: fail when a block of code leaves tasks, threads or processes running behind it.

What counts as a leak
---------------------
A task of the running loop, a thread, or a child process that is still alive when the block
ends and was not alive when it began (``ignore_current=True``, the default), and that no ignore
rule excuses.  The block's own task and thread never count, and neither do *idle* threads of the
event loop's default executor (``asyncio_0``..., ``uvloop_0``...: the threads
``asyncio.to_thread`` starts): they belong to the loop, which stops them when it closes.  One
still running a call counts.

Child processes
---------------
A process counts if it descends from this one (a child, or a child's child: with the
``forkserver`` start method a ``ProcessPool``'s workers are children of ``multiprocessing``'s
fork server, which is ours), appeared during the block and has not exited; one that has exited
but was not yet reaped (a zombie) is gone.  ``multiprocessing``'s own long-lived helpers, the
fork server and the resource tracker, are started once on first use and live as long as the
process: they never count, though what the fork server starts does.  A process whose parent
left it behind is adopted by ``init`` (or a subreaper) and no longer descends from this one, so
a daemon that detached itself by a double fork is not seen.  ``ignore_names`` excuses a process
whose name (``sleep``, as ``ps`` shows it) or command line (``sleep 30``) matches;
``processes=False`` leaves processes out of the check.

Processes are read from Linux's ``/proc``: one listing of it on entering the block and one on
leaving, plus the parent chain of any process that appeared meanwhile, so the check costs well
under a millisecond when no process was started.  Where there is no ``/proc`` (macOS, Windows)
processes are not checked, and ``no_leaks`` checks tasks and threads only.

Waiting before judging
----------------------
Work that is merely finishing (a worker that saw the channel close and is on its way out) is not
a leak, so on exit the check is retried with backoff (1 ms, doubling, at most 100 ms apart) for
up to ``timeout`` seconds, goleak's default budget being 0.4 s.  The budget for tasks is measured
on the loop's clock (so a test on virtual time does not wait in real time); for threads and
processes, in real time.  While only threads (or processes) are left, the wait is a short
blocking sleep (at most 100 ms) between turns of the loop, so a thread that waits on the loop can
still finish.

A leaked task that nothing can reach may be freed by the garbage collector before the check
(asyncio then logs "Task was destroyed but it is pending!").  The async form watches the loop's
exception handler for that report during the block, counts such a task as leaked and blocked
forever, and passes the report on to the handler that was there before.

If the block raises, nothing is checked: the exception is the report that matters, and the
tasks it left behind are its consequence.

The report
----------
:class:`~poolkit.LeakError` carries a :class:`~poolkit.leaks.Snapshot` of what leaked, grouped
by stack with creation sites as in ``/debug/pprof/goroutine?debug=1``; it is a
:class:`LeakSnapshot`, whose ``processes`` lists the leaked processes (PID, parent, state and
command line), shown after the tasks and threads.  Tasks that are provably blocked forever
(nothing alive can wake them: :func:`poolkit.leaks.find_blocked`) are marked as such; the others
are only still running when the budget ran out.  Where that analysis cannot
run (:class:`~poolkit.HeapAnalysisUnavailable`: a free-threaded build, an unverified CPython
version), the leaks are reported all the same, without the mark, and the message says why.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import inspect
import os
import shlex
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import LeakError

from ._blocked import analysis_unavailable
from ._introspect import (
    Info,
    Snapshot,
    TaskInfo,
    ThreadInfo,
    stopped_world,
    task_infos,
    thread_infos,
)
from ._snapshot import blocked_ids

__all__ = ["LeakSnapshot", "NoLeaks", "ProcessInfo", "no_leaks"]

P = ParamSpec("P")
R = TypeVar("R")

# asyncio's and uvloop's default executors (``asyncio.to_thread``) name their threads so.
_DEFAULT_EXECUTOR = ("asyncio_", "uvloop_")
_DESTROYED = "Task was destroyed but it is pending!"  # asyncio's words, on every loop
_FIRST_DELAY = 0.001
_MAX_DELAY = 0.1


def _patterns(value: str | Iterable[str], name: str) -> tuple[str, ...]:
    items = (value,) if isinstance(value, str) else tuple(value)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be strings (glob patterns), got {item!r}")
    return items


# ----------------------------------------------------------------------- child processes
#
# Linux only: everything is read from /proc, which other systems lack or lay out otherwise.
# The check costs one listing of /proc on entering a block and one on leaving it: a process
# started in the block is one whose PID was not listed on entry (PIDs are handed out in order,
# up to pid_max, so one being reused within a block is out of reach in practice), and only
# such new PIDs have their parent chain read.  /proc/<pid>/task/*/children would give the
# children directly, but it is a kernel option that is often off.

_PROC = "/proc"
_GONE_STATES = frozenset("ZXx")  # zombie, dead: exited, only waiting to be reaped


def _procfs() -> bool:
    """Whether processes can be read here (Linux's /proc)."""
    return sys.platform.startswith("linux") and os.path.exists(f"{_PROC}/self/stat")


_HAS_PROCFS = _procfs()


def _pids() -> set[int]:
    """The PIDs of every process of the system (empty without /proc)."""
    if not _HAS_PROCFS:
        return set()
    try:
        return {int(name) for name in os.listdir(_PROC) if name.isdigit()}
    except OSError:
        return set()


def _read(path: str, size: int = 4096) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.read(fd, size)
    except OSError:
        return None
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[int, str, str] | None:
    """``(ppid, state, name)`` of ``pid`` from ``/proc/<pid>/stat``; ``None`` if it is gone."""
    data = _read(f"{_PROC}/{pid}/stat")
    if not data:
        return None
    # "pid (name) state ppid ...": the name may hold spaces and parentheses, but is the only
    # part in parentheses, and ends at the last ")".
    open_, close = data.find(b"("), data.rfind(b")")
    rest = data[close + 2 :].split(None, 2)
    if open_ < 0 or close < open_ or len(rest) < 2:
        return None
    name = data[open_ + 1 : close].decode("utf-8", "replace")
    return int(rest[1]), rest[0].decode("ascii", "replace"), name


def _cmdline(pid: int) -> tuple[str, ...]:
    # Each argument ends with a NUL; a program that rewrote its title (redis-server, say) may
    # leave one string padded with NULs instead, which is its title.
    data = (_read(f"{_PROC}/{pid}/cmdline", 65536) or b"").rstrip(b"\0")
    return tuple(arg.decode("utf-8", "replace") for arg in data.split(b"\0")) if data else ()


def multiprocessing_helpers() -> set[int]:
    """PIDs of ``multiprocessing``'s own long-lived processes in this process: the fork server
    and the resource tracker.  Each is started once, on first use, and lives as long as the
    process (or until it dies): started in one block, it is that block's helper, not a leak."""
    found = set()
    # Read defensively: private attributes, and the modules are only looked at if imported.
    forkserver = sys.modules.get("multiprocessing.forkserver")
    server = getattr(forkserver, "_forkserver", None)
    tracker = getattr(
        sys.modules.get("multiprocessing.resource_tracker"), "_resource_tracker", None
    )
    for pid in (getattr(server, "_forkserver_pid", None), getattr(tracker, "_pid", None)):
        if isinstance(pid, int) and pid > 0:
            found.add(pid)
    return found


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """A process started by this process (a child, or a child's child...) that outlived a
    :func:`no_leaks` block; plain data, as :class:`~poolkit.leaks.ThreadInfo`."""

    pid: int
    ppid: int
    """Its parent's PID: this process's, or another descendant's."""
    name: str
    """The command's name, as ``ps`` shows it (``sleep``, ``python3.11``)."""
    state: str
    """Its state letter from ``/proc/<pid>/stat``: ``R`` running, ``S`` sleeping, ``D`` in
    uninterruptible I/O, ``T`` stopped."""
    cmdline: tuple[str, ...]
    """Its arguments (empty if it could not be read).  A worker forked by ``multiprocessing``'s
    fork server has the fork server's."""
    parent: str
    """What its parent is: ``"this process"``, ``"multiprocessing fork server"``, or the
    parent's name."""

    kind = "process"

    @property
    def command(self) -> str:
        """The command line, quoted as a shell would need it (``[name]`` without one; as it is,
        for a program that rewrote it as one string, as ``ps`` shows it)."""
        if not self.cmdline:
            return f"[{self.name}]"
        return self.cmdline[0] if len(self.cmdline) == 1 else shlex.join(self.cmdline)


def new_descendants(before: set[int], root: int | None = None) -> list[tuple[int, int, str, str]]:
    """``(pid, ppid, state, name)`` of each live descendant of ``root`` (default: this
    process) whose PID is not in ``before``, oldest PID first, leaving out multiprocessing's
    helpers (:func:`multiprocessing_helpers`) and zombies."""
    if root is None:
        root = os.getpid()
    new = _pids() - before
    if not new:
        return []  # the usual case: no process appeared at all
    helpers = multiprocessing_helpers()
    stats: dict[int, tuple[int, str, str] | None] = {}
    ours: dict[int, bool] = {root: True}

    def stat(pid: int) -> tuple[int, str, str] | None:
        if pid not in stats:
            stats[pid] = _stat(pid)
        return stats[pid]

    def descends(pid: int) -> bool:
        chain = []
        while pid not in ours:
            chain.append(pid)
            found = stat(pid)
            if found is None or found[0] <= 0 or len(chain) > 64:
                result = False
                break
            pid = found[0]
        else:
            result = ours[pid]
        for link in chain:
            ours[link] = result
        return result

    leftover = []
    for pid in sorted(new):
        if pid == root or pid in helpers or not descends(pid):
            continue
        found = stat(pid)
        if found is not None and found[1] not in _GONE_STATES:
            leftover.append((pid, *found))
    return leftover


def count_descendants() -> int:
    """Live descendants of this process, leaving out multiprocessing's helpers and zombies
    (0 where ``/proc`` cannot be read)."""
    return len(new_descendants(set()))


def process_infos(found: Iterable[tuple[int, int, str, str]]) -> list[ProcessInfo]:
    """The processes ``found`` by :func:`new_descendants`, with their command lines."""
    me, helpers = os.getpid(), multiprocessing_helpers()

    def parent(ppid: int) -> str:
        if ppid == me:
            return "this process"
        if ppid in helpers:
            return "multiprocessing fork server"
        stat = _stat(ppid)
        return "?" if stat is None else stat[2]

    return [
        ProcessInfo(pid, ppid, name, state, _cmdline(pid), parent(ppid))
        for pid, ppid, state, name in found
    ]


@dataclass(frozen=True, slots=True)
class LeakSnapshot(Snapshot):
    """What a :class:`~poolkit.LeakError` reports: the tasks and threads that leaked, as in any
    :class:`~poolkit.leaks.Snapshot`, and the processes."""

    processes: tuple[ProcessInfo, ...] = ()
    """The child processes (and their children) that outlived the block, oldest PID first."""

    def dump(self, debug: int = 1) -> str:
        """As :meth:`Snapshot.dump <poolkit.leaks.Snapshot.dump>`, then the processes, one a
        line, if any leaked (``debug`` makes no difference to them)."""
        text = Snapshot.dump(self, debug)  # not super(): slots dataclasses are rebuilt
        if not self.processes:
            return text
        lines = [f"process profile: total {len(self.processes)}"]
        lines += [_process_line(p) for p in self.processes]
        return text.rstrip("\n") + "\n\n" + "\n".join(lines) + "\n"

    def to_json(self) -> dict[str, Any]:
        """As :meth:`Snapshot.to_json <poolkit.leaks.Snapshot.to_json>`, with ``"processes"``:
        each a dict of ``pid``, ``ppid``, ``parent``, ``name``, ``state`` and ``cmdline`` (a
        list)."""
        data = Snapshot.to_json(self)
        data["processes"] = [
            {
                "pid": p.pid,
                "ppid": p.ppid,
                "parent": p.parent,
                "name": p.name,
                "state": p.state,
                "cmdline": [*p.cmdline],
            }
            for p in self.processes
        ]
        return data


def _process_line(info: ProcessInfo) -> str:
    return f"pid {info.pid} [{info.state}], parent {info.ppid} ({info.parent}): {_what(info)}"


def _counted(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 'es' if noun.endswith('s') else 's'}"


def _joined(parts: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` (and nothing for no parts)."""
    return " and ".join(parts) if len(parts) < 3 else f"{', '.join(parts[:-1])} and {parts[-1]}"


def _what(info: ProcessInfo) -> str:
    """A process, as reports show it: its command line (its name, for a fork server's worker,
    whose command line is the fork server's and says nothing of what the worker is)."""
    if info.parent == "multiprocessing fork server":
        return f"{info.name}, forked by multiprocessing's fork server"
    return info.command


def _short(text: str, width: int = 60) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


class _Watch:
    """The loop's exception handler while a ``no_leaks`` block runs: notes tasks destroyed while
    pending, then passes every report on to the handler that was there before.  Blocks on one
    loop can overlap in any order: each leaves the chain without disturbing the others."""

    __slots__ = ("block", "previous")

    def __init__(self, block: NoLeaks, previous: Any) -> None:
        self.block: NoLeaks | None = block
        self.previous = previous

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if self.block is not None:
            self.block._note_destroyed(loop, context)
        if self.previous is not None:
            self.previous(loop, context)
        else:
            loop.default_exception_handler(context)

    def remove(self, loop: asyncio.AbstractEventLoop) -> None:
        self.block = None  # from now on it only passes reports on
        handler = loop.get_exception_handler()
        if handler is self:
            loop.set_exception_handler(self.previous)
            return
        while isinstance(handler, _Watch):  # a later block's watch is in front: unlink
            if handler.previous is self:
                handler.previous = self.previous
                return
            handler = handler.previous
        # Someone else replaced the handler meanwhile: leave theirs alone.


class NoLeaks:
    """What :func:`no_leaks` returns: an async and sync context manager, and a decorator.

    ``NoLeaks(...)`` takes the same arguments as :func:`no_leaks`, and keeps them as attributes.
    One object can be used many times, one block at a time; as a decorator, each call of the
    function gets a fresh one.

    Raises:
        RuntimeError: If it is entered while a block is already using it.
        TypeError: If it decorates something that is not callable, or a generator function
            (whose body runs after the call returns).
        LeakError: On leaving a block, as :func:`no_leaks` says.
    """

    __slots__ = (
        "_destroyed",
        "_ids_before",
        "_loop",
        "_me",
        "_pids_before",
        "_task",
        "_tasks_before",
        "_threads_before",
        "_watch",
        "ignore_current",
        "ignore_functions",
        "ignore_names",
        "processes",
        "timeout",
    )

    def __init__(
        self,
        *,
        timeout: float = 0.4,
        ignore_names: str | Iterable[str] = (),
        ignore_functions: str | Iterable[str] = (),
        ignore_current: bool = True,
        processes: bool = True,
    ) -> None:
        checked = check_timeout(timeout)
        if checked is None:
            raise ValueError(f"timeout must be a finite number of seconds, got {timeout!r}")
        if not isinstance(ignore_current, bool):
            raise TypeError(f"ignore_current must be True or False, got {ignore_current!r}")
        if not isinstance(processes, bool):
            raise TypeError(f"processes must be True or False, got {processes!r}")
        self.timeout = checked
        self.ignore_names = _patterns(ignore_names, "ignore_names")
        self.ignore_functions = _patterns(ignore_functions, "ignore_functions")
        self.ignore_current = ignore_current
        self.processes = processes
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._me: threading.Thread | None = None
        self._tasks_before: weakref.WeakSet[asyncio.Task[Any]] | None = None
        self._threads_before: set[threading.Thread] | None = None
        self._pids_before: set[int] = set()
        self._destroyed: list[TaskInfo] = []
        self._ids_before: set[int] = set()
        self._watch: _Watch | None = None

    def __repr__(self) -> str:
        return (
            f"no_leaks(timeout={self.timeout!r}, ignore_names={self.ignore_names!r}, "
            f"ignore_functions={self.ignore_functions!r}, ignore_current={self.ignore_current!r}, "
            f"processes={self.processes!r})"
        )

    def _copy(self) -> NoLeaks:
        return NoLeaks(
            timeout=self.timeout,
            ignore_names=self.ignore_names,
            ignore_functions=self.ignore_functions,
            ignore_current=self.ignore_current,
            processes=self.processes,
        )

    # ------------------------------------------------------------------- entering

    def _enter(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._threads_before is not None:
            raise RuntimeError(f"{self!r} is already in use; make one per block")
        self._loop = loop
        self._me = threading.current_thread()
        self._threads_before = set(threading.enumerate()) if self.ignore_current else set()
        self._pids_before = _pids() if self.processes and self.ignore_current else set()
        if loop is not None:
            self._task = asyncio.current_task(loop)
            before = asyncio.all_tasks(loop) if self.ignore_current else ()
            self._tasks_before = weakref.WeakSet(before)
            self._ids_before = {id(t) for t in before}
            self._destroyed = []
            self._watch = _Watch(self, loop.get_exception_handler())
            loop.set_exception_handler(self._watch)

    def _reset(self) -> None:
        loop, watch = self._loop, self._watch
        if loop is not None and watch is not None:
            watch.remove(loop)
        self._loop = self._task = self._me = self._watch = None
        self._tasks_before = self._threads_before = None
        self._ids_before = set()
        self._pids_before = set()

    def _note_destroyed(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Note a task the garbage collector destroyed while it was pending (a leak that no
        check at the end could see any more)."""
        task = context.get("task")
        if (
            isinstance(task, asyncio.Task)
            and context.get("message") == _DESTROYED
            and task is not self._task
            and id(task) not in self._ids_before  # its weak entry is already gone by now
            and not self._excused(task.get_name())
        ):
            infos = [i for i in task_infos([task], loop) if self._keep(i)]
            for info in infos:
                info.blocked = True  # unreachable, by definition: the collector freed it
                info.state = f"destroyed while pending ({info.state})"
            self._destroyed += infos

    async def __aenter__(self) -> NoLeaks:
        self._enter(asyncio.get_running_loop())
        return self

    def __enter__(self) -> NoLeaks:
        self._enter(None)
        return self

    # ------------------------------------------------------------------- judging

    def _excused(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in self.ignore_names)

    def _leftover_tasks(self) -> list[asyncio.Task[Any]]:
        loop, me, before = self._loop, self._task, self._tasks_before
        if loop is None or before is None:
            return []
        return [
            t
            for t in asyncio.all_tasks(loop)
            if t is not me and t not in before and not self._excused(t.get_name())
        ]

    def _leftover_threads(self) -> list[threading.Thread]:
        me, before = self._me, self._threads_before or set()
        found = [
            t
            for t in threading.enumerate()
            if t is not me and t not in before and t.is_alive() and not self._excused(t.name)
        ]
        executors = [t for t in found if t.name.startswith(_DEFAULT_EXECUTOR)]
        if executors:
            idle = {
                info.ident
                for info in thread_infos(executors, None)
                if info.state == "executor idle"
            }
            found = [t for t in found if t.ident not in idle]
        return found

    def _leftover_processes(self) -> list[tuple[int, int, str, str]]:
        """``(pid, ppid, state, name)`` of the descendants started in the block, still alive."""
        if not self.processes:
            return []
        found = new_descendants(self._pids_before)
        if found and self.ignore_names:
            found = [
                p
                for p in found
                if not self._excused(p[3]) and not self._excused(shlex.join(_cmdline(p[0])))
            ]
        return found

    def _keep(self, info: Info) -> bool:
        patterns = self.ignore_functions
        if not patterns:
            return True
        return not any(fnmatch.fnmatchcase(frame.name, p) for frame in info.stack for p in patterns)

    def _leaks(self, *, mark_blocked: bool) -> tuple[list[TaskInfo], list[ThreadInfo]]:
        """What is left over now, as plain data, after the ignore rules."""
        keep: list[Any] = []
        with stopped_world():
            dead: set[int] = set()
            if mark_blocked and self._loop is not None and analysis_unavailable() is None:
                dead = blocked_ids(self._loop, keep)
            tasks = self._leftover_tasks()
            keep.append(tasks)
            task_part = [i for i in task_infos(tasks, self._loop) if self._keep(i)]
            threads = self._leftover_threads()
            keep.append(threads)
            thread_part = [i for i in thread_infos(threads, None) if self._keep(i)]
        keep.clear()  # outside the stopped world: whatever this frees may run its __del__
        for info in task_part:
            info.blocked = info.ident in dead
        return task_part, thread_part

    def _fail(self, waited: float) -> None:
        __tracebackhide__ = True  # pytest: the report is the point, not this frame
        destroyed = self._destroyed
        # Proving tasks blocked walks the whole heap: only when there are tasks to report.
        tasks, threads = self._leaks(mark_blocked=bool(self._leftover_tasks()))
        processes = process_infos(self._leftover_processes())
        if not tasks and not threads and not destroyed and not processes:
            return
        report = LeakSnapshot(
            tuple(tasks + destroyed), tuple(threads), time.time(), tuple(processes)
        )
        parts = []
        if tasks:
            parts.append(_counted(len(tasks), "task"))
        if threads:
            parts.append(_counted(len(threads), "thread"))
        if processes:
            shown = "; ".join(f"pid {p.pid}: {_short(_what(p))}" for p in processes[:3])
            more = f"; {len(processes) - 3} more" if len(processes) > 3 else ""
            parts.append(f"{_counted(len(processes), 'process')} ({shown}{more})")
        stuck = sum(1 for t in tasks if t.blocked)
        message = f"{_joined(parts)} still alive {waited:.3g} s after the block ended"
        if destroyed:
            gone = f"{len(destroyed)} task{'s' if len(destroyed) != 1 else ''}"
            lost = f"{gone} destroyed by the garbage collector while still pending"
            message = f"{message}; {lost}" if parts else f"{lost} (leaked: nothing could wake them)"
        unavailable = analysis_unavailable() if tasks else None
        if unavailable is not None:
            message += f" (which of them are blocked forever is not known here: {unavailable})"
        elif stuck:
            message += (
                f"; {stuck} of the tasks {'is' if stuck == 1 else 'are'} blocked forever"
                f" (nothing alive can wake {'it' if stuck == 1 else 'them'})"
            )
        raise LeakError(f"{message}\n\n{report.dump(1)}", report)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        try:
            if exc_type is not None:
                return
            loop = self._loop
            assert loop is not None
            task_deadline = loop.time() + self.timeout
            thread_deadline = time.monotonic() + self.timeout
            delay = _FIRST_DELAY
            while True:
                # Cheap checks by identity first; the stacks only if the ignore rules need them.
                tasks = bool(self._leftover_tasks())
                threads = bool(self._leftover_threads())
                if (tasks or threads) and self.ignore_functions:
                    found_tasks, found_threads = self._leaks(mark_blocked=False)
                    tasks, threads = bool(found_tasks), bool(found_threads)
                # Processes wait in real time, as threads do.
                threads = threads or bool(self._leftover_processes())
                if not tasks and not threads:
                    if not self._destroyed:
                        return  # the usual case: no report, and so no heap walk for one
                    break
                task_left = task_deadline - loop.time()
                thread_left = thread_deadline - time.monotonic()
                if (not tasks or task_left <= 0) and (not threads or thread_left <= 0):
                    break
                if tasks and task_left > 0:
                    await asyncio.sleep(min(delay, task_left))
                else:
                    time.sleep(min(delay, thread_left))  # noqa: ASYNC251 - see module doc
                    await asyncio.sleep(0)
                delay = min(delay * 2, _MAX_DELAY)
            self._fail(self.timeout)
        finally:
            self._reset()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        __tracebackhide__ = True
        try:
            if exc_type is not None:
                return
            deadline = time.monotonic() + self.timeout
            delay = _FIRST_DELAY
            while True:
                threads = bool(self._leftover_threads())
                if threads and self.ignore_functions:
                    threads = bool(self._leaks(mark_blocked=False)[1])
                if not threads and not self._leftover_processes():
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    self._fail(self.timeout)
                    return
                time.sleep(min(delay, left))
                delay = min(delay * 2, _MAX_DELAY)
        finally:
            self._reset()

    # ------------------------------------------------------------------- decorating

    @overload
    def __call__(self, func: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]: ...
    @overload
    def __call__(self, func: Callable[P, R]) -> Callable[P, R]: ...
    def __call__(self, func: Callable[P, Any]) -> Callable[P, Any]:
        if not callable(func):
            raise TypeError(f"no_leaks() decorates a function, got {func!r}")
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"no_leaks() cannot check the generator function {func.__qualname__}: its body "
                f"runs after the call returns; use 'with no_leaks():' inside it instead"
            )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def checked_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                __tracebackhide__ = True  # pytest shows the caller's code, not this wrapper
                async with self._copy():
                    return await func(*args, **kwargs)

            return checked_async

        @functools.wraps(func)
        def checked(*args: P.args, **kwargs: P.kwargs) -> Any:
            __tracebackhide__ = True
            with self._copy():
                return func(*args, **kwargs)

        return checked


def no_leaks(
    *,
    timeout: float = 0.4,
    ignore_names: str | Iterable[str] = (),
    ignore_functions: str | Iterable[str] = (),
    ignore_current: bool = True,
    processes: bool = True,
) -> NoLeaks:
    """Fail with :class:`~poolkit.LeakError` if tasks, threads or child processes outlive the
    block.

    ::

        async with poolkit.no_leaks():
            await run_my_service_briefly()

        @poolkit.no_leaks(timeout=1.0)
        async def test_shutdown(): ...

        with poolkit.no_leaks():  # sync form: threads and processes
            run_threads()

    The async form checks the running loop's tasks and all threads; the sync form, used from a
    thread or outside any loop, checks threads only (it cannot wait for tasks).  Both check the
    processes this one started, and theirs (on Linux; see the module docstring), leaving out
    ``multiprocessing``'s fork server and resource tracker.  The block's own task and thread
    never count, nor do idle threads of the loop's default executor, nor processes that have
    exited but were not yet reaped.  Work that is merely finishing is not a leak: on exit the
    check is repeated, 1 ms apart and doubling up to 100 ms, until ``timeout`` has passed (on
    the loop's clock for tasks, in real time for threads and processes).  Nothing is checked if
    the block raises.

    Args:
        timeout: Seconds to keep re-checking before failing, a finite number; leaks are
            reported only after it.
        ignore_names: Task and thread names to excuse, as glob patterns (``"asyncio_*"``
            excuses the default executor's worker threads even while they run a call); a
            process is excused by its name (``"sleep"``) or its command line (``"sleep *"``).
        ignore_functions: ``module.qualname`` glob patterns; a task or thread with such a
            function anywhere on its stack is excused.
        ignore_current: Excuse whatever was alive when the block began (``False`` counts every
            task of the loop, every thread except the block's own, and every child process).
        processes: Check child processes too (``False``: tasks and threads only).

    Returns:
        A :class:`~poolkit.leaks.NoLeaks`, for ``async with``, ``with`` or decorating.

    Raises:
        LeakError: On leaving the block normally, if tasks, threads or processes outlived it by
            ``timeout``, or a task started in it was destroyed by the garbage collector while
            still pending; its ``snapshot`` (a :class:`~poolkit.leaks.LeakSnapshot`) says what
            leaked.
        ValueError: If ``timeout`` is negative, NaN, infinite or ``None``.
        TypeError: If ``timeout`` is not a number, a pattern is not a ``str``, or
            ``ignore_current`` or ``processes`` is not a ``bool``.
    """
    return NoLeaks(
        timeout=timeout,
        ignore_names=ignore_names,
        ignore_functions=ignore_functions,
        ignore_current=ignore_current,
        processes=processes,
    )
