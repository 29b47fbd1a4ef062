"""Tasks that are provably blocked forever, found with the garbage collector's view of the heap.

A task waiting on a future is woken by whoever holds that future: a channel's waiting list, a
limiter's queue, a timer in the loop, a thread that will call ``set_result``.  If nothing that is
alive can reach the task (or its future) any more, nothing can ever wake it: the task is leaked
for certain, not merely slow.  asyncio itself only keeps tasks in a weak set, so such a task
lingers until a garbage collection frees it ("Task was destroyed but it is pending!").

This module answers the question the collector would answer, without collecting anything:

1. With the collector paused (:func:`stopped_world`), take the list of every object the
   collector tracks.
2. For each, count the references that come from *outside* the tracked heap: its reference count
   minus the references held by other tracked objects (found with ``gc.get_referents``, which
   walks the same links as the collector).  Objects with outside references are *roots*: module
   globals, the frames of running code in every thread, C code's private references.
3. Everything reachable from a root is alive.  A pending task that is not is blocked forever.

It is the algorithm of CPython's cycle collector, run on a copy of its bookkeeping, so it has
the same meaning: an object held only through weak references counts as unreachable, exactly as
the collector would free it.  Anything the collector cannot see (a C extension's reference that
no ``tp_traverse`` reports) makes its target a root: the answer errs towards "alive", never
towards a false report.

Cost: every reference in the heap is looked at twice, a few microseconds per tracked object,
with the collector paused meanwhile (other threads keep running, which is why two scans must
agree; measured in ``benchmarks/``: about 0.5 s for a heap of 120,000 objects holding 10,000
tasks), and memory for an ``id`` table of the heap.
It is a tool for tests and for debugging, not for a hot path.

Where it runs, and why only there
---------------------------------
The method leans on CPython internals, so it runs only where they have been checked, by this
project's CI, to make it both sound and safe; elsewhere :func:`find_blocked` raises
:class:`~poolkit.HeapAnalysisUnavailable` naming the interpreter, and ``no_leaks`` still reports
leaks, only without the "blocked forever" mark.

=====================  =================================================================
CPython 3.11           works
CPython 3.12           works.  3.12.0 to 3.12.4 have a bug (gh-122695): the ``_asyncio``
                       module's traverse function hands out freed ``FutureIter`` objects
                       from a free list, and ``gc.get_referents`` on that module corrupts
                       the free list (a loop that eats memory, or a crash).  Module objects
                       are therefore never traversed, on any version (below).
CPython 3.13           works (the build with the global interpreter lock)
free-threaded builds   refused: reference counts are not a snapshot without the GIL
CPython 3.14 and on    refused until CI runs them: 3.14 changed how frames hold references
                       (borrowed, tagged stack references), which step 2's arithmetic
                       depends on
other implementations  refused (PyPy has no reference counts to read)
=====================  =================================================================

What is relied on, each checked by ``tests/test_introspection_contract.py`` so that a new
release that changes it fails a test rather than a user:

* ``gc.get_objects()`` lists every tracked object; ``gc.get_referents(*objs)`` reports exactly
  the links that the collector follows; ``sys.getrefcount`` counts every strong reference, each
  link once.
* A frame that is running reports none of its local variables or stack slots to
  ``gc.get_referents`` (on 3.11 to 3.13 its ``stacktop`` is -1 while it runs), so whatever
  running code holds counts as referenced from outside: a root, as it must be, and never a
  stale slot.
* A task waits on its future through the future's callback list: ``asyncio.Task._fut_waiter``
  (a private attribute of both the C and the Python task) names that future.
* Nothing here calls Python code of the objects it looks at: types are compared with
  ``type(obj)``, never ``isinstance`` (which may read a proxy's ``__class__`` property), and
  no object's reference is dropped while the heap is stopped (which could run ``__del__``).

Module objects are left untraversed: what they reference (their ``__dict__``, a C module's
state) then counts as referenced from outside, so it becomes a root.  That errs towards "alive"
(a module's globals are alive in practice anyway) and keeps the analysis away from the one kind
of traverse function known to hand out freed memory.

Memory: the ``id`` table of the heap, plus references examined a slice of the heap at a time,
so the extra memory is proportional to the number of tracked objects, not to the number of
links (measured by ``tests/test_blocked_stress.py``: bounded there for 10,000 tasks).
"""

