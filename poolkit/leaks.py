"""Leak hunting and live introspection: what is alive, what is stuck, and what leaked.

The asyncio and threads counterpart of Go's ``goleak`` and ``/debug/pprof/goroutine``::

    from poolkit import leaks

    print(leaks.snapshot().dump())          # every task and thread, grouped by stack
    for task in leaks.find_blocked():       # tasks nothing alive can ever wake
        print(task.name, task.state, task.stack[0])

    async with poolkit.no_leaks():          # fail if the block leaves tasks or threads
        ...

* :func:`snapshot` takes live tasks (of the running loop, or any loop given) and threads as
  plain data; :meth:`Snapshot.dump` prints them like pprof (``debug=1`` grouped with counts,
  ``debug=2`` one by one) and :meth:`Snapshot.to_json` gives JSON.  It works from any thread,
  even while the loop is stuck.
* Creation sites are kept for every task and thread poolkit starts; :func:`track_tasks` keeps
  them for all tasks of a loop, and :func:`label` tags a task or thread for dumps.
* :func:`find_blocked` proves tasks blocked forever, using the garbage collector's view of who
  can reach what (see :mod:`poolkit._leaks._blocked` for the method and its cost).
* :func:`no_leaks` fails a block (or a test) that leaves tasks, threads or (on Linux) child
  processes behind (:class:`LeakSnapshot`, :class:`ProcessInfo` in its report); the pytest
  plugin (``pytest --poolkit-leaks``, or the ``no_leaks`` marker) applies it to tests.
* :class:`Watchdog` counts live tasks, threads and workers while a program runs and reports
  steady growth.
"""

from ._core._exceptions import HeapAnalysisUnavailable as HeapAnalysisUnavailable
from ._core._exceptions import LeakError as LeakError
from ._leaks._blocked import find_blocked as find_blocked
from ._leaks._introspect import Frame as Frame
from ._leaks._introspect import Snapshot as Snapshot
from ._leaks._introspect import TaskInfo as TaskInfo
from ._leaks._introspect import ThreadInfo as ThreadInfo
from ._leaks._introspect import label as label
from ._leaks._introspect import track_tasks as track_tasks
from ._leaks._noleaks import LeakSnapshot as LeakSnapshot
from ._leaks._noleaks import NoLeaks as NoLeaks
from ._leaks._noleaks import ProcessInfo as ProcessInfo
from ._leaks._noleaks import no_leaks as no_leaks
from ._leaks._snapshot import snapshot as snapshot
from ._leaks._watchdog import Growth as Growth
from ._leaks._watchdog import Sample as Sample
from ._leaks._watchdog import Watchdog as Watchdog

__all__ = [
    "Frame",
    "Growth",
    "HeapAnalysisUnavailable",
    "LeakError",
    "LeakSnapshot",
    "NoLeaks",
    "ProcessInfo",
    "Sample",
    "Snapshot",
    "TaskInfo",
    "ThreadInfo",
    "Watchdog",
    "find_blocked",
    "label",
    "no_leaks",
    "snapshot",
    "track_tasks",
]
