"""The machinery of the pools' ``map()``: a bounded window over a lazily read input.

Both forms read their input lazily and keep at most ``pool._window()`` items (``workers +
queue_size``) in the pool or waiting to be yielded, however long the input is; results come in
input order or as they finish; the first failure is raised after the rest are cancelled, or
every result is an :class:`~poolkit.Outcome`; leaving early cancels what is still in flight.

* :func:`map_async`, for ``WorkerPool.map``: the pool's workers take the items straight from the
  input (a :class:`_Feed`, Go's ``for job := range jobs``), so an item never waits in the
  pool's queue and no task stands between the input and the workers; an async iterable is read
  ahead by one feeder task.  Items are not :class:`~poolkit.Job` futures but :class:`_MapItem`
  objects that report to their map (no future, no callback per item).
* :func:`map_threads`, for ``ThreadPool.map``: a generator that submits, then waits on the
  ``concurrent.futures`` handles.

The pools are reached through the small interfaces below (:class:`AsyncHost`,
:class:`ThreadHost`), so this module imports no pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Protocol

from poolkit._core._exceptions import PoolClosed
from poolkit._core._registry import record_origin

from ._jobs import Outcome
from ._pool_core import CANCELLING, RUNNING

__all__ = ["AsyncHost", "ThreadHost", "map_async", "map_threads"]


class AsyncHost(Protocol):
    """What :func:`map_async` and its items use of a ``WorkerPool``."""

    _ready: bool
    _target: int

    def _start(self) -> None: ...

    def _add_source(self, feed: _Feed) -> None: ...

    def _drop_source(self, feed: _Feed) -> None: ...

    def _source_ready(self) -> None: ...

    def _label(self) -> str: ...

    def _map_error(self, error: BaseException) -> BaseException: ...

    def _window(self) -> int: ...

    def _cancel_run(self, job: Any, msg: Any) -> None: ...


class ThreadHost(Protocol):
    """What :func:`map_threads` uses of a ``ThreadPool``."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]: ...

    def _map_error(self, error: BaseException) -> BaseException: ...

    def _window(self) -> int: ...


