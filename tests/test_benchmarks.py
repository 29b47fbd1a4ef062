"""Smoke test: every benchmark still runs (at a tiny size) and prints its comparison row."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator

import pytest

from benchmarks import __main__ as bench
from benchmarks import _harness
from tests.redis_support import require_redis


def _is_redis(suite: _harness.Suite) -> bool:
    return suite.name.startswith("redis ")


def _is_process(suite: _harness.Suite) -> bool:
    from benchmarks import bench_process

    return suite in bench_process.SUITES


def _check_table(out: str, suites: list[_harness.Suite]) -> None:
    for suite in suites:
        assert suite.name in out
        for case in suite.cases:
            assert case.name in out
        assert sum(c.poolkit for c in suite.cases) == 1, "exactly one poolkit case per suite"
        assert len(suite.cases) >= 2, "every suite compares poolkit with an alternative"
    # An alternative's row ends in two ratios: best against best, and the median by round.
    ratios = re.findall(r"\s(\d+\.\d\d)\s+(\d+\.\d\d)\s*$", out, flags=re.MULTILINE)
    assert len(ratios) == sum(len(s.cases) - 1 for s in suites if s.kind == "time")
    figures = re.findall(r"\s-\s+-\s*$", out, flags=re.MULTILINE)
    assert len(figures) == sum(len(s.cases) for s in suites if s.kind == "figure")


def _require_redis_server() -> None:
    require_redis(" (the Redis benchmarks need it)")
    if shutil.which("redis-server") is None:
        message = "redis-server is not on PATH: the Redis benchmarks count commands on their own"
        if os.environ.get("POOLKIT_REQUIRE_REDIS") == "1":
            pytest.fail(message)
        pytest.skip(message)


# Every suite but the Redis and process ones (below) once, with fresh interpreters for the memory
# figures and a 1,000-thread pool: about 30 s on an idle 2-core machine, several times that when
# it is shared.
@pytest.mark.timeout(600)
def test_benchmarks_run_at_tiny_scale(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    others = [s for s in _harness.suites() if not _is_redis(s) and not _is_process(s)]
    monkeypatch.setattr(_harness, "_SUITES", others)
    assert bench.main(["--scale", "0.001", "--repeat", "1"]) == 0
    _check_table(capsys.readouterr().out, others)


@contextlib.contextmanager
def _own_redis_server_stopped() -> Iterator[None]:
    """The Redis suite keeps a redis-server of its own until exit (for its command counts); the
    leak check, which counts child processes, wants it gone with the test that started it."""
    from benchmarks import bench_redis

    try:
        yield
    finally:
        if bench_redis.OWN.server is not None:
            bench_redis.OWN.server.stop()


# The Redis suites: about 35 s at this size (an 8-process run per library, waits of 0.5 s).
@pytest.mark.timeout(300)
def test_redis_benchmarks_run_at_tiny_scale(capsys: pytest.CaptureFixture[str]) -> None:
    _require_redis_server()
    with _own_redis_server_stopped():
        assert bench.main(["--only", "redis ", "--scale", "0.001", "--repeat", "1"]) == 0
    _check_table(capsys.readouterr().out, [s for s in _harness.suites() if _is_redis(s)])


# The process pool suites: every case runs in an interpreter of its own, which starts its pool and
# waits for both workers; about 20 s on an idle 2-core machine (a new interpreter and pool per
# case, two job timeouts of 0.2 s).
@pytest.mark.timeout(300)
def test_process_benchmarks_run_at_tiny_scale_and_get_every_result(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each case's child checks what it got back (as many results as items, each the value
    expected, in order) and reports; here every case must have reported, all of it right.  A
    case that dropped results or got wrong values would make its pool look faster."""
    from benchmarks import bench_process

    reports: dict[str, tuple[int, dict[str, object]]] = {}
    real_run_case = bench_process.run_case

    def recording(case: str, n: int) -> dict[str, object]:
        report = real_run_case(case, n)
        reports[case] = (n, report)
        return report

    monkeypatch.setattr(bench_process, "run_case", recording)
    monkeypatch.setattr(_harness, "_SUITES", bench_process.SUITES)
    assert bench.main(["--scale", "0.001", "--repeat", "1"]) == 0
    _check_table(capsys.readouterr().out, bench_process.SUITES)
    assert sorted(reports) == sorted(bench_process.CHILD_CASES.values())
    for case, (n, report) in reports.items():
        assert n >= 1
        assert report["results"] == n, case
        assert report["correct"] is True, (case, report)
    # The timeout cases: every hanging job failed with TimeoutError (``correct``), and
    # poolkit's pool killed each hanging job's worker.
    n, report = reports["timeout:poolkit"]
    assert report["killed"] == bench_process.WORKERS * n, report


