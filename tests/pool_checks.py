"""What the pool tests share: the accounting check, and a driver for either kind of pool.

:func:`check_books` is the one copy of the accounting check that every pool test uses.
:class:`Kind` lets one ``async def`` test drive a ``WorkerPool`` or a ``ThreadPool`` (see
``tests/test_pool_behaviour.py``): the behaviour both promise is tested once, on both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import poolkit
from poolkit import ThreadPool, WorkerPool

Pool = WorkerPool | ThreadPool


def check_books(pool: Pool) -> poolkit.PoolStatistics:
    """A snapshot of ``pool``'s counters, checked: every job submitted is in exactly one place
    (the accounting identity), no count is negative, and busy workers are consistent with
    running jobs (equal in a ``WorkerPool``; in a ``ThreadPool`` a timed-out call still holds
    its thread, so ``busy`` may exceed ``running``)."""
    s = pool.statistics()
    assert s.submitted == (
        s.queued + s.running + s.succeeded + s.failed + s.cancelled + s.timed_out + s.handed_back
    ), s
    assert min(s.queued, s.running, s.idle, s.busy) >= 0, s
    assert s.idle == s.workers - s.busy, s
    if isinstance(pool, WorkerPool):
        assert s.busy == s.running, s
    else:
        assert s.busy >= s.running, s
    return s


def check_process_books(pool: poolkit.ProcessPool) -> poolkit.ProcessPoolStatistics:
    """:func:`check_books` for a ``ProcessPool``: every job submitted is in exactly one place, no
    count is negative, and no more worker processes are up than ``workers``."""
    s = pool.statistics()
    assert s.submitted == (
        s.queued + s.running + s.succeeded + s.failed + s.cancelled + s.timed_out + s.handed_back
    ), s
    assert min(s.queued, s.running, s.busy, s.idle) >= 0, s
    assert s.workers == len(s.worker_pids) <= s.target_workers, s
    assert s.busy <= s.target_workers, s
    return s


async def settle_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    """Let tasks and threads run until ``predicate()`` holds (fail after ``limit`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)


@dataclass(frozen=True)
class Kind:
    """One kind of pool, driven from ``async def`` tests the same way as the other."""

    cls: type[WorkerPool] | type[ThreadPool]
    retrying: str
    """The tenacity class the pool takes for ``retry=``."""

    def __str__(self) -> str:
        return self.cls.__name__

    @property
    def threads(self) -> bool:
        return self.cls is ThreadPool

    def make(self, **options: Any) -> Pool:
        return self.cls(**options)

    def gate(self) -> tuple[Callable[[], Any], Callable[[], None]]:
        """A job that waits until the gate opens, and the function that opens it."""
        if self.threads:
            event = threading.Event()
            return (lambda: event.wait(10)), event.set
        aevent = asyncio.Event()
        return aevent.wait, aevent.set

    async def submit(self, pool: Pool, fn: Callable[..., Any], *args: Any) -> Any:
        """Submit as a user of that kind does: awaiting room, or blocking a thread for it."""
        if isinstance(pool, WorkerPool):
            return await pool.submit(fn, *args)
        return await asyncio.to_thread(pool.submit, fn, *args)

    async def result(self, job: Any) -> Any:
        if self.threads:
            return await asyncio.wrap_future(job)
        return await job

    async def shutdown(self, pool: Pool, **options: Any) -> list[poolkit.UnstartedJob]:
        if isinstance(pool, WorkerPool):
            return await pool.shutdown(**options)
        return await pool.shutdown_async(**options)

    async def map(self, pool: Pool, fn: Callable[[Any], Any], items: Any, **kw: Any) -> list[Any]:
        if isinstance(pool, WorkerPool):
            return [r async for r in pool.map(fn, items, **kw)]
        return await asyncio.to_thread(lambda: list(pool.map(fn, items, **kw)))


WORKER = Kind(WorkerPool, "AsyncRetrying")
THREAD = Kind(ThreadPool, "Retrying")
KINDS = [WORKER, THREAD]
