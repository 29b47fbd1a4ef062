"""AdaptiveLimiter: its contract as a capacity limiter, its measurement and signals, on virtual
time.  The behaviour against a simulated server is in tests/test_adaptive_sim.py."""

from __future__ import annotations

import asyncio
import random
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import poolkit
from poolkit import AIMD, AdaptiveLimiter, CapacityLimiter, Gradient, Limits, PerKey
from poolkit._observe._metrics import exposition
from poolkit.testing import VirtualTimeLoop


def run(coro_fn):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro_fn())


# ----------------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"min": 0}, ValueError, "min"),
        ({"max": 0}, ValueError, "max"),
        ({"min": 5, "max": 4}, ValueError, "min must be <= max"),
        ({"initial": 200, "max": 100}, ValueError, "initial must be within [min, max]"),
        ({"min": 1.5}, TypeError, "min"),
        ({"algorithm": "aimd"}, TypeError, "poolkit.Gradient or poolkit.AIMD"),
        ({"probe_interval": 0}, ValueError, "probe_interval"),
        ({"max_pause": -1}, ValueError, "-1"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict[str, object], error: type, words: str) -> None:
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        AdaptiveLimiter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: Gradient(tolerance=1.0), "tolerance"),
        (lambda: Gradient(smoothing=0), "smoothing"),
        (lambda: AIMD(backoff=1.0), "backoff"),
        (lambda: AIMD(step=0), "step"),
        (lambda: AIMD(tolerance="2"), "tolerance must be a number"),
    ],
)
def test_bad_algorithm_settings_name_themselves(make: object, words: str) -> None:
    with pytest.raises((ValueError, TypeError), match=words):
        make()  # type: ignore[operator]


def test_the_total_is_the_algorithms_and_heavy_weights_are_refused() -> None:
    limiter = AdaptiveLimiter(min=2, max=50)
    assert limiter.total == 10 and limiter.min == 2 and limiter.max == 50
    with pytest.raises(AttributeError, match="sets its own total"):
        limiter.total = 5
    with pytest.raises(ValueError, match="exceeds the adaptive limiter's min 2"):
        limiter.try_acquire(3)
    assert limiter.try_acquire(2)
    limiter.release(2)
    assert AdaptiveLimiter(max=4).total == 4
    assert AdaptiveLimiter(min=30, max=50).total == 30
    with pytest.raises(TypeError, match="retry_after"):
        limiter.overloaded(retry_after="5")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="retry_after must be >= 0"):
        limiter.overloaded(retry_after=-1)


# ----------------------------------------------------------------------- measurement


async def _sections(limiter: AdaptiveLimiter, n: int, seconds: float, tasks: int) -> None:
    async def one() -> None:
        for _ in range(n):
            async with limiter:
                await asyncio.sleep(seconds)

    async with asyncio.TaskGroup() as tg:
        for _ in range(tasks):
            tg.create_task(one())


def test_latency_is_measured_from_grant_to_release() -> None:
    async def main() -> poolkit.AdaptiveLimiterStatistics:
        limiter = AdaptiveLimiter(initial=4, max=4, probe_interval=None)
        await _sections(limiter, 10, 0.25, 8)  # 8 tasks: half of them wait, uncounted
        return limiter.statistics()

    s = run(main)
    assert s.samples_total == 80
    assert s.latency == pytest.approx(0.25)
    assert s.no_load_latency == pytest.approx(0.25)
    assert s.peak_borrowed == 4 and s.borrowed == 0 and s.waiting == 0


def test_the_limit_grows_while_latency_stays_at_no_load() -> None:
    async def main() -> tuple[int, int]:
        limiter = AdaptiveLimiter(initial=4, max=40)
        await _sections(limiter, 30, 0.1, 40)
        return limiter.total, limiter.statistics().increases_total

    total, increases = run(main)
    assert total > 20 and increases > 5


