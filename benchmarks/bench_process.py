"""ProcessPool benchmarks: the cost per job of tiny jobs (map, and submit one at a time), the
speed-up of CPU-bound jobs, the parent's peak memory over 1M items, and how soon a worker whose
job timed out is replaced.

Every pool has 2 worker processes and the ``"forkserver"`` start method (poolkit's default on
Linux; given to the others as ``mp_context=``/``context=``), and is otherwise at its defaults:
``ProcessPool(workers=2)``, ``ProcessPoolExecutor(2)``, ``multiprocessing.Pool(2)``,
``pebble.ProcessPool(2)``.  A row with another setting names it (``chunksize=1000``).

Each case runs in a fresh interpreter (``python -c``, see :func:`run_case`), so that

* no case inherits another's fork server, worker processes or heap, and a peak-memory figure is
  that case's alone;
* the workers do not import the benchmark's ``__main__``: with the fork server a worker imports
  the parent's main module, and ``python -m benchmarks`` would make each import every benchmark
  module and what they import.  A ``-c`` main has nothing to import.  The jobs measured are
  builtins (``abs``, ``time.sleep``) but for the CPU-bound one, so a worker imports this module
  only for that and for the warm-up; it then loads the standard library only (the harness,
  asyncio with it), never poolkit or an alternative: a pool loads what it needs itself.

A case builds its pool and waits until both workers are up (each has answered a job) before its
clock starts: the figures are the pools' running costs, not their start-up.  The child checks
every result the case received (count, values, order) and reports; :func:`run_case` refuses a
report that lacks any, and ``tests/test_benchmarks.py`` holds every case to it at a tiny size.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ._harness import Case, Suite, register

WORKERS = 2
START_METHOD = "forkserver"
SPIN = 60_000  # iterations of spin()'s loop: about 3 ms of pure Python on a 2020s x86_64 core
TIMEOUT = 0.2  # seconds: the job timeout of the replacement benchmark
CHUNKSIZES = (100, 1000, 10_000)  # the executor's chunksizes measured (its best is the target)
_ROOT = Path(__file__).resolve().parent.parent  # where ``import benchmarks`` works

# ----------------------------------------------------------------- what the workers run
# Module level, so that a worker can import them by name.  The trivial job is the builtin abs()
# and the hanging one time.sleep(): a worker needs nothing of this module for those.


def spin(x: int) -> int:
    """A CPU-bound job in pure Python (holds the GIL throughout): about 3 ms."""
    total = 0
    for i in range(SPIN):
        total += i
    return total + x


SPUN = SPIN * (SPIN - 1) // 2  # spin(x) == SPUN + x


def pid_after(seconds: float) -> int:
    """Warm-up: a job long enough that the other worker takes the next one."""
    time.sleep(seconds)
    return os.getpid()


# ----------------------------------------------------------------- the pools, in the child


def _context() -> Any:
    import multiprocessing

    return multiprocessing.get_context(START_METHOD)


class _Pool:
    """What the cases need of each library: ``submit(fn, arg)`` → something with
    ``result()`` (a job with the pool's ``timeout``, if given), and ``map(fn, items,
    chunksize)`` → an iterator of the results in order."""

    def __init__(self, lib: str, *, timeout: float | None = None) -> None:
        self.lib = lib
        self.timeout = timeout
        self.pool: Any = None

    def __enter__(self) -> _Pool:
        if self.lib == "poolkit":
            from poolkit import ProcessPool

            if self.timeout is None:
                self.pool = ProcessPool(workers=WORKERS)
            else:
                self.pool = ProcessPool(workers=WORKERS, timeout=self.timeout)
        elif self.lib == "executor":
            import concurrent.futures as cf

            self.pool = cf.ProcessPoolExecutor(WORKERS, mp_context=_context())
        elif self.lib == "multiprocessing":
            self.pool = _context().Pool(WORKERS)
        elif self.lib == "pebble":
            import pebble

            self.pool = pebble.ProcessPool(WORKERS, context=_context())
        else:
            raise ValueError(f"no pool {self.lib!r}")
        self.pool.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.__exit__(*exc)

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        if self.lib == "multiprocessing":
            result = self.pool.apply_async(fn, (arg,))
            result.result = result.get
            return result
        if self.lib == "pebble":
            return self.pool.schedule(fn, args=(arg,), timeout=self.timeout)
        return self.pool.submit(fn, arg)

    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], chunksize: int | None) -> Any:
        """The library's own iterator (nothing of ours between it and the caller)."""
        options = {} if chunksize is None else {"chunksize": chunksize}
        if self.lib == "multiprocessing":
            return self.pool.imap(fn, items, **options)
        if self.lib == "pebble":
            return self.pool.map(fn, items, **options).result()
        return self.pool.map(fn, items, **options)

    def warm_up(self) -> None:
        """Return once every worker has run a job (and imported this module)."""
        pids: set[int] = set()
        for _ in range(100):
            jobs = [self.submit(pid_after, 0.02) for _ in range(2 * WORKERS)]
            pids.update(job.result() for job in jobs)
            if len(pids) >= WORKERS:
                return
        raise RuntimeError(f"{self.lib}: {WORKERS} workers never answered, only {pids}")


