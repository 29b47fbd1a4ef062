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
import importlib
import inspect
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

from poolkit._core._registry import PACKAGE_DIR, Origin, origin_of, set_origin, user_site

__all__ = [
    "Frame",
    "Snapshot",
    "TaskInfo",
    "ThreadInfo",
    "label",
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
        """The snapshot as text, like Go's ``/debug/pprof/goroutine``.

        Args:
            debug: 1 groups tasks and threads by identical stack, most common first, like
                ``?debug=1``; 2 shows every one in full, like ``?debug=2``.

        Returns:
            The text, ending with a newline.

        Raises:
            ValueError: If ``debug`` is neither 1 nor 2.
        """
        if debug == 1:
            return format_groups(self.tasks, self.threads)
        if debug == 2:
            return format_full(self.tasks, self.threads)
        raise ValueError(f"debug must be 1 or 2, got {debug!r}")

    def to_json(self) -> dict[str, Any]:
        """The snapshot as JSON-ready data (``json.dumps(snapshot.to_json())``).

        Returns:
            ``{"taken": ..., "tasks": [...], "threads": [...]}``: each task or thread a dict of
            its fields, each frame a dict of ``function``, ``module``, ``file`` and ``line``.
        """
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

# What a task or thread waits for, named by the function it waits in: (where, state, whether the
# frame's ``self`` is a poolkit object whose label the dump shows).  Keyed, once resolved, by the
# functions' code objects, so that a moved or renamed function makes ``unresolved_states()``
# non-empty (a test checks it is empty) instead of silently dropping a label from dumps.  The
# match nearest the caller's own code wins, so that ``Channel.receive`` names the state rather
# than the generic wait it calls.
_STATE_TABLE: tuple[tuple[str, str, bool], ...] = (
    ("poolkit._primitives._channel:Channel.send", "chan send", True),
    ("poolkit._primitives._channel:Channel.receive", "chan receive", True),
    ("poolkit._primitives._channel:Channel.__anext__", "chan receive", True),
    ("poolkit._primitives._channel:Channel.send_blocking", "chan send", True),
    ("poolkit._primitives._channel:Channel.receive_blocking", "chan receive", True),
    ("poolkit._primitives._channel:Channel.__iter__", "chan receive", True),
    ("poolkit._primitives._channel:SendHandle.send", "chan send", False),
    ("poolkit._primitives._channel:SendHandle.send_blocking", "chan send", False),
    ("poolkit._primitives._channel:ReceiveHandle.receive", "chan receive", False),
    ("poolkit._primitives._channel:ReceiveHandle.__anext__", "chan receive", False),
    ("poolkit._primitives._channel:ReceiveHandle.receive_blocking", "chan receive", False),
    ("poolkit._primitives._channel:ReceiveHandle.__iter__", "chan receive", False),
    ("poolkit._primitives._channel:select", "select", False),
    ("poolkit._primitives._channel:select_blocking", "select", False),
    ("poolkit._primitives._limiter:CapacityLimiter.acquire", "semacquire", True),
    ("poolkit._primitives._limiter:CapacityLimiter.__aenter__", "semacquire", True),
    ("poolkit._primitives._limiter:CapacityLimiter.acquire_blocking", "semacquire", True),
    ("poolkit._primitives._limiter:CapacityLimiter.__enter__", "semacquire", True),
    ("poolkit._primitives._ratelimit:TokenBucket.acquire", "rate wait", True),
    ("poolkit._primitives._ratelimit:TokenBucket.__aenter__", "rate wait", True),
    ("poolkit._primitives._ratelimit:TokenBucket.acquire_blocking", "rate wait", True),
    ("poolkit._primitives._ratelimit:TokenBucket.__enter__", "rate wait", True),
    # where Limits waits for tokens:
    ("poolkit._primitives._ratelimit:wait_async", "rate wait", False),
    ("poolkit._primitives._ratelimit:wait_thread", "rate wait", False),
    ("poolkit._primitives._composite:Limits.acquire", "limits wait", True),
    ("poolkit._primitives._composite:Limits.hold", "limits wait", True),
    ("poolkit._primitives._composite:Limits.acquire_blocking", "limits wait", True),
    ("poolkit._primitives._composite:Limits.hold_blocking", "limits wait", True),
    ("poolkit._primitives._composite:Limits.__aenter__", "limits wait", True),
    ("poolkit._primitives._composite:Limits.__enter__", "limits wait", True),
    ("poolkit._primitives._composite:PerKey.acquire", "limits wait", True),
    ("poolkit._primitives._composite:PerKey.hold", "limits wait", True),
    ("poolkit._primitives._composite:PerKey.acquire_blocking", "limits wait", True),
    ("poolkit._primitives._composite:PerKey.hold_blocking", "limits wait", True),
    ("poolkit._pools._pool:_JobQueue.wait_for_job", "pool idle", False),
    ("poolkit._pools._pool:WorkerPool.submit", "pool submit", False),
    ("poolkit._pools._bridge:ThreadDoor._put_from_thread", "pool submit", False),
    ("poolkit._pools._pool:WorkerPool.shutdown", "pool shutdown", False),
    ("poolkit._pools._map:map_async", "pool map", False),
    ("poolkit._pools._thread_pool:ThreadPool._wait_for_job", "pool idle", False),
    ("poolkit._pools._thread_pool:ThreadPool.submit", "pool submit", False),
    ("poolkit._pools._thread_pool:ThreadPool.shutdown", "pool shutdown", False),
    ("poolkit._pools._thread_pool:ThreadPool.shutdown_async", "pool shutdown", False),
    # A ProcessPool's worker threads each own a worker process: waiting for a job, for the
    # process to start (its initializer), or for the job it runs there (named "running", as a
    # ThreadPool worker in its job is: the frames below it are only the wait for the answer).
    ("poolkit._pools._process_pool:ProcessPool._take", "pool idle", False),
    ("poolkit._pools._process_pool:_Slot._start_process", "process start", False),
    ("poolkit._pools._process_pool:_Slot._exchange", "running", False),
    ("poolkit._pools._process_pool:ProcessPool.shutdown", "pool shutdown", False),
    ("poolkit._pools._process_pool:ProcessMap._sync", "pool map", False),
    ("asyncio.tasks:sleep", "sleep", False),
    ("asyncio.tasks:wait", "wait", False),
    ("asyncio.tasks:wait_for", "wait", False),
    ("asyncio.tasks:_wait", "wait", False),
    ("asyncio.queues:Queue.get", "queue get", False),
    ("asyncio.queues:Queue.put", "queue put", False),
    ("asyncio.queues:Queue.join", "queue join", False),
    ("asyncio.locks:Event.wait", "event wait", False),
    ("asyncio.locks:Lock.acquire", "lock acquire", False),
    ("asyncio.locks:Semaphore.acquire", "semacquire", False),
    ("asyncio.locks:Condition.wait", "cond wait", False),
    ("asyncio.locks:Barrier.wait", "barrier wait", False),
    ("asyncio.taskgroups:TaskGroup.__aexit__", "taskgroup wait", False),
    ("asyncio.streams:StreamReader._wait_for_data", "IO wait", False),
    ("asyncio.streams:StreamWriter.drain", "IO wait", False),
    ("asyncio.selector_events:BaseSelectorEventLoop.sock_recv", "IO wait", False),
    ("asyncio.selector_events:BaseSelectorEventLoop.sock_accept", "IO wait", False),
    ("asyncio.base_events:BaseEventLoop.run_forever", "event loop", False),
    ("threading:Condition.wait", "cond wait", False),
    ("threading:Event.wait", "event wait", False),
    ("threading:Thread.join", "join", False),
    ("threading:Semaphore.acquire", "semacquire", False),
    ("threading:Barrier.wait", "barrier wait", False),
    ("queue:Queue.get", "queue get", False),
    ("queue:Queue.put", "queue put", False),
    ("selectors:EpollSelector.select", "IO wait", False),
    ("selectors:PollSelector.select", "IO wait", False),
    ("selectors:SelectSelector.select", "IO wait", False),
    ("selectors:KqueueSelector.select", "IO wait", False),
    ("socketserver:BaseServer.serve_forever", "IO wait", False),
    ("concurrent.futures.thread:_worker", "executor idle", False),
    ("concurrent.futures._base:Future.result", "future wait", False),
)

# A pool worker's own frames, from taking a job to calling its function.  A worker in one of them
# is running a job, unless a frame inside names what it waits for; waiting on the pool's limit=
# is shown as a limit wait (a token bucket's as a rate wait).
_WORKER_FRAMES = (
    "poolkit._pools._pool:_Worker.run",
    "poolkit._pools._pool:_Worker._attempts",
    "poolkit._pools._pool:_Worker._retries",
    "poolkit._pools._pool:_Worker._attempt",
    "poolkit._pools._thread_pool:_Worker.run",
    "poolkit._pools._thread_pool:_Worker._run",
    "poolkit._pools._thread_pool:_Worker._attempts",
    "poolkit._pools._thread_pool:_Worker._attempt",
)
_IN_WORKER = {"semacquire": "limit wait", "limits wait": "limit wait"}

# Library frames that call the program's own function, so count as the program's: what an
# executor thread does inside a call is the call's state, not "executor idle".
_CALLER_FRAMES = ("concurrent.futures.thread:_WorkItem.run",)

# Platform-specific entries, absent elsewhere without anything being wrong.
_OPTIONAL = {
    "selectors:EpollSelector.select",
    "selectors:PollSelector.select",
    "selectors:KqueueSelector.select",
}


def _resolve(where: str) -> CodeType | None:
    """The code object of ``module:qualname``, or ``None`` if there is no such function."""
    module_name, _, qualname = where.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    obj = inspect.unwrap(obj)  # an asynccontextmanager's or a wrapper's function
    code = getattr(obj, "__code__", None)
    return code if isinstance(code, CodeType) else None


class _Table:
    """The tables above, resolved to code objects on first use."""

    __slots__ = ("callers", "states", "unresolved", "workers")

    def __init__(self) -> None:
        self.states: dict[CodeType, tuple[str, bool]] = {}
        self.workers: set[CodeType] = set()
        self.callers: set[CodeType] = set()
        self.unresolved: list[str] = []
        for where, state, labelled in _STATE_TABLE:
            code = self._code(where)
            if code is not None:
                self.states[code] = (state, labelled)
        for where in _WORKER_FRAMES:
            code = self._code(where)
            if code is not None:
                self.workers.add(code)
        for where in _CALLER_FRAMES:
            code = self._code(where)
            if code is not None:
                self.callers.add(code)

    def _code(self, where: str) -> CodeType | None:
        code = _resolve(where)
        if code is None and where not in _OPTIONAL:
            self.unresolved.append(where)
        return code


_table: _Table | None = None


def _tables() -> _Table:
    global _table
    if _table is None:
        _table = _Table()
    return _table


def unresolved_states() -> list[str]:
    """Entries of the state tables that name no function on this Python: each is a label that
    dumps would silently lose (a test checks that there are none)."""
    return list(_tables().unresolved)


_STDLIB = tuple(
    {
        os.path.abspath(p) + os.sep
        for p in (sysconfig.get_paths()["stdlib"], os.path.dirname(threading.__file__))
    }
)
_LIBRARY = (*_STDLIB, PACKAGE_DIR)  # poolkit's frames, from every sub-package


class _Frames:
    """Turns raw frames into :class:`Frame` values and a state, with caches shared across one
    snapshot (thousands of tasks usually run a handful of functions)."""

    __slots__ = ("cache", "kinds", "sites")

    def __init__(self) -> None:
        # Keyed by the last instruction, which is cheap to read, unlike the line number.
        self.cache: dict[tuple[CodeType, int], Frame] = {}
        self.sites: dict[tuple[CodeType, int], Frame] = {}  # keyed by line
        # code -> (library code?, the state it names or None, holds a poolkit object in self?,
        # a pool worker's own frame?)
        self.kinds: dict[CodeType, tuple[bool, str | None, bool, bool]] = {}

    def _new(self, frame: FrameType) -> Frame:
        code = frame.f_code
        module = str(frame.f_globals.get("__name__", "?"))
        made = Frame(code.co_qualname, module, code.co_filename, frame.f_lineno)
        self.cache[code, frame.f_lasti] = made
        if code not in self.kinds:
            table = _tables()
            state, labelled = table.states.get(code, (None, False))
            self.kinds[code] = (
                code.co_filename.startswith(_LIBRARY) and code not in table.callers,
                state,
                labelled,
                code in table.workers,
            )
        return made

    def stack(self, raw: list[FrameType]) -> tuple[tuple[Frame, ...], str | None, str | None]:
        """(stack, state, awaiting) for frames given innermost first.

        The state comes from the library frame nearest the caller's own code (the outermost of
        the innermost run of library frames): ``Channel.receive`` rather than the generic wait
        it calls.  A pool worker's own frames end that run: a worker there is ``running`` its
        job unless a frame inside names a wait, and its waits on the pool's ``limit=`` read
        ``limit wait`` (``rate wait`` for tokens), not the generic ``semacquire``.
        """
        cache = self.cache
        kinds = self.kinds
        out = []
        state = awaiting = innermost = None
        library = True
        for f in raw:
            code = f.f_code
            made = cache.get((code, f.f_lasti))
            if made is None:
                made = self._new(f)
            out.append(made)
            if library:
                is_library, named, labelled, worker = kinds[code]
                if not is_library:
                    library = False
                elif worker:  # a pool worker: running its job, unless waiting inside it
                    if state is None:
                        state = "running"
                    elif innermost == "rate wait":  # tokens, even through a combined limit
                        state = innermost
                    else:
                        state = _IN_WORKER.get(state, state)
                    library = False
                elif named is not None:
                    if innermost is None:
                        innermost = named
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

    Dumps then show ``created by ... at file:line`` and the age of every task created from then
    on, not only of poolkit's own.  It adds about a third to a bare ``create_task`` (measured in
    ``benchmarks/``), so it is off unless asked for.  It installs a task factory, wrapping any
    factory already set; calling it again changes nothing.

    Args:
        loop: The loop; ``None``: the running loop.
        enabled: ``False`` turns tracking off again, restoring the factory it wrapped.

    Raises:
        RuntimeError: If ``loop`` is ``None`` and no event loop is running in this thread.
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

    Args:
        target: The task or thread; ``None``: the current task, or the current thread if no
            task is running in it.
        labels: Label names and their ``str`` values.

    Raises:
        TypeError: If ``target`` is not a task or a thread, or a value is not a ``str``.
        ValueError: If a name (passed with ``**``) does not match ``[A-Za-z_][A-Za-z0-9_.-]*``.
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
# that the stack does not, so a group's name line leaves them out.  CPython 3.13.0's
# eager_task_factory names an unnamed task "None" (str(None)): made up too.
_DEFAULT_NAME = re.compile(r"(Task|Thread)-\d+( \(.*\))?\Z|None\Z")
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
