"""poolkit.ThreadPool: the WorkerPool model on threads, with honest timeouts and hand-back.

What both pools promise alike is tested on both in ``test_pool_behaviour.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import random
import threading
import time
from typing import Any

import pytest

import poolkit
from poolkit import (
    CapacityLimiter,
    JobHandedBack,
    PoolClosed,
    QueueFull,
    RetryPolicy,
    ThreadPool,
    TokenBucket,
)

from .pool_checks import check_books


def wait_until(predicate: Any, limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def double(x: int) -> int:
    return 2 * x


def test_submit_returns_concurrent_futures_that_asyncio_can_await() -> None:
    with ThreadPool(workers=2, name="t") as pool:
        job = pool.submit(double, 21)
        assert isinstance(job, cf.Future)
        assert job.result(timeout=5) == 42
        assert (job.fn, job.args, job.kwargs) == (double, (), {})  # arguments released

        async def from_a_task() -> int:
            return await asyncio.wrap_future(pool.submit_nowait(double, 4))

        assert asyncio.run(from_a_task()) == 8
    s = check_books(pool)
    assert (s.succeeded, s.workers, s.closed) == (2, 0, True)


def test_errors_are_captured_and_workers_survive() -> None:
    def boom(n: int) -> None:
        raise ValueError(f"bad {n}")

    with ThreadPool(workers=1) as pool:
        failing = [pool.submit(boom, n) for n in range(3)]
        assert pool.submit(double, 5).result(timeout=5) == 10
        for n, job in enumerate(failing):
            with pytest.raises(ValueError, match=f"bad {n}"):
                job.result()
    assert check_books(pool).failed == 3


def test_backpressure_and_rejection() -> None:
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=1) as pool:
        pool.submit(gate.wait)
        wait_until(lambda: pool.statistics().busy == 1)
        pool.submit(gate.wait)  # fills the queue
        with pytest.raises(QueueFull, match=r"the queue of pool\S* is full \(\d+ jobs? waiting\)"):
            pool.submit_nowait(gate.wait)
        blocked = threading.Thread(target=pool.submit, args=(gate.wait,))
        blocked.start()
        time.sleep(0.05)
        assert blocked.is_alive(), "submit did not block on a full queue"
        s = check_books(pool)
        assert (s.rejected, s.submitted) == (1, 2)
        gate.set()
        blocked.join()
    assert check_books(pool).succeeded == 3


def test_submit_refuses_to_block_an_event_loop() -> None:
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=0) as pool:
        pool.submit(gate.wait)
        wait_until(lambda: pool.statistics().busy == 1)

        async def in_loop() -> None:
            with pytest.raises(RuntimeError, match="would block the event loop"):
                pool.submit(double, 1)

        asyncio.run(in_loop())
        gate.set()


def test_cancel_a_queued_job_but_not_a_running_one() -> None:
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=5) as pool:
        running = pool.submit(gate.wait)
        wait_until(lambda: pool.statistics().busy == 1)
        queued = pool.submit(double, 1)
        assert queued.cancel()
        assert not running.cancel()  # a thread cannot be interrupted
        s = check_books(pool)
        assert (s.cancelled, s.queued, s.running) == (1, 0, 1)
        gate.set()
    assert check_books(pool).cancelled == 1


def test_timeout_fails_the_future_but_keeps_the_cap() -> None:
    release = threading.Event()
    calls_in_progress = []

    def overruns() -> str:
        calls_in_progress.append(1)
        release.wait(5)
        calls_in_progress.pop()
        return "late"

    with ThreadPool(workers=1, queue_size=5, timeout=0.05, name="slowpoke") as pool:
        job = pool.submit(overruns)
        after = pool.submit(double, 3)
        with pytest.raises(TimeoutError, match="its thread goes on"):
            job.result(timeout=5)
        s = check_books(pool)
        assert (s.timed_out, s.running, s.busy) == (1, 0, 1)  # the call still holds the worker
        assert not after.done()  # the cap of one call at a time held
        release.set()
        assert after.result(timeout=5) == 6
    assert check_books(pool).timed_out == 1
    assert calls_in_progress == []


def test_retries_are_counted() -> None:
    attempts = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError
        return "ok"

    with ThreadPool(workers=1, retry=RetryPolicy.attempts(5, initial=0.001, jitter=0)) as pool:
        assert pool.submit(flaky).result(timeout=5) == "ok"
    s = check_books(pool)
    assert (s.retried, s.succeeded, len(attempts)) == (2, 1, 3)


def test_limits_cap_and_pace_threads() -> None:
    inside = 0
    peak = 0
    guard = threading.Lock()

    def job() -> None:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        time.sleep(0.002)
        with guard:
            inside -= 1

    with ThreadPool(workers=6, limit=CapacityLimiter(2)) as pool:
        for f in [pool.submit(job) for _ in range(20)]:
            f.result(timeout=5)
    assert peak == 2
    starts: list[float] = []
    with ThreadPool(workers=4, limit=TokenBucket(100, 1)) as pool:
        for f in [pool.submit(lambda: starts.append(time.monotonic())) for _ in range(10)]:
            f.result(timeout=5)
    assert starts[-1] - starts[0] >= 0.08  # 9 more tokens at 100/s


def test_map_streams_lazily_in_order_or_not_and_reports_outcomes() -> None:
    pulled = 0

    def source() -> Any:
        nonlocal pulled
        for i in range(1000):
            pulled += 1
            yield i

    with ThreadPool(workers=2, queue_size=2) as pool:
        results = pool.map(double, source())
        assert [next(results) for _ in range(3)] == [0, 2, 4]
        assert pulled <= 3 + 4 + 1
        results.close()  # type: ignore[attr-defined]
        assert list(pool.map(double, range(50))) == [2 * i for i in range(50)]
        assert sorted(pool.map(double, range(50), ordered=False)) == [2 * i for i in range(50)]

        def picky(x: int) -> int:
            if x == 3:
                raise KeyError(x)
            return x

        outcomes = list(pool.map(picky, range(6), outcomes=True))
        assert [o.ok for o in outcomes] == [True, True, True, False, True, True]
        with pytest.raises(KeyError):
            list(pool.map(picky, range(6)))
    check_books(pool)


def test_shutdown_drains_or_hands_back() -> None:
    gate = threading.Event()
    pool = ThreadPool(workers=1, queue_size=5, name="hb")
    running = pool.submit(gate.wait)
    wait_until(lambda: pool.statistics().busy == 1)
    queued = [pool.submit(double, i) for i in range(4)]
    threading.Timer(0.05, gate.set).start()
    handed = pool.shutdown(cancel=True)
    assert [h.args for h in handed] == [(i,) for i in range(4)]
    assert [h.job for h in handed] == queued
    for job in queued:
        with pytest.raises(
            JobHandedBack,
            match=r"pool 'hb' was shut down \(cancelling, or a drain that ran out of time\)",
        ):
            job.result()
    assert running.result() is True  # the running call finished: it could not be interrupted
    s = check_books(pool)
    assert (s.handed_back, s.succeeded, s.workers) == (4, 1, 0)
    with pytest.raises(PoolClosed):
        pool.submit(double, 1)

    drained = ThreadPool(workers=2)
    jobs = [drained.submit(double, i) for i in range(10)]
    assert drained.shutdown() == []
    assert [j.result() for j in jobs] == [2 * i for i in range(10)]


def test_shutdown_deadline_with_a_call_that_will_not_return_in_time() -> None:
    release = threading.Event()
    pool = ThreadPool(workers=1, queue_size=5)
    pool.submit(release.wait)
    wait_until(lambda: pool.statistics().busy == 1)
    queued = pool.submit(double, 1)
    with pytest.raises(TimeoutError, match="threads cannot be interrupted"):
        pool.shutdown(timeout=0.05)
    assert isinstance(queued.exception(), JobHandedBack)
    release.set()
    pool.shutdown()  # now it can finish
    assert check_books(pool).workers == 0


def test_with_block_error_takes_the_cancel_path_and_fail_fast_raises_first_error() -> None:
    gate = threading.Event()
    pool = ThreadPool(workers=1, queue_size=5)

    def failing_body() -> None:
        with pool:
            pool.submit(gate.wait, 0.05)
            wait_until(lambda: pool.statistics().busy == 1)
            pool.submit(double, 1)
            raise RuntimeError("body failed")

    with pytest.raises(RuntimeError, match="body failed"):
        failing_body()
    assert check_books(pool).handed_back == 1

    def boom() -> None:
        raise KeyError("first")

    fast = ThreadPool(workers=1, queue_size=5, fail_fast=True)

    def fail_fast_body() -> None:
        with fast:
            fast.submit(boom)
            wait_until(lambda: fast.closed)
            with pytest.raises(PoolClosed):
                fast.submit(double, 1)

    with pytest.raises(KeyError, match="first"):
        fail_fast_body()
    assert check_books(fast).failed == 1


def test_resize_and_elastic_workers() -> None:
    gate = threading.Event()
    with ThreadPool(workers=2, queue_size=10) as pool:
        jobs = [pool.submit(gate.wait) for _ in range(6)]
        wait_until(lambda: pool.statistics().busy == 2)
        pool.resize(4)
        wait_until(lambda: pool.statistics().busy == 4)
        pool.resize(1)
        gate.set()
        for j in jobs:
            j.result(timeout=5)
        wait_until(lambda: pool.statistics().workers == 1)
    with ThreadPool(workers=4, min_workers=1, idle_timeout=0.05) as elastic:
        assert elastic.statistics().workers == 1
        hold = threading.Event()
        jobs = [elastic.submit(hold.wait) for _ in range(4)]
        wait_until(lambda: elastic.statistics().busy == 4)
        hold.set()
        for j in jobs:
            j.result(timeout=5)
        wait_until(lambda: elastic.statistics().workers == 1)


@pytest.mark.parametrize("seed", range(3))
def test_random_load_from_threads_keeps_the_books(seed: int) -> None:
    rng = random.Random(seed)
    workers = rng.randint(1, 4)
    inside = 0
    peak = 0
    guard = threading.Lock()

    def job(kind: int) -> None:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        try:
            if kind == 0:
                time.sleep(0.001)
            elif kind == 1:
                raise ValueError
        finally:
            with guard:
                inside -= 1

    pool = ThreadPool(workers=workers, queue_size=rng.randint(0, 5))
    handles: list[cf.Future[Any]] = []
    lock = threading.Lock()

    def submitter(k: int) -> None:
        r = random.Random(seed * 10 + k)
        for _ in range(100):
            try:
                h = pool.submit(job, r.randint(0, 2))
            except PoolClosed:
                return
            with lock:
                handles.append(h)
            if r.random() < 0.2:
                h.cancel()
            check_books(pool)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(rng.random() * 0.05)
    handed = pool.shutdown(cancel=rng.random() < 0.5)
    for t in threads:
        t.join()
    s = check_books(pool)
    assert s.workers == 0
    assert s.submitted == len(handles)
    assert all(h.done() for h in handles)
    assert len(handed) == s.handed_back
    assert peak <= workers


@pytest.mark.parametrize("seed", range(4))
def test_random_resizes_of_a_fixed_or_elastic_pool_lose_nothing(seed: int) -> None:
    """Submitters, a resizer and idle timeouts racing on threads; then a draining shutdown:
    every job ran (or was cancelled by its submitter) and no worker is left."""
    rng = random.Random(seed)
    workers = rng.randint(1, 4)
    elastic = seed % 2 == 1
    inside = peak = 0
    most = workers
    guard = threading.Lock()

    def job() -> None:
        nonlocal inside, peak
        with guard:
            inside += 1
            peak = max(peak, inside)
        time.sleep(rng.random() * 0.002)
        with guard:
            inside -= 1

    pool = ThreadPool(
        workers=workers,
        queue_size=rng.randint(0, 3),
        min_workers=0 if elastic else None,
        idle_timeout=0.002,
    )
    handles: list[cf.Future[Any]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def submitter(k: int) -> None:
        r = random.Random(seed * 10 + k)
        for _ in range(60):
            h = pool.submit(job)
            with lock:
                handles.append(h)
            if r.random() < 0.1:
                h.cancel()
            if r.random() < 0.3:
                time.sleep(r.random() * 0.004)  # long enough, at times, for workers to idle out
            check_books(pool)

    def resizer() -> None:
        nonlocal most
        r = random.Random(seed)
        while not stop.is_set():
            n = r.randint(1, 5)
            with guard:
                most = max(most, n)
            pool.resize(n)
            time.sleep(r.random() * 0.003)

    threads = [threading.Thread(target=submitter, args=(k,)) for k in range(3)]
    sizing = threading.Thread(target=resizer)
    for t in [*threads, sizing]:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sizing.join()
    assert pool.shutdown(timeout=10) == []
    s = check_books(pool)
    assert s.workers == 0 and s.queued == 0 and s.running == 0
    assert all(h.done() for h in handles)
    assert s.succeeded + s.cancelled == len(handles) == s.submitted
    assert peak <= most


# ---------------------------------------------------------------- regressions (review 4)


class _PausedWakeUps:
    """Holds a pool's idle worker threads just after their idle wait ends (woken, or timed out),
    before they act on it, so that a test can act inside that window; ``go_on()`` lets one
    through.  Installed before the threads go idle (a thread already waiting is not held)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, pool: ThreadPool) -> None:
        self.pool = pool
        self.holding = True
        self.timed_out = 0  # waits that ran out
        self.arrived = threading.Semaphore(0)  # released by each thread held
        self.turns = threading.Semaphore(0)
        real = ThreadPool._wait_for_job

        def held(pool_: ThreadPool, w: Any, timeout: float) -> bool:
            woken: bool = real(pool_, w, timeout)
            if pool_ is self.pool and self.holding:
                self.timed_out += not woken
                self.arrived.release()
                assert self.turns.acquire(timeout=5), "the test did not let the thread go on"
            return woken

        monkeypatch.setattr(ThreadPool, "_wait_for_job", held)

    def wait_for_one(self) -> None:
        assert self.arrived.acquire(timeout=5), "no idle thread woke up"

    def go_on(self) -> None:
        self.turns.release()

    def release_all(self) -> None:
        self.holding = False
        for _ in range(64):
            self.turns.release()


