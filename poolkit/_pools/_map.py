"""The machinery of the pools' ``map()``: a bounded window over a lazily read input.

Both forms read their input lazily and keep at most ``pool._window()`` items (``workers +
queue_size``) in the pool or waiting to be yielded, however long the input is; results come in
input order or as they finish; the first failure is raised after the rest are cancelled, or
every result is an :class:`~poolkit.Outcome`; leaving early cancels what is still in flight.

* :func:`map_async`, for ``WorkerPool.map``: a feeder task submits while the consumer yields.
  Items are not :class:`~poolkit.Job` futures but :class:`_MapItem` objects that report to
  their map (no future, no callback per item: on this path that halved the cost per job).
* :func:`map_threads`, for ``ThreadPool.map``: a generator that submits, then waits on the
  ``concurrent.futures`` handles.

The pools are reached through the small interfaces below (:class:`AsyncHost`,
:class:`ThreadHost`), so this module imports no pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

from poolkit._core._exceptions import PoolClosed
from poolkit._core._registry import record_origin

from ._jobs import Outcome
from ._pool_core import CANCELLING, DONE, OPEN, QUEUED, RUNNING

__all__ = ["AsyncHost", "ThreadHost", "map_async", "map_threads"]

_monotonic = time.monotonic


class _Queue(Protocol):
    def offer(self, job: Any) -> bool: ...


class AsyncHost(Protocol):
    """What :func:`map_async` and its items use of a ``WorkerPool``."""

    _state: int
    _ready: bool
    _submitted: int
    _elastic: bool

    @property
    def _jobs(self) -> _Queue: ...

    def _start(self) -> None: ...

    async def _put(self, job: Any) -> None: ...

    def _accepted_elastic(self) -> None: ...

    def _label(self) -> str: ...

    def _map_error(self, error: BaseException) -> BaseException: ...

    def _window(self) -> int: ...

    def _cancelled_in_queue(self) -> None: ...

    def _cancel_run(self, job: Any, msg: Any) -> None: ...


class ThreadHost(Protocol):
    """What :func:`map_threads` uses of a ``ThreadPool``."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]: ...

    def _map_error(self, error: BaseException) -> BaseException: ...

    def _window(self) -> int: ...


class _Feed:
    """One map() call's state, shared by its feeder, its consumer and the workers."""

    __slots__ = ("finished", "ordered", "pending", "wake")

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self.pending: deque[_MapItem] = deque()  # ordered: submitted, in input order
        self.finished: deque[_MapItem] = deque()  # unordered: in completion order
        self.wake: asyncio.Future[None] | None = None  # the consumer sleeps on it

    def completed(self, item: _MapItem) -> None:
        if not self.ordered:
            self.finished.append(item)
        elif not self.pending or self.pending[0] is not item:
            return  # the consumer waits for the head, not for this one
        wake = self.wake
        if wake is not None and not wake.done():
            wake.set_result(None)


class _MapItem:
    """A job made by map(): like a Job, but reporting to its map instead of being a future."""

    __slots__ = (
        "_args",
        "_feed",
        "_fn",
        "_kwargs",
        "_phase",
        "_pool",
        "_queued_at",
        "error",
        "finished",
        "item",
        "value",
    )

    def __init__(self, pool: AsyncHost, fn: Callable[..., Any], item: Any, feed: _Feed) -> None:
        self._fn = fn
        self._args = (item,)
        self._kwargs: dict[str, Any] | None = None
        self._phase = QUEUED
        self._pool = pool
        self._queued_at = _monotonic()
        self._feed = feed
        self.item = item
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def cancel(self, msg: Any | None = None) -> bool:
        phase = self._phase
        if phase == QUEUED:
            self._phase = DONE
            self._pool._cancelled_in_queue()
            self._drop()
            return True
        if phase == RUNNING:
            self._phase = CANCELLING
            self._pool._cancel_run(self, msg)
            return True
        return phase == CANCELLING

    @property
    def fn(self) -> Callable[..., Any]:
        return self._fn

    @property
    def args(self) -> tuple[Any, ...]:
        return self._args

    @property
    def kwargs(self) -> dict[str, Any]:
        return {}

    def _resolve(self, value: Any) -> None:
        if not self.finished:
            self.value = value
            self.finished = True
            self._feed.completed(self)

    def _reject(self, exc: BaseException) -> None:
        if not self.finished:
            self.error = exc
            self.finished = True
            self._feed.completed(self)

    def _drop(self) -> None:
        self._reject(asyncio.CancelledError(f"the job for {self.item!r} was cancelled"))


