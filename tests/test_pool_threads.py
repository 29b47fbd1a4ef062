"""WorkerPool.submit_blocking: jobs from other threads, with concurrent.futures.Future handles.

The pool's loop runs in a thread of its own; the test's thread (and threads it starts) submit.
Every test ends with the loop's thread joined and, on that loop, no task but its main one left.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import random
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

import poolkit
from poolkit import JobHandedBack, PoolClosed, WorkerPool

from .conftest import LOOP_FACTORIES
from .pool_checks import check_books

KINDS = [k for k in ("asyncio", "uvloop") if k in LOOP_FACTORIES]


def waiting(pool: WorkerPool) -> int:
    """submit_blocking() calls waiting on the loop for room in the queue."""
    return len(pool._door.waiting())


def wait_until(predicate: Callable[[], bool], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


class LoopThread:
    """An event loop in a thread of its own, with the pool started on it; ``close()`` shuts the
    pool down there (or, with ``walk_away``, just lets the loop end, as ``asyncio.run`` does),
    and checks that none of the pool's tasks outlived its shutdown."""

    def __init__(self, kind: str, pool: WorkerPool) -> None:
        self.pool = pool
        self.kind = kind
        self.ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.leftover: list[asyncio.Task[Any]] = []
        self.handed: list[poolkit.UnstartedJob] = []
        self._stop: asyncio.Event | None = None
        self._cancel = False
        self._walk_away = False
        self.thread = threading.Thread(target=self._run, name="test loop")
        self.thread.start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.pool.__aenter__()
            self.ready.set()
            await self._stop.wait()
            if not self._walk_away:
                self.handed = await self.pool.shutdown(cancel=self._cancel)
                await asyncio.sleep(0)
                self.leftover = [
                    t for t in asyncio.all_tasks() if t.get_name().startswith("poolkit")
                ]

        with asyncio.Runner(loop_factory=LOOP_FACTORIES[self.kind]) as runner:
            runner.run(main())

    def call(self, fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self.loop).result(10)

    def close(self, *, cancel: bool = False, walk_away: bool = False) -> None:
        self._cancel = cancel
        self._walk_away = walk_away
        assert self.loop is not None and self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(10)
        assert not self.thread.is_alive()
        assert not self.leftover, self.leftover


async def double(x: int) -> int:
    await asyncio.sleep(0)
    return 2 * x


async def boom() -> None:
    raise KeyError("boom")


# ---------------------------------------------------------------- basics


@pytest.mark.parametrize("kind", KINDS)
def test_a_job_from_a_thread_runs_and_its_outcome_reaches_the_future(kind: str) -> None:
    pool = WorkerPool(workers=2, name="bridge")
    lt = LoopThread(kind, pool)
    try:
        fut = pool.submit_blocking(double, 21)
        assert isinstance(fut, cf.Future)
        assert fut.result(10) == 42
        with pytest.raises(KeyError, match="boom"):
            pool.submit_blocking(boom).result(10)
        ran_on: list[int] = []
        plain = pool.submit_blocking(
            lambda a, *, b: ran_on.append(threading.get_ident()) or a + b, 1, b=2
        )
        assert plain.result(10) == 3
        assert lt.thread.ident in ran_on  # a plain function runs in the loop's thread
        s = check_books(pool)
        assert (s.submitted, s.succeeded, s.failed) == (3, 2, 1)
    finally:
        lt.close()
    assert check_books(pool).workers == 0