def _queue_state(pool: ThreadPool) -> tuple[int, int, int]:
    """(idle threads parked, threads woken for jobs that have not looked yet, jobs queued)."""
    with pool._lock:
        jobs = pool._jobs
        return len(jobs.idle), jobs.woken, len(jobs.items) - jobs.dead


def test_elastic_worker_idling_out_as_a_job_arrives_takes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool = ThreadPool(workers=2, min_workers=0, idle_timeout=0.05)
    paused = _PausedWakeUps(monkeypatch, pool)
    assert pool.submit(double, 1).result(timeout=5) == 2
    paused.wait_for_one()  # the only worker's idle wait has run out; it has not left yet
    assert paused.timed_out == 1
    late = pool.submit(double, 2)  # it still counts as idle: the job is queued for it
    assert pool.statistics().workers == 1  # and no thread was started instead
    paused.release_all()
    assert late.result(timeout=5) == 4
    pool.shutdown()
    assert check_books(pool).succeeded == 2


def test_shutdown_of_an_elastic_pool_with_no_worker_left_still_runs_a_queued_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A job queued with no thread to run it (here its thread did not start) is not left
    behind by a draining shutdown: one thread starts to run it, and is joined."""
    pool = ThreadPool(workers=2, min_workers=0, idle_timeout=0.01)
    pool.submit(double, 1).result(timeout=5)
    wait_until(lambda: pool.statistics().workers == 0)
    with monkeypatch.context() as m:
        m.setattr(ThreadPool, "_spawn", lambda self: None)
        late = pool.submit(double, 3)
    s = check_books(pool)
    assert (s.workers, s.queued) == (0, 1)
    pool.shutdown()
    assert late.result(timeout=0) == 6
    s = check_books(pool)
    assert (s.submitted, s.succeeded, s.workers) == (2, 2, 0)


def test_thread_pool_resize_down_then_up_before_the_retired_workers_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ThreadPool(workers=4) as pool:
        paused = _PausedWakeUps(monkeypatch, pool)
        start = threading.Event()  # four jobs at once start four threads, idle afterwards
        started = [pool.submit(start.wait, 5) for _ in range(4)]
        wait_until(lambda: pool.statistics().busy == 4)
        start.set()
        for job in started:
            job.result(5)
        wait_until(lambda: _queue_state(pool)[0] == 4)
        pool.resize(1)  # three idle threads are woken to retire...
        for _ in range(3):
            paused.wait_for_one()
        pool.resize(4)  # ...and taken back before they have acted on it
        paused.release_all()
        gate = threading.Event()
        jobs = [pool.submit(gate.wait, 5) for _ in range(4)]
        wait_until(lambda: pool.statistics().busy == 4)
        gate.set()
        for job in jobs:
            assert job.result(timeout=5) is True
        assert check_books(pool).workers == 4


def test_elastic_thread_pool_with_no_worker_shuts_down() -> None:
    pool = ThreadPool(workers=2, min_workers=0)
    pool.__enter__()
    assert pool.shutdown(timeout=2) == []  # used to wait forever for workers that never existed
    assert check_books(pool).workers == 0


def test_cancel_racing_a_cancelling_shutdown_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    entered = threading.Event()

    class SlowHandBack(JobHandedBack):  # widens the window between counting and resolving
        def __init__(self, *args: Any) -> None:
            entered.set()
            time.sleep(0.1)
            super().__init__(*args)

    monkeypatch.setattr(poolkit._pools._thread_pool, "JobHandedBack", SlowHandBack)
    gate = threading.Event()
    pool = ThreadPool(workers=1, queue_size=10)
    pool.submit(gate.wait)
    wait_until(lambda: pool.statistics().busy == 1)
    queued = [pool.submit(double, i) for i in range(3)]
    answers: list[bool] = []
    canceller = threading.Thread(
        target=lambda: (entered.wait(5), answers.append(queued[0].cancel()))
    )
    canceller.start()
    threading.Timer(0.3, gate.set).start()
    handed = pool.shutdown(cancel=True)
    canceller.join(5)
    assert answers == [False]  # the pool had already handed it back
    assert len(handed) == 3
    assert all(isinstance(j.exception(timeout=0), JobHandedBack) for j in queued)
    s = check_books(pool)
    assert (s.handed_back, s.cancelled, s.queued) == (3, 0, 0)


# ---------------------------------------------------------------- threads start as jobs need them


def _count_starts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    started: list[str] = []
    real_start = threading.Thread.start

    def counting_start(self: threading.Thread) -> None:
        if self.name.startswith("poolkit "):
            started.append(self.name)
        real_start(self)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    return started


def test_a_pool_of_10000_workers_starts_one_thread_for_its_first_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Start-up used to start every thread at once, rescanning all of them at each start: the
    first result took 1.1 s with 1,000 workers and 19.9 s with 10,000.  Now a thread starts
    only when a job arrives and no idle thread can take it, as in ThreadPoolExecutor."""
    started = _count_starts(monkeypatch)
    with ThreadPool(workers=10_000, name="wide") as pool:
        assert started == []
        assert pool.submit(double, 1).result(5) == 2
        assert started == ["poolkit pool 'wide' worker 1"]
        for i in range(5):  # one after another: the idle thread takes each
            assert pool.submit(double, i).result(5) == 2 * i
        s = check_books(pool)
        assert (s.workers, s.idle, s.target_workers, s.succeeded) == (1, 1, 10_000, 6)
        gate = threading.Event()
        jobs = [pool.submit(gate.wait, 5) for _ in range(3)]  # three at once: two more
        wait_until(lambda: pool.statistics().busy == 3)
        gate.set()
        assert all(job.result(5) for job in jobs)
        assert len(started) == 3 and pool.statistics().workers == 3