async def map_async(
    pool: AsyncHost,
    fn: Callable[[Any], Any],
    iterable: Iterable[Any] | AsyncIterable[Any],
    ordered: bool,
    outcomes: bool,
) -> AsyncIterator[Any]:
    """``WorkerPool.map``'s iterator (its arguments checked already); dumps show a consumer
    waiting here as ``pool map``."""
    loop = asyncio.get_running_loop()
    if pool._state == OPEN:
        pool._start()  # on this loop (or moved to it), with workers; per item, _ready says
    window = pool._window()
    feed = _Feed(ordered)
    pending = feed.pending
    finished = feed.finished
    inflight: set[_MapItem] = set()  # unordered: submitted, not yet yielded
    outstanding = 0  # submitted and not yet yielded
    fed_all = False
    feed_error: BaseException | None = None
    feeder_wake: asyncio.Future[None] | None = None

    def wake_consumer() -> None:
        wake = feed.wake
        if wake is not None and not wake.done():
            wake.set_result(None)

    async def feeder() -> None:
        nonlocal outstanding, fed_all, feed_error, feeder_wake
        try:
            source: Any
            if isinstance(iterable, AsyncIterable):
                source = iterable.__aiter__()
                is_async = True
            else:
                source = iter(iterable)
                is_async = False
            jobs = pool._jobs
            while True:
                while outstanding >= window:
                    feeder_wake = loop.create_future()
                    await feeder_wake
                try:
                    item = await source.__anext__() if is_async else next(source)
                except (StopAsyncIteration, StopIteration):
                    return
                if not pool._ready:
                    pool._start()  # raises PoolClosed once the pool is shutting down
                job = _MapItem(pool, fn, item, feed)
                if not jobs.offer(job):
                    await pool._put(job)
                pool._submitted += 1  # _accepted() inlined
                if pool._elastic:
                    pool._accepted_elastic()
                outstanding += 1
                if ordered:
                    pending.append(job)
                    if len(pending) == 1:
                        wake_consumer()
                else:
                    inflight.add(job)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            feed_error = exc
        finally:
            fed_all = True
            wake_consumer()

    feeding = loop.create_task(feeder(), name=f"poolkit {pool._label()} map feeder")
    record_origin(feeding, f"{pool._label()} map feeder")
    try:
        while True:
            if ordered:
                if pending and pending[0].finished:
                    job = pending.popleft()
                elif pending or not fed_all:
                    feed.wake = loop.create_future()
                    await feed.wake
                    continue
                else:
                    break
            elif finished:
                job = finished.popleft()
                inflight.discard(job)
            elif inflight or not fed_all:
                feed.wake = loop.create_future()
                await feed.wake
                continue
            else:
                break
            outstanding -= 1
            if feeder_wake is not None and not feeder_wake.done():
                feeder_wake.set_result(None)
            error = job.error
            if error is None:
                yield Outcome(job.item, job.value, None) if outcomes else job.value
            elif outcomes:
                yield Outcome(job.item, None, error)
            else:
                raise pool._map_error(error)
        if feed_error is not None:
            raise pool._map_error(feed_error)
    finally:
        feeding.cancel()
        for job in pending:
            job.cancel()
        for job in inflight:
            job.cancel()
        pending.clear()
        inflight.clear()
        await asyncio.wait([feeding])  # no task outlives the iterator


def map_threads(
    pool: ThreadHost,
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    ordered: bool,
    outcomes: bool,
) -> Iterator[Any]:
    """``ThreadPool.map``'s generator (its arguments checked already)."""
    window = pool._window()
    pending: deque[tuple[Any, cf.Future[Any]]] = deque()
    inflight: set[cf.Future[Any]] = set()
    items: dict[cf.Future[Any], Any] = {}
    source = iter(iterable)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) + len(inflight) < window:
                try:
                    item = next(source)
                except StopIteration:
                    exhausted = True
                    break
                try:
                    job = pool.submit(fn, item)
                except PoolClosed as exc:
                    raise pool._map_error(exc) from None
                if ordered:
                    pending.append((item, job))
                else:
                    inflight.add(job)
                    items[job] = item
            if ordered:
                if not pending:
                    return
                item, job = pending.popleft()
                cf.wait([job])
            else:
                if not inflight:
                    return
                done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                job = done.pop()
                inflight.discard(job)
                item = items.pop(job)
            if job.cancelled():
                error: BaseException | None = cf.CancelledError(
                    f"the job for {item!r} was cancelled"
                )
            else:
                error = job.exception()
            if error is None:
                yield Outcome(item, job.result(), None) if outcomes else job.result()
            elif outcomes:
                yield Outcome(item, None, error)
            else:
                raise pool._map_error(error)
    finally:
        for _, job in pending:
            job.cancel()
        for job in inflight:
            job.cancel()
