"""poolkit.ProcessPool over its life: Ctrl-C at any moment, leaving a map early, how far a map
reads ahead, how soon a killed worker is replaced, and the ``"fork"`` start method.

The process probes are those of ``tests/test_process_pool.py``, the books check is
``tests/pool_checks.py``'s; the jobs are in ``tests/process_jobs.py``.  Waits poll with a
deadline; no child process outlives its test (those a test cannot reach through a pool are
killed in its ``finally``).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from poolkit import ProcessPool, WorkerCrashed
from poolkit._leaks import _noleaks

from . import process_jobs as pj
from .pool_checks import check_process_books as check_books
from .pool_checks import settle_until
from .test_process_pool import (
    GRACE,
    ROOT,
    alive,
    check_closed,
    gone,
    parent_of,
    reap,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not _noleaks._HAS_PROCFS, reason="worker processes are read from Linux's /proc"
)


# ----------------------------------------------------------------------- Ctrl-C at any moment

MARK = "POOLKIT_TEST_CTRL_C"  # in the environment of the script and of every process it starts


def marked(mark: str) -> dict[int, tuple[str, int]]:
    """The processes whose environment holds ``MARK=mark``: pid -> (state letter, parent pid)."""
    needle = f"{MARK}={mark}".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile, or another user's
            continue
        found[int(entry)] = (fields[0], int(fields[1]))
    return found


def running(processes: dict[int, tuple[str, int]]) -> dict[int, tuple[str, int]]:
    return {pid: v for pid, v in processes.items() if v[0] not in "ZX"}


def kill_marked(mark: str) -> None:
    for pid in running(marked(mark)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def interrupt_once(phase: str, delay: float, to_group: bool, mark: str) -> None:
    """Start :func:`process_jobs.interrupted_pool` in ``phase``, send it SIGINT ``delay`` s after
    it printed ``ready`` (to it alone, or to its process group as a terminal's Ctrl-C does), and
    check that it stops at once, and every process it started with it."""
    code = f"from tests import process_jobs as pj; pj.interrupted_pool({phase!r})"
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), MARK: mark},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a program run from a shell
    )
    what = f"phase={phase} delay={delay:.3f} to_group={to_group}"
    try:
        assert proc.stdout is not None
        if not select.select([proc.stdout], [], [], 20)[0]:
            pytest.fail(f"the script printed nothing in 20 s ({what})")
        line = proc.stdout.readline()
        if line != "ready\n":
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the script failed before its pool ran ({what}): {err}")
        time.sleep(delay)  # a random moment (not a timing assertion)
        started = time.monotonic()
        if to_group:
            os.killpg(proc.pid, signal.SIGINT)
        else:
            proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the script still ran 10 s after SIGINT ({what})")
        what += f" stopped in {time.monotonic() - started:.2f} s"
        # Python re-raises SIGINT to end a program that KeyboardInterrupt ended: -SIGINT.
        assert proc.returncode == -signal.SIGINT, (what, proc.returncode, err)
        assert "KeyboardInterrupt" in err, (what, err)
        # What the program saw as it exited, before poolkit's own atexit handler: shutdown had
        # returned, so no worker process ran.
        assert out.splitlines() == ["workers at exit: []"], (what, out, err)
        assert not re.search(r"worker \d+ failed|Exception in thread", err), (what, err)
        if not to_group:
            # The one traceback is the program's.  (Sent to the group, a Ctrl-C that lands while
            # the fork server imports poolkit ends the fork server too, with a traceback of its
            # own, and the workers it was to start "could not start": CPython's fork server
            # ignores SIGINT only once its imports are done.)
            assert err.count("Traceback (most recent call last)") == 1, (what, err)
            assert err.rstrip().endswith("KeyboardInterrupt"), (what, err)
        # The script has exited: no worker may run (one is a child of another marked process,
        # the fork server; a worker of "spawn" would be a child of the script, gone now).
        left = running(marked(mark))
        workers = {pid for pid, (_, parent) in left.items() if parent in left}
        assert not workers, f"worker processes outlived the script ({what}): {workers}"
        # The fork server and the resource tracker exit once their pipe from the script closes.
        wait_until(lambda: not running(marked(mark)), limit=5.0)
    finally:
        kill_marked(mark)
        reap(proc, [])


@pytest.mark.parametrize("phase", pj.INTERRUPTED_PHASES)
def test_ctrl_c_at_a_random_moment_stops_the_program_and_every_process_it_started(
    phase: str,
) -> None:
    rng = random.Random(f"ctrl-c {phase}")  # the same moments every run
    for attempt in range(2):
        # Up to 0.4 s after "ready": constructing the pool, the fork server starting, the
        # workers starting, and well into the phase.
        delay = rng.uniform(0.0, 0.4)
        mark = f"{os.getpid()}-{phase}-{attempt}-{time.monotonic_ns()}"
        interrupt_once(phase, delay, to_group=attempt == 1, mark=mark)


# ----------------------------------------------------------------------- map: reading ahead


@pytest.mark.parametrize("chunksize", [1, 5])
def test_map_reads_at_most_its_window_of_chunks_ahead_of_a_slow_consumer(chunksize: int) -> None:
    workers, queue_size = 2, 2
    # The bound (ProcessMap._fill): before it takes its next chunk, the map reads chunks while
    # fewer than workers + queue_size are in flight, counting the chunks finished but not yet
    # handed over; it reads nothing while it hands over a chunk's items.  So while the consumer
    # holds an item of chunk c, the input was read up to the end of chunk c + window - 1.
    window = workers + queue_size
    n = 4 * window * chunksize + 3  # several windows, and a last chunk that is short
    pulled = 0

    def items() -> Iterator[int]:
        nonlocal pulled
        for i in range(n):
            pulled += 1
            yield i

    ahead: list[int] = []
    with ProcessPool(workers=workers, queue_size=queue_size) as pool:
        for j, r in enumerate(pool.map(pj.double, items(), chunksize=chunksize)):
            assert r == 2 * j
            # The slowest consumer: it takes each item only once the workers have run out of
            # work, so the map has had every chance to read on.
            wait_until(lambda: (s := check_books(pool)).running == 0 and s.queued == 0)
            c = j // chunksize
            assert pulled <= min(n, (c + window) * chunksize), (j, pulled)
            ahead.append(pulled - c * chunksize)
    assert pulled == n
    assert max(ahead) == window * chunksize, "the map never read its whole window ahead"
    s = check_closed(pool)
    assert (s.submitted, s.succeeded) == (n, n)


# ----------------------------------------------------------------------- map: leaving early


def gated_items(tmp_path: Path) -> tuple[list[str], Path]:
    """Items for :func:`process_jobs.wait_for`: the first returns at once, the others wait for
    the gate (a file the test creates)."""
    gate = tmp_path / "gate"
    return [str(tmp_path)] + [str(gate)] * 11, gate


@pytest.mark.parametrize("leave", ["break", "close"])
def test_leaving_a_map_early_cancels_its_queued_chunks_and_the_pool_goes_on(
    tmp_path: Path, leave: str
) -> None:
    items, gate = gated_items(tmp_path)
    with ProcessPool(workers=2, queue_size=2) as pool:
        try:
            results = pool.map(pj.wait_for, items, chunksize=1)

            def two_wait_one_queued() -> bool:
                s = check_books(pool)
                return (s.running, s.queued) == (2, 1)

            if leave == "break":
                for r in results:  # the generator is closed when the loop drops it
                    assert r == items[0]
                    wait_until(two_wait_one_queued)
                    break
            else:
                it = iter(results)
                assert next(it) == items[0]
                wait_until(two_wait_one_queued)
                it.close()
            # The window was 4 items: the first done, two at the gate, one queued.  The queued
            # one is cancelled; the running ones run on (their results are dropped).
            s = check_books(pool)
            assert (s.submitted, s.succeeded, s.running, s.queued, s.cancelled) == (4, 1, 2, 0, 1)
        finally:
            gate.touch()
        wait_until(lambda: check_books(pool).running == 0)
        assert pool.submit(pj.double, 4).result(timeout=10) == 8
        assert list(pool.map(pj.double, range(10), chunksize=3)) == [2 * i for i in range(10)]
    s = check_closed(pool)
    assert (s.submitted, s.succeeded, s.cancelled, s.failed) == (4 + 1 + 10, 3 + 1 + 10, 1, 0)


async def test_aclose_on_a_map_cancels_its_queued_chunks_and_the_pool_goes_on(
    tmp_path: Path,
) -> None:
    items, gate = gated_items(tmp_path)
    async with ProcessPool(workers=2, queue_size=2) as pool:
        try:
            it = cast(AsyncGenerator[Any, None], aiter(pool.map(pj.wait_for, items, chunksize=1)))
            assert await anext(it) == items[0]
            await settle_until(lambda: ((s := check_books(pool)).running, s.queued) == (2, 1))
            await it.aclose()
            s = check_books(pool)
            assert (s.submitted, s.succeeded, s.running, s.queued, s.cancelled) == (4, 1, 2, 0, 1)
        finally:
            gate.touch()
        await settle_until(lambda: check_books(pool).running == 0)
        assert await pool.submit(pj.double, 4) == 8
        assert [r async for r in pool.map(pj.double, range(10))] == [2 * i for i in range(10)]
    s = check_closed(pool)
    assert (s.submitted, s.succeeded, s.cancelled, s.failed) == (4 + 1 + 10, 3 + 1 + 10, 1, 0)


# ----------------------------------------------------------------------- replacement


def test_a_worker_killed_at_a_timeout_is_replaced_within_two_seconds() -> None:
    # One worker, so the next job must wait for the replacement (measured: about 20 ms with the
    # fork server; 2 s leaves room for a loaded machine).
    with ProcessPool(workers=1, timeout=0.2, kill_grace=GRACE) as pool:
        first = pool.submit(pj.pid).result(timeout=10)
        with pytest.raises(TimeoutError, match=r"its worker process \(pid \d+\) was killed"):
            pool.submit(pj.sleep_then, 30).result(timeout=10)
        started = time.monotonic()
        fresh = pool.submit(pj.pid).result(timeout=10)
        took = time.monotonic() - started
        assert fresh != first and gone(first)
        assert took < 2.0, f"the replacement worker took {took:.2f} s to run a job"
    s = check_closed(pool, {first, fresh})
    assert (s.timed_out, s.killed, s.succeeded) == (1, 1, 2)


# ----------------------------------------------------------------------- start_method="fork"


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(),
    reason="the fork start method is not available on this platform",
)
def test_fork_start_method_runs_jobs_maps_timeouts_and_crashes() -> None:
    with ProcessPool(workers=2, start_method="fork", timeout=0.3, kill_grace=GRACE) as pool:
        assert pool.statistics().start_method == "fork"
        assert pool.submit(pj.add, 1, 2, c=3).result(timeout=10) == 6
        assert list(pool.map(pj.double, range(50))) == [2 * i for i in range(50)]
        with pytest.raises(TimeoutError, match=r"ran past the timeout of 0\.3 s"):
            pool.submit(pj.sleep_then, 30).result(timeout=10)
        with pytest.raises(WorkerCrashed) as info:
            pool.submit(pj.crash, "exit", 4).result(timeout=10)
        assert (info.value.exitcode, info.value.signal) == (4, None)
        worker = pool.submit(pj.pid).result(timeout=10)
        assert parent_of(worker) == os.getpid() and alive(worker)  # forked by this process
        seen = {worker, *pool.worker_pids}
        assert info.value.pid is not None
        seen.add(info.value.pid)
    s = check_closed(pool, seen)
    assert (s.succeeded, s.timed_out, s.crashed, s.killed, s.failed) == (1 + 50 + 1, 1, 1, 1, 1)