def test_starting_a_thread_does_not_scan_the_others(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each start used to filter the whole thread list with is_alive(): quadratic in threads."""
    scans = 0
    real_is_alive = threading.Thread.is_alive

    def counting_is_alive(self: threading.Thread) -> bool:
        nonlocal scans
        scans += 1
        return real_is_alive(self)

    started = _count_starts(monkeypatch)
    gate = threading.Event()
    monkeypatch.setattr(threading.Thread, "is_alive", counting_is_alive)  # whenever they start
    with ThreadPool(workers=300, queue_size=0) as pool:
        jobs = [pool.submit(gate.wait, 10) for _ in range(300)]  # each finds no idle thread
        monkeypatch.setattr(threading.Thread, "is_alive", real_is_alive)
        assert len(started) == 300
        assert scans <= 2 * 300 + 64, f"{scans} is_alive() calls for 300 thread starts"
        gate.set()
        assert all(job.result(10) for job in jobs)


def test_resize_up_starts_threads_only_for_jobs_that_wait() -> None:
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=10) as pool:
        jobs = [pool.submit(gate.wait, 5) for _ in range(4)]
        wait_until(lambda: pool.statistics().busy == 1)
        pool.resize(3)  # two jobs wait with no thread: two threads start for them
        wait_until(lambda: pool.statistics().busy == 3)
        pool.resize(10)  # one job still waits: one more thread, not seven
        wait_until(lambda: pool.statistics().busy == 4)
        s = check_books(pool)
        assert (s.workers, s.target_workers, s.queued) == (4, 10, 0)
        gate.set()
        assert all(job.result(5) for job in jobs)


def test_threads_start_one_per_job_that_finds_no_idle_thread_never_above_workers() -> None:
    gate = threading.Event()
    with ThreadPool(workers=3, queue_size=10) as pool:
        assert pool.statistics().workers == 0
        jobs = []
        for n in range(1, 7):  # calls that hold their thread: each finds none idle
            jobs.append(pool.submit(gate.wait, 5))
            assert pool.statistics().workers == min(n, 3)
        gate.set()
        assert all(job.result(5) for job in jobs)
        wait_until(lambda: _queue_state(pool)[0] == 3)
        for i in range(10):  # one after another: an idle thread takes each, none starts
            assert pool.submit(double, i).result(5) == 2 * i
        s = check_books(pool)
        assert (s.workers, s.target_workers, s.succeeded) == (3, 3, 16)


def test_a_burst_wakes_one_idle_thread_which_wakes_two_more_while_jobs_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each job used to wake an idle thread of its own, whether or not another was already on
    its way to the queue: a burst of quick jobs woke every thread, most to find nothing."""
    pool = ThreadPool(workers=5, queue_size=5)
    paused = _PausedWakeUps(monkeypatch, pool)
    first = threading.Event()
    started = [pool.submit(first.wait, 5) for _ in range(5)]
    wait_until(lambda: pool.statistics().busy == 5)
    first.set()
    assert all(job.result(5) for job in started)
    wait_until(lambda: _queue_state(pool)[0] == 5)
    gate = threading.Event()
    jobs = [pool.submit(gate.wait, 5) for _ in range(3)]
    paused.wait_for_one()
    assert _queue_state(pool) == (4, 1, 3)  # one thread woken for the three jobs, four asleep
    paused.go_on()  # it takes a job, and wakes two more for the two that wait
    paused.wait_for_one()
    paused.wait_for_one()
    assert _queue_state(pool) == (2, 2, 2)
    assert pool.statistics().busy == 1
    paused.go_on()  # takes one; the job left has a thread on its way: nobody else is woken
    wait_until(lambda: pool.statistics().busy == 2)
    assert _queue_state(pool) == (2, 1, 1)
    paused.go_on()
    wait_until(lambda: pool.statistics().busy == 3)
    assert _queue_state(pool) == (2, 0, 0)  # two threads slept through it all
    assert pool.statistics().workers == 5  # and no thread was started for them
    paused.release_all()
    gate.set()
    assert all(job.result(5) for job in jobs)
    pool.shutdown()
    assert check_books(pool).succeeded == 8


def test_a_burst_of_blocking_calls_reaches_every_idle_thread() -> None:
    gate = threading.Event()
    with ThreadPool(workers=16, queue_size=16) as pool:
        warm = [pool.submit(gate.wait, 5) for _ in range(16)]
        wait_until(lambda: pool.statistics().busy == 16)
        gate.set()
        assert all(job.result(5) for job in warm)
        wait_until(lambda: _queue_state(pool)[0] == 16)
        gate.clear()
        jobs = [pool.submit(gate.wait, 5) for _ in range(16)]
        wait_until(lambda: pool.statistics().busy == 16)  # all at once, none started anew
        assert check_books(pool).workers == 16
        gate.set()
        assert all(job.result(5) for job in jobs)


def test_idle_threads_count_as_room_even_before_they_are_woken() -> None:
    gate = threading.Event()
    with ThreadPool(workers=2, queue_size=0) as pool:
        started = [pool.submit(gate.wait, 5) for _ in range(2)]
        gate.set()
        assert all(job.result(5) for job in started)
        wait_until(lambda: _queue_state(pool)[0] == 2)
        gate.clear()
        jobs = [pool.submit_nowait(gate.wait, 5) for _ in range(2)]  # one idle thread each
        with pytest.raises(QueueFull):
            pool.submit_nowait(gate.wait, 5)
        gate.set()
        assert all(job.result(5) for job in jobs)
    assert check_books(pool).rejected == 1


def test_a_cancelled_jobs_callbacks_run_outside_the_pools_lock() -> None:
    """cancel() ran the future's done-callbacks under the pool's lock: a callback that looked
    at the pool (or submitted to it) deadlocked."""
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=2) as pool:
        running = pool.submit(gate.wait, 5)
        wait_until(lambda: pool.statistics().busy == 1)
        queued = pool.submit(double, 1)
        seen: list[int] = []
        queued.add_done_callback(lambda job: seen.append(pool.statistics().cancelled))
        assert queued.cancel() and queued.cancel()  # idempotent
        assert seen == [1]
        follow_up = pool.submit(double, 2)  # its room is free again
        gate.set()
        assert (running.result(5), follow_up.result(5)) == (True, 4)
    s = check_books(pool)
    assert (s.cancelled, s.succeeded) == (1, 2)


