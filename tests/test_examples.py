"""The examples and the README's code run, so the documentation cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests import markdown

ROOT = Path(__file__).resolve().parent.parent


def test_channel_shutdown_example_runs_as_a_command() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "channel_shutdown.py"), "--jobs", "300"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "submitted 1200 jobs" in proc.stdout
    assert "duplicates: 0, missing: 0" in proc.stdout
    assert "OK: every job ran exactly once" in proc.stdout


def test_channel_shutdown_example_accounts_for_every_job() -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import channel_shutdown
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import asyncio

    report = asyncio.run(channel_shutdown.run(jobs_per_producer=250, workers=5, capacity=4))
    assert report.submitted == report.processed == 1000
    assert (report.duplicates, report.missing, report.tasks_left) == (0, 0, 0)
    assert sum(report.per_worker.values()) == 1000
    assert len(report.per_worker) == 5
    assert report.jobs.closed
    assert report.jobs.peak_buffered <= 4


def test_rate_limited_fanout_example_runs_on_virtual_time() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "rate_limited_fanout.py"), "--virtual"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "120 fetches to 6 hosts" in proc.stdout
    assert "OK: every limit held" in proc.stdout


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_rate_limited_fanout_example_holds_every_limit(seed: int) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import rate_limited_fanout
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import asyncio

    from poolkit.testing import VirtualTimeLoop

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        report = runner.run(rate_limited_fanout.run(items=80, concurrency=3, rate=20, seed=seed))
    assert report.items == 80
    assert report.peak_in_flight == 3
    assert report.worst_global_excess <= 1e-9
    assert report.worst_host_excess <= 1e-9
    # 80 starts at 20/s with a burst of 2 cannot take less than (80 - 2) / 20 seconds
    assert report.seconds >= (80 - 2) / 20


@pytest.mark.parametrize("extra", [[], ["--cancel-after", "0.1"]])
def test_worker_pool_example_runs_as_a_command(extra: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "worker_pool.py"), "--jobs", "150", *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK: the books balance and no task is left" in proc.stdout
    assert "<WorkerPool 'go-example' workers=5/5" in proc.stdout  # live counters were shown


@pytest.mark.parametrize("cancel_after", [None, 0.05, 0.3])
def test_worker_pool_example_accounts_for_every_job(cancel_after: float | None) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import worker_pool
    finally:
        sys.path.remove(str(ROOT / "examples"))
    import asyncio

    report = asyncio.run(worker_pool.run(jobs=120, workers=4, cancel_after=cancel_after))
    s = report.stats
    assert report.balanced
    assert (s.workers, report.tasks_left, s.queued, s.running) == (0, 0, 0, 0)
    assert report.results == s.succeeded
    assert report.errors == s.failed
    assert report.handed_back == s.handed_back
    if cancel_after is None:
        assert s.submitted == 120
        assert s.succeeded + s.failed == 120
        assert s.failed == 120 // 37  # jobs 36, 73 and 110 fail on purpose


def readme_blocks() -> list[str]:
    return markdown.python_blocks(ROOT / "README.md")


def test_readme_has_python_examples() -> None:
    assert len(readme_blocks()) >= 3


@pytest.mark.parametrize("index", range(len(readme_blocks())))
def test_readme_python_block_runs(index: int) -> None:
    markdown.run_block(ROOT / "README.md", index)


def test_readme_has_exactly_two_setup_commands_and_ci_uses_the_test_one() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"<!-- setup: (\w+) -->\n```(?:bash|sh)\n(.*?)\n```", text)
    assert [kind for kind, _ in commands] == ["main", "test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "<!-- setup: test -->" in ci, ".ci/run must read the test command from the README"