@pytest.mark.parametrize("algorithm", [Gradient(), AIMD()])
def test_many_overloads_at_once_cut_the_limit_once(algorithm: Gradient | AIMD) -> None:
    """Ten sections that meet a 503 together are one window: one decrease, not ten."""

    async def main() -> tuple[float, float, int, int]:
        limiter = AdaptiveLimiter(initial=20, max=40, algorithm=algorithm, probe_interval=None)
        await _sections(limiter, 3, 0.1, 20)  # first windows: the no-load latency
        before = limiter.limit
        cuts = limiter.statistics().decreases_total

        async def overloaded() -> None:
            async with limiter:
                await asyncio.sleep(0.01)
                limiter.overloaded()

        async with asyncio.TaskGroup() as tg:
            for _ in range(10):
                tg.create_task(overloaded())
            tg.create_task(_sections(limiter, 3, 0.1, 10))  # traffic goes on: windows end
        s = limiter.statistics()
        return before, limiter.limit, s.decreases_total - cuts, s.samples_total

    before, after, cuts, samples = run(main)
    assert cuts == 1
    # AIMD's backoff is 0.9; the gradient's 0.5, taken with smoothing 0.2, is 0.9 too.  Ten
    # cuts would have left 0.9 ** 10 = 35 %.
    assert after >= before * 0.9 - 1e-9
    assert samples == 90  # the overloaded sections were not measured


def test_one_slow_section_does_not_collapse_the_limit() -> None:
    async def main() -> tuple[float, float]:
        limiter = AdaptiveLimiter(initial=20, max=40)

        async def slow() -> None:
            async with limiter:
                await asyncio.sleep(60)  # one request stuck for a minute

        await _sections(limiter, 5, 0.1, 20)
        before = limiter.limit
        async with asyncio.TaskGroup() as tg:
            tg.create_task(slow())
            tg.create_task(_sections(limiter, 700, 0.1, 19))
        return before, limiter.limit

    before, after = run(main)
    assert after >= 0.9 * before


# ----------------------------------------------------------------------- Retry-After


def test_retry_after_pauses_new_grants_and_timeouts_count_it() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = AdaptiveLimiter(max_pause=30)
        async with limiter:
            limiter.overloaded(retry_after=5)
        t0 = loop.time()
        assert limiter.statistics().paused_for == pytest.approx(5)
        assert not limiter.try_acquire()
        with pytest.raises(TimeoutError, match="paused for 5 s"):
            await limiter.acquire(timeout=1)
        assert loop.time() == t0  # a pause past the timeout fails at once
        await limiter.acquire(timeout=6)
        assert loop.time() == pytest.approx(t0 + 5)
        limiter.release()
        limiter.overloaded(retry_after=3600)  # capped at max_pause
        assert limiter.statistics().paused_for == pytest.approx(30)
        limiter.overloaded(retry_after=1)  # a shorter one keeps the longer pause
        assert limiter.statistics().paused_for == pytest.approx(30)
        waiter = asyncio.create_task(limiter.acquire())
        await asyncio.sleep(10)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert limiter.borrowed == 0  # a cancelled wait holds nothing
        s = limiter.statistics()
        assert s.overloads_total == 3 and s.acquired_total == 2

    run(main)


def test_threads_use_it_too() -> None:
    limiter = AdaptiveLimiter(initial=3, max=3, probe_interval=None)
    inside = 0
    most = 0
    lock = threading.Lock()

    def work() -> None:
        nonlocal inside, most
        for _ in range(20):
            with limiter:
                with lock:
                    inside += 1
                    most = max(most, inside)
                threading.Event().wait(0.001)
                with lock:
                    inside -= 1

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = limiter.statistics()
    assert most <= 3 and s.samples_total == 120 and s.borrowed == 0
    assert s.latency > 0


# ----------------------------------------------------------------------- as a CapacityLimiter


def test_it_works_in_limits_per_key_and_a_pool() -> None:
    async def main() -> None:
        per_host = PerKey(lambda: AdaptiveLimiter(initial=2, max=8, name="host"))
        limits = Limits(CapacityLimiter(16), per_host)
        inside: dict[str, int] = {"a": 0, "b": 0}
        most: dict[str, int] = {"a": 0, "b": 0}

        async def fetch(host: str) -> str:
            async with limits.hold(key=host):
                inside[host] += 1
                most[host] = max(most[host], inside[host])
                await asyncio.sleep(0.1)
                inside[host] -= 1
            return host

        async with poolkit.WorkerPool(workers=32) as pool:
            results = [r async for r in pool.map(fetch, ["a", "b"] * 50)]
        assert sorted(results) == sorted(["a", "b"] * 50)
        assert most["a"] <= 8 and most["b"] <= 8
        s = per_host.statistics_for("a")
        assert isinstance(s, poolkit.AdaptiveLimiterStatistics)
        assert s.samples_total == 50

        adaptive = AdaptiveLimiter(initial=2, max=2)
        async with poolkit.WorkerPool(workers=8, limit=adaptive) as pool:
            assert sorted([r async for r in pool.map(fetch, ["a"] * 6)]) == ["a"] * 6
        assert adaptive.statistics().samples_total == 6

    run(main)


