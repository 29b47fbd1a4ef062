"""poolkit.ProcessPool: worker processes that can really be stopped.

The jobs the workers run are in ``tests/process_jobs.py`` (a light module: a worker imports it to
unpickle its job).  A test that runs jobs ends by checking the books (the accounting identity,
nothing queued or running, no worker process up) and, where it saw worker pids, that each of
those processes is gone: the pool's ``shutdown`` returns only once they have exited and been
reaped.  Waits are bounded by real-time limits that a loaded CI machine meets with room to spare.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import itertools
import json
import math
import multiprocessing
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from multiprocessing import forkserver
from pathlib import Path
from typing import Any, Literal, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from poolkit import (
    JobHandedBack,
    NotPicklable,
    Outcome,
    PoolClosed,
    ProcessJob,
    ProcessPool,
    ProcessPoolStatistics,
    QueueFull,
    RetryPolicy,
    UnstartedJob,
    WorkerCrashed,
)
from poolkit._leaks import _noleaks

from . import process_jobs as pj
from .pool_checks import check_process_books as check_books
from .pool_checks import settle_until

# Worker processes are found, and their state read, in /proc; and the tests assume the fork
# server, the default start method on Linux only.
pytestmark = pytest.mark.skipif(
    not _noleaks._HAS_PROCFS,
    reason="worker processes are read from Linux's /proc; forkserver is the default only there",
)

ROOT = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GRACE = 0.2  # kill_grace: the jobs here never catch SIGTERM, so this only bounds a test's wait


# ----------------------------------------------------------------------- helpers


def wait_until(predicate: Callable[[], object], limit: float = 10.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


def process_state(pid: int) -> str | None:
    """The state letter of process ``pid`` (``R``, ``S``, ``Z``...), or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has exited: an orphan's may wait for init to reap it)."""
    state = process_state(pid)
    return state is not None and state not in "ZX"


def gone(pid: int) -> bool:
    """Whether ``pid`` has exited *and been reaped* (not even a zombie is left)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def live_children(parent: int) -> list[int]:
    """The processes of ``parent`` that run now (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] not in "ZX":
            found.append(int(entry))
    return found


def forkserver_pid() -> int | None:
    """The fork server's pid (None until it runs): with ``"forkserver"``, the parent of every
    worker process."""
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)
    assert pid is None or isinstance(pid, int)
    return pid


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def check_closed(pool: ProcessPool, pids: Iterable[int] = ()) -> ProcessPoolStatistics:
    """The books of a pool that was shut down: nothing left anywhere, and every worker process
    in ``pids`` exited and reaped."""
    s = check_books(pool)
    assert (s.closed, s.queued, s.running, s.busy, s.workers, s.worker_pids) == (
        True,
        0,
        0,
        0,
        0,
        (),
    ), s
    left = [p for p in pids if not gone(p)]
    assert not left, f"worker processes still there after shutdown: {left}"
    return s


def counting(counter: Counter[int], key: int) -> Callable[[object], None]:
    """A done-callback that counts its calls in ``counter[key]``."""
    return lambda _: counter.update([key])


async def coroutine_function() -> None:
    pass


# ----------------------------------------------------------------------- basics


def test_submit_gives_a_concurrent_future_with_the_result_or_the_error() -> None:
    with ProcessPool(workers=2, name="basics") as pool:
        job = pool.submit(pj.add, 1, 2, c=3)
        assert isinstance(job, cf.Future) and isinstance(job, ProcessJob)
        assert job.result(timeout=10) == 6
        assert (job.fn, job.args, job.kwargs) == (pj.add, (1, 2), {"c": 3})
        assert not job.cancel() and not job.cancelled()  # finished: too late
        with pytest.raises(cf.InvalidStateError, match=r"job\.cancel\(\)"):
            job.set_result(7)
        failing = pool.submit(pj.raise_boom, "bad input")
        with pytest.raises(pj.Boom, match="bad input") as info:
            failing.result(timeout=10)
        cause = info.value.__cause__
        assert type(cause).__name__ == "RemoteTraceback" and "in raise_boom" in str(cause)
        with pytest.raises(TypeError, match=r"result .* could not be pickled .* plain data"):
            pool.submit(pj.return_unpicklable).result(timeout=10)
        with pytest.raises(RuntimeError, match=r"the job raised Boom: .* could not be sent back"):
            pool.submit(pj.raise_unpicklable).result(timeout=10)
        pids = set(pool.worker_pids)
        assert pool.submit(pj.double, 5).result(timeout=10) == 10  # an error is one job's
    s = check_closed(pool, pids)
    assert (s.submitted, s.succeeded, s.failed, s.crashed, s.killed) == (5, 2, 3, 0, 0)


@pytest.mark.parametrize("chunksize", [1, "auto", 7])
def test_map_ordered_unordered_and_outcomes(chunksize: int | Literal["auto"]) -> None:
    items = list(range(300))
    tasks = [("raise" if i % 10 == 3 else "ok", 0, i) for i in range(100)]
    with ProcessPool(workers=2) as pool:
        assert list(pool.map(pj.double, items, chunksize=chunksize)) == [2 * x for x in items]
        unordered = list(pool.map(pj.double, iter(items), ordered=False, chunksize=chunksize))
        assert sorted(unordered) == [2 * x for x in items]
        outcomes = list(pool.map(pj.act, tasks, outcomes=True, chunksize=chunksize))
    assert [o.item for o in outcomes] == tasks
    for o in outcomes:
        assert isinstance(o, Outcome)
        if o.item[0] == "ok":
            assert (o.ok, o.value, o.error) == (True, o.item, None)
        else:
            assert not o.ok and o.value is None
            assert isinstance(o.error, pj.Boom) and o.error.args == (o.item,)
    s = check_closed(pool)
    assert (s.submitted, s.succeeded, s.failed) == (700, 690, 10)


