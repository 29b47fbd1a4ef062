"""examples/from_go.md, the guide for Go programmers: its Python blocks run, and it covers the
Go idioms of the article poolkit grew from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests import markdown

ROOT = Path(__file__).resolve().parent.parent
GUIDE = ROOT / "examples" / "from_go.md"


def guide_text() -> str:
    return GUIDE.read_text(encoding="utf-8")


def python_blocks() -> list[str]:
    return markdown.python_blocks(GUIDE)


def headings() -> list[str]:
    return [h.strip() for h in re.findall(r"^#{2,3} (.+)$", guide_text(), flags=re.MULTILINE)]


def test_guide_has_enough_python_examples() -> None:
    assert len(python_blocks()) >= 8


@pytest.mark.parametrize(
    "words",
    [
        # goroutine leaks, and each way of finding them
        ("goroutine leaks",),
        ("pprof", "snapshot"),
        ("debug.serve", "poolkit dump"),
        ("counting goroutines", "watchdog"),
        ("logging start and end", "track_tasks"),
        ("goleak", "no_leaks", "--poolkit-leaks"),
        ("provably blocked", "find_blocked"),
        # the remedies
        ("cancellation and timeouts",),
        ("worker pools",),
        ("every core", "goroutines", "processes"),
        ("semaphores",),
        ("token buckets",),
        ("buffered channels and closing them",),
        ("select",),
        ("quick reference",),
    ],
)
def test_guide_covers_the_idiom(words: tuple[str, ...]) -> None:
    found = [h for h in headings() if all(w in h.lower() for w in words)]
    assert found, f"no heading of examples/from_go.md mentions {words!r}: {headings()!r}"


@pytest.mark.parametrize(
    "api",
    [
        "no_leaks(",
        "leaks.snapshot(",
        "debug.serve(",
        "leaks.Watchdog(",
        "leaks.track_tasks(",
        "leaks.find_blocked(",
        "asyncio.timeout(",
        "shutdown(timeout=",
        "WorkerPool(",
        "ThreadPool(",
        "ProcessPool(",
        "CapacityLimiter(",
        "TokenBucket(",
        "Channel(",
        "poolkit.select(",
        "ChannelClosed",
        "EndOfChannel",
    ],
)
def test_guide_runs_the_api(api: str) -> None:
    assert any(api in block for block in python_blocks()), f"no Python block uses {api}"


@pytest.mark.parametrize(
    "go",
    [
        "/debug/pprof/goroutine",
        "runtime.NumGoroutine",
        "goleak",
        "context.WithTimeout",
        "x/sync/semaphore",
        "x/time/rate",
        "close(",
        "select {",
    ],
)
def test_guide_names_the_go_side(go: str) -> None:
    assert go in guide_text()


def test_guide_puts_go_next_to_python() -> None:
    assert len(re.findall(r"^```go$", guide_text(), flags=re.MULTILINE)) >= 8


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_guide_python_block_runs(index: int) -> None:
    markdown.run_block(GUIDE, index)
