"""ProcessPool and jobs that misbehave: what only a pool of processes meets.

A job's ``StopIteration`` inside a ``map`` chunk, a result the parent cannot unpickle (even one
whose loading raises ``SystemExit``), an exception or result that cannot even be printed, a
function defined where a worker cannot import it, a job stuck in C code holding the GIL when the
pool's process is killed; and ``concurrent.futures.wait()`` on cancelled jobs.  Each test checks
that only the job at fault fails, with an error that says what happened, and that the pool goes
on (or, for the killed parent, that no process is left).  The jobs are in
``tests/process_faults.py``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import functools
import json
import subprocess
import sys
import textwrap
import threading
import time
import types
from collections.abc import Iterator

import pytest

from poolkit import NotPicklable, PoolClosed, ProcessPool, ThreadPool
from poolkit._leaks import _noleaks

from . import process_faults as pf
from . import process_jobs as pj
from .pool_checks import check_process_books
from .test_process_pool import ROOT, alive, reap, wait_until

pytestmark = pytest.mark.skipif(
    not _noleaks._HAS_PROCFS,
    reason="worker processes are read from Linux's /proc; forkserver is the default only there",
)


@contextlib.contextmanager
def one_worker() -> Iterator[ProcessPool]:
    """A pool of one worker, shut down (and its books checked) when the block ends: within the
    test, for the leak check that follows it."""
    with ProcessPool(workers=1, kill_grace=0.2, name="faults") as pool:
        yield pool
    s = check_process_books(pool)
    assert (s.queued, s.running, s.workers) == (0, 0, 0), s


# ----------------------------------------------------------------------- StopIteration


@pytest.mark.parametrize("chunksize", [1, 6])
def test_stop_iteration_in_map_fails_only_its_item(chunksize: int) -> None:
    with one_worker() as pool:
        # (list.extend would take it for the end of the chunk, and run the item again for ever)
        fn = functools.partial(pf.stop_at, bad=3)
        outcomes = list(pool.map(fn, range(8), outcomes=True, chunksize=chunksize))
        assert [o.item for o in outcomes] == list(range(8))
        assert isinstance(outcomes[3].error, StopIteration)
        assert [o.value for o in outcomes if o.item != 3] == [0, 1, 2, 4, 5, 6, 7]
        assert all(o.error is None for o in outcomes if o.item != 3)
        assert isinstance(pool.submit(pf.stop_at, 3, 3).exception(10), StopIteration)
        s = check_process_books(pool)
        assert (s.succeeded, s.failed, s.crashed, s.killed) == (7, 2, 0, 0), s


# ----------------------------------------------------------------------- results and errors


def test_a_result_the_parent_cannot_load_fails_its_calls_and_replaces_the_worker() -> None:
    with one_worker() as pool:
        fn = functools.partial(pf.loads_badly_at, bad=0)
        outcomes = list(pool.map(fn, range(10), outcomes=True, chunksize=10))
        failed = [o.item for o in outcomes if o.error is not None]
        # The message with item 0 could not be read: which calls it held is unknown, so the calls
        # the worker had run fail with it (item 0 first, a run of items from there); the calls it
        # had not started run on the new worker.
        assert failed == list(range(len(failed))) and failed[:1] == [0], outcomes
        for o in outcomes:
            if o.error is None:
                assert o.value == o.item
            else:
                assert isinstance(o.error, RuntimeError), o.error
                assert "could not be unpickled here" in str(o.error)
                assert isinstance(o.error.__cause__, ValueError)
        # The next job runs on a fresh worker: nothing the old one still sent is read as its answer.
        assert pool.submit(pj.double, 21).result(10) == 42
        s = check_process_books(pool)
        assert (s.killed, s.crashed, s.failed, s.succeeded) == (1, 0, len(failed), 11 - len(failed))


def test_a_result_whose_loading_raises_system_exit_fails_the_job() -> None:
    with one_worker() as pool:
        # (a BaseException in the slot thread must not end it: the job would never be settled)
        error = pool.submit(pf.loads_badly_at, 0, 0, "exit").exception(10)
        assert isinstance(error, RuntimeError) and isinstance(error.__cause__, SystemExit), error
        assert pool.submit(pj.double, 4).result(10) == 8
        s = check_process_books(pool)
        assert (s.failed, s.succeeded, s.killed) == (1, 1, 1), s


def test_an_error_or_result_that_cannot_be_printed_fails_the_job_not_the_worker() -> None:
    with one_worker() as pool:
        before = pool.submit(pj.pid).result(10)
        error = pool.submit(pf.raise_unprintable).exception(10)
        assert isinstance(error, RuntimeError), error
        assert "the job raised Unprintable" in str(error)
        assert "could not be sent back" in str(error)
        error = pool.submit(pf.return_unprintable).exception(10)
        assert isinstance(error, TypeError), error
        assert "<UnprintableResult that cannot be shown: RuntimeError>" in str(error)
        outcomes = list(pool.map(pf.raise_unprintable, range(3), outcomes=True, chunksize=3))
        assert all(isinstance(o.error, RuntimeError) for o in outcomes), outcomes
        assert pool.submit(pj.pid).result(10) == before  # the same worker all along
        s = check_process_books(pool)
        assert (s.crashed, s.killed, s.failed) == (0, 0, 5), s


# ----------------------------------------------------------------------- where a job is found


def test_a_function_from_the_main_of_python_c_is_refused_at_submit() -> None:
    script = textwrap.dedent(
        """
        import poolkit

        def f(x):
            return x

        class Local:
            pass

        attempts = {
            "submit": lambda pool: pool.submit(f, 1).result(),
            "argument": lambda pool: pool.submit(repr, Local()).result(),
            "map": lambda pool: list(pool.map(f, [1, 2])),
            "item": lambda pool: list(pool.map(repr, [1, Local()], chunksize=2)),
        }
        with poolkit.ProcessPool(workers=1) as pool:
            for name, attempt in attempts.items():
                try:
                    attempt(pool)
                except poolkit.NotPicklable as exc:
                    print(name, "refused:", exc)
                else:
                    print(name, "accepted")
            print("abs", pool.submit(abs, -3).result())
            print("submitted", pool.statistics().submitted)
        with poolkit.ProcessPool(workers=1, start_method="fork") as pool:
            print("fork", pool.submit(f, 5).result())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["submit"].startswith("refused: the function __main__.f is defined in the __main__")
    assert lines["map"].startswith("refused: the function __main__.f is defined")
    assert lines["argument"].startswith("refused: an argument of builtins.repr holds an object")
    assert lines["item"].startswith("refused: map() item 0 or a later one holds an object")
    assert "start_method='fork'" in lines["submit"]
    assert (lines["abs"], lines["submitted"], lines["fork"]) == ("3", "1", "5")