def test_chunks_run_whole_on_one_worker_and_auto_chunks_grow() -> None:
    with ProcessPool(workers=2, chunksize=50) as pool:
        pids = list(pool.map(pj.pid, range(200)))  # the pool's chunksize
        assert all(len(set(pids[k : k + 50])) == 1 for k in range(0, 200, 50)), pids
        pids = list(pool.map(pj.pid, range(200), chunksize=20))
        assert all(len(set(pids[k : k + 20])) == 1 for k in range(0, 200, 20)), pids
        # "auto": a few one-item chunks until the time per call is measured, then chunks of
        # about 10 ms of work (thousands of these calls): the worker changes only a few times.
        pids = list(pool.map(pj.pid, range(20_000), chunksize="auto"))
        changes = sum(a != b for a, b in itertools.pairwise(pids))
        assert len(pids) == 20_000 and changes < 40, changes
    check_closed(pool)


def test_map_raises_the_first_error_and_stops_reading_its_input() -> None:
    read: list[int] = []

    def tasks() -> Iterator[tuple[str, int, int]]:
        for i in range(1000):
            read.append(i)
            yield ("raise" if i == 3 else "sleep", 20, i)

    results = []
    with ProcessPool(workers=2) as pool:
        with pytest.raises(pj.Boom) as info:  # noqa: PT012 - the loop is the call under test
            for r in pool.map(pj.act, tasks(), chunksize=1):
                results.append(r)
        assert info.value.args == (("raise", 20, 3),)
        assert results == [("sleep", 20, i) for i in range(3)]
        assert len(read) <= 12, "map() read on after its first failure"
        wait_until(lambda: pool.statistics().running == 0)
        s = check_books(pool)
        assert s.submitted <= 12 and s.failed == 1
        assert pool.submit(pj.double, 4).result(timeout=10) == 8  # the pool goes on
    check_closed(pool)


def test_fail_fast_stops_queued_and_running_jobs_and_with_raises_the_failure() -> None:
    pool = ProcessPool(workers=2, queue_size=4, fail_fast=True, kill_grace=GRACE)
    jobs: dict[str, Any] = {}

    def use_pool() -> None:
        with pool:
            jobs["slow"] = slow = pool.submit(pj.sleep_then, 30)
            wait_until(slow.running)
            jobs["bad"] = bad = pool.submit(pj.raise_after, 0.5, "first")
            wait_until(bad.running)
            jobs["pids"] = set(pool.worker_pids)
            jobs["queued"] = [pool.submit(pj.double, i) for i in range(2)]
            wait_until(lambda: bad.done() and slow.done())

    with pytest.raises(pj.Boom, match="first"):
        use_pool()
    assert jobs["slow"].cancelled() and all(q.cancelled() for q in jobs["queued"])
    assert isinstance(jobs["bad"].exception(), pj.Boom)
    s = check_closed(pool, jobs["pids"])
    assert (s.failed, s.cancelled, s.killed, s.succeeded) == (1, 3, 1, 0)


async def test_async_api_submit_map_and_async_iterables() -> None:
    async def numbers(n: int) -> AsyncIterator[int]:
        for i in range(n):
            if i % 10 == 0:
                await asyncio.sleep(0)
            yield i

    async with ProcessPool(workers=2, queue_size=2) as pool:
        assert await pool.submit(pj.double, 21) == 42
        assert [r async for r in pool.map(pj.double, range(50))] == [2 * i for i in range(50)]
        got = [r async for r in pool.map(pj.double, numbers(30), ordered=False, chunksize=4)]
        assert sorted(got) == [2 * i for i in range(30)]
        tasks = [("ok", 0, 1), ("raise", 0, 2)]
        outcomes = [o async for o in pool.map(pj.act, tasks, outcomes=True)]
        assert [o.ok for o in outcomes] == [True, False]
        # On the loop's thread submit never blocks: past queue_size, jobs wait in line.
        jobs = [pool.submit(pj.sleep_then, 0.1, i) for i in range(8)]
        assert check_books(pool).queued >= 4
        assert await asyncio.gather(*jobs) == list(range(8))
        with pytest.raises(TypeError, match="async for"):
            iter(pool.map(pj.double, numbers(3)))
        with pytest.raises(RuntimeError, match="would block the event loop"):
            pool.shutdown()
        pids = set(pool.worker_pids)
    s = check_closed(pool, pids)
    assert (s.succeeded, s.failed) == (1 + 50 + 30 + 1 + 8, 1)


def test_statistics_show_live_workers_and_count_crashes_and_kills() -> None:
    with ProcessPool(workers=2, timeout=0.5, kill_grace=GRACE, name="stats") as pool:
        wait_until(lambda: len(pool.worker_pids) == 2)  # workers start with the pool
        s = check_books(pool)
        assert (s.workers, s.idle, s.target_workers, s.name) == (2, 2, 2, "stats")
        assert s.start_method == "forkserver"
        first = set(s.worker_pids)
        assert all(alive(p) and parent_of(p) == forkserver_pid() for p in first)
        assert repr(pool) == "<ProcessPool 'stats' workers=2/2 busy=0 queued=0 closed=False>"
        ran_on = {pool.submit(pj.pid).result(timeout=10) for _ in range(6)}
        assert ran_on <= first  # the pids are those of the processes that run the jobs

        with pytest.raises(WorkerCrashed) as info:
            pool.submit(pj.crash, "SIGKILL").result(timeout=10)
        crashed = info.value.pid
        assert crashed in first and (info.value.signal, info.value.exitcode) == (9, None)
        with pytest.raises(TimeoutError, match=r"ran past the timeout of 0\.5 s"):
            pool.submit(pj.sleep_then, 30).result(timeout=10)
        running = pool.submit(pj.sleep_then, 30)
        wait_until(running.running)
        assert running.cancel()
        wait_until(lambda: pool.statistics().killed == 2 and len(pool.worker_pids) == 2)
        s = check_books(pool)
        assert (s.crashed, s.killed, s.recycled, s.timed_out, s.cancelled) == (1, 2, 0, 1, 1)
        assert gone(crashed) and crashed not in s.worker_pids
        assert pool.submit(pj.pid).result(timeout=10) in s.worker_pids
        seen = first | set(s.worker_pids)
    s = check_closed(pool, seen)
    assert (s.crashed, s.killed, s.recycled) == (1, 2, 0)  # a drain's exits are not kills


