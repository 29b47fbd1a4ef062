"""Snapshots of live tasks and threads, and pprof-style dumps of them.

A snapshot is plain data (:class:`TaskInfo`, :class:`ThreadInfo`): it holds no task, thread or
frame, so keeping one, printing it or sending it elsewhere never keeps anything alive.

How a task's stack is found
---------------------------
A task's coroutine awaits another coroutine, which awaits another, down to a future: the chain
``cr_await`` links (through ``async for`` over async generators too).  Each link's frame gives a
function and a line; innermost first, as Go prints goroutines.  The *state* names what the task
waits for (``chan receive``, ``semacquire``, ``sleep``...), taken from the library frame nearest
the caller's code: ``Channel.receive`` says more than the generic wait it calls.

Taking a snapshot from another thread
-------------------------------------
A dump must work when the event loop is stuck, since that is when one wants it.  So a snapshot
taken from another thread does not ask the loop: it reads the loop's tasks directly.  Python
cannot stop the other threads meanwhile (raising the switch interval backfires: the first thread
to take the lock back then keeps it for as long as the new interval), so a snapshot of a loop
that is running in another thread is a best effort: each task's stack is read as it is at that
moment, and a task that finishes meanwhile may still be listed.  It is exact for a loop that is
stuck or that runs in the calling thread.  The collector is paused while a snapshot is taken, so
nothing is freed under it.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import CodeType, FrameType
from typing import Any, TypeAlias

from ._registry import Origin, origin_of, set_origin, user_site

__all__ = [
    "Frame",
    "Snapshot",
    "TaskInfo",
    "ThreadInfo",
    "label",
    "snapshot",
    "track_tasks",
]


@dataclass(frozen=True, slots=True)
class Frame:
    """One line of a stack: a function (qualified name), its module, file and line."""

    function: str
    module: str
    filename: str
    line: int

    @property
    def name(self) -> str:
        """``module.function``: what ignore rules match against."""
        return f"{self.module}.{self.function}"


@dataclass(slots=True)
class TaskInfo:
    """One asyncio task, as it was when the snapshot was taken (plain data: read it, do not
    change it; not frozen only because a frozen dataclass costs 8 times more to build, and a
    snapshot builds thousands)."""

    name: str
    """The task's name (``Task-12`` unless it was given one)."""
    ident: int
    """``id()`` of the task: unique among the tasks alive at the same time."""
    state: str
    """``running``, ``runnable``, or what it waits for (``chan receive``, ``sleep``...)."""
    stack: tuple[Frame, ...]
    """Innermost frame first."""
    awaiting: str | None
    """The poolkit object (or the kind of future) it waits on, if any."""
    created_at: Frame | None
    """The line that created it: always known for poolkit's own tasks, and for every task on a
    loop where :func:`track_tasks` is on."""
    age: float | None
    """Seconds since it was created, when ``created_at`` is known."""
    owner: str | None
    """The poolkit object it works for (``pool 'fetch' worker 3``), if any."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels set with :func:`label`."""
    blocked: bool = False
    """Provably blocked forever: nothing alive can wake it (see ``find_blocked``)."""

    kind = "task"


@dataclass(slots=True)
class ThreadInfo:
    """One thread, as it was when the snapshot was taken (plain data, as :class:`TaskInfo`)."""

    name: str
    ident: int
    """The thread's identifier (``threading.get_ident()`` in that thread)."""
    state: str
    """``running`` or what it blocks in (``queue get``, ``cond wait``, ``IO wait``...)."""
    stack: tuple[Frame, ...]
    """Innermost frame first."""
    daemon: bool
    created_at: Frame | None
    """The line that started it, for poolkit's own threads."""
    age: float | None
    owner: str | None
    labels: Mapping[str, str] = field(default_factory=dict)

    kind = "thread"
    blocked = False