def test_statistics_and_metrics_show_the_limit_and_latencies() -> None:
    async def main() -> str:
        limiter = AdaptiveLimiter(initial=4, max=4, name="api", probe_interval=None)
        await _sections(limiter, 5, 0.5, 4)
        limiter.overloaded()
        assert "no_load=0.5s" in repr(limiter)
        return exposition()

    lines = run(main).splitlines()
    assert 'poolkit_adaptive_limit{limiter="api"} 4' in lines  # at max: it grew no further
    assert 'poolkit_adaptive_latency_seconds{limiter="api"} 0.5' in lines
    assert 'poolkit_adaptive_no_load_latency_seconds{limiter="api"} 0.5' in lines
    assert 'poolkit_adaptive_overloads_total{limiter="api"} 1' in lines
    assert 'poolkit_limiter_total_tokens{limiter="api"} 4' in lines
    assert 'poolkit_limiter_peak_borrowed_tokens{limiter="api"} 4' in lines


# ----------------------------------------------------------------------- stress


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), algorithm=st.sampled_from(["gradient", "aimd"]))
def test_random_sections_overloads_pauses_and_cancellations_keep_the_books(
    seed: int, algorithm: str
) -> None:
    """Tasks hold sections of random length, report random overloads (some with a pause), and
    are cancelled at random moments, waiting or holding.  A grant never takes the limiter past
    its total as it is then, a cancelled acquire holds nothing, and at the end nothing is held,
    nobody waits and no section is left open."""
    from poolkit._primitives import _adaptive

    rng = random.Random(seed)

    class Recording(AdaptiveLimiter):
        """Keeps every total it moves to, so that a grant can be checked against the totals
        it may have been made under (a task granted a unit runs a little later, perhaps after
        the total shrank again)."""

        __slots__ = ("totals",)

        def _set_total(self, value: int) -> None:
            self.totals.append(value)
            super()._set_total(value)

    async def main() -> None:
        limiter = Recording(
            initial=rng.randint(1, 8),
            max=rng.randint(8, 16),
            algorithm=Gradient() if algorithm == "gradient" else AIMD(),
            probe_interval=rng.choice([None, 2.0, 5.0]),
            max_pause=0.5,
        )
        limiter.totals = [limiter.total]
        over_total: list[tuple[int, int]] = []

        async def one() -> None:
            for _ in range(rng.randint(1, 15)):
                await asyncio.sleep(rng.random() * 0.02)
                since = len(limiter.totals) - 1  # the total when this task began to wait
                async with limiter:
                    allowed = max(limiter.totals[since:])
                    if limiter.borrowed > allowed or limiter.borrowed > limiter.max:
                        over_total.append((limiter.borrowed, allowed))
                    await asyncio.sleep(rng.expovariate(20))
                    if rng.random() < 0.1:
                        limiter.overloaded(retry_after=rng.choice([None, 0.0, 0.2, 5.0]))

        tasks = [asyncio.create_task(one()) for _ in range(rng.randint(5, 40))]
        for _ in range(rng.randint(0, 10)):
            await asyncio.sleep(rng.random() * 0.5)
            rng.choice(tasks).cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        s = limiter.statistics()
        assert not over_total
        assert s.borrowed == 0 and s.waiting == 0
        assert limiter.min <= s.total <= limiter.max
        assert not any(
            section.limiter is limiter
            for sections in _adaptive._SECTIONS.values()
            for section in sections
        )

    run(main)


def test_a_pause_holds_back_waiters_queued_before_it() -> None:
    """A waiter queued before the pause began is not granted during it: a grant that finds a
    pause running is given back and waits the pause out."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        limiter = AdaptiveLimiter(initial=1, max=1, probe_interval=None)
        await limiter.acquire()
        granted: list[float] = []

        async def waiter() -> None:
            async with limiter:
                granted.append(loop.time())

        task = asyncio.create_task(waiter())
        await asyncio.sleep(0.01)
        t0 = loop.time()
        limiter.overloaded(retry_after=1)
        limiter.release()
        await task
        assert granted and granted[0] >= t0 + 1
        assert limiter.borrowed == 0

    run(main)
