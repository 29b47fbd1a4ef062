"""ThreadPool benchmarks: map's cost per call and its peak memory over 1M items."""

from __future__ import annotations

import concurrent.futures as cf

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


def _thread_pool_map(n: int) -> float:
    import time

    with poolkit.ThreadPool(workers=8, queue_size=64) as pool:
        t0 = time.perf_counter()
        for _ in pool.map(plain, range(n)):
            pass
        return time.perf_counter() - t0


def _tpe_map(n: int) -> float:
    import time

    with cf.ThreadPoolExecutor(8) as ex:
        t0 = time.perf_counter()
        for _ in ex.map(plain, range(n)):
            pass
        return time.perf_counter() - t0


threads = register(Suite("100k trivial calls, 8 threads, through map", unit="job", items=100_000))
threads.cases += [
    Case("poolkit.ThreadPool.map", _thread_pool_map, poolkit=True),
    Case("ThreadPoolExecutor.map", _tpe_map),
]