def test_submit_nowait_raises_queue_full_while_submit_waits_for_room() -> None:
    done: list[ProcessJob[int]] = []
    with ProcessPool(workers=1, queue_size=1, kill_grace=GRACE) as pool:
        running = pool.submit(pj.sleep_then, 30)
        wait_until(running.running)
        queued = pool.submit_nowait(pj.double, 1)
        with pytest.raises(QueueFull, match=r"the queue of pool is full \(1 job waiting\)"):
            pool.submit_nowait(pj.double, 2)
        blocked = threading.Thread(target=lambda: done.append(pool.submit(pj.double, 3)))
        blocked.start()
        time.sleep(0.1)
        assert blocked.is_alive(), "submit() did not wait for room in a full queue"
        s = check_books(pool)
        assert (s.rejected, s.submitted, s.queued, s.running) == (1, 2, 1, 1)
        assert running.cancel()
        blocked.join(10)
        assert done[0].result(timeout=10) == 6 and queued.result(timeout=10) == 2
    s = check_closed(pool)
    assert (s.rejected, s.submitted, s.succeeded, s.cancelled) == (1, 3, 2, 1)


def test_queue_size_0_hands_a_job_to_an_idle_worker() -> None:
    with ProcessPool(workers=1, queue_size=0, kill_grace=GRACE) as pool:
        assert pool.submit(pj.double, 2).result(timeout=10) == 4  # no room to wait: handed over
        running = pool.submit(pj.sleep_then, 30)
        wait_until(running.running)
        with pytest.raises(QueueFull, match=r"\(0 jobs waiting\)"):
            pool.submit_nowait(pj.double, 3)
        assert running.cancel()
        wait_until(lambda: pool.statistics().killed == 1 and len(pool.worker_pids) == 1)
        assert pool.submit_nowait(pj.double, 4).result(timeout=10) == 8
    s = check_closed(pool)
    assert (s.succeeded, s.cancelled, s.rejected) == (2, 1, 1)


def test_a_worker_that_cannot_start_fails_its_job_and_the_pool_recovers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoRoom:  # what starting a process does when the system is out of descriptors
        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

        def start(self) -> None:
            raise OSError(24, "Too many open files")

    pool = ProcessPool(workers=1)
    monkeypatch.setattr(pool._ctx, "Process", NoRoom)
    with pytest.raises(WorkerCrashed, match=r"could not start.*Too many open files"):
        pool.submit(pj.double, 1).result(timeout=10)
    monkeypatch.undo()
    assert pool.submit(pj.double, 2).result(timeout=10) == 4
    pids = set(pool.worker_pids)
    pool.shutdown()
    s = check_closed(pool, pids)
    assert (s.failed, s.succeeded) == (1, 1)


def test_the_initializer_runs_once_in_each_worker_and_its_failure_fails_the_jobs() -> None:
    with ProcessPool(
        workers=2, max_jobs_per_worker=4, initializer=pj.set_tag, initargs=("t",)
    ) as pool:
        tags = list(pool.map(pj.get_tag, range(20), chunksize=1))
    assert {tuple(t) for t, _ in tags} == {("t",)}  # once per process, recycled ones too
    assert len({p for _, p in tags}) >= 5
    with ProcessPool(workers=1, initializer=pj.raise_boom, initargs=("no init",)) as pool:
        with pytest.raises(WorkerCrashed, match=r"exited before it was ready .*an initializer"):
            pool.submit(pj.double, 1).result(timeout=10)
        assert pool.statistics().workers == 0
    s = check_closed(pool)
    assert (s.failed, s.succeeded) == (1, 0)


def test_retries_run_in_a_fresh_exchange_and_a_crash_is_retried_too() -> None:
    policy = RetryPolicy.attempts(3, initial=0.01, maximum=0.02)
    with ProcessPool(workers=2, retry=policy) as pool:
        crashing = pool.submit(pj.crash, "exit", 4)
        raising = pool.submit(pj.raise_boom, "again")
        fine = pool.submit(pj.double, 2)
        with pytest.raises(WorkerCrashed, match="exited with code 4"):
            crashing.result(timeout=10)
        with pytest.raises(pj.Boom, match="again"):
            raising.result(timeout=10)
        assert fine.result(timeout=10) == 4
    s = check_closed(pool)
    assert (s.submitted, s.failed, s.succeeded, s.retried, s.crashed) == (3, 2, 1, 4, 3)


