"""examples/scraper.py --adaptive against a server with a real capacity.

The server (examples/scraper_server.py) serves at most ``C`` requests at once, 50 ms each,
queues nothing and answers 503 above that; it records how many it was serving at every moment.
Every claim is checked from those records, over real HTTP on 127.0.0.1: with ``--adaptive``
and a ceiling eight times too high, the scraper finds ``C`` by itself (the server is kept busy,
and few requests are turned away once it has); without ``--adaptive``, the same ceiling gets
many 503s, so the check is not vacuous.

The bounds were measured over 54 runs (3.11 and 3.13, asyncio and uvloop, 22 of them beside
three busy processes on two cores): the median in service over the second half was 7.2 to 7.8
of 8 (median 7.7), and 503s were 0.3 % to 10.6 % of the answers after the first second (median
5 %; 50 % to 68 % without ``--adaptive``).  They are asserted with room: at least ``0.6 C`` in
service, at most 20 % of 503s (at least 30 % without).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.redis_support import redis_prefix, redis_url
from tests.scraper_server import Reply, ScraperServer

__all__ = ["redis_prefix", "redis_url"]  # fixtures, used by name

pytest.importorskip("aiohttp", reason="the scraper example needs aiohttp (the 'scraper' extra)")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
try:
    import scraper
    from scraper_server import Answer, CapacityServer
finally:
    sys.path.remove(str(ROOT / "examples"))

C = 8  # the server's capacity
SERVICE = 0.05  # seconds per request it serves
CEILING = 64  # --per-host: eight times too many
WARM_UP = 1.0  # seconds from the first answer before the 503s are counted


def settings(**changes: Any) -> scraper.Settings:
    """Every URL must end fetched: many attempts, with short waits between them."""
    base = scraper.Settings(
        concurrency=CEILING,
        per_host=CEILING,
        rate=None,
        attempts=30,
        backoff=0.05,
        max_backoff=0.5,
        jitter=0.05,
        timeout=5,
    )
    return dataclasses.replace(base, **changes)


def fetched_once(answers: list[Answer], paths: list[str]) -> bool:
    """Each path was answered 200 exactly once (503s are turned away: not fetched)."""
    return Counter(a.path for a in answers if a.status == 200) == Counter(paths)


def busy_share(answers: list[Answer]) -> float:
    """The share of 503s among the answers after the warm-up."""
    after = [a for a in answers if a.at >= answers[0].at + WARM_UP]
    return sum(a.status == 503 for a in after) / len(after)


def settled_in_service(server: CapacityServer, answers: list[Answer]) -> float:
    """The median, over the 50 ms slices of the second half of the run, of the requests the
    server was serving (each slice's time-weighted mean)."""
    first, last = answers[0].at, answers[-1].at
    slices = server.occupancy(first + (last - first) / 2, last)
    return statistics.median(s.mean for s in slices)


async def test_adaptive_finds_the_hosts_capacity_by_itself() -> None:
    n = 480  # about 3.5 s at C / SERVICE = 160 a second
    with CapacityServer(C, service_time=SERVICE) as server:
        paths = [f"/page/{i}" for i in range(n)]
        results: list[dict[str, Any]] = []
        run = scraper.Scraper(settings(adaptive=True), write=results.append)
        summary = await run.run([server.url(p) for p in paths])
        answers = server.answers
        settled = settled_in_service(server, answers)
        turned_away = busy_share(answers)
    figures = (
        f"settled at {settled:.2f} in service (capacity {C}), {turned_away:.1%} 503s after "
        f"the warm-up, final limit {summary.hosts[server.host].limit}, "
        f"{len(answers)} answers in {answers[-1].at - answers[0].at:.1f} s"
    )
    print(figures)  # shown with -s, and with a failure
    assert (summary.ok, summary.failed, summary.unfetched) == (n, 0, []), figures
    assert sorted(r["url"] for r in results) == sorted(server.url(p) for p in paths)
    assert fetched_once(answers, paths), figures
    # Busy, never over (the server cannot be), and hardly ever turned away.
    assert 0.6 * C <= settled <= C, figures
    assert turned_away <= 0.2, figures
    # The limit came down from 10 and stayed near C instead of climbing to the ceiling.
    limit = summary.hosts[server.host].limit
    assert limit is not None and limit <= 2 * C, figures
    # Retries are the 503s: one more attempt each, and nothing else.
    assert summary.retries == sum(a.status == 503 for a in answers), figures


async def test_a_fixed_cap_too_high_gets_many_503s() -> None:
    """The same server and ceiling without --adaptive: the scraper sends 64 at a time, and
    the server turns most of them away (their retries keep coming, with backoff)."""
    n = 200
    with CapacityServer(C, service_time=SERVICE) as server:
        paths = [f"/page/{i}" for i in range(n)]
        summary = await scraper.run([server.url(p) for p in paths], settings())
        answers = server.answers
        turned_away = busy_share(answers)
    print(f"fixed cap {CEILING}: {turned_away:.1%} 503s after the warm-up")
    assert (summary.ok, summary.failed, summary.unfetched) == (n, 0, [])
    assert summary.hosts[server.host].limit is None  # no adaptive limit to show
    assert fetched_once(answers, paths)
    assert turned_away >= 0.3, f"only {turned_away:.1%} 503s after the warm-up"


async def test_adaptive_a_retry_after_pauses_the_whole_host() -> None:
    """A 503 with Retry-After pauses every request to its host (the adaptive limiter's pause),
    not only the retry of the URL that got it; the other hosts go on."""
    with ScraperServer(hosts=2, default=Reply(delay=0.02)) as server:
        busy = server.script(0, "/busy", Reply(503, retry_after=1), Reply())
        same_host = [server.url(0, f"/later/{i}") for i in range(4)]
        other_host = [server.url(1, f"/calm/{i}") for i in range(4)]
        # A ceiling of 1: the host's requests go one at a time, /busy first.
        summary = await scraper.run(
            [busy, *same_host, *other_host], settings(adaptive=True, per_host=1)
        )
        arrivals = server.arrivals
    assert (summary.ok, summary.failed, summary.retries) == (9, 0, 1)
    refused = next(a for a in arrivals if a.status == 503)
    assert refused.path == "/busy" and refused.not_before is not None
    later = [a for a in arrivals if a.host == server.hosts[0] and a is not refused]
    assert len(later) == 5 and all(a.at >= refused.not_before for a in later), later
    calm = [a.at for a in arrivals if a.host == server.hosts[1]]
    assert len(calm) == 4 and min(calm) < refused.not_before
    assert summary.hosts[server.hosts[0]].limit == 1


async def test_adaptive_limits_under_a_ceiling_shared_in_redis(
    redis_url: str, redis_prefix: str
) -> None:
    """--redis --adaptive: each of two scrapers adapts its own limit per host, under the
    global cap and the per-host ceiling that they share in Redis.  The ceiling (3 for both
    together) is below the capacity, so the server never turns one away, and is never
    asked for more than 3 at once."""
    n = 60
    with CapacityServer(C, service_time=SERVICE) as server:
        parts = [[f"/p{i}/{k}" for k in range(n)] for i in (0, 1)]
        shared = settings(
            adaptive=True, per_host=3, concurrency=4, redis=redis_url, redis_prefix=redis_prefix
        )
        runs = [scraper.Scraper(shared) for _ in parts]
        summaries = await asyncio.gather(
            *(r.run([server.url(p) for p in part]) for r, part in zip(runs, parts, strict=True))
        )
        answers = server.answers
        peak = max(s.peak for s in server.occupancy(answers[0].at, answers[-1].at))
    for summary in summaries:
        assert (summary.ok, summary.failed, summary.unfetched) == (n, 0, [])
        limit = summary.hosts[server.host].limit
        assert limit is not None and 1 <= limit <= 3
    assert fetched_once(answers, parts[0] + parts[1])
    assert all(a.status == 200 for a in answers)
    assert peak <= 3
    # Both were at the server at once (the ceiling was shared, not each one's own).
    spans = [[a.at for a in answers if a.path.startswith(f"/p{i}/")] for i in (0, 1)]
    assert max(min(t) for t in spans) < min(max(t) for t in spans)


def test_the_help_says_when_to_use_adaptive() -> None:
    text = " ".join(scraper._parser().format_help().split())
    assert "--adaptive use when you do not know each host's capacity" in text, text
    assert "starts at 10 (or --per-host if lower)" in text and "up to --per-host" in text
    assert scraper._settings(scraper._parser().parse_args(["--adaptive"])).adaptive
    assert not scraper._settings(scraper._parser().parse_args([])).adaptive


def test_adaptive_as_commands_against_the_example_server(tmp_path: Path) -> None:
    """Both examples as commands: the server prints its address, the scraper shows each
    host's limit in its progress, and Ctrl-C makes the server print what it saw."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "scraper_server.py"), "--capacity", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert server.stdout is not None
        host = server.stdout.readline().strip()
        assert host.startswith("127.0.0.1:"), host
        urls = "".join(f"http://{host}/doc/{i}\n" for i in range(60))
        out = tmp_path / "out.jsonl"
        done = subprocess.run(
            [
                sys.executable,
                str(ROOT / "examples" / "scraper.py"),
                *["-", "-o", str(out), "--adaptive", "--per-host", "32", "--rate", "none"],
                *["--backoff", "0.05", "--jitter", "0.05", "--attempts", "20"],
                *["--progress", "plain", "--progress-interval", "0.2"],
            ],
            input=urls,
            capture_output=True,
            text=True,
            env=env,
            timeout=30,
            check=False,
        )
        assert done.returncode == scraper.EXIT_OK, done.stderr
        assert f"{host}[done=" in done.stderr and " limit=" in done.stderr, done.stderr
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(r["url"] for r in records) == sorted(urls.split())
        server.send_signal(signal.SIGINT)
        _, report = server.communicate(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert server.returncode == 0, report
    assert "second  answers  503s  in service: median  peak" in report, report
    assert "Traceback" not in report, report


def test_the_servers_occupancy_is_time_weighted() -> None:
    server = CapacityServer(4)
    server._steps = [(0.0, 0), (0.01, 1), (0.03, 2), (0.07, 1), (0.12, 0)]
    slices = server.occupancy(0.0, 0.15, length=0.05)
    assert [round(s.mean, 6) for s in slices] == [1.2, 1.4, 0.4]
    assert [s.peak for s in slices] == [2, 2, 1]
    assert [round(s.start, 6) for s in slices] == [0.0, 0.05, 0.1]