def test_a_job_the_worker_cannot_import_fails_with_not_picklable() -> None:
    with one_worker() as pool:
        # A module this process has but a worker cannot import: the job pickles by name, and only
        # the worker can find out.
        name = "poolkit_test_not_on_disk"
        module = types.ModuleType(name)
        exec("def f(x):\n    return x\n", module.__dict__)
        sys.modules[name] = module
        try:
            error = pool.submit(module.f, 1).exception(10)
        finally:
            del sys.modules[name]
        assert isinstance(error, NotPicklable), error
        assert "the worker process could not load the job" in str(error)
        assert "ModuleNotFoundError" in str(error) and name in str(error)
        assert pool.submit(pj.double, 2).result(10) == 4  # the worker is fine
        s = check_process_books(pool)
        assert (s.failed, s.succeeded, s.crashed) == (1, 1, 0), s


# ----------------------------------------------------------------------- concurrent.futures


def test_cf_wait_and_as_completed_see_cancelled_process_jobs() -> None:
    with one_worker() as pool:
        running_job = pool.submit(pj.sleep_then, 30)
        queued_job = pool.submit(pj.sleep_then, 30)
        wait_until(running_job.running)
        assert running_job.cancel() and queued_job.cancel()
        done, not_done = cf.wait([running_job, queued_job], timeout=5)
        assert (done, not_done) == ({running_job, queued_job}, set())
        both = {running_job, queued_job}
        assert set(cf.as_completed(both, timeout=5)) == both
        assert pool.submit(pj.double, 1).result(10) == 2


def test_cf_wait_sees_jobs_the_pool_cancels() -> None:
    with one_worker() as pool:
        jobs = [pool.submit(pj.sleep_then, 30) for _ in range(2)]
        wait_until(jobs[0].running)
        waiter = cf.ThreadPoolExecutor(1)
        try:
            seen = waiter.submit(cf.wait, jobs, 10)
            pool.shutdown(cancel=True)
            done, not_done = seen.result(15)
        finally:
            waiter.shutdown()
        assert (len(done), not_done) == (2, set())


def test_cf_wait_sees_a_cancelled_thread_job() -> None:
    gate = threading.Event()
    with ThreadPool(workers=1) as pool:
        blocker = pool.submit(gate.wait, 10)
        queued = pool.submit(abs, -1)
        assert queued.cancel()
        done, not_done = cf.wait([queued], timeout=5)
        gate.set()
        assert blocker.result(10) is True
    assert (done, not_done) == ({queued}, set())