@pytest.mark.parametrize(
    "report",
    [
        '{"seconds": 0.1, "results": 9, "correct": true}',  # one result lost
        '{"seconds": 0.1, "results": 10, "correct": false}',  # a wrong value, or out of order
    ],
)
def test_a_process_case_with_a_wrong_answer_is_refused(
    monkeypatch: pytest.MonkeyPatch, report: str
) -> None:
    from benchmarks import bench_process

    def child(*args: object, **kwargs: object) -> object:
        return subprocess.CompletedProcess(args, 0, stdout=report + "\n", stderr="")

    monkeypatch.setattr(bench_process.subprocess, "run", child)
    with pytest.raises(AssertionError, match="wrong answer"):
        bench_process.run_case("map:poolkit", 10)


@pytest.mark.timeout(120)
def test_every_redis_case_goes_to_redis_for_every_acquire() -> None:
    """A case that answered without Redis (a local fallback, a cached verdict) would look fast:
    every token bucket case sends at least one command per acquire, every capacity case at least
    two per acquire+release, counted by MONITOR on the benchmark's own server."""
    _require_redis_server()
    from benchmarks import bench_redis

    with _own_redis_server_stopped():
        for cls in bench_redis.BUCKETS:
            assert bench_redis._count_run(cls, 60)[0] >= 1, cls.name
        for slots in bench_redis.SLOTS:
            assert bench_redis._slots_count(slots)(60) >= 2, slots.name


def test_benchmark_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--scale", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--only", "no such benchmark"])


def test_the_ratio_by_round_is_the_median_of_each_rounds_ratio() -> None:
    """poolkit takes twice its alternative's time in two rounds of three; one lucky run of it
    (and an unlucky one of the alternative) makes best-of say 1.0, the ratio by round 2.0.
    Rounds alternate the order of the cases."""
    times = {"mine": iter([1.0, 2.0, 2.0]), "theirs": iter([5.0, 1.0, 1.0])}  # µs, by round
    calls: list[str] = []

    def case(name: str) -> Callable[[int], float]:
        def run(n: int) -> float:
            calls.append(name)
            return next(times[name]) * 1e-6

        return run

    suite = _harness.Suite("noise", unit="op", items=1)
    suite.cases += [
        _harness.Case("mine", case("mine"), poolkit=True),
        _harness.Case("theirs", case("theirs")),
    ]
    rows = {r.case: r for r in _harness.measure(suite, scale=1.0, repeat=3)}
    assert rows["mine"].paired is None
    assert rows["theirs"].paired == pytest.approx(2.0)
    assert rows["mine"].per_op_us / rows["theirs"].per_op_us == pytest.approx(1.0)
    assert calls == ["mine", "theirs", "theirs", "mine", "mine", "theirs"]


def test_every_pool_case_does_the_whole_work_and_poolkit_runs_at_its_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A case that skipped jobs, dropped results or gave the pool a deeper queue than a user
    gets would look faster than it is: every case of the pool benchmarks must call the job once
    per item and collect every result, and poolkit's must build ``WorkerPool(workers=64)``
    with nothing else."""
    import poolkit
    from benchmarks import bench_pools

    built: list[dict[str, object]] = []

    class Recording(poolkit.WorkerPool):  # type: ignore[misc]
        def __init__(self, **options: object) -> None:
            built.append(options)
            super().__init__(**options)  # type: ignore[arg-type]

    monkeypatch.setattr(poolkit, "WorkerPool", Recording)
    pool_suites = [
        s for s in _harness.suites() if s.kind == "time" and "workers, through" in s.name
    ]
    assert len(pool_suites) == 6, [s.name for s in pool_suites]
    for suite in pool_suites:
        for case in suite.cases:
            n = 300 if "I/O" not in suite.name else 130
            built.clear()
            bench_pools.CALLS[0] = bench_pools.CHECK[0] = 0
            case.run(n)
            assert bench_pools.CALLS[0] == n, (suite.name, case.name)
            assert bench_pools.CHECK[0] == n * (n - 1), (suite.name, case.name)  # sum of 2i
            if case.poolkit:
                assert built == [{"workers": bench_pools.WORKERS}], (suite.name, built)
            else:
                assert built == [], (suite.name, case.name)