# ---------------------------------------------------------------- async def code


async def test_async_with_shuts_down_while_the_loop_runs_on() -> None:
    """``with ThreadPool()`` in ``async def`` code raised at exit and told the user to "await
    the asynchronous form", which did not exist.  ``async with`` waits for the threads while
    the loop runs: here the running call can only finish because a task opens its gate
    during the shutdown."""
    gate = threading.Event()

    async def open_gate_later() -> None:
        await asyncio.sleep(0.01)
        gate.set()

    async with ThreadPool(workers=1, name="aio") as pool:
        job = pool.submit_nowait(gate.wait, 5)
        opener = asyncio.create_task(open_gate_later())
    assert job.result(0) is True, "the loop was blocked while the pool shut down"
    await opener
    s = check_books(pool)
    assert (s.closed, s.workers, s.succeeded) == (True, 0, 1)


async def test_plain_with_in_async_code_says_what_to_use_and_changes_nothing() -> None:
    pool = ThreadPool(workers=1, name="mixed")
    with (
        pytest.raises(
            RuntimeError,
            match=r"ThreadPool\.shutdown\(\) would block the event loop .*"
            r"`async with ThreadPool\(\.\.\.\)`, or `await pool\.shutdown_async\(\.\.\.\)`",
        ),
        pool,
    ):
        await asyncio.wrap_future(pool.submit_nowait(double, 1))
    assert not pool.closed  # refused before it changed anything: still usable
    assert await asyncio.wrap_future(pool.submit_nowait(double, 2)) == 4
    assert await pool.shutdown_async() == []
    assert check_books(pool).workers == 0


