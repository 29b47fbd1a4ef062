"""Smoke test: every benchmark still runs (at a tiny size) and prints its comparison row."""

from __future__ import annotations

import re

import pytest

from benchmarks import __main__ as bench
from benchmarks import _harness


def test_benchmarks_run_at_tiny_scale(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench.main(["--scale", "0.001", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for suite in _harness.suites():
        assert suite.name in out
        for case in suite.cases:
            assert case.name in out
        assert sum(c.poolkit for c in suite.cases) == 1, "exactly one poolkit case per suite"
        assert len(suite.cases) >= 2, "every suite compares poolkit with an alternative"
    ratios = re.findall(r"\s(\d+\.\d\d)\s*$", out, flags=re.MULTILINE)
    expected = sum(len(s.cases) - 1 for s in _harness.suites() if s.kind == "time")
    assert len(ratios) == expected
    figures = re.findall(r"\s-\s*$", out, flags=re.MULTILINE)
    assert len(figures) == sum(len(s.cases) for s in _harness.suites() if s.kind == "figure")


def test_benchmark_cli_rejects_bad_arguments() -> None:
    with pytest.raises(SystemExit):
        bench.main(["--scale", "0"])
    with pytest.raises(SystemExit):
        bench.main(["--only", "no such benchmark"])