from __future__ import annotations

import asyncio
import gc
import platform
import sys
from collections import Counter
from types import ModuleType
from typing import Any

from poolkit._core._exceptions import HeapAnalysisUnavailable

from ._introspect import TaskInfo, running_loop, stopped_world, task_infos

__all__ = ["analysis_unavailable", "blocked_tasks", "check_available", "find_blocked"]

# The (major, minor) versions of CPython whose internals CI checks (module docstring).
VERIFIED = ((3, 11), (3, 12), (3, 13))

# References are examined this many objects at a time: the transient list of referents stays
# small, whatever the size of the heap.
_SLICE = 4096


def analysis_unavailable() -> str | None:
    """Why the heap analysis cannot run on this interpreter, or ``None`` if it can."""
    version = ".".join(map(str, sys.version_info[:3]))
    implementation = platform.python_implementation()
    if implementation != "CPython":
        return (
            f"find_blocked reads CPython's reference counts; {implementation} {version} has "
            f"none to read"
        )
    gil = getattr(sys, "_is_gil_enabled", None)
    if gil is not None and not gil():
        return (
            f"find_blocked needs the global interpreter lock; CPython {version} runs "
            f"free-threaded here, where reference counts are not a snapshot"
        )
    if sys.version_info[:2] not in VERIFIED:
        known = ", ".join(f"{major}.{minor}" for major, minor in VERIFIED)
        return (
            f"find_blocked has not been verified on CPython {version} (only on {known}): its "
            f"heap analysis depends on interpreter internals that change between versions"
        )
    return None


def check_available() -> None:
    """Raise :class:`~poolkit.HeapAnalysisUnavailable` if the analysis cannot run here."""
    reason = analysis_unavailable()
    if reason is not None:
        raise HeapAnalysisUnavailable(reason)


def _unreachable(objs: list[Any], probe_id: int, ours: set[int]) -> set[int]:
    """The ``id`` of every object in ``objs`` that no root reaches.

    ``probe_id`` is the id of an object in ``objs`` that has exactly one reference from outside
    the heap: it measures how many references the bookkeeping itself adds to every object while
    its count is read (the list, the comprehension's variable, ``getrefcount``'s argument).
    ``ours`` are the ids of this module's own containers (the list of a previous scan, kept to be
    dropped later): their references count as links inside the heap, but they are never roots
    and never followed, so they keep nothing alive.
    The work is done in bulk (one ``get_referents`` call per slice of objects, set algebra on
    ids) so that the cost per object is a few hundred nanoseconds.
    """
    getrefcount = sys.getrefcount
    get_referents = gc.get_referents
    counts = {id(obj): getrefcount(obj) for obj in objs}
    extra = counts[probe_id] - 1
    # Module objects are never traversed (module docstring): what they hold becomes a root.
    walked = [obj for obj in objs if type(obj) is not ModuleType]
    # References from inside the tracked heap, counted once per link, as the collector does.
    inside: Counter[int] = Counter()
    for start in range(0, len(walked), _SLICE):
        refs = get_referents(*walked[start : start + _SLICE])
        inside.update(key for key in map(id, refs) if key in counts)
        del refs
    roots = {key for key, count in counts.items() if count - extra > inside.get(key, 0)}
    roots -= ours
    del inside
    tracked = set(counts)
    del counts
    # Everything in ``objs`` is kept alive by ``objs``, so ids are stable and unique here.
    by_id = {id(obj): obj for obj in walked if id(obj) not in ours}
    del walked
    reached = roots
    frontier = [by_id[key] for key in roots if key in by_id]
    while frontier:
        new: set[int] = set()
        for start in range(0, len(frontier), _SLICE):
            new.update(map(id, get_referents(*frontier[start : start + _SLICE])))
        new &= tracked
        new -= reached
        reached |= new
        frontier = [by_id[key] for key in new if key in by_id]
    by_id.clear()
    tracked -= reached
    return tracked