async def test_shutdown_async_cancel_and_timeout() -> None:
    release = threading.Event()
    pool = ThreadPool(workers=1, queue_size=5, name="slow")
    running = pool.submit_nowait(release.wait, 5)
    queued = [pool.submit_nowait(double, i) for i in range(3)]
    await asyncio.to_thread(wait_until, lambda: pool.statistics().busy == 1)
    with pytest.raises(TimeoutError, match="threads cannot be interrupted"):
        await pool.shutdown_async(cancel=True, timeout=0.01)
    assert all(isinstance(job.exception(0), JobHandedBack) for job in queued)
    release.set()
    handed = await pool.shutdown_async()  # a later shutdown waits for the call
    assert [h.job for h in handed] == queued
    assert running.result(0) is True
    assert await pool.shutdown_async() == handed  # idempotent
    s = check_books(pool)
    assert (s.handed_back, s.succeeded, s.workers) == (3, 1, 0)


async def test_a_cancelled_shutdown_async_hands_back_and_still_waits_for_the_threads() -> None:
    release = threading.Event()
    pool = ThreadPool(workers=1, queue_size=5)
    running = pool.submit_nowait(release.wait, 5)
    queued = pool.submit_nowait(double, 1)
    await asyncio.to_thread(wait_until, lambda: pool.statistics().busy == 1)
    stopping = asyncio.create_task(pool.shutdown_async())  # a drain...
    await asyncio.sleep(0.01)
    stopping.cancel()  # ...cancelled: it takes the cancel path
    await asyncio.sleep(0.01)
    assert not stopping.done()  # the running call has not returned: it waits for it
    assert isinstance(queued.exception(0), JobHandedBack)
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    assert running.result(0) is True
    s = check_books(pool)
    assert (s.workers, s.handed_back, s.closed) == (0, 1, True)


