"""Jobs for ``tests/test_process_pool.py``'s worker processes: module-level functions that pickle.

Kept light on purpose: a worker process imports this module to unpickle its job, so it imports
nothing of poolkit, hypothesis or pytest, and a worker starts fast.
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
    "pid",
    "raise_after",
    "raise_boom",
    "raise_unpicklable",
    "return_unpicklable",
    "set_tag",
    "sleep_then",
    "step",
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
