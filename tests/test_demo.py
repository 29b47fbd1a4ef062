"""``poolkit demo``, the README's main job: it crawls, shows counters, catches a leak, exits 0."""

from __future__ import annotations

import asyncio
import gc
import io
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poolkit._tools import _demo

ROOT = Path(__file__).resolve().parent.parent


def test_the_demo_accounts_for_every_page_and_catches_the_leak() -> None:
    out = io.StringIO()
    code = asyncio.run(_demo.run(pages=40, workers=8, seed=3, out=out))
    text = out.getvalue()
    assert code == 0, text
    assert "crawled 40 pages, 0 failed" in text  # every flaky page succeeded on a retry
    assert "pool 'crawler': workers 0 (busy 0) | queued   0 | done  40" in text
    assert "LeakError: 1 task still alive 0.2 s after the block ended" in text
    assert "1 @ chan receive, blocked forever" in text
    assert "#\tcreated by poolkit._tools._demo.leak\t" in text  # where the leaked task was made


def test_the_leaked_task_is_ended_before_the_collector_can_destroy_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Regression: the leaked task was cancelled only after the collector was switched back on;
    # a collection in between (it happened from a wheel install) destroyed the still-pending
    # task and asyncio printed "Task was destroyed but it is pending!" at the end of the demo.
    # Here a collection runs at that very moment.
    enable = gc.enable  # (the demo's gc is the gc module: patched for this test only)

    def enable_and_collect() -> None:
        enable()
        gc.collect()

    monkeypatch.setattr(_demo.gc, "enable", enable_and_collect)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        code = asyncio.run(_demo.run(pages=10, workers=4, seed=1, out=io.StringIO()))
        gc.collect()
    assert code == 0
    assert not [r for r in caplog.records if "destroyed" in r.getMessage()], caplog.text


def test_the_demo_rejects_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _demo.main(["--pages", "0"])
    assert exit_info.value.code == 2
    assert "--pages and --workers must be at least 1" in capsys.readouterr().err


def test_poolkit_demo_runs_as_a_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "poolkit", "demo", "--pages", "30"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Task was destroyed" not in done.stderr + done.stdout
    assert "crawled 30 pages" in done.stdout
    assert "blocked forever" in done.stdout