# ---------------------------------------------------------------- misuse that used to pass silently


async def _async_double(x: int) -> int:
    return 2 * x


class _Awaitable:
    def __await__(self) -> Any:
        yield
        return 1


def test_async_functions_are_refused_and_awaitables_fail_their_job() -> None:
    """``submit(async_fn)`` used to return an unawaited coroutine as the job's result."""
    import functools
    import gc
    import warnings

    with ThreadPool(workers=1, name="sync") as pool:
        with pytest.raises(TypeError, match=r"_async_double is an async function: .*WorkerPool"):
            pool.submit(_async_double, 1)
        with pytest.raises(TypeError, match="is an async function"):
            pool.submit_nowait(_async_double, 1)
        with pytest.raises(TypeError, match="is an async function"):
            pool.map(_async_double, [1])
        assert pool.statistics().submitted == 0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            job = pool.submit(functools.partial(_async_double, 1))  # not seen at submit...
            with pytest.raises(
                TypeError, match=r"returned <coroutine .*an awaitable.*asyncio\.run"
            ):
                job.result(5)  # ...but its coroutine is refused, and closed, not leaked
            awaitable = pool.submit(_Awaitable)
            with pytest.raises(TypeError, match="an awaitable"):
                awaitable.result(5)
            del job
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]
        assert pool.submit(double, 2).result(5) == 4
    s = check_books(pool)
    assert (s.failed, s.succeeded) == (2, 1)


