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
with the program stopped meanwhile (measured in ``benchmarks/``: about 0.5 s for a heap of
120,000 objects holding 10,000 tasks), and memory for an ``id`` table of the heap.
It is a tool for tests and for debugging, not for a hot path.  It needs the global interpreter
lock (it refuses to run on a free-threaded build, where reference counts are not a snapshot).
"""

from __future__ import annotations

import asyncio
import gc
import sys
from collections import Counter
from typing import Any

from ._introspect import TaskInfo, running_loop, stopped_world, task_infos

__all__ = ["blocked_tasks", "find_blocked"]


def _check_build() -> None:
    gil = getattr(sys, "_is_gil_enabled", None)
    if gil is not None and not gil():
        raise RuntimeError(
            "find_blocked needs the global interpreter lock; this is a free-threaded build"
        )


def _unreachable(objs: list[Any], probe_id: int) -> set[int]:
    """The ``id`` of every object in ``objs`` that no root reaches.

    ``probe_id`` is the id of an object in ``objs`` that has exactly one reference from outside
    the heap: it measures how many references the bookkeeping itself adds to every object while
    its count is read (the list, the comprehension's variable, ``getrefcount``'s argument).
    The work is done in bulk (one ``get_referents`` call per breadth-first level, set algebra on
    ids) so that the cost per object is a few hundred nanoseconds.
    """
    getrefcount = sys.getrefcount
    get_referents = gc.get_referents
    counts = {id(obj): getrefcount(obj) for obj in objs}
    extra = counts[probe_id] - 1
    # References from inside the tracked heap, counted once per link, as the collector does.
    inside = Counter(map(id, get_referents(*objs)))
    roots = {key for key, count in counts.items() if count - extra > inside.get(key, 0)}
    del inside
    tracked = set(counts)
    del counts
    # Everything in ``objs`` is kept alive by ``objs``, so ids are stable and unique here.
    by_id = {id(obj): obj for obj in objs}
    reached = roots
    frontier = [by_id[key] for key in roots]
    while frontier:
        new = set(map(id, get_referents(*frontier)))
        new &= tracked
        new -= reached
        reached |= new
        frontier = [by_id[key] for key in new]
    by_id.clear()
    tracked -= reached
    return tracked


def _scan(loop: asyncio.AbstractEventLoop | None) -> list[asyncio.Task[Any]]:
    probe: list[Any] = []  # referenced by this frame only: calibrates the bookkeeping's share
    objs = gc.get_objects()
    probe_id = id(probe)
    if not any(id(obj) == probe_id for obj in objs):  # pragma: no cover - lists are tracked
        raise RuntimeError("the garbage collector does not track lists")
    dead = _unreachable(objs, probe_id)
    found = [
        obj
        for obj in objs
        if isinstance(obj, asyncio.Task)
        and id(obj) in dead
        and not obj.done()
        and (loop is None or obj.get_loop() is loop)
    ]
    objs.clear()
    return found


def _waiting_on(task: asyncio.Task[Any]) -> int:
    return id(getattr(task, "_fut_waiter", None))


def blocked_tasks(loop: asyncio.AbstractEventLoop | None) -> list[asyncio.Task[Any]]:
    """Every pending task (of ``loop``, or of any loop if ``None``) that nothing alive reaches.

    Must be called inside :func:`stopped_world`, and the caller must drop the list before it
    leaves that block, or it keeps the leaked tasks alive itself.

    Other threads keep running during the scan (Python cannot stop them), and one that moves a
    reference at the wrong moment could make a live task look unreachable.  So a task is only
    reported if a second scan finds it unreachable too, still waiting on the same future; the
    second scan costs nothing when the first finds nothing, the usual case.
    """
    _check_build()
    first = _scan(loop)
    if not first:
        return first
    suspects = {id(task): _waiting_on(task) for task in first}
    first.clear()
    second = _scan(loop)
    confirmed = [task for task in second if suspects.get(id(task)) == _waiting_on(task)]
    second.clear()
    return confirmed


def find_blocked(loop: asyncio.AbstractEventLoop | None = None) -> list[TaskInfo]:
    """Tasks blocked forever: pending, and unreachable from anything alive (module docstring).

    ``loop``: only that loop's tasks; ``None`` means the running loop if there is one, else
    every loop's.  Each is returned as a :class:`TaskInfo` with ``blocked=True``.  The program
    is paused while the heap is examined.  Callable from any thread, including while the loop
    is stuck.  Raises :class:`RuntimeError` on a free-threaded build.
    """
    if loop is None:
        loop = running_loop()
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an event loop or None, got {loop!r}")
    with stopped_world():
        tasks = blocked_tasks(loop)
        infos = task_infos(tasks, loop)
        tasks.clear()
    for info in infos:
        info.blocked = True
    return infos
