"""A snapshot of every task and thread, with the tasks that are provably blocked marked.

It stands above :mod:`poolkit._leaks._introspect` (what a task or thread is doing) and
:mod:`poolkit._leaks._blocked` (which tasks nothing alive can wake), the two analyses it joins, so
that neither needs the other's caller: the layers have no cycle.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

from ._blocked import blocked_tasks, check_available
from ._introspect import (
    Snapshot,
    collect_tasks,
    running_loop,
    stopped_world,
    task_infos,
    thread_infos,
)

__all__ = ["blocked_ids", "snapshot"]


def blocked_ids(loop: asyncio.AbstractEventLoop | None, keep: list[Any]) -> set[int]:
    """``id()`` of the tasks :mod:`poolkit._leaks._blocked` proves blocked; inside
    :func:`stopped_world`, before the caller holds any task (a task the caller holds is reachable,
    hence not blocked).
    ``keep`` receives what the caller must drop after leaving :func:`stopped_world`."""
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

    Safe to call from any thread, with the loop running, idle or stuck.  It is exact for a loop
    that is stuck or runs in the calling thread; of a loop running in another thread it is a
    best effort: each task's stack is read as it is at that moment, and a task that finishes
    meanwhile may still be listed.  The snapshot holds no reference to a task, thread or frame.

    Args:
        loop: The loop whose tasks to take; ``None``: the running loop, or no tasks if there
            is none.
        tasks: Whether to take the tasks.
        threads: Whether to take the threads.
        blocked: Also mark the tasks that are provably blocked forever (``TaskInfo.blocked``;
            see :func:`poolkit.leaks.find_blocked`), at the cost of a walk of the whole heap.

    Returns:
        A :class:`Snapshot`.

    Raises:
        TypeError: If ``loop`` is not an event loop.
        HeapAnalysisUnavailable: If ``blocked`` is true on an interpreter where that analysis
            cannot run.
    """
    if loop is None:
        loop = running_loop()
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an event loop or None, got {loop!r}")
    if blocked:
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