def test_everything_raises_pool_closed_after_shutdown() -> None:
    pool = ProcessPool(workers=1)
    assert pool.submit(pj.double, 1).result(timeout=10) == 2
    pids = set(pool.worker_pids)
    assert pool.shutdown() == []
    assert pool.shutdown(cancel=True) == []  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: pool.submit(pj.double, 1),
        lambda: pool.submit_nowait(pj.double, 1),
        lambda: pool.map(pj.double, [1]),
    ]
    for call in calls:
        with pytest.raises(PoolClosed, match="pool is shut down; it accepts no more jobs"):
            call()
    check_closed(pool, pids)
    never_started = ProcessPool(workers=1)
    assert never_started.shutdown() == []
    with pytest.raises(PoolClosed):
        never_started.submit(pj.double, 1)
    assert check_books(never_started).submitted == 0


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"workers": 0}, ValueError, "workers must be >= 1, got 0"),
        ({"workers": 1.5}, TypeError, "workers must be an int, got 1.5"),
        ({"queue_size": -1}, ValueError, "queue_size must be >= 0, got -1"),
        ({"chunksize": 0}, ValueError, "chunksize must be >= 1, got 0"),
        ({"chunksize": "big"}, TypeError, "chunksize must be an int, got 'big'"),
        ({"start_method": "nope"}, ValueError, "start_method must be one of .*got 'nope'"),
        (
            {"kill_grace": -1},
            ValueError,
            "kill_grace must be a finite number of seconds >= 0, got -1",
        ),
        ({"kill_grace": math.inf}, ValueError, "kill_grace must be a finite .*, got inf"),
        ({"kill_grace": None}, TypeError, "kill_grace must be a number of seconds, got None"),
        ({"kill_grace": "1"}, TypeError, "kill_grace must be a number of seconds.*got '1'"),
        ({"max_memory": 0}, ValueError, "max_memory must be >= 1, got 0"),
        ({"max_memory": 1.5e9}, TypeError, "max_memory must be an int, got 1500000000.0"),
        ({"max_jobs_per_worker": 0}, ValueError, "max_jobs_per_worker must be >= 1, got 0"),
        ({"timeout": 0}, ValueError, "timeout must be > 0 seconds or None, got 0"),
        ({"timeout": -1}, ValueError, "timeout must be >= 0 seconds or None, got -1"),
        ({"initializer": 5}, TypeError, "initializer must be callable or None, got 5"),
        ({"initargs": [1]}, TypeError, r"initargs must be a tuple, got \[1\]"),
        ({"fail_fast": 1}, TypeError, "fail_fast must be a bool, got 1"),
        ({"name": 3}, TypeError, "name must be a str or None, got 3"),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_the_value(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ProcessPool(**options)


def test_bad_arguments_to_submit_and_map_are_refused_at_once() -> None:
    pool = ProcessPool(workers=1)
    with pytest.raises(ValueError, match="chunksize must be >= 1, got 0"):
        pool.map(pj.double, [1], chunksize=0)
    with pytest.raises(TypeError, match=r"map.. needs an iterable or an async iterable, got 5"):
        pool.map(pj.double, 5)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="fn must be callable, got 5"):
        pool.submit(5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="coroutine_function is an async function"):
        pool.submit(coroutine_function)
    assert check_books(pool).submitted == 0
    assert pool.shutdown() == []


# ----------------------------------------------------------------------- crashes and timeouts

KINDS = ["raise", "exit", "SIGKILL", "SIGSEGV", "sleep"]