@pytest.mark.parametrize("kind", KINDS)
def test_submit_blocking_waits_for_room_then_returns(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=1)
    lt = LoopThread(kind, pool)
    gate = threading.Event()

    async def wait_for_gate() -> str:
        await asyncio.to_thread(gate.wait)
        return "through"

    try:
        first = pool.submit_blocking(wait_for_gate)  # running
        second = pool.submit_blocking(wait_for_gate)  # queued: the queue is full now
        got: list[cf.Future[Any]] = []
        blocked = threading.Thread(target=lambda: got.append(pool.submit_blocking(double, 1)))
        blocked.start()
        wait_until(lambda: waiting(pool) == 1)  # waiting on the loop for room
        assert not got
        assert check_books(pool).submitted == 2
        gate.set()
        blocked.join(10)
        assert [f.result(10) for f in (first, second, got[0])] == ["through", "through", 2]
    finally:
        lt.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_timeout_waiting_for_room_submits_nothing(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=0, name="full")
    lt = LoopThread(kind, pool)
    gate = asyncio.Event()
    try:
        busy = pool.submit_blocking(gate.wait)
        wait_until(lambda: pool.statistics().running == 1)
        with pytest.raises(TimeoutError, match=r"no room in the queue of pool 'full' within 0.05"):
            pool.submit_blocking(double, 1, timeout=0.05)
        with pytest.raises(TimeoutError, match="the queue of pool 'full' is full"):
            pool.submit_blocking(double, 1, timeout=0)
        s = check_books(pool)
        assert (s.submitted, s.queued) == (1, 0)  # neither got in
        assert not pool._door._requests
        assert lt.loop is not None
        lt.loop.call_soon_threadsafe(gate.set)
        assert busy.result(10) is True
        with pytest.raises(ValueError, match="timeout must be >= 0"):
            pool.submit_blocking(double, 1, timeout=-1)
    finally:
        lt.close()


@pytest.mark.parametrize("kind", KINDS)
def test_submit_blocking_refuses_where_it_would_deadlock_or_freeze_a_loop(kind: str) -> None:
    pool = WorkerPool(workers=1)
    lt = LoopThread(kind, pool)
    try:

        async def on_the_pools_loop() -> None:
            with pytest.raises(RuntimeError, match=r"would deadlock; use `await pool\.submit"):
                pool.submit_blocking(double, 1)

        lt.call(on_the_pools_loop)

        async def on_another_loop() -> None:
            with pytest.raises(RuntimeError, match="would block the event loop running in this"):
                pool.submit_blocking(double, 1)

        asyncio.run(on_another_loop())
        with pytest.raises(TypeError, match="fn must be callable, got 3"):
            pool.submit_blocking(3)  # type: ignore[arg-type]
        assert check_books(pool).submitted == 0
    finally:
        lt.close()


def test_submit_blocking_before_start_after_shutdown_and_with_its_loop_stopped() -> None:
    pool = WorkerPool(workers=1, name="idle")
    with pytest.raises(RuntimeError, match="pool 'idle' has not started, so it has no event loop"):
        pool.submit_blocking(double, 1)

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(pool.__aenter__())
        with pytest.raises(RuntimeError, match="the event loop of pool 'idle' is not running"):
            pool.submit_blocking(double, 1)
        loop.run_until_complete(pool.shutdown())
        with pytest.raises(PoolClosed, match="pool 'idle' is shut down"):
            pool.submit_blocking(double, 1)
    finally:
        loop.close()
    assert check_books(pool).submitted == 0


# ---------------------------------------------------------------- cancelling the future


@pytest.mark.parametrize("kind", KINDS)
def test_cancelling_the_future_cancels_the_job_queued_or_running(kind: str) -> None:
    pool = WorkerPool(workers=1, queue_size=5)
    lt = LoopThread(kind, pool)
    started = threading.Event()
    ran: list[str] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def never(tag: str) -> None:
        ran.append(tag)

    try:
        running = pool.submit_blocking(forever)
        queued = pool.submit_blocking(never, "queued")
        assert started.wait(10)
        assert queued.cancel() and running.cancel()
        wait_until(lambda: pool.statistics().cancelled == 2)
        assert pool.submit_blocking(double, 4).result(10) == 8  # the worker survived
        s = check_books(pool)
        assert (s.cancelled, s.started, s.succeeded) == (2, 2, 1)
        assert ran == []
    finally:
        lt.close()


# ---------------------------------------------------------------- shutdown and the loop's end


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cancel", [False, True], ids=["drain", "cancel"])
def test_shutdown_while_threads_wait_for_room(kind: str, cancel: bool) -> None:
    pool = WorkerPool(workers=1, queue_size=1)
    lt = LoopThread(kind, pool)
    gate = threading.Event()

    async def wait_for_gate() -> str:
        await asyncio.to_thread(gate.wait, 0.2)
        return "ran"

    futures = [pool.submit_blocking(wait_for_gate) for _ in range(2)]  # running + queued
    outcomes: list[Any] = []

    def submitter() -> None:
        try:
            outcomes.append(pool.submit_blocking(double, 1))
        except PoolClosed as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: waiting(pool) == 3)
    lt.close(cancel=cancel)
    for t in threads:
        t.join(10)
    assert len(outcomes) == 3 and all(isinstance(o, PoolClosed) for o in outcomes)
    if cancel:
        assert futures[0].cancelled()
        with pytest.raises(JobHandedBack):
            futures[1].result(0)
        assert [h.job.__class__ for h in lt.handed] == [poolkit.Job]
    else:
        assert [f.result(0) for f in futures] == ["ran", "ran"]
    s = check_books(pool)
    assert s.submitted == 2 and s.workers == 0