Info: TypeAlias = TaskInfo | ThreadInfo


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Live tasks and threads at one moment: ``print(poolkit.leaks.snapshot().dump())``."""

    tasks: tuple[TaskInfo, ...]
    threads: tuple[ThreadInfo, ...]
    taken: float
    """Wall-clock time (``time.time()``) of the snapshot."""

    def dump(self, debug: int = 1) -> str:
        """The snapshot as text.  ``debug=1``: grouped by identical stack, most common first,
        like ``/debug/pprof/goroutine?debug=1``.  ``debug=2``: every task and thread in full,
        like ``?debug=2``."""
        if debug == 1:
            return format_groups(self.tasks, self.threads)
        if debug == 2:
            return format_full(self.tasks, self.threads)
        raise ValueError(f"debug must be 1 or 2, got {debug!r}")

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``json.dumps(snapshot.to_json())``)."""
        return {
            "taken": self.taken,
            "tasks": [_info_json(t) for t in self.tasks],
            "threads": [_info_json(t) for t in self.threads],
        }


def _frame_json(frame: Frame | None) -> dict[str, Any] | None:
    if frame is None:
        return None
    return {
        "function": frame.function,
        "module": frame.module,
        "file": frame.filename,
        "line": frame.line,
    }


def _info_json(info: Info) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": info.name,
        "ident": info.ident,
        "state": info.state,
        "stack": [_frame_json(f) for f in info.stack],
        "created_at": _frame_json(info.created_at),
        "age": info.age,
        "owner": info.owner,
        "labels": dict(info.labels),
    }
    if isinstance(info, TaskInfo):
        data["awaiting"] = info.awaiting
        data["blocked"] = info.blocked
    else:
        data["daemon"] = info.daemon
    return data


# ----------------------------------------------------------------------- states

_POOLKIT = "poolkit."

# (module, qualified name) -> state.  The match nearest the caller's own code wins, so that
# ``Channel.receive`` names the state rather than the ``Channel._await`` it calls.
_STATES: dict[tuple[str, str], str] = {
    ("poolkit._channel", "Channel.send"): "chan send",
    ("poolkit._channel", "Channel.receive"): "chan receive",
    ("poolkit._channel", "Channel.__anext__"): "chan receive",
    ("poolkit._channel", "Channel.send_blocking"): "chan send",
    ("poolkit._channel", "Channel.receive_blocking"): "chan receive",
    ("poolkit._channel", "Channel.__iter__"): "chan receive",
    ("poolkit._channel", "select"): "select",
    ("poolkit._channel", "select_blocking"): "select",
    ("poolkit._limiter", "CapacityLimiter.acquire"): "semacquire",
    ("poolkit._limiter", "CapacityLimiter.__aenter__"): "semacquire",
    ("poolkit._limiter", "CapacityLimiter.acquire_blocking"): "semacquire",
    ("poolkit._limiter", "CapacityLimiter.__enter__"): "semacquire",
    ("poolkit._ratelimit", "TokenBucket.acquire"): "rate wait",
    ("poolkit._ratelimit", "TokenBucket.__aenter__"): "rate wait",
    ("poolkit._ratelimit", "TokenBucket.acquire_blocking"): "rate wait",
    ("poolkit._composite", "Limits.acquire"): "limits wait",
    ("poolkit._composite", "Limits.hold"): "limits wait",
    ("poolkit._composite", "Limits.acquire_blocking"): "limits wait",
    ("poolkit._pool", "WorkerPool._work"): "pool idle",
    ("poolkit._pool", "WorkerPool.submit"): "pool submit",
    ("poolkit._pool", "WorkerPool.shutdown"): "pool shutdown",
    ("poolkit._pool", "WorkerPool._map"): "pool map",
    ("poolkit._thread_pool", "ThreadPool._work"): "pool idle",
    ("poolkit._thread_pool", "ThreadPool.submit"): "pool submit",
    ("poolkit._thread_pool", "ThreadPool.shutdown"): "pool shutdown",
    ("asyncio.tasks", "sleep"): "sleep",
    ("asyncio.tasks", "wait"): "wait",
    ("asyncio.tasks", "wait_for"): "wait",
    ("asyncio.tasks", "_wait"): "wait",
    ("asyncio.queues", "Queue.get"): "queue get",
    ("asyncio.queues", "Queue.put"): "queue put",
    ("asyncio.queues", "Queue.join"): "queue join",
    ("asyncio.locks", "Event.wait"): "event wait",
    ("asyncio.locks", "Lock.acquire"): "lock acquire",
    ("asyncio.locks", "Semaphore.acquire"): "semacquire",
    ("asyncio.locks", "Condition.wait"): "cond wait",
    ("asyncio.locks", "Barrier.wait"): "barrier wait",
    ("asyncio.taskgroups", "TaskGroup.__aexit__"): "taskgroup wait",
    ("asyncio.streams", "StreamReader._wait_for_data"): "IO wait",
    ("asyncio.streams", "StreamWriter.drain"): "IO wait",
    ("asyncio.base_events", "BaseEventLoop.sock_recv"): "IO wait",
    ("asyncio.base_events", "BaseEventLoop.sock_accept"): "IO wait",
    ("asyncio.base_events", "BaseEventLoop.run_forever"): "event loop",
    ("asyncio.base_events", "BaseEventLoop.run_in_executor"): "IO wait",
    ("threading", "Condition.wait"): "cond wait",
    ("threading", "Event.wait"): "event wait",
    ("threading", "Thread.join"): "join",
    ("threading", "Semaphore.acquire"): "semacquire",
    ("threading", "Barrier.wait"): "barrier wait",
    ("queue", "Queue.get"): "queue get",
    ("queue", "Queue.put"): "queue put",
    ("selectors", "EpollSelector.select"): "IO wait",
    ("selectors", "PollSelector.select"): "IO wait",
    ("selectors", "SelectSelector.select"): "IO wait",
    ("selectors", "KqueueSelector.select"): "IO wait",
    ("socketserver", "BaseServer.serve_forever"): "IO wait",
    ("concurrent.futures.thread", "_worker"): "executor idle",
    ("concurrent.futures._base", "Future.result"): "future wait",
}