def fuzz_tasks(seed: int, n: int) -> list[tuple[str, int, int]]:
    """``n`` tasks for :func:`process_jobs.act`; a random tenth fail: they raise, crash their
    worker (an exit code or a signal) or run past the pool's timeout."""
    rng = random.Random(seed)
    tasks = [("ok", 0, i) for i in range(n)]
    for i in rng.sample(range(n), n // 10):
        kind = rng.choices(KINDS, weights=[44, 22, 12, 12, 10])[0]
        arg = rng.randrange(1, 120) if kind == "exit" else 5000 if kind == "sleep" else 0
        tasks[i] = (kind, arg, i)
    return tasks


def check_fuzz_outcome(task: tuple[str, int, int], value: Any, error: BaseException | None) -> None:
    kind, arg, _ = task
    if kind == "ok":
        assert error is None and value == task, (task, error)
    elif kind == "raise":
        assert isinstance(error, pj.Boom) and error.args == (task,), (task, error)
    elif kind == "sleep":
        assert isinstance(error, TimeoutError), (task, error)
    else:
        assert isinstance(error, WorkerCrashed), (task, error)
        assert "while running this job" in str(error)
        if kind == "exit":
            assert (error.exitcode, error.signal) == (arg, None), (task, error)
        else:
            assert (error.exitcode, error.signal) == (None, getattr(signal, kind)), (task, error)


class Sampler:
    """Samples a pool while it runs: the worker pids it shows, and the worker processes that
    really run (children of the fork server), never more than ``workers``."""

    def __init__(self, pool: ProcessPool, workers: int) -> None:
        self.pool = pool
        self.workers = workers
        self.pids: set[int] = set()
        self.most = 0

    def __call__(self) -> None:
        s = check_books(self.pool)
        self.pids.update(s.worker_pids)
        server = forkserver_pid()
        running = [] if server is None else live_children(server)
        self.most = max(self.most, len(running))
        assert len(running) <= self.workers, f"worker processes running: {running}"

    def saw(self, error: BaseException | None) -> None:
        """Note the worker that a crash or a timeout ended (it may have lived between samples)."""
        if isinstance(error, WorkerCrashed):
            assert error.pid is not None
            self.pids.add(error.pid)
        elif isinstance(error, TimeoutError):
            found = re.search(r"its worker process \(pid (\d+)\) was killed", str(error))
            assert found, error
            self.pids.add(int(found[1]))


@pytest.mark.parametrize(("how", "seed"), [("submit", 1), ("map", 2)])
def test_crash_and_timeout_fuzz(how: str, seed: int) -> None:
    tasks = fuzz_tasks(seed, 1000)
    expected = Counter(kind for kind, _, _ in tasks)
    with ProcessPool(workers=1) as warm:  # the fork server runs: its descriptors stay open
        warm.submit(pj.double, 1).result(timeout=10)
    fds = open_fds()
    pool = ProcessPool(workers=2, queue_size=len(tasks), timeout=0.4, kill_grace=GRACE)
    sample = Sampler(pool, 2)
    with pool:
        wait_until(lambda: len(pool.worker_pids) == 2)
        if how == "submit":
            calls: Counter[int] = Counter()
            jobs = [pool.submit(pj.act, task) for task in tasks]
            for i, job in enumerate(jobs):
                job.add_done_callback(counting(calls, i))
            pending: set[cf.Future[Any]] = set(jobs)
            while pending:
                sample()
                _, pending = cf.wait(pending, timeout=0.02)
            for task, job in zip(tasks, jobs, strict=True):
                error = job.exception()
                check_fuzz_outcome(task, None if error else job.result(), error)
                sample.saw(error)
            assert calls == Counter(range(len(tasks))), "a job was resolved twice"
        else:
            outcomes = []
            for k, o in enumerate(pool.map(pj.act, tasks, outcomes=True, chunksize=1)):
                outcomes.append(o)
                check_fuzz_outcome(o.item, o.value, o.error)
                sample.saw(o.error)
                if k % 10 == 0:
                    sample()
            assert [o.item for o in outcomes] == tasks  # each item exactly once, in order
        sample()
    s = check_closed(pool, sample.pids)
    crashes = expected["exit"] + expected["SIGKILL"] + expected["SIGSEGV"]
    assert (s.submitted, s.succeeded, s.timed_out) == (1000, expected["ok"], expected["sleep"])
    assert s.failed == expected["raise"] + crashes
    assert (s.crashed, s.killed, s.cancelled) == (crashes, expected["sleep"], 0)
    assert 1 <= sample.most <= 2
    assert open_fds() == fds, "the pool left descriptors open"
    # A replacement worker still starting when the last sample was taken is not in sample.pids:
    # the fork server, the parent of every worker, must have none left running.
    server = forkserver_pid()
    assert server is not None and alive(server)
    assert live_children(server) == [], "a worker process outlived its pool's shutdown"


def test_crashes_are_reported_right_while_other_code_starts_processes() -> None:
    # multiprocessing.active_children() polls every child Process, as each Process.start() does
    # (so a pool's slots do it to one another): that must not steal a worker's exit status.
    stop = threading.Event()

    def other_code() -> None:
        while not stop.is_set():
            multiprocessing.active_children()
            time.sleep(0.0005)

    with ProcessPool(workers=2, queue_size=100) as pool:
        wait_until(lambda: len(pool.worker_pids) == 2)
        neighbour = threading.Thread(target=other_code)
        neighbour.start()
        try:
            jobs = [pool.submit(pj.crash, "SIGKILL") for _ in range(60)]
            errors = [job.exception(timeout=20) for job in jobs]
        finally:
            stop.set()
            neighbour.join()
    codes = Counter((e.exitcode, e.signal) for e in errors if isinstance(e, WorkerCrashed))
    assert codes == {(None, signal.SIGKILL): 60}
    assert check_closed(pool).crashed == 60


def test_early_flushes_never_put_answers_out_of_step() -> None:
    # Chunks of 60-120 ms, calls of 10-20 ms: the worker's 50 ms flushes fall inside chunks and
    # at their very ends.  An answer taken for the wrong batch would shift results onto the
    # wrong items, or replace the worker (counted as crashed).
    rng = random.Random(7)
    with ProcessPool(workers=2) as pool:
        for _ in range(2):
            tasks = [("sleep", rng.randrange(10, 21), i) for i in range(60)]
            assert list(pool.map(pj.act, tasks, chunksize=6)) == tasks
            jobs = [pool.submit(pj.sleep_then, rng.randrange(45, 56) / 1000, i) for i in range(6)]
            assert [job.result(timeout=10) for job in jobs] == list(range(6))
    s = check_closed(pool)
    assert (s.succeeded, s.failed, s.crashed, s.killed) == (132, 0, 0, 0)


class _Wire:
    """Stands in for the worker's results connection: keeps what is sent, unpickled."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def send_bytes(self, data: bytes) -> None:
        self.sent.append(pickle.loads(data))


def test_the_worker_never_flushes_a_whole_batch_early() -> None:
    # The regression behind test_early_flushes_never_put_answers_out_of_step, made exact: the
    # periodic flush runs after the last call has finished but before end() (a GIL hand-off in
    # that window did it under load on 3.12+).  It must leave the last result to end(), whose
    # message is the only one that can complete a batch.
    from multiprocessing.connection import Connection

    from poolkit._pools._process_child import _Reporter

    wire = _Wire()
    reporter = _Reporter(cast(Connection, wire))
    values: list[Any] = []
    reporter.begin(values, 3)
    values.append("a")
    seen, idle = reporter.tick(-1)
    assert wire.sent[-1][:2] == (0, ["a"]) and not idle  # a partial flush mid-batch
    values.extend(["b", "c"])  # every call done; end() has not run yet
    seen, idle = reporter.tick(seen)
    assert len(wire.sent) == 1, wire.sent  # nothing more: not the whole batch
    reporter.end(123)
    assert wire.sent[-1][:2] == (1, ["b", "c"]) and wire.sent[-1][4] == 123
    assert reporter.tick(seen) == (1, True)  # no batch began since the last tick: it parks
    assert reporter.parked and not reporter.wake.is_set()
    reporter.begin([], 1)  # the next batch wakes it
    assert not reporter.parked and reporter.wake.is_set()
    assert reporter.tick(1) == (2, False)
    assert len(wire.sent) == 2


def test_a_crash_in_a_chunk_fails_that_item_and_the_rest_of_the_chunk_runs_elsewhere() -> None:
    size = 50
    crash_at = {40, 100, 210, 211, 299}  # mid-chunk, first, two in a row, last of a chunk
    items = [(i, i in crash_at, 3.0) for i in range(300)]
    with ProcessPool(workers=2) as pool:
        outcomes = list(pool.map(pj.step, items, outcomes=True, chunksize=size))
        seen = set(pool.worker_pids)
    assert [o.item for o in outcomes] == items  # nothing lost, nothing twice
    lost = 0
    for start in range(0, 300, size):
        chunk = outcomes[start : start + size]
        pid = None  # the worker running this part of the chunk
        for k, o in enumerate(chunk):
            i = start + k
            if i in crash_at:
                error = o.error
                assert isinstance(error, WorkerCrashed), (i, o)
                assert (error.exitcode, error.signal) == (9, None)
                assert "while running this job" in str(error)
                assert pid is None or error.pid == pid
                seen.add(error.pid)  # type: ignore[arg-type]
                # Calls before it in the chunk that finished but were not reported yet died
                # with the worker: a run just before the crash, each saying so.
                j = k - 1
                while j >= 0 and chunk[j].error is not None and start + j not in crash_at:
                    assert isinstance(chunk[j].error, WorkerCrashed)
                    assert "the result was lost" in str(chunk[j].error)
                    assert chunk[j].error.pid == error.pid  # type: ignore[union-attr]
                    lost += 1
                    j -= 1
                pid = None
                crashed_pid = error.pid
            elif o.error is None:
                assert o.value is not None and o.value[0] == i
                if pid is None:
                    pid = o.value[1]
                    if k > 0 and start + k - 1 in crash_at:
                        assert pid != crashed_pid, "the rest of the chunk ran on the dead worker"
                assert o.value[1] == pid, "a chunk's calls ran on two workers with no crash"
    # A worker reports what it has at least every 50 ms: the crash at item 40 came after some
    # 120 ms of calls, so the first of them had been reported and survive it.
    assert all(o.ok for o in outcomes[:10]), outcomes[:10]
    assert sum(not o.ok for o in outcomes) == len(crash_at) + lost
    s = check_closed(pool, seen)
    assert (s.submitted, s.crashed, s.failed) == (300, 5, 5 + lost)
    assert s.succeeded == 300 - 5 - lost


# ----------------------------------------------------------------------- cancellation


def test_cancel_a_queued_job_and_a_running_one_whose_worker_is_replaced() -> None:
    with ProcessPool(workers=1, queue_size=5, kill_grace=GRACE) as pool:
        running = pool.submit(pj.sleep_then, 30)
        wait_until(running.running)
        queued = pool.submit(pj.double, 1)
        (victim,) = pool.worker_pids
        assert queued.cancel() and queued.cancelled()
        started = time.monotonic()
        assert running.cancel() and running.cancelled()
        assert time.monotonic() - started < 1.0, "cancel() waited for the worker"
        with pytest.raises(cf.CancelledError):
            running.result(timeout=0)
        wait_until(lambda: gone(victim))
        assert pool.submit(pj.pid).result(timeout=10) not in (victim,)
        assert queued.cancel()  # again: still cancelled, and not counted twice
        s = check_books(pool)
        assert (s.cancelled, s.killed, s.crashed) == (2, 1, 0)
        seen = set(pool.worker_pids) | {victim}
    check_closed(pool, seen)


def test_a_worker_that_ignores_sigterm_is_killed_after_kill_grace() -> None:
    with ProcessPool(workers=1, timeout=0.3, kill_grace=1.5) as pool:
        job = pool.submit(pj.ignore_sigterm_then_sleep, 30)
        wait_until(job.running)
        (stubborn,) = pool.worker_pids
        with pytest.raises(TimeoutError, match=r"its worker process \(pid \d+\) was killed"):
            job.result(timeout=10)
        # The job failed at its deadline; SIGTERM did nothing, so its worker lives on until the
        # SIGKILL that follows the grace, and only then does a new one start.
        assert not gone(stubborn) and pool.worker_pids == (stubborn,)
        started = time.monotonic()
        wait_until(lambda: gone(stubborn), limit=5)
        assert time.monotonic() - started > 0.5  # (the grace is 1.5 s from the deadline)
        cancelled = pool.submit(pj.ignore_sigterm_then_sleep, 30)
        wait_until(lambda: cancelled.running() and len(pool.worker_pids) == 1)
        (second,) = pool.worker_pids
        assert cancelled.cancel()
        wait_until(lambda: gone(second), limit=5)
        assert pool.submit(pj.double, 3).result(timeout=10) == 6
        seen = {stubborn, second, *pool.worker_pids}
    s = check_closed(pool, seen)
    assert (s.timed_out, s.cancelled, s.killed, s.succeeded) == (1, 1, 2, 1)


def test_cancel_returns_false_once_the_job_finished() -> None:
    with ProcessPool(workers=1) as pool:
        job = pool.submit(pj.double, 1)
        assert job.result(timeout=10) == 2
        assert not job.cancel() and not job.cancelled()
    assert check_closed(pool).cancelled == 0


def test_shutdown_cancel_hands_back_queued_jobs_and_stops_running_ones() -> None:
    pool = ProcessPool(workers=2, queue_size=10, kill_grace=GRACE)
    running = [pool.submit(pj.sleep_then, 30, i) for i in range(2)]
    wait_until(lambda: all(j.running() for j in running))
    queued = [pool.submit(pj.double, i) for i in range(5)]
    pids = set(pool.worker_pids)
    assert len(pids) == 2
    started = time.monotonic()
    handed = pool.shutdown(cancel=True)
    assert time.monotonic() - started < 5
    assert [p for p in pids if not gone(p)] == [], "shutdown returned before its workers exited"
    assert all(isinstance(u, UnstartedJob) for u in handed)
    assert [(u.fn, u.args, u.kwargs, u.job) for u in handed] == [
        (pj.double, (i,), {}, job) for i, job in enumerate(queued)
    ]
    for job in queued:
        with pytest.raises(JobHandedBack, match=r"was shut down .* before this job started"):
            job.result(timeout=0)
    assert all(j.cancelled() for j in running)
    assert pool.handed_back == handed
    s = check_closed(pool, pids)
    assert (s.handed_back, s.cancelled, s.killed, s.succeeded) == (5, 2, 2, 0)


def test_a_drain_that_runs_out_of_time_stops_what_is_left() -> None:
    pool = ProcessPool(workers=1, queue_size=3, kill_grace=GRACE)
    running = pool.submit(pj.sleep_then, 30)
    wait_until(running.running)
    queued = [pool.submit(pj.double, i) for i in range(3)]
    pids = set(pool.worker_pids)
    started = time.monotonic()
    handed = pool.shutdown(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 5
    assert [u.job for u in handed] == queued
    assert running.cancelled()
    s = check_closed(pool, pids)
    assert (s.handed_back, s.cancelled, s.killed) == (3, 1, 1)


async def test_cancelling_the_task_that_awaits_a_job_cancels_the_job() -> None:
    async with ProcessPool(workers=1, queue_size=2, kill_grace=GRACE) as pool:

        async def run(seconds: float) -> Any:
            return await pool.submit(pj.sleep_then, seconds)

        running = asyncio.create_task(run(30))
        await settle_until(lambda: pool.statistics().running == 1)
        queued = asyncio.create_task(run(30))
        await settle_until(lambda: pool.statistics().queued == 1)
        (victim,) = pool.worker_pids
        running.cancel()
        queued.cancel()
        for task in (running, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        await settle_until(lambda: pool.statistics().killed == 1)
        s = check_books(pool)
        assert (s.cancelled, s.running, s.queued) == (2, 0, 0)
        assert await pool.submit(pj.pid) != victim  # a new worker took its place
        seen = {victim, *pool.worker_pids}
    s = check_closed(pool, seen)
    assert (s.cancelled, s.killed, s.succeeded) == (2, 1, 1)


SCRIPT = """
import json, time
from poolkit import ProcessPool
from tests import process_jobs as pj

if __name__ == "__main__":
    with ProcessPool(workers=2, queue_size=4, kill_grace=0.2) as pool:
        jobs = [pool.submit(pj.sleep_then, 60) for _ in range(4)]
        while pool.statistics().busy < 2 or len(pool.worker_pids) < 2:
            time.sleep(0.01)
        print(json.dumps(list(pool.worker_pids)), flush=True)
        time.sleep(60)
"""


def start_script(tmp_path: Path) -> tuple[subprocess.Popen[str], list[int]]:
    """Run :data:`SCRIPT` in a new Python; return it and its workers' pids once both run a job."""
    script = tmp_path / "uses_a_pool.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the script failed before its pool ran: {err}")
    pids = json.loads(line)
    assert len(pids) == 2 and all(alive(p) for p in pids)
    return proc, pids