# ----------------------------------------------------------------------- fail_fast


def test_fail_fast_turns_away_a_blocked_submit_with_the_failure_as_cause() -> None:
    pool = ProcessPool(workers=1, queue_size=0, fail_fast=True)
    pool.submit(pj.raise_after, 0.3, "first")
    with pytest.raises(PoolClosed) as closed:
        pool.submit(pj.double, 1)  # blocks: no room until the first job ends
    assert "stopped after a job failed (fail_fast=True): Boom" in str(closed.value)
    assert isinstance(closed.value.__cause__, pj.Boom)
    with pytest.raises(pj.Boom):  # what `with` raises at the end of its block
        pool.__exit__(None, None, None)
    s = check_process_books(pool)
    assert (s.submitted, s.failed) == (1, 1), s


# ----------------------------------------------------------------------- a parent killed


@pytest.mark.parametrize("start_method", ["forkserver", "spawn"])
def test_workers_die_with_a_killed_parent_even_holding_the_gil(start_method: str) -> None:
    # The worker computes in C without releasing the GIL, so no Python thread of its own can
    # notice that the pool's process is gone: the kernel has to end it (PR_SET_PDEATHSIG).
    script = textwrap.dedent(
        f"""
        import json, os, time
        import poolkit
        from tests import process_faults as pf

        pool = poolkit.ProcessPool(workers=1, start_method={start_method!r})
        job = pool.submit(pf.hold_gil)
        while not (job.running() and pool.worker_pids):
            time.sleep(0.01)
        (worker,) = pool.worker_pids
        with open(f"/proc/{{worker}}/stat") as f:
            parent = int(f.read().rsplit(")", 1)[1].split()[1])
        print(json.dumps([worker, parent]), flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    pids: list[int] = []
    try:
        assert proc.stdout is not None
        worker, parent = pids = json.loads(proc.stdout.readline())
        time.sleep(0.2)  # well inside the C loop
        assert alive(worker)
        proc.kill()
        proc.wait(10)
        wait_until(lambda: not alive(worker), 10)
        if parent != proc.pid:  # the fork server: it ends with the pool's process too
            wait_until(lambda: not alive(parent), 10)
    finally:
        reap(proc, [pid for pid in pids if pid != proc.pid])


# ----------------------------------------------------------------------- a pool that cannot start


@pytest.mark.parametrize("error", [RuntimeError("can't start new thread"), KeyboardInterrupt()])
def test_a_slot_thread_that_cannot_start_closes_the_pool(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    # The second slot's Thread.start() fails (no thread to be had), or a Ctrl-C interrupts it:
    # the pool closes, the first slot's thread and process end, and nothing waits for ever.
    start = threading.Thread.start
    calls = 0

    def failing_start(thread: threading.Thread) -> None:
        nonlocal calls
        if thread.name.startswith("poolkit pool 'faults' worker"):
            calls += 1
            if calls == 2:
                raise error
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    pool = ProcessPool(workers=2, name="faults")
    with pytest.raises(type(error)):
        pool.submit(pj.double, 1)
    monkeypatch.undo()
    s = check_process_books(pool)
    assert (s.closed, s.submitted, s.workers) == (True, 0, 0), s
    assert not [t for t in threading.enumerate() if "'faults'" in t.name]
    assert pool.shutdown(cancel=True) == []  # returns at once
    with pytest.raises(PoolClosed):
        pool.submit(pj.double, 1)


@pytest.mark.parametrize("error", [RuntimeError("can't start new thread"), KeyboardInterrupt()])
def test_a_thread_pool_worker_that_cannot_start_leaves_no_phantom(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    # ThreadPool starts its threads as jobs need them: one that cannot start must not be waited
    # for by shutdown(); the job that asked for it stays queued, and is handed back.
    start = threading.Thread.start

    def failing_start(thread: threading.Thread) -> None:
        if thread.name.startswith("poolkit pool 'faults' worker"):
            raise error
        start(thread)

    pool = ThreadPool(workers=1, name="faults")
    monkeypatch.setattr(threading.Thread, "start", failing_start)
    with pytest.raises(type(error)):
        pool.submit(abs, -1)
    monkeypatch.undo()
    s = pool.statistics()
    assert (s.workers, s.queued) == (0, 1), s
    handed = pool.shutdown(cancel=True, timeout=5)
    assert [job.args for job in handed] == [(-1,)]
    s = pool.statistics()
    assert (s.closed, s.submitted, s.handed_back, s.workers) == (True, 1, 1, 0), s