_STDLIB = tuple(
    {
        os.path.abspath(p) + os.sep
        for p in (sysconfig.get_paths()["stdlib"], os.path.dirname(threading.__file__))
    }
)
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_LIBRARY = (*_STDLIB, _PACKAGE)

# Library frames that call the program's own function, so count as the program's: what an
# executor thread does inside a call is the call's state, not "executor idle".
_CALLERS = {("concurrent.futures.thread", "_WorkItem.run")}

# Objects the state's "awaiting" names, by the frame that holds them in ``self``.
_LABELLED = ("poolkit._channel", "poolkit._limiter", "poolkit._ratelimit", "poolkit._composite")


class _Frames:
    """Turns raw frames into :class:`Frame` values and a state, with caches shared across one
    snapshot (thousands of tasks usually run a handful of functions)."""

    __slots__ = ("cache", "kinds", "sites")

    def __init__(self) -> None:
        # Keyed by the last instruction, which is cheap to read, unlike the line number.
        self.cache: dict[tuple[CodeType, int], Frame] = {}
        self.sites: dict[tuple[CodeType, int], Frame] = {}  # keyed by line
        # code -> (library code?, the state it names or None, holds a poolkit object in self?)
        self.kinds: dict[CodeType, tuple[bool, str | None, bool]] = {}

    def _new(self, frame: FrameType) -> Frame:
        code = frame.f_code
        module = str(frame.f_globals.get("__name__", "?"))
        made = Frame(code.co_qualname, module, code.co_filename, frame.f_lineno)
        self.cache[code, frame.f_lasti] = made
        if code not in self.kinds:
            state = _STATES.get((module, code.co_qualname))
            self.kinds[code] = (
                code.co_filename.startswith(_LIBRARY)
                and (module, code.co_qualname) not in _CALLERS,
                state,
                state is not None and module in _LABELLED,
            )
        return made

    def stack(self, raw: list[FrameType]) -> tuple[tuple[Frame, ...], str | None, str | None]:
        """(stack, state, awaiting) for frames given innermost first.

        The state comes from the library frame nearest the caller's own code (the outermost of
        the innermost run of library frames): ``Channel.receive`` rather than the generic wait
        it calls.
        """
        cache = self.cache
        kinds = self.kinds
        out = []
        state = awaiting = None
        library = True
        for f in raw:
            code = f.f_code
            made = cache.get((code, f.f_lasti))
            if made is None:
                made = self._new(f)
            out.append(made)
            if library:
                is_library, named, labelled = kinds[code]
                if not is_library:
                    library = False
                elif named is not None:
                    state = named
                    if labelled:
                        label = getattr(f.f_locals.get("self"), "_label", None)
                        if callable(label):
                            awaiting = label()
        return tuple(out), state, awaiting

    def site(self, origin: Origin | None) -> Frame | None:
        if origin is None or origin.code is None:
            return None
        code = origin.code
        made = self.sites.get((code, origin.line))
        if made is None:
            made = Frame(code.co_qualname, origin.module, code.co_filename, origin.line)
            self.sites[code, origin.line] = made
        return made