def reap(proc: subprocess.Popen[str], processes: list[int]) -> None:
    """Make sure the script and what it started are gone when the test ends, whatever happened:
    kill those of ``processes`` still running (the test fails on its own if they should not)."""
    for pid in processes:
        if alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_keyboard_interrupt_in_with_stops_every_worker(tmp_path: Path) -> None:
    proc, pids = start_script(tmp_path)
    try:
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert time.monotonic() - started < 5, "the pool took too long to stop on Ctrl-C"
        assert proc.returncode != 0 and "KeyboardInterrupt" in err, err
        assert [p for p in pids if alive(p)] == [], "a worker outlived its pool's process"
    finally:
        reap(proc, pids)


def test_workers_exit_by_themselves_when_their_pools_process_is_killed(tmp_path: Path) -> None:
    proc, pids = start_script(tmp_path)
    helpers = live_children(proc.pid)  # the script's fork server and resource tracker
    try:
        proc.kill()
        assert proc.wait(10) == -signal.SIGKILL
        wait_until(lambda: not any(alive(p) for p in pids), limit=5.0)
    finally:
        reap(proc, pids + helpers)


# ----------------------------------------------------------------------- pickling


def test_what_cannot_be_pickled_is_refused_at_submit_naming_it_and_the_fix() -> None:
    def local(x: int) -> int:
        return x

    with ProcessPool(workers=1) as pool, open(__file__) as opened:
        f: Any = opened  # what cannot be pickled, passed where an int is due
        assert pool.submit(pj.double, 1).result(timeout=10) == 2
        before = check_books(pool).submitted
        cases: list[tuple[Callable[[], object], str]] = [
            (lambda: pool.submit(lambda: 1), r"the function .*<lambda> .*top level of a module"),
            (
                lambda: pool.submit(local, 1),
                r"the function tests\.test_process_pool\.test_what_cannot_be_pickled.*"
                r"<locals>\.local cannot be sent .*top level of a module",
            ),
            (
                lambda: pool.submit(pj.double, f),
                r"argument 0 of tests\.process_jobs\.double cannot be sent to a worker process: "
                r"<_io\.TextIOWrapper .*a path rather than an open file",
            ),
            (lambda: pool.submit(pj.add, 1, 2, c=f), r"keyword argument c= of .*add .*path"),
            (lambda: pool.submit_nowait(pj.double, f), r"argument 0 of .*double"),
            (lambda: pool.map(lambda x: x, [1]), r"the function .*<lambda>.*top level"),
            (
                lambda: list(pool.map(pj.double, [0, 1, 2, f, 4], chunksize=10)),
                r"map\(\) item 3 cannot be sent .*TextIOWrapper.*path rather than an open file",
            ),
        ]
        for call, message in cases:
            with pytest.raises(NotPicklable, match=message) as info:
                call()
            assert isinstance(info.value, TypeError) and info.value.__cause__ is not None
        assert check_books(pool).submitted == before  # nothing was queued
    assert check_closed(pool).submitted == before


