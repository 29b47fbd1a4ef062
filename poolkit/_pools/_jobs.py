"""What both pools report: jobs handed back, outcomes of ``map``, and the counters."""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable
from concurrent.futures._base import CANCELLED
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["Outcome", "PoolStatistics", "UnstartedJob", "cancel_future"]

T = TypeVar("T")
R = TypeVar("R")


def cancel_future(future: cf.Future[Any]) -> bool:
    """``concurrent.futures.Future.cancel()``, then the notice that ``wait()`` and
    ``as_completed()`` wait for (``set_running_or_notify_cancel()``, which an executor's worker
    calls when it meets a cancelled future; a pool job's handle is not met again).  True if the
    future is cancelled, as ``cancel()``."""
    if not cf.Future.cancel(future):
        return False
    with future._condition:
        if future._state == CANCELLED:  # (not notified yet)
            cf.Future.set_running_or_notify_cancel(future)
    return True


@dataclass(frozen=True, slots=True)
class UnstartedJob:
    """A job that never started, handed back by ``shutdown(cancel=True)`` (see
    :attr:`PoolStatistics.handed_back` for the other ways)."""

    fn: Callable[..., Any]
    """The function it would have run."""
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    job: Any
    """Its handle (a ``WorkerPool`` :class:`~poolkit.Job`, a ``ThreadPool``
    :class:`~poolkit.ThreadJob`), which raises :class:`~poolkit.JobHandedBack`; ``None`` for a
    ``map()`` item, whose map raises it instead."""


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T, R]):
    """One result of ``map(..., outcomes=True)``: the input and what became of it.

    ``Outcome[T, R]``: ``T`` is the type of the input items, ``R`` the type of ``fn``'s result.
    """

    item: T
    """The input item."""
    value: R | None
    """The job's result (``None`` if it failed)."""
    error: BaseException | None
    """The job's exception, or ``None`` if it succeeded."""

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a pool's counters; see the module docstring for the accounting identity."""

    name: str | None
    """The pool's name, if any."""
    workers: int
    """Workers alive now.  A ``WorkerPool`` starts all of its workers when it starts (an
    elastic one, ``min_workers``).  A ``ThreadPool`` starts a thread only when a job arrives and
    no idle thread can take it, up to ``target_workers``, and keeps it (an elastic one also lets
    threads beyond ``min_workers`` exit after ``idle_timeout``), as ``ThreadPoolExecutor``
    does: so ``workers`` is how many threads were needed so far, not the cap."""
    busy: int
    """Workers running a call (equal to ``running``, except in a ``ThreadPool`` whose timed-out
    calls still occupy their thread until they return)."""
    idle: int
    """Workers alive and waiting for a job (``workers - busy``)."""
    target_workers: int
    """How many workers the pool keeps (its maximum, in elastic mode)."""
    queued: int
    """Jobs accepted and waiting for a worker."""
    running: int
    """Jobs being run."""
    submitted: int
    """Jobs accepted since the pool was created."""
    started: int
    """Jobs a worker has begun (retries do not count again)."""
    succeeded: int
    failed: int
    """Jobs whose function raised (after any retries)."""
    cancelled: int
    """Jobs cancelled, queued or running."""
    timed_out: int
    """Jobs whose (last) attempt ran past the pool's ``timeout``."""
    rejected: int
    """``submit_nowait`` calls refused because the queue was full."""
    retried: int
    """Attempts beyond each job's first."""
    handed_back: int
    """Jobs that never started, handed back: by ``shutdown(cancel=True)`` (or a drain that ran
    out of time), or, in a ``WorkerPool``, because every worker was cancelled from outside (as
    ``asyncio.run`` does to every task when it ends) or its event loop was closed first."""
    queue_wait_total: float
    """Seconds jobs spent queued, summed (divide by ``started`` for the mean)."""
    run_time_total: float
    """Seconds jobs spent running, summed (divide by finished jobs for the mean)."""
    closed: bool
    """Whether the pool has stopped accepting jobs."""


def fn_name(fn: Any) -> str:
    """How messages name a job's function: ``module.qualname`` when it has one, else its repr."""
    qualname = getattr(fn, "__qualname__", None)
    if isinstance(qualname, str):
        module = getattr(fn, "__module__", None)
        return f"{module}.{qualname}" if isinstance(module, str) else qualname
    return repr(fn)
