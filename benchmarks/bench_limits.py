"""Limiter benchmarks: token-bucket cost and real-time accuracy, capacity limiter cost.

Every poolkit case runs its primitive at its defaults (``TokenBucket(rate)`` has a burst of one
second's worth; ``CapacityLimiter(total)``), unless its name gives a setting; every alternative is
what a user would write for the same job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiolimiter
import anyio

import poolkit

from ._harness import Case, Suite, register, run_async, timed

# ----------------------------------------------------------------- uncontended acquire

uncontended = register(Suite("token bucket acquire, never waits", unit="acquire", items=200_000))


def _bucket_uncontended(n: int) -> float:
    async def main() -> float:
        bucket = poolkit.TokenBucket(1e9)  # the default burst, 1e9: it never waits

        async def loop() -> None:
            for _ in range(n):
                await bucket.acquire()

        return await timed(loop())

    return run_async(main)


def _aiolimiter_uncontended(n: int) -> float:
    async def main() -> float:
        limiter = aiolimiter.AsyncLimiter(1e9, 1)

        async def loop() -> None:
            for _ in range(n):
                await limiter.acquire()

        return await timed(loop())

    return run_async(main)


uncontended.cases += [
    Case("poolkit.TokenBucket", _bucket_uncontended, poolkit=True),
    Case("aiolimiter.AsyncLimiter", _aiolimiter_uncontended),
]

# ----------------------------------------------------------------- accuracy on real time

RATE = 2000.0
BURST = 100
TASKS = 100
WINDOW = 0.5
_accuracy: dict[tuple[str, int], tuple[float, float]] = {}


def _accuracy_run(kind: str, items: int) -> tuple[float, float]:
    """(achieved rate as % of the target, worst window as % of rate*w + burst), memoized so that
    the two figure suites share one run of each implementation."""
    key = (kind, items)
    if key in _accuracy:
        return _accuracy[key]
    duration = max(0.05, items / RATE)

    async def main() -> float:
        stamps: list[float] = []
        acquire: Callable[[], Awaitable[None]]
        if kind == "poolkit":
            acquire = poolkit.TokenBucket(RATE, burst=BURST).acquire
        else:  # the same bucket: BURST at most, refilled at RATE
            acquire = aiolimiter.AsyncLimiter(BURST, BURST / RATE).acquire
        t0 = time.monotonic()
        end = t0 + duration

        async def worker() -> None:
            while True:
                await acquire()
                t = time.monotonic()
                if t >= end:
                    return
                stamps.append(t)

        await asyncio.gather(*(worker() for _ in range(TASKS)))
        achieved = (len(stamps) - BURST) / duration
        stamps.sort()
        worst, j = 0, 0
        for i, t in enumerate(stamps):  # the most grants in any window of WINDOW seconds
            while stamps[j] < t - WINDOW:
                j += 1
            worst = max(worst, i - j + 1)
        window = min(WINDOW, duration)
        _accuracy[key] = (100 * achieved / RATE, 100 * worst / (RATE * window + BURST))
        return 0.0

    run_async(main)
    return _accuracy[key]


rate_figure = register(
    Suite(
        f"rate accuracy, {RATE:g}/s burst {BURST} for 3 s, {TASKS} tasks",
        unit="achieved % of the rate",
        items=int(RATE * 3),
        kind="figure",
    )
)
window_figure = register(
    Suite(
        f"worst {WINDOW} s window, same run",
        unit="% of rate*w + burst (<= 100 holds)",
        items=int(RATE * 3),
        kind="figure",
    )
)
# The burst is part of the task (the default would be one second's worth, 2000): named in the cases.
_BUCKET = f"poolkit.TokenBucket(burst={BURST})"
_AIO = f"aiolimiter.AsyncLimiter({BURST}, {BURST / RATE:g} s)"
rate_figure.cases += [
    Case(_BUCKET, lambda n: _accuracy_run("poolkit", n)[0], poolkit=True),
    Case(_AIO, lambda n: _accuracy_run("aiolimiter", n)[0]),
]
window_figure.cases += [
    Case(_BUCKET, lambda n: _accuracy_run("poolkit", n)[1], poolkit=True),
    Case(_AIO, lambda n: _accuracy_run("aiolimiter", n)[1]),
]

# ----------------------------------------------------------------- capacity limiter


def _pair(make: Callable[[], object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            lim = make()

            async def loop() -> None:
                for _ in range(n):
                    async with lim:  # type: ignore[attr-defined]
                        pass

            return await timed(loop())

        return run_async(main)

    return run


pair = register(Suite("capacity limiter acquire+release, uncontended", unit="pair", items=200_000))
pair.cases += [
    Case("poolkit.CapacityLimiter", _pair(lambda: poolkit.CapacityLimiter(8)), poolkit=True),
    Case("asyncio.Semaphore", _pair(lambda: asyncio.Semaphore(8))),
    Case("anyio.CapacityLimiter", _pair(lambda: anyio.CapacityLimiter(8))),
]


def _contended(make: Callable[[], object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        async def main() -> float:
            lim = make()
            per = max(1, n // 64)

            async def worker() -> None:
                for _ in range(per):
                    async with lim:  # type: ignore[attr-defined]
                        await asyncio.sleep(0)

            return await timed(asyncio.gather(*(worker() for _ in range(64))))

        return run_async(main)

    return run


contended = register(
    Suite("capacity limiter, contended: 64 tasks through 8 slots", unit="pair", items=100_000)
)
contended.cases += [
    Case("poolkit.CapacityLimiter", _contended(lambda: poolkit.CapacityLimiter(8)), poolkit=True),
    Case("asyncio.Semaphore", _contended(lambda: asyncio.Semaphore(8))),
    Case("anyio.CapacityLimiter", _contended(lambda: anyio.CapacityLimiter(8))),
]

# An adaptive limiter does what a capacity limiter does, and measures every section and moves its
# limit: this is what that costs.  Its limit is held at 8 (initial=8, max=8) so that every case
# admits the same 8 at once; what is measured is the bookkeeping, not a different concurrency.
adaptive = register(
    Suite(
        "adaptive limiter, contended: 64 tasks through 8 slots (the cost of measuring)",
        unit="pair",
        items=100_000,
    )
)
adaptive.cases += [
    Case(
        "poolkit.AdaptiveLimiter(initial=8, max=8)",
        _contended(lambda: poolkit.AdaptiveLimiter(initial=8, max=8)),
        poolkit=True,
    ),
    Case("poolkit.CapacityLimiter(8)", _contended(lambda: poolkit.CapacityLimiter(8))),
    Case("asyncio.Semaphore(8)", _contended(lambda: asyncio.Semaphore(8))),
]

# ----------------------------------------------------------------- starvation (FIFO across costs)

starvation = register(
    Suite(
        "acquire(80) on 100/s while 5 tasks loop on acquire(1); loopers stop at 3 s",
        unit="seconds waited; in turn: 0.85",
        items=1,
        kind="figure",
    )
)


def _starvation(kind: str) -> Callable[[int], float]:
    def run(_: int) -> float:
        async def main() -> float:
            acquire: Callable[[float], Awaitable[None]]
            if kind == "poolkit":
                acquire = poolkit.TokenBucket(100).acquire  # burst: 100, the default
            else:
                acquire = aiolimiter.AsyncLimiter(100, 1).acquire
            stop = time.monotonic() + 3.0

            async def small() -> None:
                while time.monotonic() < stop:
                    await acquire(1)

            smalls = [asyncio.create_task(small()) for _ in range(5)]
            await asyncio.sleep(0)
            t0 = time.monotonic()
            await acquire(80)
            waited = time.monotonic() - t0
            await asyncio.gather(*smalls)
            return waited

        return run_async(main)

    return run


starvation.cases += [
    Case("poolkit.TokenBucket", _starvation("poolkit"), poolkit=True),
    Case("aiolimiter.AsyncLimiter", _starvation("aiolimiter")),
]

# ----------------------------------------------------------------- a million keys

keys = register(
    Suite(
        "PerKey(CapacityLimiter) over 1,000,000 distinct keys",
        unit="limits alive at the end",
        items=1_000_000,
        kind="figure",
    )
)


def _million_keys(n: int) -> float:
    per_key: poolkit.PerKey[int, poolkit.CapacityLimiter] = poolkit.PerKey(
        lambda: poolkit.CapacityLimiter(1)
    )
    for key in range(n):
        per_key.try_acquire(key)
        per_key.release(key)
    return float(len(per_key))


def _dict_of_limiters(n: int) -> float:
    """The naive alternative: a dict that makes a limiter per key and never forgets one."""
    table: dict[int, asyncio.Semaphore] = {}
    for key in range(n):
        table.setdefault(key, asyncio.Semaphore(1))
    return float(len(table))


keys.cases += [
    Case("poolkit.PerKey", _million_keys, poolkit=True),
    Case("dict of asyncio.Semaphore", _dict_of_limiters),
]