# ----------------------------------------------------------------------- recycling


def test_max_jobs_per_worker_recycles_workers() -> None:
    with ProcessPool(workers=1, max_jobs_per_worker=3) as pool:
        pids = [pool.submit(pj.pid).result(timeout=10) for _ in range(9)]
        assert [len(set(pids[k : k + 3])) for k in (0, 3, 6)] == [1, 1, 1]
        assert len(set(pids)) == 3, pids
        wait_until(lambda: pool.statistics().recycled == 3 and len(pool.worker_pids) == 1)
        assert gone(pids[0]) and gone(pids[3]) and gone(pids[6])
        assert pool.worker_pids[0] not in pids  # the fourth, ready for more
        seen = {*pids, *pool.worker_pids}
    s = check_closed(pool, seen)
    assert (s.recycled, s.crashed, s.killed, s.succeeded) == (3, 0, 0, 9)


def test_max_memory_recycles_a_worker_that_grew() -> None:
    with ProcessPool(workers=1, max_memory=56 * MiB) as pool:
        small = pool.submit(pj.pid).result(timeout=10)
        assert pool.submit(pj.pid).result(timeout=10) == small  # under the limit: kept
        assert pool.submit(pj.hold_memory, 64).result(timeout=10) == small
        wait_until(lambda: pool.statistics().recycled == 1)
        fresh = pool.submit(pj.pid).result(timeout=10)
        assert fresh != small and gone(small)
        assert pool.submit(pj.pid).result(timeout=10) == fresh
    s = check_closed(pool, {small, fresh})
    assert (s.recycled, s.crashed, s.killed) == (1, 0, 0)


# ----------------------------------------------------------------------- start methods


