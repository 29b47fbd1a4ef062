"""``poolkit demo``, the README's main job: it crawls, shows counters, catches a leak, exits 0."""

from __future__ import annotations

import asyncio
import io
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
    assert "crawled 30 pages" in done.stdout
    assert "blocked forever" in done.stdout
