"""ThreadPool benchmarks: map's cost per call, its first result on a wide pool, and its peak
memory over 1M items.

Every case runs at its defaults (``ThreadPool(workers=n)``, ``ThreadPoolExecutor(n)``); a case
with another setting names it.  Each case checks that it received every result.
"""

from __future__ import annotations

import concurrent.futures as cf
import time

import poolkit

from ._harness import Case, Suite, peak_rss_case, register

_RSS_SCRIPT = r"""
import sys, concurrent.futures as cf
import poolkit
kind, n = sys.argv[1], int(sys.argv[2])
def plain(x): return 2 * x
if kind == "thread_map":
    with poolkit.ThreadPool(workers=8) as pool:
        for _ in pool.map(plain, range(n)):
            pass
else:
    with cf.ThreadPoolExecutor(8) as ex:
        for _ in ex.map(plain, range(n)):
            pass
"""

thread_memory = register(
    Suite(
        "thread map over 1,000,000 items, peak RSS of the whole process",
        unit="MiB",
        items=1_000_000,
        kind="figure",
    )
)
thread_memory.cases += [
    Case("poolkit.ThreadPool.map", peak_rss_case(_RSS_SCRIPT, "thread_map"), poolkit=True),
    Case("ThreadPoolExecutor.map", peak_rss_case(_RSS_SCRIPT, "tpe_map")),
]


def plain(x: int) -> int:
    return 2 * x


def _check(total: int, n: int) -> None:
    if total != n * (n - 1):  # the sum of 2i: every call ran once and its result came back
        raise AssertionError(f"map returned a total of {total} for {n} items")


# ----------------------------------------------------------------- 100k calls through map


def _thread_pool_map(n: int) -> float:
    total = 0
    with poolkit.ThreadPool(workers=8) as pool:
        t0 = time.perf_counter()
        for r in pool.map(plain, range(n)):
            total += r
        elapsed = time.perf_counter() - t0
    _check(total, n)
    return elapsed


def _tpe_map(n: int) -> float:
    total = 0
    with cf.ThreadPoolExecutor(8) as ex:
        t0 = time.perf_counter()
        for r in ex.map(plain, range(n)):
            total += r
        elapsed = time.perf_counter() - t0
    _check(total, n)
    return elapsed


threads = register(Suite("100k trivial calls, 8 threads, through map", unit="job", items=100_000))
threads.cases += [
    Case("poolkit.ThreadPool.map", _thread_pool_map, poolkit=True),
    Case("ThreadPoolExecutor.map", _tpe_map),
]

# ----------------------------------------------------------------- first result, 1,000 threads
#
# From the call to map() to the first result in hand, on a pool built the same way for both
# (fresh, 1,000 workers, defaults otherwise; built before the clock starts) over the same input
# (the suite's items): whatever each does before its first result counts, its threads' lazy
# start-up included (ThreadPoolExecutor.map submits the whole input first; ThreadPool.map fills
# its window of workers + queue_size).  The rest of the results, and the shutdown, are outside
# the measure.  A case returns the time times the item count, so that the table, which divides
# by the item count, shows the time to the first result itself.

WIDE = 1_000


def _first_result(pool: poolkit.ThreadPool | cf.ThreadPoolExecutor, n: int) -> float:
    t0 = time.perf_counter()
    results = pool.map(plain, range(n))
    first = next(results)
    elapsed = time.perf_counter() - t0
    total = first + sum(results)
    _check(total, n)
    return elapsed * n


def _thread_pool_first(n: int) -> float:
    with poolkit.ThreadPool(workers=WIDE) as pool:
        return _first_result(pool, n)


def _tpe_first(n: int) -> float:
    with cf.ThreadPoolExecutor(WIDE) as ex:
        return _first_result(ex, n)


first_result = register(
    Suite(
        f"map's first result, {WIDE:,} threads, 10k trivial items",
        unit="first result",
        items=10_000,
    )
)
first_result.cases += [
    Case("poolkit.ThreadPool.map", _thread_pool_first, poolkit=True),
    Case("ThreadPoolExecutor.map", _tpe_first),
]