def _clocked(lib: str, chunksize: int | None, fn: Callable[[int], int], n: int) -> dict[str, Any]:
    """``n`` calls of ``fn`` through ``lib``'s map: the time from the call to the last result."""
    expected = list(range(n)) if fn is abs else [SPUN + i for i in range(n)]
    with _Pool(lib) as pool:
        pool.warm_up()
        t0 = time.perf_counter()
        results = list(pool.map(fn, range(n), chunksize))
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "results": len(results), "correct": results == expected}


def _submitted(lib: str, n: int) -> dict[str, Any]:
    """``n`` trivial jobs submitted one at a time (each its own future), then every result."""
    with _Pool(lib) as pool:
        pool.warm_up()
        submit = pool.pool.submit  # the library's own, as a user calls it
        t0 = time.perf_counter()
        futures = [submit(abs, -i) for i in range(n)]
        results = [f.result() for f in futures]
        seconds = time.perf_counter() - t0
    return {"seconds": seconds, "results": len(results), "correct": results == list(range(n))}


def _serial(n: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    results = [spin(i) for i in range(n)]
    seconds = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "results": len(results),
        "correct": results == [SPUN + i for i in range(n)],
    }


def _peak_mib() -> float:
    """This process's high-water mark of resident memory (VmHWM), in MiB."""
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmHWM:"))
        return int(line.split()[1]) / 1024
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss(lib: str, chunksize: int | None, n: int) -> dict[str, Any]:
    """Map ``abs`` over ``range(n)``, results checked as they come and then dropped; the
    parent's peak RSS.  Every case imports the same libraries first, so that they count alike."""
    for module in ("poolkit", "concurrent.futures.process", "multiprocessing.pool", "pebble"):
        importlib.import_module(module)
    count = wrong = 0
    with _Pool(lib) as pool:
        for i, result in enumerate(pool.map(abs, range(n), chunksize)):
            count += 1
            if result != i:
                wrong += 1
    return {"peak_mib": _peak_mib(), "results": count, "correct": wrong == 0}


def _replacement(lib: str, n: int) -> dict[str, Any]:
    """``n`` times: both workers take a job that sleeps forever, a trivial job queues behind
    them; the time from the hanging jobs' deadline to the trivial job's result, in ms.

    The deadline is taken as submission + ``TIMEOUT``; the jobs start a little later (they are
    sent to idle workers), so this overstates the wait by that much.
    """
    samples: list[float] = []
    fail_ms: list[float] = []
    correct = True
    with _Pool(lib, timeout=TIMEOUT) as pool:
        pool.warm_up()
        for _ in range(n):
            t0 = time.perf_counter()
            hung = [pool.submit(time.sleep, 3600) for _ in range(WORKERS)]
            after = pool.submit(abs, -7)
            value = after.result(timeout=60)
            samples.append((time.perf_counter() - t0 - TIMEOUT) * 1e3)
            for job in hung:
                correct &= isinstance(job.exception(timeout=60), TimeoutError)
            fail_ms.append((time.perf_counter() - t0 - TIMEOUT) * 1e3)
            correct &= value == 7
            pool.warm_up()  # both workers back before the next round
        stats = pool.pool.statistics() if lib == "poolkit" else None
    samples.sort()
    report: dict[str, Any] = {
        "ms": samples[len(samples) // 2],
        "samples": samples,
        "failed_by_ms": fail_ms,
        "results": len(samples),
        "correct": correct,
    }
    if stats is not None:
        report["killed"] = stats.killed
        report["crashed"] = stats.crashed
    return report


def _child(case: str, n: int) -> dict[str, Any]:
    what, lib, *option = case.split(":")
    chunksize = int(option[0]) if option and option[0] else None
    if what == "map":
        return _clocked(lib, chunksize, abs, n)
    if what == "submit":
        return _submitted(lib, n)
    if what == "cpu":
        return _serial(n) if lib == "serial" else _clocked(lib, chunksize, spin, n)
    if what == "rss":
        return _peak_rss(lib, chunksize, n)
    if what == "timeout":
        return _replacement(lib, n)
    raise ValueError(f"no case {case!r}")


def child_main() -> None:
    """Entry point of the child interpreter: ``CASE N`` in ``sys.argv``; prints a JSON report."""
    report = _child(sys.argv[1], int(sys.argv[2]))
    print(json.dumps(report), flush=True)


# ----------------------------------------------------------------- the parent's side


def run_case(case: str, n: int) -> dict[str, Any]:
    """Run ``case`` over ``n`` items in a fresh interpreter; its report, checked: it must have
    received all ``n`` results, each the value expected."""
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from benchmarks.bench_process import child_main; child_main()",
            case,
            str(n),
        ],
        cwd=_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"case {case} failed (exit {out.returncode}):\n{out.stderr}")
    report: dict[str, Any] = json.loads(out.stdout.splitlines()[-1])
    if report["results"] != n or not report["correct"]:
        raise AssertionError(f"case {case} over {n} items got back a wrong answer: {report}")
    return report