async def _probe() -> None:
    pass


async def _probe_gen() -> Any:
    yield


def _async_gen_steps() -> tuple[type, type]:
    """The types of ``agen.asend()`` and ``agen.athrow()`` awaitables, which have no public name.
    Each is closed at once: left unawaited, Python 3.13 warns about it."""
    gen = _probe_gen()
    send = gen.asend(None)
    throw = gen.athrow(GeneratorExit)
    send.close()
    throw.close()
    return type(send), type(throw)


_c = _probe()
_COROUTINE: Any = type(_c)
_c.close()
del _c
_ASYNC_GEN_STEPS = _async_gen_steps()
_LEAVES: set[type] = set()  # awaitables seen to have no frame (futures' iterators...)


def _coroutine_frames(coro: Any) -> list[FrameType]:
    """The frames of an await chain, innermost first."""
    frames: list[FrameType] = []
    while coro is not None and len(frames) < 256:
        cls = coro.__class__
        if cls is _COROUTINE:  # the common case, without getattr() fallbacks
            frame = coro.cr_frame
            nxt = coro.cr_await
        elif cls in _LEAVES:
            break  # a future's iterator, say: the end of the chain
        else:
            frame = getattr(coro, "cr_frame", None)
            if frame is None:
                frame = getattr(coro, "gi_frame", None) or getattr(coro, "ag_frame", None)
            nxt = getattr(coro, "cr_await", None)
            if nxt is None:
                nxt = getattr(coro, "gi_yieldfrom", None) or getattr(coro, "ag_await", None)
        if frame is None:
            if not any(hasattr(coro, a) for a in ("cr_await", "gi_yieldfrom", "ag_await")):
                _LEAVES.add(cls)
            break
        frames.append(frame)
        if nxt is not None and nxt.__class__ in _ASYNC_GEN_STEPS:
            nxt = _generator_of(nxt)
        coro = nxt
    frames.reverse()
    return frames


def _generator_of(step: Any) -> Any:
    """The async generator behind an ``__anext__()`` awaitable (it does not expose it)."""
    for ref in gc.get_referents(step):
        if type(ref).__name__ == "async_generator":
            return ref
    return None


# ----------------------------------------------------------------------- taking snapshots

# Re-entrant: a finalizer that runs while a snapshot is taken (a task freed by the thread that
# takes it, reported to the loop's exception handler) may take a snapshot itself.
_world = threading.RLock()


@contextmanager
def stopped_world() -> Iterator[None]:
    """One snapshot at a time, with the garbage collector paused (see the module docstring)."""
    with _world:
        collecting = gc.isenabled()
        gc.disable()  # nothing is freed under a snapshot; and a collection now would cost more
        try:
            yield
        finally:
            if collecting:
                gc.enable()