class _Feed:
    """One map() call: the source the workers take its items from, and what they report back.

    Workers take items straight from the source (:meth:`take`) when the pool's queue has no job
    for them, so a map's item never waits in the queue and no task stands between the input and
    the workers.  A plain iterable is read by the worker that takes the item (``next()`` is
    synchronous: two workers never read it at once); an async iterable is read ahead by one
    feeder task into ``buffer``.  ``outstanding`` counts items taken and not yet yielded; at
    ``window`` the source is full and workers leave it alone until the consumer has yielded half
    the window (hysteresis: one wake-up per half window, not one per item).
    """

    __slots__ = (
        "buffer",
        "consumer",
        "ended",
        "error",
        "feeder",
        "finished",
        "fn",
        "full",
        "inflight",
        "low",
        "ordered",
        "outstanding",
        "pending",
        "pool",
        "reading",
        "source",
        "window",
    )

    def __init__(
        self, pool: AsyncHost, fn: Callable[[Any], Any], source: Any, ordered: bool
    ) -> None:
        self.pool = pool
        self.fn = fn
        self.source: Iterator[Any] | None = source  # a plain iterator; None: read into buffer
        self.buffer: deque[Any] = deque()  # an async iterable's items read ahead
        self.ordered = ordered
        self.pending: deque[_MapItem] = deque()  # ordered: taken, in input order
        self.finished: deque[_MapItem] = deque()  # unordered: in completion order
        self.inflight: set[_MapItem] = set()  # unordered: taken, not yet finished
        self.consumer: asyncio.Future[None] | None = None  # the consumer sleeps on it
        self.feeder: asyncio.Future[None] | None = None  # the async feeder sleeps on it
        self.window = window = pool._window()
        # Room again at or below this: half the slack the window has beyond one item per worker
        # (at least one item), so that a window of exactly ``workers`` keeps every worker busy.
        self.low = window - max(1, (window - pool._target) // 2)
        self.reading = source is None  # an async iterable's feeder is still reading
        self.outstanding = 0  # taken and not yet yielded
        self.full = False  # a worker found no room: wake one when room comes
        self.ended = False  # no item will come any more (read to its end, failed, or stopped)
        self.error: BaseException | None = None  # why the input ended early

    def take(self) -> _MapItem | None:
        """A worker's turn: the next item as a running job, or None if none can be had now."""
        if self.outstanding >= self.window:
            self.full = True
            return None
        source = self.source
        if source is None:
            buffer = self.buffer
            if not buffer:
                return None
            item = buffer.popleft()
            if not buffer and not self.reading:
                self.end(None)  # that was the last item the feeder read
        else:
            try:
                item = next(source)
            except StopIteration:
                self.end(None)
                return None
            except BaseException as exc:  # the input failed: map() raises it
                self.end(exc)
                return None
        job = _MapItem(self.pool, self.fn, item, self)
        self.outstanding += 1
        if self.ordered:
            self.pending.append(job)
        else:
            self.inflight.add(job)
        return job

    def completed(self, item: _MapItem) -> None:
        if not self.ordered:
            self.inflight.discard(item)
            self.finished.append(item)
        elif not self.pending or self.pending[0] is not item:
            return  # the consumer waits for the head, not for this one
        self.wake_consumer()

    def wake_consumer(self) -> None:
        wake = self.consumer
        if wake is not None and not wake.done():
            wake.set_result(None)

    def end(self, error: BaseException | None) -> None:
        """No item will be taken any more: the input is read to its end or failed, or the pool
        stopped the map (``error`` says why; items read ahead are dropped, never submitted)."""
        if not self.ended:
            self.ended = True
            if self.error is None:
                self.error = error
            if error is not None:
                self.buffer.clear()
            self.pool._drop_source(self)
            self.wake_consumer()


class _MapItem:
    """A job made by map(): like a Job, but reporting to its map instead of being a future."""

    __slots__ = (
        "_args",
        "_feed",
        "_fn",
        "_kwargs",
        "_phase",
        "_pool",
        "error",
        "finished",
        "item",
        "value",
    )

    def __init__(self, pool: AsyncHost, fn: Callable[..., Any], item: Any, feed: _Feed) -> None:
        self._fn = fn
        self._args = (item,)
        self._kwargs: dict[str, Any] | None = None
        self._phase = RUNNING  # taken by a worker that runs it at once
        self._pool = pool
        self._feed = feed
        self.item = item
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False

    def cancel(self, msg: Any | None = None) -> bool:
        phase = self._phase
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
            feed = self._feed
            if feed.ordered:  # feed.completed() inlined: the per-item path
                pending = feed.pending
                if pending and pending[0] is self:
                    wake = feed.consumer
                    if wake is not None and not wake.done():
                        wake.set_result(None)
            else:
                feed.completed(self)

    def _reject(self, exc: BaseException) -> None:
        if not self.finished:
            self.error = exc
            self.finished = True
            self._feed.completed(self)

    def _drop(self) -> None:
        self._reject(asyncio.CancelledError(f"the job for {self.item!r} was cancelled"))


async def _read_ahead(feed: _Feed, source: AsyncIterator[Any]) -> None:
    """The feeder task of a map over an async iterable: reads items into ``feed.buffer`` while
    the window has room, and offers each to the workers."""
    pool = feed.pool
    loop = asyncio.get_running_loop()
    buffer = feed.buffer
    try:
        while True:
            while len(buffer) + feed.outstanding >= feed.window:
                feed.feeder = loop.create_future()
                await feed.feeder
            try:
                item = await source.__anext__()
            except StopAsyncIteration:
                break
            if feed.ended:
                return  # the pool stopped the map meanwhile
            buffer.append(item)
            pool._source_ready()
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        feed.error = exc  # raised by map() once the items read before it are yielded
    finally:
        feed.reading = False
        if not buffer:
            feed.end(None)  # else the worker that takes the last item ends it


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
    if not pool._ready:
        try:
            pool._start()  # on this loop (or moved to it), with workers
        except PoolClosed as exc:
            raise pool._map_error(exc) from None
    feeding: asyncio.Task[None] | None = None
    if isinstance(iterable, AsyncIterable):
        feed = _Feed(pool, fn, None, ordered)
        feeding = loop.create_task(
            _read_ahead(feed, iterable.__aiter__()), name=f"poolkit {pool._label()} map feeder"
        )
        record_origin(feeding, f"{pool._label()} map feeder")
    else:
        feed = _Feed(pool, fn, iter(iterable), ordered)
    pending = feed.pending
    finished = feed.finished
    pool._add_source(feed)
    try:
        while True:
            if ordered:
                if pending and pending[0].finished:
                    job = pending.popleft()
                elif pending or not feed.ended:
                    if not pool._ready and not feed.ended:
                        pool._start()  # its workers were cancelled from outside: new ones
                    feed.consumer = loop.create_future()
                    await feed.consumer
                    continue
                else:
                    break
            elif finished:
                job = finished.popleft()
            elif feed.inflight or not feed.ended:
                if not pool._ready and not feed.ended:
                    pool._start()
                feed.consumer = loop.create_future()
                await feed.consumer
                continue
            else:
                break
            feed.outstanding -= 1
            if feed.full and feed.outstanding <= feed.low:
                feed.full = False
                pool._source_ready()
            if feeding is not None:
                wake = feed.feeder
                if (
                    wake is not None
                    and not wake.done()
                    and len(feed.buffer) + feed.outstanding <= feed.low
                ):
                    wake.set_result(None)
            error = job.error
            if error is None:
                yield Outcome(job.item, job.value, None) if outcomes else job.value
            elif outcomes:
                yield Outcome(job.item, None, error)
            else:
                raise pool._map_error(error)
        if feed.error is not None:
            raise pool._map_error(feed.error)
    finally:
        feed.end(None)  # no worker takes another item of it
        for job in pending:
            job.cancel()
        for job in list(feed.inflight):
            job.cancel()
        pending.clear()
        feed.buffer.clear()
        if feeding is not None:
            feeding.cancel()
            await asyncio.wait([feeding])  # no task outlives the iterator


def map_threads(
    pool: ThreadHost,
    fn: Callable[[Any], Any],
    iterable: Iterable[Any],
    ordered: bool,
    outcomes: bool,
) -> Iterator[Any]:
    """``ThreadPool.map``'s generator (its arguments checked already).

    It submits while the window has room, then waits for one result: in order, on the job at
    the head (``exception()`` waits, and a result that is in already costs two lock round trips
    where ``cf.wait([job])`` cost a waiter and four); as they finish, on a queue the jobs' done-
    callbacks fill (``cf.wait(FIRST_COMPLETED)`` on the whole window cost O(window) per result).
    A wait interrupted in this thread (``KeyboardInterrupt``) propagates, and the jobs still in
    flight are cancelled, as when the consumer leaves early.
    """
    from queue import SimpleQueue  # (this module's imports are the asyncio side's)

    window = pool._window()
    submit = pool.submit
    source = iter(iterable)
    exhausted = False
    if ordered:
        pending: deque[tuple[Any, cf.Future[Any]]] = deque()
        try:
            while True:
                while not exhausted and len(pending) < window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        pending.append((item, submit(fn, item)))
                    except PoolClosed as exc:
                        raise pool._map_error(exc) from None
                if not pending:
                    return
                item, job = pending.popleft()
                try:
                    error = job.exception()  # waits for it
                except cf.CancelledError:
                    error = cf.CancelledError(f"the job for {item!r} was cancelled")
                if error is None:
                    yield Outcome(item, job.result(), None) if outcomes else job.result()
                elif outcomes:
                    yield Outcome(item, None, error)
                else:
                    raise pool._map_error(error)
        finally:
            for _, job in pending:
                job.cancel()
    else:
        finished: SimpleQueue[cf.Future[Any]] = SimpleQueue()
        report = finished.put
        items: dict[cf.Future[Any], Any] = {}  # in flight: submitted, not yet yielded
        try:
            while True:
                while not exhausted and len(items) < window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    try:
                        job = submit(fn, item)
                    except PoolClosed as exc:
                        raise pool._map_error(exc) from None
                    items[job] = item
                    job.add_done_callback(report)
                if not items:
                    return
                job = finished.get()  # waits for the next job to finish
                item = items.pop(job)
                if job.cancelled():
                    error = cf.CancelledError(f"the job for {item!r} was cancelled")
                else:
                    error = job.exception()
                if error is None:
                    yield Outcome(item, job.result(), None) if outcomes else job.result()
                elif outcomes:
                    yield Outcome(item, None, error)
                else:
                    raise pool._map_error(error)
        finally:
            for job in items:
                job.cancel()