CHILD_CASES: dict[tuple[str, str], str] = {}  # (suite, case) -> what the child runs


def _case(name: str, case: str, key: str, poolkit: bool = False) -> Case:
    def run(items: int) -> float:
        return float(run_case(case, items)[key])

    return Case(name, run, poolkit=poolkit)


def _add(suite: Suite, *cases: tuple[str, str], key: str = "seconds") -> Suite:
    """Register ``suite`` with its cases, (row name, child case); the first is poolkit's."""
    for i, (name, case) in enumerate(cases):
        suite.cases.append(_case(name, case, key, poolkit=i == 0))
        CHILD_CASES[suite.name, name] = case
    return register(suite)


# ----------------------------------------------------------------- 1. per-job cost, tiny jobs
#
# abs() over range(n) through map, results collected in order.  The executor's default
# chunksize (1) costs about 150 µs a job: at this size it would take minutes, so it is in the
# next benchmark, with the others that send one job per message.

chunked = _add(
    Suite("200k trivial jobs (abs), 2 processes, through map", unit="job", items=200_000),
    ("poolkit.ProcessPool.map", "map:poolkit"),
    *[(f"ProcessPoolExecutor.map chunksize={cs}", f"map:executor:{cs}") for cs in CHUNKSIZES],
    ("multiprocessing.Pool.imap chunksize=10000", "map:multiprocessing:10000"),
    ("pebble.ProcessPool.map chunksize=1000", "map:pebble:1000"),
)

one_by_one = _add(
    Suite("3k trivial jobs (abs), 2 processes, one job per message", unit="job", items=3_000),
    ("poolkit.ProcessPool.submit, one by one", "submit:poolkit"),
    ("ProcessPoolExecutor.submit, one by one", "submit:executor"),
    ("ProcessPoolExecutor.map (chunksize=1)", "map:executor"),
    ("pebble.ProcessPool.map (chunksize=1)", "map:pebble"),
)

# ----------------------------------------------------------------- 2. CPU-bound speed-up
#
# The speed-up over one process is 1 / (poolkit/alt) on the serial row; the target is >= 1.8.

cpu = _add(
    Suite(
        "300 CPU-bound jobs (3 ms of pure Python), 2 processes, through map",
        unit="job; target poolkit/serial <= 0.56",
        items=300,
    ),
    ("poolkit.ProcessPool.map", "cpu:poolkit"),
    ("ProcessPoolExecutor.map (chunksize=1)", "cpu:executor"),
    ("multiprocessing.Pool.imap (chunksize=1)", "cpu:multiprocessing"),
    ("pebble.ProcessPool.map (chunksize=1)", "cpu:pebble"),
    ("serial, in one process (no pool)", "cpu:serial"),
)

# ----------------------------------------------------------------- 3. the parent's memory
#
# ProcessPoolExecutor.map (and pebble's) submits every chunk before it returns its first
# result; at its default chunksize (1) a million jobs would take minutes, so it runs at
# chunksize=1000.

memory = _add(
    Suite(
        "map over 1M trivial items, 2 processes, the parent's peak RSS",
        unit="MiB; target poolkit < 60",
        items=1_000_000,
        kind="figure",
    ),
    ("poolkit.ProcessPool.map", "rss:poolkit"),
    ("ProcessPoolExecutor.map chunksize=1000", "rss:executor:1000"),
    ("multiprocessing.Pool.imap chunksize=1000", "rss:multiprocessing:1000"),
    ("pebble.ProcessPool.map chunksize=1000", "rss:pebble:1000"),
    key="peak_mib",
)

# ----------------------------------------------------------------- 4. a timeout's replacement
#
# The executor and multiprocessing.Pool cannot stop a running job; pebble's schedule(timeout=)
# can.  The figure is the median of the run's timeouts (one per item).

replacement = _add(
    Suite(
        f"job timeout ({TIMEOUT} s) to a new worker's first result, 2 processes",
        unit="ms after the deadline, median; target poolkit <= 300",
        items=3,
        kind="figure",
    ),
    ("poolkit.ProcessPool(timeout=0.2).submit", "timeout:poolkit"),
    ("pebble.ProcessPool.schedule(timeout=0.2)", "timeout:pebble"),
    key="ms",
)

SUITES = [chunked, one_by_one, cpu, memory, replacement]