def _scan(loop: asyncio.AbstractEventLoop | None, keep: list[Any]) -> list[asyncio.Task[Any]]:
    """The pending tasks that nothing reaches.

    ``keep`` receives the heap's list, for the caller to drop once the world runs again: dropping
    the last reference to an object (one that another thread let go of meanwhile) would run its
    ``__del__`` here.  What ``keep`` holds does not count as keeping anything alive.
    """
    probe: list[Any] = []  # referenced by this frame only: calibrates the bookkeeping's share
    objs = gc.get_objects()
    keep.append(objs)
    probe_id = id(probe)
    if not any(id(obj) == probe_id for obj in objs):  # pragma: no cover - lists are tracked
        raise RuntimeError("the garbage collector does not track lists")
    dead = _unreachable(objs, probe_id, {id(keep), *map(id, keep)})
    if not dead:
        return []
    task_types = _task_types()
    return [
        obj
        for obj in objs
        if type(obj) in task_types
        and id(obj) in dead
        and not obj.done()
        and (loop is None or obj.get_loop() is loop)
    ]


def _task_types() -> set[type]:
    """Every task class in use: asyncio's (C and Python) and their subclasses."""
    found: set[type] = set()
    todo: list[type] = [asyncio.Task]
    pure = getattr(asyncio.tasks, "_PyTask", None)
    if isinstance(pure, type):
        todo.append(pure)
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo.extend(type.__subclasses__(cls))
    return found


def _waiting_on(task: asyncio.Task[Any]) -> int:
    return id(getattr(task, "_fut_waiter", None))


def blocked_tasks(
    loop: asyncio.AbstractEventLoop | None, keep: list[Any]
) -> list[asyncio.Task[Any]]:
    """Every pending task (of ``loop``, or of any loop if ``None``) that nothing alive reaches.

    Must be called inside :func:`stopped_world`, and the caller must drop the list before it
    leaves that block, or it keeps the leaked tasks alive itself.  ``keep`` collects what the
    caller must drop *after* it leaves that block (see :func:`_scan`).  Raises
    :class:`~poolkit.HeapAnalysisUnavailable` where the analysis cannot run (module docstring).

    Other threads keep running during the scan (Python cannot stop them), and one that moves a
    reference at the wrong moment could make a live task look unreachable.  So a task is only
    reported if a second scan finds it unreachable too, still waiting on the same future; the
    second scan costs nothing when the first finds nothing, the usual case.
    """
    check_available()
    first = _scan(loop, keep)
    if not first:
        return first
    suspects = {id(task): _waiting_on(task) for task in first}
    # Safe to drop here: nothing alive reaches these tasks, so this is not their last reference
    # (the cycle that holds them is), and holding them would make them reachable.
    first.clear()
    second = _scan(loop, keep)
    confirmed = [task for task in second if suspects.get(id(task)) == _waiting_on(task)]
    second.clear()
    return confirmed


def find_blocked(loop: asyncio.AbstractEventLoop | None = None) -> list[TaskInfo]:
    """Tasks blocked forever: pending, and unreachable from anything alive (module docstring).

    Callable from any thread, including while the loop is stuck.  The garbage collector is
    paused, and the calling thread busy, while the heap is examined; other threads keep running,
    so a task is reported only if a second scan finds it unreachable too, waiting on the same
    future.

    Args:
        loop: Only that loop's tasks; ``None``: the running loop if there is one, else every
            loop's.

    Returns:
        Each such task as a :class:`~poolkit.leaks.TaskInfo` with ``blocked=True``.

    Raises:
        TypeError: If ``loop`` is not an event loop.
        HeapAnalysisUnavailable: If the interpreter is one where the analysis has not been
            shown sound and safe: a free-threaded build, a CPython other than 3.11 to 3.13, or
            another implementation (see the module docstring for the table).
    """
    if loop is None:
        loop = running_loop()
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an event loop or None, got {loop!r}")
    check_available()
    keep: list[Any] = []
    with stopped_world():
        tasks = blocked_tasks(loop, keep)
        infos = task_infos(tasks, loop)
        keep.append(tasks)
    keep.clear()  # outside the stopped world: whatever this frees may run its __del__
    for info in infos:
        info.blocked = True
    return infos
