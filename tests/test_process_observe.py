"""Process pools seen from outside, and child processes as leaks.

* ``no_leaks()`` counts the processes a block starts (and theirs): one left running is a leak,
  named by PID and command line; one waited for, or that exits within the grace, is not; nor are
  ``multiprocessing``'s fork server and resource tracker.
* A ``ProcessPool``'s statistics, its Prometheus series (``kind="process"``, the worker PIDs, the
  crashed / killed / recycled counts), its entry in ``/debug/pools`` and its lines in ``poolkit
  top``.

Every pool here is small (one or two workers) and shut down by its test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import poolkit
from poolkit import LeakError, ProcessPool, ProcessPoolStatistics, WorkerCrashed, no_leaks
from poolkit import debug as poolkit_debug
from poolkit._leaks import _noleaks
from poolkit._leaks._noleaks import LeakSnapshot, ProcessInfo
from poolkit._observe import _metrics
from poolkit._tools import _cli
from poolkit.leaks import Watchdog

linux_only = pytest.mark.skipif(
    not _noleaks._HAS_PROCFS, reason="child processes are read from Linux's /proc"
)

Key = tuple[str, frozenset[tuple[str, str]]]


def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@contextlib.contextmanager
def reaping() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes started in the block: killed (with their process group) and waited for at its
    end.  Inside the test, not in a fixture: the suite's own leak check ends with the test."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)  # the shell and what it started
                except OSError:
                    process.kill()
            process.wait(5)


def popen(started: list[subprocess.Popen[bytes]], *argv: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(argv, start_new_session=True)  # its own group, for killpg
    started.append(process)
    return process


def leak(block: Callable[[], object], **options: Any) -> tuple[str, LeakSnapshot]:
    """The message and report of the LeakError that ``no_leaks(**options)`` raises around
    ``block()``."""
    with pytest.raises(LeakError) as caught, no_leaks(**options):
        block()
    return str(caught.value), report_of(caught.value)


def report_of(error: LeakError) -> LeakSnapshot:
    assert isinstance(error.snapshot, LeakSnapshot)
    return error.snapshot


def children_of(pid: int, name: str) -> list[int]:
    """The live children of ``pid`` named ``name`` (a forked child has its parent's name until
    it runs its own program)."""
    found = _noleaks.new_descendants(set())
    return [p for p, ppid, _, n in found if ppid == pid and n == name]


# ----------------------------------------------------------------------- no_leaks: processes


@linux_only
def test_a_child_process_left_running_is_a_leak() -> None:
    with reaping() as reap:
        with pytest.raises(LeakError) as caught, no_leaks(timeout=0.05):
            popen(reap, "sleep", "30")
        (process,) = reap
        error = caught.value
        message = str(error)
        assert message.startswith(
            f"1 process (pid {process.pid}: sleep 30) still alive 0.05 s after the block ended"
        )
        (info,) = report_of(error).processes
        line = f"pid {process.pid} [{info.state}], parent {os.getpid()} (this process): sleep 30"
        assert f"\n\nprocess profile: total 1\n{line}\n" in message
        me = os.getpid()
        assert info == ProcessInfo(
            process.pid, me, "sleep", info.state, ("sleep", "30"), "this process"
        )
        assert info.state in ("S", "R") and info.command == "sleep 30"
        assert error.snapshot.threads == () and error.snapshot.tasks == ()
        data = json.loads(json.dumps(error.snapshot.to_json()))
        assert data["processes"] == [
            {
                "pid": process.pid,
                "ppid": os.getpid(),
                "parent": "this process",
                "name": "sleep",
                "state": info.state,
                "cmdline": ["sleep", "30"],
            }
        ]
        again = pickle.loads(pickle.dumps(error))
        assert again.snapshot == error.snapshot and str(again) == message


@linux_only
def test_a_child_process_waited_for_is_not_a_leak() -> None:
    with reaping() as reap:
        with no_leaks(timeout=0.05):
            assert popen(reap, "sleep", "0").wait(5) == 0
        # One that exits by itself within the grace is not one either, though nobody has reaped
        # it yet (a zombie is gone).
        with no_leaks(timeout=5):
            finishing = popen(reap, "sleep", "0.05")
        assert finishing.wait(5) == 0


@linux_only
def test_a_grandchild_counts() -> None:
    with reaping() as reap:

        def start() -> None:
            shell = popen(reap, "sh", "-c", "sleep 30 & wait")
            wait_until(lambda: bool(children_of(shell.pid, "sleep")))

        # The shell is excused: only its child is left to count.
        message, report = leak(start, timeout=0.05, ignore_names=["sh"])
        (info,) = report.processes
        assert info.ppid == reap[0].pid and info.parent == "sh"
        assert info.cmdline == ("sleep", "30")
        assert message.startswith(f"1 process (pid {info.pid}: sleep 30) still alive")


@linux_only
def test_process_excuses() -> None:
    with reaping() as reap:
        with no_leaks(timeout=0.01, processes=False):
            popen(reap, "sleep", "30")
        with no_leaks(timeout=0.01, ignore_names=["sleep"]):  # by name
            popen(reap, "sleep", "31")
        with no_leaks(timeout=0.01, ignore_names=["sleep 3?"]):  # by command line
            popen(reap, "sleep", "32")
        with no_leaks(timeout=0.01):  # alive before the block: not its leak
            pass
        # Every descendant counts.
        message, report = leak(lambda: None, timeout=0.01, ignore_current=False)
        assert re.search(r"\d+ processes \(pid ", message)
        assert {p.pid for p in report.processes} >= {p.pid for p in reap}
        with pytest.raises(TypeError, match="processes must be True or False, got 1"):
            no_leaks(processes=1)  # type: ignore[arg-type]
        assert "processes=False" in repr(no_leaks(processes=False))


@linux_only
async def test_the_async_form_counts_processes() -> None:
    with reaping() as reap:
        with pytest.raises(LeakError) as caught:
            async with no_leaks(timeout=0.05):
                process = popen(reap, "sleep", "30")
        assert [p.pid for p in report_of(caught.value).processes] == [process.pid]


@linux_only
def test_threads_and_processes_are_reported_together() -> None:
    with reaping() as reap:
        stop = threading.Event()

        def start() -> None:
            threading.Thread(target=stop.wait, name="left-behind").start()
            popen(reap, "sleep", "30")
            popen(reap, "sleep", "31")

        try:
            message, _ = leak(start, timeout=0.02)
        finally:
            stop.set()
        assert message.startswith("1 thread and 2 processes (pid ")
        assert "thread profile: total 1" in message and "process profile: total 2" in message


# multiprocessing's helpers are started once per process: a fresh interpreter shows that the
# fork server and the resource tracker, started inside a block, are not its leaks (though a
# worker forked by the server and left running is).
_HELPERS_SCRIPT = textwrap.dedent(
    """
    import multiprocessing, sys, time
    from poolkit import LeakError, no_leaks

    if __name__ == "__main__":
        ctx = multiprocessing.get_context("forkserver")
        with no_leaks():
            worker = ctx.Process(target=time.sleep, args=(0,))
            worker.start()
            worker.join()
        from multiprocessing import forkserver, resource_tracker
        assert forkserver._forkserver._forkserver_pid is not None
        assert resource_tracker._resource_tracker._pid is not None
        try:
            with no_leaks(timeout=0.05):
                worker = ctx.Process(target=time.sleep, args=(30,))
                worker.start()
        except LeakError as e:
            (info,) = e.snapshot.processes
            assert info.pid == worker.pid, (info, worker.pid)
            assert info.parent == "multiprocessing fork server", info
            print(str(e).splitlines()[0])
        finally:
            worker.kill()
            worker.join()
    """
)


@linux_only
def test_multiprocessing_helpers_are_not_leaks() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HELPERS_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("1 process (pid ")
    assert "forked by multiprocessing's fork server) still alive 0.05 s" in done.stdout


@linux_only
def test_a_process_pool_left_open_leaks_its_workers() -> None:
    pool = ProcessPool(workers=1, name="observe-left-open")
    pids: list[int] = []

    def use() -> None:
        assert pool.submit(pow, 2, 3).result() == 8
        pids.extend(pool.worker_pids)

    try:
        _, leaked = leak(use, timeout=0.05)
    finally:
        pool.shutdown()
    assert [p.pid for p in leaked.processes] == pids
    (thread,) = leaked.threads
    assert thread.name.endswith("'observe-left-open' worker 1")
    # Shut down, it leaves nothing: not its workers, nor the fork server it may have started.
    with no_leaks(), ProcessPool(workers=1, name="observe-closed") as pool:
        assert pool.submit(pow, 3, 2).result() == 9


@linux_only
def test_the_watchdog_counts_child_processes() -> None:
    with reaping() as reap:
        before = Watchdog().sample().processes
        popen(reap, "sleep", "30")
        assert Watchdog().sample().processes == before + 1


# ----------------------------------------------------------------------- process pools


def series_of(text: str, pool: str) -> dict[Key, float]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[Key, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("pool") == pool:
                found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def test_statistics_of_a_process_pool() -> None:
    with ProcessPool(workers=2, name="observe-stats") as pool:
        assert pool.submit(pow, 2, 10).result() == 1024
        wait_until(lambda: pool.statistics().workers == 2)  # both start warm
        s = pool.statistics()
        assert isinstance(s, ProcessPoolStatistics) and isinstance(s, poolkit.PoolStatistics)
        assert s.name == "observe-stats" and s.target_workers == 2 and s.succeeded == 1
        assert s.worker_pids == pool.worker_pids and len(set(s.worker_pids)) == 2
        assert os.getpid() not in s.worker_pids
        for pid in s.worker_pids:
            os.kill(pid, 0)  # alive
        assert (s.crashed, s.killed, s.recycled) == (0, 0, 0)
        assert s.start_method in ("forkserver", "spawn", "fork")
    s = pool.statistics()
    assert s.worker_pids == () and s.workers == 0 and s.closed


def test_crashed_killed_and_recycled_workers_are_counted() -> None:
    with ProcessPool(workers=1, timeout=0.5, max_jobs_per_worker=2, name="observe-churn") as pool:
        with pytest.raises(WorkerCrashed):
            pool.submit(os._exit, 3).result()
        with pytest.raises(TimeoutError):
            pool.submit(time.sleep, 30).result()
        for _ in range(2):
            assert pool.submit(pow, 2, 2).result() == 4
        wait_until(lambda: pool.statistics().recycled == 1)
        s = pool.statistics()
        assert (s.crashed, s.killed, s.recycled) == (1, 1, 1)
        assert s.failed == 1 and s.timed_out == 1
        wait_until(lambda: len(pool.worker_pids) == 1)  # replaced each time
        series = series_of(_metrics.exposition(), "observe-churn")
        ids = {"pool": "observe-churn", "kind": "process"}
        replaced = "poolkit_pool_worker_replacements_total"
        for reason in ("crashed", "killed", "recycled"):
            assert series[key(replaced, **ids, reason=reason)] == 1


def test_metrics_of_a_process_pool() -> None:
    pytest.importorskip("prometheus_client")
    with ProcessPool(workers=2, name="observe-metrics") as pool:
        assert pool.submit(pow, 2, 3).result() == 8
        wait_until(lambda: len(pool.worker_pids) == 2)
        s = pool.statistics()
        series = series_of(_metrics.exposition(), "observe-metrics")
        ids = {"pool": "observe-metrics", "kind": "process"}
        assert series[key("poolkit_pool_workers", **ids, state="idle")] == 2
        assert series[key("poolkit_pool_target_workers", **ids)] == 2
        assert series[key("poolkit_pool_jobs_total", **ids, outcome="succeeded")] == 1
        info = {k: v for k, v in series.items() if k[0] == "poolkit_pool_worker_process_info"}
        assert info == {
            key(
                "poolkit_pool_worker_process_info",
                **ids,
                pid=str(pid),
                start_method=s.start_method,
            ): 1
            for pid in s.worker_pids
        }
        # The same through prometheus_client's collector.
        from prometheus_client import CollectorRegistry, generate_latest

        from poolkit.prometheus import PoolkitCollector

        registry = CollectorRegistry()
        registry.register(PoolkitCollector())
        assert series_of(generate_latest(registry).decode(), "observe-metrics") == series
    # Other pools have no process series.
    with poolkit.ThreadPool(workers=1, name="observe-threads") as threads:
        threads.submit(int).result()
        other = series_of(_metrics.exposition(), "observe-threads")
    assert other and not [k for k in other if "worker_" in k[0]]


def test_debug_json_and_top_show_process_pools() -> None:
    with ProcessPool(workers=2, name="observe-debug") as pool:
        assert pool.submit(pow, 2, 3).result() == 8
        wait_until(lambda: len(pool.worker_pids) == 2)
        with poolkit_debug.serve() as server:
            with urllib.request.urlopen(server.url + "/debug/pools", timeout=5) as reply:
                data = json.loads(reply.read())
            pids = pool.worker_pids
            (entry,) = [e for e in data["pools"] if e["name"] == "observe-debug"]
            assert entry["kind"] == "process_pool"
            stats = entry["statistics"]
            assert stats["worker_pids"] == list(pids)
            assert (stats["crashed"], stats["killed"], stats["recycled"]) == (0, 0, 0)
            assert stats["start_method"] == pool.statistics().start_method

            top = _cli._Top(server.url, 1.0)
            frame = top.frame(data, 1.0).splitlines()
            at = frame.index("WORKER PROCESSES")
            (row,) = [line for line in frame[:at] if line.startswith("observe-debug ")]
            assert row.split()[:5] == ["observe-debug", "process", "0", "2", "2"]
            (line,) = [line for line in frame[at:] if line.startswith("observe-debug ")]
            method = stats["start_method"]
            assert line.split() == [
                "observe-debug",
                *("start", method, "crashed", "0", "killed", "0", "recycled", "0"),
                "pids",
                *(str(p) for p in pids),
            ]

            class Out(list[str]):
                def write(self, text: str) -> None:
                    self.append(text)

                def flush(self) -> None:
                    pass

                def isatty(self) -> bool:
                    return False

            out = Out()
            assert _cli._top(server.url, 0.01, 1, 5.0, out) == 0  # type: ignore[arg-type]
            assert "WORKER PROCESSES" in "".join(out)


def test_top_without_process_pools_is_unchanged() -> None:
    data: dict[str, Any] = {
        "pools": [{"kind": "thread_pool", "name": "t", "statistics": {"busy": 1}}]
    }
    frame = _cli._Top("http://x:1", 1.0).frame(data, 1.0)
    assert "WORKER PROCESSES" not in frame
    many = {
        "kind": "process_pool",
        "name": "p",
        "statistics": {"worker_pids": list(range(100, 120)), "start_method": "spawn"},
    }
    frame = _cli._Top("http://x:1", 1.0).frame({"pools": [many]}, 1.0)
    assert frame.rstrip().endswith("pids " + " ".join(map(str, range(100, 116))) + " +4 more")
    assert "crashed -" in frame  # a statistic the server did not send


async def test_an_async_block_with_a_process_pool_leaves_nothing() -> None:
    async with no_leaks(), ProcessPool(workers=1, name="observe-async") as pool:
        assert await pool.submit(pow, 2, 5) == 32
    assert asyncio.get_running_loop().is_running()
