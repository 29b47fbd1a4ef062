"""Jobs for ``tests/test_process_pool.py``'s worker processes: module-level functions that pickle.

Kept light on purpose: a worker process imports this module to unpickle its job, so it imports
nothing of poolkit, hypothesis or pytest at the top, and a worker starts fast (the one function
that uses poolkit, :func:`interrupted_pool`, imports it inside).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

__all__ = [
    "Boom",
    "act",
    "add",
    "crash",
    "double",
    "get_tag",
    "hold_memory",
    "ignore_sigterm_then_sleep",
    "interrupted_pool",
    "pid",
    "raise_after",
    "raise_boom",
    "raise_unpicklable",
    "return_unpicklable",
    "set_tag",
    "sleep_then",
    "step",
    "wait_for",
]

_HELD: list[bytearray] = []  # memory a job keeps alive in its worker (for max_memory)
_TAG: list[object] = []  # what the worker's initializer set


class Boom(Exception):
    """The exception the jobs raise on purpose: it pickles, with its arguments."""


def double(x: int) -> int:
    return 2 * x


def add(a: int, b: int, *, c: int = 0) -> int:
    return a + b + c


def pid(_: object = None) -> int:
    """The worker's process id."""
    return os.getpid()


def sleep_then(seconds: float, value: Any = None) -> Any:
    time.sleep(seconds)
    return value


def raise_boom(x: object) -> None:
    raise Boom(x)


def raise_after(seconds: float, x: object) -> None:
    time.sleep(seconds)
    raise Boom(x)


def crash(how: str, code: int = 3) -> None:
    """Die the way ``how`` says: ``"exit"`` (``os._exit(code)``) or the name of a signal to send
    to itself (``"SIGKILL"``, ``"SIGSEGV"``...)."""
    if how == "exit":
        os._exit(code)
    sig = getattr(signal, how)
    if sig == signal.SIGSEGV:
        signal.signal(signal.SIGSEGV, signal.SIG_DFL)  # no faulthandler in the way
    os.kill(os.getpid(), sig)
    time.sleep(10)  # the signal is on its way


def act(task: tuple[Any, ...]) -> Any:
    """One job of the fuzz and stress tests, ``(kind, n, ...)``: ``"ok"`` returns the task,
    ``"sleep"`` returns it after ``n`` ms, ``"raise"`` raises ``Boom(task)``, ``"exit"`` calls
    ``os._exit(n)``, and a signal's name (``"SIGKILL"``, ``"SIGSEGV"``) sends it to itself."""
    kind, n = task[0], task[1]
    if kind == "ok":
        return task
    if kind == "sleep":
        time.sleep(n / 1000)
        return task
    if kind == "raise":
        raise Boom(task)
    crash(kind, n)
    return None


def step(item: tuple[int, bool, float]) -> tuple[int, int]:
    """``(i, crash, ms)``: sleep ``ms`` ms, then die with exit code 9 if ``crash``, else return
    ``(i, pid)``."""
    i, dies, ms = item
    time.sleep(ms / 1000)
    if dies:
        os._exit(9)
    return i, os.getpid()


def hold_memory(mib: int) -> int:
    """Keep ``mib`` MiB resident in this worker (until it exits); return its pid."""
    block = bytearray(mib * 1024 * 1024)
    for i in range(0, len(block), 4096):  # touch every page: resident, not just reserved
        block[i] = 1
    _HELD.append(block)
    return os.getpid()


def return_unpicklable() -> Any:
    return lambda: None


def raise_unpicklable() -> None:
    raise Boom(lambda: None)


def set_tag(tag: object) -> None:
    """An initializer: remember ``tag`` in this worker."""
    _TAG.append(tag)


def get_tag(_: object = None) -> tuple[list[object], int]:
    """What the initializers of this worker set, and its pid."""
    return list(_TAG), os.getpid()


def ignore_sigterm_then_sleep(seconds: float) -> None:
    """A job that will not stop politely: SIGTERM is ignored, only SIGKILL ends it."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)


def wait_for(path: str, limit: float = 10.0) -> str:
    """A gate: return ``path`` once a file or directory is there (the test creates it to let
    the job finish); raise ``Boom`` after ``limit`` seconds, so that a failed test never leaves
    a job waiting."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise Boom(f"{path} did not appear in {limit} s")
        time.sleep(0.005)
    return path


INTERRUPTED_PHASES = ("submit", "map", "start", "result", "drain")


def interrupted_pool(phase: str) -> None:
    """The program of ``tests/test_process_lifecycle.py``'s Ctrl-C test, run with ``python -c``
    until SIGINT stops it.  It prints ``ready`` once poolkit is imported, then, in
    ``with ProcessPool(workers=2) as pool:``, stays in ``phase``:

    * ``"submit"``: blocked in ``submit()``, the queue full (2 jobs running, 2 queued);
    * ``"map"``: iterating a ``map`` of short jobs;
    * ``"start"``: a ``map`` with ``max_jobs_per_worker=1``: a worker process starts for every
      item, so the pool is almost always starting one;
    * ``"result"``: waiting in ``job.result()`` for a job that sleeps;
    * ``"drain"``: leaving the ``with`` block, whose ``shutdown()`` waits for two jobs that
      sleep.

    No phase ends in less than 10 s, and the test waits 10 s at most.
    """
    import atexit
    import itertools

    import poolkit  # here, not at the top: a worker imports this module and must start fast

    assert phase in INTERRUPTED_PHASES, phase
    # atexit runs the last registered first: this before poolkit's own handler, which kills
    # the workers of a pool left open.
    atexit.register(_print_live_workers)
    print("ready", flush=True)
    recycle = 1 if phase == "start" else None
    with poolkit.ProcessPool(workers=2, kill_grace=0.2, max_jobs_per_worker=recycle) as pool:
        if phase == "submit":
            for _ in range(5):  # the fifth waits for room that a 30 s job never makes
                pool.submit(sleep_then, 30)
        elif phase == "map":
            for _ in pool.map(sleep_then, itertools.repeat(0.005, 4000), chunksize=1):
                pass
        elif phase == "start":
            for _ in pool.map(pid, range(1000), chunksize=1):  # ~25 ms per worker start
                pass
        elif phase == "result":
            pool.submit(sleep_then, 30).result()
        else:
            pool.submit(sleep_then, 30)
            pool.submit(sleep_then, 30)
    os._exit(3)  # not interrupted: the test fails on this exit code


def _print_live_workers() -> None:
    """Print ``workers at exit: [pids]``, the fork server's children that still run."""
    from multiprocessing import forkserver

    server = getattr(forkserver._forkserver, "_forkserver_pid", None)
    live = []
    for entry in os.listdir("/proc") if server is not None else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == server and fields[0] not in "ZX":
            live.append(int(entry))
    print(f"workers at exit: {sorted(live)}", flush=True)
