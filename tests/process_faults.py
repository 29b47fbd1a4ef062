"""Jobs for ``tests/test_process_faults.py``: ways a job can misbehave that only a process pool
meets (a light module: a worker imports it to unpickle its job)."""

from __future__ import annotations

import os
import signal
import time
from typing import Any


def stop_at(x: int, bad: int) -> int:
    """``x``, except that ``bad`` raises ``StopIteration``, as ``next()`` of an empty iterator
    does."""
    if x == bad:
        next(iter(()))
    return x


def _explode(kind: str) -> Any:
    """Called by pickle when the parent loads a :class:`LoadsBadly`: the load fails there."""
    if kind == "exit":
        raise SystemExit("a result that ends the loading process")
    raise ValueError("this result cannot be loaded here")


class LoadsBadly:
    """Pickles in the worker; fails when the parent unpickles it (``kind``: an ``Exception``,
    or ``"exit"``: a ``SystemExit``)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> tuple[Any, ...]:
        return _explode, (self.kind,)


def loads_badly_at(x: int, bad: int, kind: str = "value") -> Any:
    return LoadsBadly(kind) if x == bad else x


class Unprintable(Exception):
    """An exception that can be neither shown nor pickled."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("no pickle")


class UnprintableResult:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError("no pickle")


def raise_unprintable(_: object = None) -> None:
    raise Unprintable()


def return_unprintable(_: object = None) -> Any:
    return UnprintableResult()


def fail(x: int) -> int:
    raise ValueError(f"job {x} fails")


def hold_gil() -> int:
    """Compute in C for minutes without releasing the GIL (no Python thread of this process
    runs meanwhile)."""
    return sum(range(10**13))


def pid_then_sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