def test_a_users_set_result_set_exception_or_set_running_is_refused() -> None:
    """A user's ``set_result()`` on a queued job used to be accepted; the worker then died on
    ``set_running_or_notify_cancel()`` and the job's thread was lost."""
    gate = threading.Event()
    with ThreadPool(workers=1, queue_size=5, name="owner") as pool:
        running = pool.submit(gate.wait, 5)
        wait_until(lambda: pool.statistics().busy == 1)
        queued = pool.submit(double, 21)
        for job in (running, queued):
            with pytest.raises(cf.InvalidStateError, match=r"pool 'owner'.*job\.cancel\(\)"):
                job.set_result("mine")
            with pytest.raises(cf.InvalidStateError, match="sets a job's state and outcome"):
                job.set_exception(ValueError("mine"))
            with pytest.raises(cf.InvalidStateError, match="set_running_or_notify_cancel"):
                job.set_running_or_notify_cancel()
        gate.set()
        assert (running.result(5), queued.result(5)) == (True, 42)
        s = check_books(pool)
        assert (s.workers, s.succeeded) == (1, 2)


def test_an_idle_worker_thread_waits_in_its_own_method() -> None:
    """For task dumps: an idle thread is inside ``ThreadPool._wait_for_job``, and a running
    call is made from ``_Worker._attempt`` (under ``_Worker.run``)."""
    import sys

    def stack(thread: threading.Thread) -> list[str]:
        assert thread.ident is not None
        frame: Any = sys._current_frames()[thread.ident]
        names = []
        while frame is not None:
            names.append(frame.f_code.co_qualname)
            frame = frame.f_back
        return names

    gate = threading.Event()
    with ThreadPool(workers=2) as pool:
        pool.submit(double, 1).result(5)
        (idle,) = [w.thread for w in pool._workers.values() if w.thread is not None]
        wait_until(lambda: "ThreadPool._wait_for_job" in stack(idle))
        assert stack(idle).index("ThreadPool._wait_for_job") < stack(idle).index("_Worker.run")
        job = pool.submit(gate.wait, 5)
        wait_until(lambda: pool.statistics().busy == 1)
        (busy,) = [w.thread for w in pool._workers.values() if w.job is job and w.thread]
        wait_until(lambda: "Event.wait" in stack(busy))
        names = stack(busy)
        assert names[names.index("Event.wait") + 1] == "_Worker._attempt"
        assert "ThreadPool._wait_for_job" not in names
        gate.set()
        assert job.result(5) is True
