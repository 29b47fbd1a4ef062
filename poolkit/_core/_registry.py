"""A weak registry of live poolkit objects, and where poolkit's own tasks and threads came from.

Every channel, limiter, bucket, combined or per-key limit and pool adds itself when it is made;
the registry holds it weakly, so it never keeps anything alive, and numbers it (``seq``, counting
up from 1 across all kinds) so that listings are in creation order and unnamed objects get a
stable label.  Limits made by a ``PerKey`` factory are left out: they are reported through their
``PerKey`` (a million keys must not become a million metric series), and so is the job channel
inside a ``ThreadPool``.

The second half records the *origin* of tasks and threads: who owns them (``pool 'x' worker 3``),
the user's line that caused them to be made, when, and any labels.  poolkit records this for
every task and thread it starts itself; :func:`poolkit.leaks.track_tasks` extends it to all tasks.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
import weakref
from types import CodeType
from typing import Any

__all__ = [
    "KINDS",
    "PACKAGE_DIR",
    "Origin",
    "label_of",
    "live",
    "origin_of",
    "record_origin",
    "register",
    "unregistered",
    "user_site",
]

# What kinds there are, in the order dumps and metrics list them.
KINDS = (
    "pool",
    "thread_pool",
    "process_pool",
    "channel",
    "limiter",
    "bucket",
    "limits",
    "per_key",
    "redis_bucket",
    "redis_limiter",
)

_lock = threading.Lock()
_seq = itertools.count(1)
_objects: dict[str, weakref.WeakValueDictionary[int, Any]] = {
    kind: weakref.WeakValueDictionary() for kind in KINDS
}
_local = threading.local()


def register(obj: object, kind: str) -> None:
    if getattr(_local, "quiet", 0):
        return
    with _lock:
        _objects[kind][next(_seq)] = obj


def live(kind: str) -> list[tuple[int, Any]]:
    """``(seq, object)`` for the live objects of one kind, oldest first; a copy, safe to iterate."""
    with _lock:
        return sorted(_objects[kind].items(), key=lambda item: item[0])


def label_of(kind: str, seq: int, obj: Any) -> str:
    """The name a dump or metric shows for ``obj``: its own name, or ``<kind>-<seq>``."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else f"{kind}-{seq}"


class unregistered:
    """Objects made inside this block (in this thread) stay out of the registry."""

    def __enter__(self) -> None:
        _local.quiet = getattr(_local, "quiet", 0) + 1

    def __exit__(self, *exc: object) -> None:
        _local.quiet -= 1


# ----------------------------------------------------------------------- origins


class Origin:
    """Where a task or thread came from.  Kept small: code object and line, not strings."""

    __slots__ = ("code", "created", "labels", "line", "module", "owner")

    def __init__(self, code: CodeType | None, line: int, module: str, owner: str | None) -> None:
        self.code = code
        self.line = line
        self.module = module
        self.owner = owner
        self.created = time.monotonic()
        self.labels: dict[str, str] | None = None


# Tasks and threads are hashed by identity and support weak references.
_origins: weakref.WeakKeyDictionary[Any, Origin] = weakref.WeakKeyDictionary()

# poolkit's own directory, with every sub-package in it (this file is poolkit/_core/_registry.py):
# a frame from any file under it is the library's.  A test checks it is poolkit's root.
PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_ASYNCIO_DIR = os.path.dirname(os.path.abspath(threading.__file__)) + os.sep + "asyncio" + os.sep
# threading's own frames (Thread.run) are not the user's line either.
_SKIP = (PACKAGE_DIR, _ASYNCIO_DIR, os.path.abspath(threading.__file__))
# ``poolkit demo`` plays the part of a program using poolkit: its lines are the user's lines.
_DEMO = os.path.join(PACKAGE_DIR, "_tools", "_demo.py")


def user_site() -> tuple[CodeType | None, int, str]:
    """The innermost frame of the caller's stack that is neither poolkit's nor asyncio's:
    its code, line and module name."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        if not code.co_filename.startswith(_SKIP) or code.co_filename == _DEMO:
            return code, frame.f_lineno, frame.f_globals.get("__name__", "?")
        frame = frame.f_back
    return None, 0, "?"


def record_origin(obj: object, owner: str | None) -> Origin:
    """Note that ``obj`` (a task or thread) was just made, by whom (``owner``) and from where."""
    code, line, module = user_site()
    origin = Origin(code, line, module, owner)
    _origins[obj] = origin
    return origin


def origin_of(obj: object) -> Origin | None:
    return _origins.get(obj)


def set_origin(obj: object, origin: Origin) -> None:
    _origins[obj] = origin