def _task_info(
    task: asyncio.Task[Any], current: asyncio.Task[Any] | None, frames: _Frames, now: float
) -> TaskInfo:
    stack, state, awaiting = frames.stack(_coroutine_frames(task.get_coro()))
    if task is current:
        state = "running"
    else:
        waiter = getattr(task, "_fut_waiter", None)
        if waiter is None:
            state = "runnable"
        elif state is None:
            state = f"await {type(waiter).__name__}"
    origin = origin_of(task)
    if origin is None:
        return TaskInfo(task.get_name(), id(task), state, stack, awaiting, None, None, None, {})
    return TaskInfo(
        task.get_name(),
        id(task),
        state,
        stack,
        awaiting,
        frames.site(origin),
        now - origin.created,
        origin.owner,
        {} if origin.labels is None else dict(origin.labels),
    )


def _thread_info(
    thread: threading.Thread,
    top: FrameType | None,
    frames: _Frames,
    now: float,
    skip: FrameType | None,
) -> ThreadInfo:
    raw: list[FrameType] = []
    frame = top
    if skip is not None:  # the thread taking the snapshot: start at whoever asked for it
        frame = skip
    while frame is not None:
        raw.append(frame)
        frame = frame.f_back
    stack, state, _ = frames.stack(raw)
    origin = origin_of(thread)
    return ThreadInfo(
        name=thread.name,
        ident=thread.ident or 0,
        state="running" if skip is not None or state is None else state,
        stack=stack,
        daemon=thread.daemon,
        created_at=frames.site(origin),
        age=None if origin is None else now - origin.created,
        owner=None if origin is None else origin.owner,
        labels={} if origin is None or origin.labels is None else dict(origin.labels),
    )


def running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def collect_tasks(loop: asyncio.AbstractEventLoop) -> list[asyncio.Task[Any]]:
    """The loop's unfinished tasks.  Safe from any thread inside :func:`stopped_world`."""
    return [t for t in asyncio.all_tasks(loop) if not t.done()]


def task_infos(
    tasks: Iterable[asyncio.Task[Any]], loop: asyncio.AbstractEventLoop | None
) -> list[TaskInfo]:
    frames = _Frames()
    now = time.monotonic()
    current = None if loop is None else asyncio.current_task(loop)
    return [_task_info(t, current, frames, now) for t in tasks]


def thread_infos(threads: Iterable[threading.Thread], caller: FrameType | None) -> list[ThreadInfo]:
    frames = _Frames()
    now = time.monotonic()
    tops = sys._current_frames()
    me = threading.get_ident()
    return [
        _thread_info(t, tops.get(t.ident or 0), frames, now, caller if t.ident == me else None)
        for t in threads
    ]


def blocked_ids(loop: asyncio.AbstractEventLoop | None, keep: list[Any]) -> set[int]:
    """``id()`` of the tasks :mod:`poolkit._blocked` proves blocked; inside :func:`stopped_world`,
    before the caller holds any task (a task the caller holds is reachable, hence not blocked).
    ``keep`` receives what the caller must drop after leaving :func:`stopped_world`."""
    from ._blocked import blocked_tasks

    found = blocked_tasks(loop, keep)
    keep.append(found)
    return {id(t) for t in found}