@pytest.mark.parametrize("kind", KINDS)
def test_the_loop_ending_under_the_pool_leaves_no_thread_waiting(kind: str) -> None:
    """The loop ends without shutting the pool down (asyncio.run cancels every task): the
    running job is cancelled, the queued one handed back, threads waiting for room are told
    nothing was submitted, and a later call says the loop is gone."""
    pool = WorkerPool(workers=1, queue_size=1)
    lt = LoopThread(kind, pool)
    gate = asyncio.Event()
    running = pool.submit_blocking(gate.wait)
    queued = pool.submit_blocking(double, 1)
    errors: list[BaseException] = []

    def submitter() -> None:
        try:
            pool.submit_blocking(double, 2)
        except RuntimeError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=submitter) for _ in range(3)]
    for t in threads:
        t.start()
    wait_until(lambda: waiting(pool) == 3)
    lt.close(walk_away=True)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    assert len(errors) == 3
    assert all("nothing was submitted" in str(e) for e in errors)
    assert running.cancelled()
    with pytest.raises(JobHandedBack, match="cancelled from outside"):
        queued.result(0)
    s = check_books(pool)
    assert (s.submitted, s.cancelled, s.handed_back, s.queued, s.workers) == (2, 1, 1, 0, 0)
    with pytest.raises(RuntimeError, match="is closed; nothing was submitted"):
        pool.submit_blocking(double, 3)


# ---------------------------------------------------------------- random load


@pytest.mark.parametrize("seed", range(6))
def test_threads_submitting_through_a_random_shutdown_lose_nothing(seed: int) -> None:
    """Several threads submit with random timeouts and cancel some futures; tasks on the loop
    submit too; the pool is shut down (draining or cancelling) at a random moment.  Every
    future that was returned resolves, every refusal says nothing was submitted, and the
    pool's books count exactly the futures returned."""
    rng = random.Random(seed)
    kind = KINDS[seed % len(KINDS)]
    pool = WorkerPool(workers=rng.randint(1, 3), queue_size=rng.randint(0, 3))
    lt = LoopThread(kind, pool)
    lock = threading.Lock()
    futures: list[cf.Future[Any]] = []
    cancelled_by_us: list[cf.Future[Any]] = []
    refusals: list[BaseException] = []

    async def job(kind: int) -> int:
        await asyncio.sleep(rng.random() * 0.002)
        if kind == 0:
            raise ValueError("job failed")
        return kind

    def submitter(k: int) -> None:
        r = random.Random(seed * 100 + k)
        for _ in range(40):
            timeout = r.choice([None, None, 0, 0.001, 0.01])
            try:
                fut = pool.submit_blocking(job, r.randint(0, 3), timeout=timeout)
            except (PoolClosed, TimeoutError) as exc:
                with lock:
                    refusals.append(exc)
                if isinstance(exc, PoolClosed):
                    return
                continue
            with lock:
                futures.append(fut)
            if r.random() < 0.2 and fut.cancel():
                with lock:
                    cancelled_by_us.append(fut)
            if r.random() < 0.3:
                time.sleep(r.random() * 0.002)

    async def loop_side() -> None:
        for i in range(20):
            try:
                await pool.submit(job, 1 + i % 3)  # succeeds, unless cancelled or handed back
            except PoolClosed:
                return
            await asyncio.sleep(rng.random() * 0.002)

    assert lt.loop is not None
    feeding = asyncio.run_coroutine_threadsafe(loop_side(), lt.loop)
    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(rng.random() * 0.05)
    lt.close(cancel=rng.random() < 0.5)
    for t in threads:
        t.join(10)
        assert not t.is_alive()
    try:
        feeding.result(10)
    except cf.CancelledError:
        pass  # still sleeping between submits when the loop ended
    s = check_books(pool)
    from_loop = s.submitted - len(futures)
    assert 0 <= from_loop <= 20
    assert s.workers == 0 and s.queued == 0 and s.running == 0
    assert all(f.done() for f in futures)
    for exc in refusals:
        assert "nothing was submitted" in str(exc) or isinstance(exc, PoolClosed)
    results = sum(1 for f in futures if not f.cancelled() and f.exception() is None)
    failures = sum(
        1 for f in futures if not f.cancelled() and isinstance(f.exception(), ValueError)
    )
    handed = sum(
        1 for f in futures if not f.cancelled() and isinstance(f.exception(), JobHandedBack)
    )
    cancelled = sum(1 for f in futures if f.cancelled())
    assert results + failures + handed + cancelled == len(futures)
    # A future its owner cancelled is cancelled at once; the job may still have ended otherwise.
    slack = len(cancelled_by_us)
    assert results <= s.succeeded <= results + slack + from_loop
    assert failures <= s.failed <= failures + slack + from_loop
    assert handed <= s.handed_back <= handed + slack + from_loop
    assert cancelled - slack <= s.cancelled