def test_spawn_works_too_and_forkserver_is_the_default_on_linux() -> None:
    default = ProcessPool(workers=1)
    assert default.statistics().start_method == "forkserver"
    default.shutdown()
    with ProcessPool(workers=1, start_method="spawn") as pool:
        assert pool.submit(pj.double, 21).result(timeout=30) == 42
        (worker,) = pool.worker_pids
        assert parent_of(worker) == os.getpid()  # spawned by this process, not a fork server
        assert pool.statistics().start_method == "spawn"
    check_closed(pool, {worker})


# ----------------------------------------------------------------------- stress


def stress_tasks(rng: random.Random, tag: str, n: int, hang: bool) -> list[tuple[str, int, str]]:
    """Short sleeps, some raising, some crashing their worker, and (``hang``) a few running
    past the pool's timeout."""
    tasks = []
    for i in range(n):
        r = rng.random()
        kind = "raise" if r < 0.08 else "exit" if r < 0.12 else "sleep"
        arg = 5 if kind == "exit" else 3000 if hang and r > 0.985 else rng.randrange(0, 15)
        tasks.append((kind, arg, f"{tag}{i}"))
    return tasks


STOPPED = (JobHandedBack, cf.CancelledError)  # what a job gets when the pool stops it


def check_stress_outcome(
    task: tuple[str, int, str], value: Any, error: BaseException | None, chunked: bool
) -> None:
    kind = task[0]
    if error is None:
        assert kind == "sleep" and task[1] < 1000 and value == task, (task, value)
    elif isinstance(error, STOPPED):
        pass
    elif kind == "sleep" and task[1] >= 1000:
        assert isinstance(error, TimeoutError), (task, error)
    elif chunked and isinstance(error, WorkerCrashed) and "the result was lost" in str(error):
        pass  # it finished, in the chunk of a call that then crashed the worker: unreported
    elif kind == "raise":
        assert isinstance(error, pj.Boom) and error.args == (task,), (task, error)
    else:
        assert kind == "exit", (task, error)
        assert isinstance(error, WorkerCrashed) and error.exitcode == 5, (task, error)
        assert "while running this job" in str(error)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    cancel=st.booleans(),
    run_for=st.floats(0.15, 0.6),
    timeout=st.sampled_from([None, 0.3]),
)
# shutdown(cancel=True) in every run, with and without timeouts, whatever hypothesis draws.
@example(seed=11, cancel=True, run_for=0.3, timeout=None)
@example(seed=12, cancel=True, run_for=0.3, timeout=0.3)
def test_stress_maps_submits_cancels_and_a_shutdown(
    seed: int, cancel: bool, run_for: float, timeout: float | None
) -> None:
    rng = random.Random(seed)
    pool = ProcessPool(workers=2, queue_size=3, kill_grace=GRACE, timeout=timeout)
    sample = Sampler(pool, 2)
    hang = timeout is not None
    map_inputs = [stress_tasks(rng, f"m{k}-", 80, hang) for k in range(2)]
    submit_tasks = stress_tasks(rng, "s", 60, hang)
    sizes: list[int | Literal["auto"]] = [1, 4, "auto"]
    chunksizes = [rng.choice(sizes) for _ in range(2)]
    problems: list[BaseException] = []
    map_outcomes: list[list[Outcome[Any, Any]]] = [[], []]
    jobs: list[tuple[tuple[str, int, str], ProcessJob[Any]]] = []
    cancelled_by_us: set[int] = set()
    resolved: Counter[int] = Counter()

    def run_map(k: int) -> None:
        try:
            results = pool.map(
                pj.act,
                map_inputs[k],
                outcomes=True,
                ordered=k == 0,
                chunksize=chunksizes[k],
            )
            for o in results:
                map_outcomes[k].append(o)
        except PoolClosed:
            pass
        except BaseException as e:
            problems.append(e)

    def run_submits() -> None:
        local = random.Random(seed + 1)
        try:
            for task in submit_tasks:
                job = pool.submit(pj.act, task)
                job.add_done_callback(counting(resolved, len(jobs)))
                jobs.append((task, job))
                if local.random() < 0.3:
                    n = local.randrange(len(jobs))
                    if jobs[n][1].cancel():
                        cancelled_by_us.add(n)
                time.sleep(local.random() * 0.01)
        except PoolClosed:
            pass
        except BaseException as e:
            problems.append(e)

    threads = [
        threading.Thread(target=run_map, args=(0,)),
        threading.Thread(target=run_map, args=(1,)),
        threading.Thread(target=run_submits),
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + run_for
    while time.monotonic() < deadline:
        sample()
        time.sleep(0.005)
    sample()
    handed = pool.shutdown(cancel=cancel)
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert not problems, problems
    s = check_closed(pool, sample.pids)

    for k, outcomes in enumerate(map_outcomes):
        items = [o.item for o in outcomes]
        if k == 0:
            assert items == map_inputs[k][: len(items)]  # in order, none twice
        else:
            assert len(set(items)) == len(items) and set(items) <= set(map_inputs[k])
        for o in outcomes:
            check_stress_outcome(
                o.item, o.value, o.error, chunked=chunksizes[k] != 1 and timeout is None
            )
            assert cancel or not isinstance(o.error, STOPPED), o  # a drain runs what it took
    assert all(job.done() for _, job in jobs)
    assert resolved == Counter(range(len(jobs))), "a job was resolved twice (or never)"
    for n, (task, job) in enumerate(jobs):
        if n in cancelled_by_us:
            assert job.cancelled()
            continue
        if job.cancelled():
            assert cancel, f"job {n} was cancelled by a draining shutdown"
            continue
        error = job.exception()
        if isinstance(error, JobHandedBack):
            assert cancel and any(u.job is job for u in handed)
        check_stress_outcome(task, None if error else job.result(), error, chunked=False)
    assert s.handed_back == len(handed)
    assert s.cancelled >= len(cancelled_by_us)
    if not cancel:
        assert s.handed_back == 0
    assert sample.most <= 2
    server = forkserver_pid()  # (None if no worker started yet: cancelled early enough)
    assert server is None or live_children(server) == [], "a worker outlived the shutdown"