def snapshot(
    loop: asyncio.AbstractEventLoop | None = None,
    *,
    tasks: bool = True,
    threads: bool = True,
    blocked: bool = False,
) -> Snapshot:
    """Every unfinished task of ``loop`` (default: the running loop, if any) and every thread.

    Safe to call from any thread, with the loop running, idle or stuck: from another thread the
    snapshot is a best effort if the loop is running in another thread (module docstring).  The
    snapshot holds no reference to a task, thread or frame.  ``blocked=True`` also marks the
    tasks that are provably blocked forever (``TaskInfo.blocked``; see
    :func:`poolkit.leaks.find_blocked`), which costs a walk of the whole heap and raises
    :class:`~poolkit.HeapAnalysisUnavailable` where that analysis cannot run.
    """
    if loop is None:
        loop = running_loop()
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an event loop or None, got {loop!r}")
    if blocked:
        from ._blocked import check_available

        check_available()
    caller = sys._getframe(1)
    keep: list[Any] = []
    with stopped_world():
        dead = blocked_ids(loop, keep) if blocked and tasks and loop is not None else set()
        task_list = collect_tasks(loop) if tasks and loop is not None else []
        keep.append(task_list)
        task_part = task_infos(task_list, loop)
        for info in task_part:
            if info.ident in dead:
                info.blocked = True
        thread_list = threading.enumerate() if threads else []
        keep.append(thread_list)
        thread_part = thread_infos(thread_list, caller)
    del caller
    keep.clear()  # outside the stopped world: whatever this frees may run its __del__
    return Snapshot(tuple(task_part), tuple(thread_part), time.time())


# ----------------------------------------------------------------------- tracking