@pytest.mark.parametrize("kind", KINDS)
def test_a_loop_closed_before_it_got_to_the_request_refuses_it(kind: str) -> None:
    """The request is in the loop's queue of callbacks when the loop stops and is closed
    without running it (and without cancelling its tasks): the thread is told, rather than
    left waiting for a verdict that nobody will give."""
    pool = WorkerPool(workers=1)
    loop = LOOP_FACTORIES[kind]()
    loop.set_exception_handler(lambda _, context: None)  # "Task was destroyed but it is pending"
    loop.run_until_complete(pool.__aenter__())
    entered, release = threading.Event(), threading.Event()

    def hold_the_loop() -> None:  # a callback that keeps the loop busy, then stops it
        entered.set()
        release.wait(10)
        loop.stop()

    def run_then_close() -> None:
        loop.call_soon(hold_the_loop)
        loop.run_forever()
        loop.close()

    owner = threading.Thread(target=run_then_close)
    owner.start()
    assert entered.wait(10)
    outcome: list[Any] = []

    def submitter() -> None:
        try:
            outcome.append(pool.submit_blocking(double, 1))
        except RuntimeError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=submitter)
    thread.start()
    wait_until(lambda: len(pool._door._requests) == 1)
    release.set()
    owner.join(10)
    thread.join(10)
    assert not thread.is_alive()

    async def later() -> list[poolkit.UnstartedJob]:
        return await pool.shutdown()  # from a new loop: the old one is closed

    handed = asyncio.run(later())
    (got,) = outcome
    if isinstance(got, RuntimeError):  # asyncio: the request was still queued, and dropped
        assert str(got) == (
            "the event loop of pool was closed before it took the job; nothing was submitted"
        )
        assert handed == [] and check_books(pool).submitted == 0
    else:  # uvloop runs callbacks that arrive during an iteration: the job got in first
        with pytest.raises(JobHandedBack, match="the pool moved to a new loop"):
            got.result(0)
        assert len(handed) == 1 and check_books(pool).handed_back == 1
    assert check_books(pool).workers == 0


@pytest.mark.parametrize("kind", KINDS)
def test_a_wait_for_room_stopped_before_its_first_step_still_answers_its_thread(
    kind: str,
) -> None:
    """A shutdown that comes between the loop starting a wait for room and that wait's first
    step cancels a task whose coroutine then never runs at all: its thread must be answered
    by the shutdown itself (it used to wait forever)."""
    from poolkit._pools._bridge import _FromThread

    pool = WorkerPool(workers=1, queue_size=0)
    lt = LoopThread(kind, pool)
    gate = asyncio.Event()
    try:
        busy = pool.submit_blocking(gate.wait)
        wait_until(lambda: pool.statistics().running == 1)

        async def race() -> None:
            req = _FromThread(double, (1,), {}, None)
            pool._door._requests.add(req)
            pool._door._accept(req)  # no room: a task will wait for it...
            assert req.task is not None and not req.accepted.done()
            pool._door.close(pool._closed_error)  # ...stopped before it ever ran
            assert req.accepted.done()
            with pytest.raises(PoolClosed):
                req.accepted.result(0)
            pool._door._requests.discard(req)
            pool._door.open()
            gate.set()

        lt.call(race)
        assert busy.result(10) is True
        assert check_books(pool).submitted == 1
    finally:
        lt.close()