class _TrackingFactory:
    """A task factory that notes where every task was created (see :func:`track_tasks`)."""

    __slots__ = ("inner",)

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def __call__(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> Any:
        inner = self.inner
        if inner is None:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        else:
            task = inner(loop, coro, **kwargs)
        code, line, module = user_site()
        set_origin(task, Origin(code, line, module, None))
        return task


def track_tasks(loop: asyncio.AbstractEventLoop | None = None, *, enabled: bool = True) -> None:
    """Record where every task on ``loop`` (default: the running loop) is created, and when.

    Dumps then show ``created by ... at file:line`` and the age of every task, not only of
    poolkit's own.  It adds about a third to a bare ``create_task`` (measured in
    ``benchmarks/``), so it is off unless asked for; ``enabled=False`` turns it off again.
    It installs a task factory, wrapping any factory already set.
    """
    if loop is None:
        loop = asyncio.get_running_loop()
    factory = loop.get_task_factory()
    if enabled:
        if not isinstance(factory, _TrackingFactory):
            loop.set_task_factory(_TrackingFactory(factory))
    elif isinstance(factory, _TrackingFactory):
        loop.set_task_factory(factory.inner)


_LABEL_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def label(target: asyncio.Task[Any] | threading.Thread | None = None, /, **labels: str) -> None:
    """Attach labels to a task or thread (default: the current task, else the current thread).

    They appear in dumps (``{host=example.com}``) and can tell apart tasks that run the same
    code, as pprof labels do.  Later calls add to (or overwrite) earlier ones.
    """
    if target is None:
        target = asyncio.current_task() if running_loop() is not None else None
        if target is None:
            target = threading.current_thread()
    elif not isinstance(target, (asyncio.Task, threading.Thread)):
        raise TypeError(f"label() needs a task or a thread, got {target!r}")
    for key, value in labels.items():
        if not isinstance(value, str):
            raise TypeError(f"label {key!r} must be a str, got {value!r}")
        if not _LABEL_KEY.match(key):  # pragma: no cover - Python keywords are identifiers
            raise ValueError(f"label name {key!r} is not an identifier")
    origin = origin_of(target)
    if origin is None:
        origin = Origin(None, 0, "?", None)
        set_origin(target, origin)
    if origin.labels is None:
        origin.labels = {}
    origin.labels.update(labels)


# ----------------------------------------------------------------------- text dumps


def _heading(info: Info) -> str:
    parts = [info.state]
    if info.blocked:
        parts.append("blocked forever")
    return ", ".join(parts)


def _owner_group(owner: str | None) -> str | None:
    """``pool 'x' worker 3`` -> ``pool 'x' worker``: workers of one pool group together."""
    return None if owner is None else re.sub(r" \d+$", "", owner)


def _labels(labels: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) + "}"


def group(infos: Iterable[Info]) -> list[tuple[int, Info, list[str]]]:
    """Infos with the same state, stack, creation site and owner, counted; most common first.
    Each group also lists its members' names."""
    counts: dict[tuple[Any, ...], list[Any]] = {}
    for info in infos:
        key = (info.state, info.blocked, info.stack, info.created_at, _owner_group(info.owner))
        entry = counts.get(key)
        if entry is None:
            counts[key] = [1, info, [info.name]]
        else:
            entry[0] += 1
            entry[2].append(info.name)
    ordered = sorted(counts.values(), key=lambda e: -e[0])  # stable: first seen first on ties
    return [(n, info, names) for n, info, names in ordered]


# Names that asyncio and threading make up (``Task-12``, ``Thread-3 (run)``): they say nothing
# that the stack does not, so a group's name line leaves them out.
_DEFAULT_NAME = re.compile(r"(Task|Thread)-\d+( \(.*\))?\Z")
_NAMES_SHOWN = 5


def _names_line(names: list[str]) -> str | None:
    """``#\tnames 'a', 'b' and 3 more`` for the names given on purpose, like pprof's labels."""
    chosen = [name for name in names if not _DEFAULT_NAME.match(name)]
    if not chosen:
        return None
    distinct = sorted(set(chosen))  # tasks come from a set: sorted, so that dumps compare
    shown = ", ".join(repr(name) for name in distinct[:_NAMES_SHOWN])
    rest = len(chosen) - sum(chosen.count(name) for name in distinct[:_NAMES_SHOWN])
    more = f" and {rest} more" if rest else ""
    return f"#\t{'name' if len(chosen) == 1 else 'names'} {shown}{more}"


def _group_lines(kind: str, infos: list[Info]) -> list[str]:
    lines = [f"{kind} profile: total {len(infos)}"]
    for count, info, names in group(infos):
        lines.append(f"{count} @ {_heading(info)}")
        named = _names_line(names)
        if named is not None:
            lines.append(named)
        for frame in info.stack:
            lines.append(f"#\t{frame.module}.{frame.function}\t{frame.filename}:{frame.line}")
        if info.created_at is not None:
            c = info.created_at
            lines.append(f"#\tcreated by {c.module}.{c.function}\t{c.filename}:{c.line}")
        owner = _owner_group(info.owner)
        if owner is not None:
            lines.append(f"#\towner {owner}")
        lines.append("")
    return lines


def format_groups(tasks: Iterable[TaskInfo], threads: Iterable[ThreadInfo]) -> str:
    lines = _group_lines("task", list(tasks))
    lines += _group_lines("thread", list(threads))
    return "\n".join(lines).rstrip("\n") + "\n"


def _age(age: float | None) -> str | None:
    if age is None:
        return None
    if age < 60:
        return f"{age:.1f} s"
    if age < 3600:
        return f"{age / 60:.0f} minutes"
    return f"{age / 3600:.1f} hours"


def _full_lines(info: Info) -> list[str]:
    details = [info.state]
    age = _age(info.age)
    if age is not None:
        details.append(age)
    if info.blocked:
        details.append("blocked forever")
    head = f"{info.kind} {info.name!r} [{', '.join(details)}]"
    extra = []
    if isinstance(info, TaskInfo) and info.awaiting is not None:
        extra.append(f"on {info.awaiting}")
    if info.owner is not None:
        extra.append(f"owner {info.owner}")
    if info.labels:
        extra.append(_labels(info.labels))
    lines = [head + (": " + " ".join(extra) if extra else ":")]
    for frame in info.stack:
        lines.append(f"{frame.module}.{frame.function}(...)")
        lines.append(f"\t{frame.filename}:{frame.line}")
    if info.created_at is not None:
        c = info.created_at
        lines.append(f"created by {c.module}.{c.function}")
        lines.append(f"\t{c.filename}:{c.line}")
    lines.append("")
    return lines


def format_full(tasks: Iterable[TaskInfo], threads: Iterable[ThreadInfo]) -> str:
    lines: list[str] = []
    infos: list[Info] = [*tasks, *threads]
    for info in infos:
        lines += _full_lines(info)
    return "\n".join(lines).rstrip("\n") + "\n"
