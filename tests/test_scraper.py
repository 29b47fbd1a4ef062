"""examples/scraper.py against a real local server (tests/scraper_server.py).

Every claim is checked from what the *server* saw: requests in flight per host and in all, the
arrival time of every request (for the rate windows and Retry-After), how often each URL was
asked for.  Bounds are asserted in the safe direction only; the one allowance is
``DELIVERY``: a request's arrival trails the moment it was granted its token by however long
connecting and sending took, so two arrivals can be closer together than their grants were.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import poolkit
from tests.redis_support import OwnRedisServer, own_redis, redis_prefix, redis_url
from tests.scraper_server import Arrival, Reply, ScraperServer

__all__ = ["own_redis", "redis_prefix", "redis_url"]  # fixtures, used by name

pytest.importorskip("aiohttp", reason="the scraper example needs aiohttp (the 'scraper' extra)")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
try:
    import scraper
finally:
    sys.path.remove(str(ROOT / "examples"))

DELIVERY = 0.05  # seconds a request may take from its token to the server, at most (see above)


@pytest.fixture
def server() -> Iterator[ScraperServer]:
    with ScraperServer(hosts=3, default=Reply(delay=0.02)) as srv:
        yield srv


def worst_window(times: list[float], rate: float, burst: float) -> float:
    """How far the busiest window of arrivals goes beyond ``rate * w + burst`` (<= 0: never).

    Every window that starts and ends on an arrival is checked; each is widened by
    ``DELIVERY``."""
    times = sorted(times)
    worst = -math.inf
    for i in range(len(times)):
        for j in range(i, len(times)):
            allowed = rate * (times[j] - times[i] + DELIVERY) + burst
            worst = max(worst, (j - i + 1) - allowed)
    return worst


def by_path(arrivals: list[Arrival]) -> dict[tuple[str, str], list[Arrival]]:
    out: dict[tuple[str, str], list[Arrival]] = {}
    for a in sorted(arrivals, key=lambda a: a.at):
        out.setdefault((a.host, a.path), []).append(a)
    return out


def key_of(url: str) -> tuple[str, str]:
    rest = url.split("://", 1)[1]
    host, _, path = rest.partition("/")
    return host, "/" + path


# ======================================================================= in process


async def test_every_limit_holds_and_every_url_is_fetched_once(server: ScraperServer) -> None:
    server.default = Reply(delay=0.25)  # long enough that every cap is pressed against
    urls = [server.url(n % 3, f"/page/{n}") for n in range(30)]
    results: list[dict[str, Any]] = []
    settings = scraper.Settings(concurrency=4, per_host=2, rate=10, burst=2, attempts=1)

    summary = await scraper.run(urls, settings, write=results.append)

    assert (summary.read, summary.ok, summary.failed, summary.retries) == (30, 30, 0, 0)
    assert summary.unfetched == [] and summary.stopped_by is None and summary.input_complete
    assert sorted(r["url"] for r in results) == sorted(urls)
    assert all(r["ok"] and r["status"] == 200 and r["attempts"] == 1 for r in results)
    arrivals = server.arrivals
    assert Counter((a.host, a.path) for a in arrivals) == Counter(key_of(u) for u in urls)
    for host in server.hosts:
        assert server.max_in_flight(host) <= 2
        times = [a.at for a in arrivals if a.host == host]
        assert worst_window(times, 10, 2) <= 0, host
    assert 2 <= server.max_in_flight_total <= 4


async def test_retries_back_off_honour_retry_after_and_keep_the_rate(
    server: ScraperServer,
) -> None:
    s = server
    scripted = {
        s.script(0, "/429-seconds", Reply(429, retry_after=1), Reply()): 2,
        s.script(1, "/503-date", Reply(503, retry_after_date=1), Reply()): 2,
        s.script(2, "/flaky", Reply(503), Reply(502), Reply()): 3,
        s.script(0, "/dropped", Reply(drop=True), Reply()): 2,
        s.script(2, "/slow", Reply(delay=2.0), Reply()): 2,  # past the client's timeout
        s.script(1, "/gone", Reply(404)): 1,  # not retried
        s.script(2, "/down", *[Reply(500)] * 5): 4,  # given up after 4 attempts
        s.script(0, "/later", Reply(429, retry_after=3600)): 1,  # too long to wait for
    }
    failing = {s.url(1, "/gone"): 404, s.url(2, "/down"): 500, s.url(0, "/later"): 429}
    plain = [s.url(n % 3, f"/plain/{n}") for n in range(18)]
    urls = list(scripted) + plain
    results: list[dict[str, Any]] = []
    settings = scraper.Settings(
        concurrency=6,
        per_host=2,
        rate=10,
        burst=2,
        attempts=4,
        backoff=0.05,
        jitter=0.05,
        timeout=0.5,
        max_retry_after=30,
    )

    summary = await scraper.run(urls, settings, write=results.append)

    got = {r["url"]: r for r in results}
    assert sorted(got) == sorted(urls) and len(results) == len(urls)  # each once
    for url, attempts in scripted.items():
        assert got[url]["attempts"] == attempts, got[url]
    for url in plain:
        assert got[url]["attempts"] == 1 and got[url]["ok"]
    for url, status in failing.items():
        assert not got[url]["ok"] and got[url]["status"] == status, got[url]
    assert summary.ok == len(urls) - 3 and summary.failed == 3
    assert summary.retries == sum(n - 1 for n in scripted.values())
    assert summary.unfetched == []

    paths = by_path(server.arrivals)
    # The server saw exactly the attempts the client reports, and at most one success per URL.
    for url, record in got.items():
        seen = paths[key_of(url)]
        assert len(seen) == record["attempts"], (url, seen)
        assert sum(a.status == 200 for a in seen) == (1 if record["ok"] else 0)
    # Retry-After: the retry came no earlier than the moment the server named.
    first, retry = paths[key_of(s.url(0, "/429-seconds"))]
    assert first.not_before is not None and retry.at >= first.not_before
    first, retry = paths[key_of(s.url(1, "/503-date"))]
    assert first.not_before_wall is not None and retry.wall >= first.not_before_wall
    # Backoff: each retry of /flaky waited at least the backoff (0.05 s, then 0.1 s).
    a, b, c = paths[key_of(s.url(2, "/flaky"))]
    assert b.at - a.at >= 0.05 and c.at - b.at >= 0.1
    # Retries pass the limits like first attempts: every window of every host holds.
    for host in server.hosts:
        times = [x.at for x in server.arrivals if x.host == host]
        assert worst_window(times, 10, 2) <= 0, host
    # (Host 2's abandoned slow request stays on the server's books until it sees the client
    # go; only hosts without one are held to the cap here.  The first test covers all hosts.)
    assert server.max_in_flight(server.hosts[0]) <= 2
    assert server.max_in_flight(server.hosts[1]) <= 2


async def test_each_request_on_the_wire_takes_the_limits_once(server: ScraperServer) -> None:
    """The limits are taken inside the HTTP client, once for every request the server sees,
    aiohttp's own re-send of a request on a connection the server closed included; the pool
    takes none of its own on top."""
    s = server
    dropped = [s.script(n, "/dropped", Reply(), Reply(drop=True), Reply()) for n in range(3)]
    urls = [s.url(n % 3, f"/plain/{n}") for n in range(9)]
    settings = scraper.Settings(concurrency=4, per_host=1, rate=None, attempts=1)
    results: list[dict[str, Any]] = []
    run = scraper.Scraper(settings, write=results.append)
    # Each host's requests go one at a time on one kept-alive connection: /dropped, three
    # others, and /dropped again, which the server closes the connection on without answering.
    summary = await run.run(dropped + urls + dropped)
    assert run.pool._limit is None and run._per_host is not None
    arrivals = server.arrivals
    assert len(arrivals) == 18  # 12 answered at once, 3 dropped and 3 sent again
    assert run._per_host.statistics().acquired_total == len(arrivals)
    assert (summary.ok, summary.failed, summary.retries) == (15, 0, 3)
    attempts = sorted(r["attempts"] for r in results if r["url"] in dropped)
    assert attempts == [1, 1, 1, 2, 2, 2]  # the re-send is a request the server saw


async def test_a_stop_finishes_nothing_new_and_lists_exactly_what_is_left(
    server: ScraperServer,
) -> None:
    server.default = Reply(delay=0.6)
    urls = [server.url(n % 3, f"/item/{n}") for n in range(60)]
    results: list[dict[str, Any]] = []
    settings = scraper.Settings(concurrency=6, per_host=2, rate=None, attempts=2, grace=0.1)
    run = scraper.Scraper(settings, write=results.append)

    async def stop_after_some() -> None:
        for _ in range(500):  # 10 s at most
            if sum(c.done for c in run.hosts.values()) >= 6:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # mid-request: the grace (0.1 s) will not cover them
        run.stop("test")

    stopper = asyncio.create_task(stop_after_some())
    summary = await run.run(urls)
    await stopper

    assert summary.stopped_by == "test" and summary.exit_code == scraper.EXIT_INTERRUPTED
    fetched = [r["url"] for r in results]
    assert len(fetched) == len(set(fetched)) == summary.ok + summary.failed
    assert summary.unfetched == [u for u in urls if u not in set(fetched)]  # input order
    assert summary.read == len(urls) and summary.input_complete
    # Some requests were on the wire at the stop and were cancelled: the server got them, but
    # they are listed as unfetched, to be fetched again.
    await asyncio.to_thread(server.wait_idle)  # the server books them when it sees them go
    asked = {(a.host, a.path) for a in server.arrivals}
    assert any(key_of(u) in asked for u in summary.unfetched)
    assert all(not c.in_flight and not c.waiting and not c.retrying for c in run.hosts.values())


async def test_a_failed_write_stops_the_run_and_loses_no_url(server: ScraperServer) -> None:
    urls = [server.url(n % 3, f"/w/{n}") for n in range(12)]
    written: list[str] = []

    def write(record: dict[str, Any]) -> None:
        if len(written) == 3:
            raise BrokenPipeError(32, "Broken pipe")  # say, stdout piped into head
        written.append(record["url"])

    class Closed:
        def write(self, text: str) -> int:
            raise OSError("stderr is gone")

        def flush(self) -> None:
            raise OSError("stderr is gone")

    settings = scraper.Settings(concurrency=2, per_host=1, rate=None, attempts=1, grace=1)
    run = scraper.Scraper(settings, write=write, progress=Closed())  # type: ignore[arg-type]
    summary = await run.run(urls)
    assert isinstance(run.write_error, BrokenPipeError)
    assert summary.error is not None and "BrokenPipeError" in summary.error
    assert summary.exit_code == scraper.EXIT_FAILED
    # Every URL is either written or listed for the next run, never both, never neither.
    assert sorted(written + summary.unfetched) == sorted(urls)
    assert not set(written) & set(summary.unfetched)
    assert summary.ok == len(written) == 3


def test_the_host_key_is_what_urlsplit_would_say() -> None:
    """The host (the limits key) is urlsplit's netloc; a URL is fetched when urlsplit sees an
    http(s) scheme and a host."""
    from urllib.parse import urlsplit

    for url in (
        "http://a.example/x",
        "HTTPS://A.Example:8080/p?q#f",
        "http://h?x=1",
        "http://h#frag",
        "ftp://h/x",
        "h/x",
        "http://",
        "http:///p",
        "http://u:p@h:1/x",
        "https://h",
        "1http://x/y",
        "svn+ssh://H/x",
        "http:/x",
        "mailto:a@b",
        "Http://H.Example",
    ):
        parts = urlsplit(url)
        web, host = scraper._origin(url)
        assert host == parts.netloc.lower(), url
        fetchable = parts.scheme in ("http", "https") and parts.netloc != ""
        assert (web and host != "") == fetchable, url


def test_retry_after_is_read_as_seconds_or_as_a_date() -> None:
    now = 1_000_000.0
    assert scraper.parse_retry_after("7", now=now) == 7
    assert scraper.parse_retry_after(" 12 ", now=now) == 12
    assert scraper.parse_retry_after("2.5", now=now) is None  # RFC 9110: whole seconds only
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert scraper.parse_retry_after(date, now=now) == 30
    assert scraper.parse_retry_after(email.utils.formatdate(now - 5, usegmt=True), now=now) == 0
    for bad in (None, "", "soon", "-3", "nan", "Mon, 01 Jan 2024 99999999999:00:00 GMT"):
        assert scraper.parse_retry_after(bad, now=now) is None


def test_settings_name_the_bad_argument() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        scraper.Settings(concurrency=0)
    with pytest.raises(ValueError, match="rate"):
        scraper.Settings(rate="fast")
    with pytest.raises(TypeError, match="per_host"):
        scraper.Settings(per_host=1.5)  # type: ignore[arg-type]


def test_a_bad_rate_option_keeps_the_librarys_message(capsys: pytest.CaptureFixture[str]) -> None:
    # Regression: argparse replaced parse_rate's message with "invalid _rate_arg value: 'abc'".
    with pytest.raises(SystemExit) as exit_info:
        scraper._parser().parse_args(["--rate", "abc"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --rate: --rate must look like '10/s'" in err and "'abc'" in err, err
    assert "_rate_arg" not in err


def test_every_option_reaches_the_settings() -> None:
    """Each field of Settings is read from the option of the same name; only --per-host 0 is
    translated (no cap), and a negative cap is an error, not silently no cap."""
    given = {
        "concurrency": 7,
        "per_host": 3,
        "rate": "9/min",
        "burst": 4.0,
        "attempts": 2,
        "backoff": 0.25,
        "max_backoff": 8.0,
        "jitter": 0.125,
        "max_retry_after": 60.0,
        "timeout": 12.0,
        "grace": 3.0,
        "workers": 5,
        "progress_interval": 2.5,
        "redis": "redis://127.0.0.1:6379/1",
        "redis_prefix": "pk-test",
        "adaptive": True,
    }
    assert set(given) == {f.name for f in dataclasses.fields(scraper.Settings)}
    argv = [
        part
        for name, v in given.items()
        for part in (f"--{name.replace('_', '-')}", *([] if v is True else [str(v)]))
    ]
    settings = scraper._settings(scraper._parser().parse_args(argv))
    assert dataclasses.asdict(settings) == given
    no_cap = scraper._settings(scraper._parser().parse_args(["--per-host", "0"]))
    assert no_cap.per_host is None
    with pytest.raises(ValueError, match=r"per_host must be >= 1, got -3"):
        scraper._settings(scraper._parser().parse_args(["--per-host", "-3"]))


# ======================================================================= the command


def _command(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "examples" / "scraper.py"), *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _progress_done(text: str) -> int:
    done = 0
    for line in text.splitlines():
        if line.startswith("progress ") and " done=" in line:
            done = int(line.split(" done=", 1)[1].split()[0])
    return done


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_command_and_the_rest_can_be_resumed(
    server: ScraperServer, tmp_path: Path, sig: signal.Signals
) -> None:
    server.default = Reply(delay=0.1)
    urls = [server.url(n % 3, f"/doc/{n}") for n in range(90)]
    (tmp_path / "urls.txt").write_text("# to fetch\n" + "\n".join(urls) + "\n\n")
    out, left, err = tmp_path / "out.jsonl", tmp_path / "left.txt", tmp_path / "err.txt"
    limits = ["--concurrency", "4", "--per-host", "2", "--rate", "10/s", "--burst", "2"]
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            _command(
                str(tmp_path / "urls.txt"),
                *limits,
                *["--output", str(out), "--unfetched", str(left), "--grace", "5"],
                *["--progress", "auto", "--progress-interval", "0.1"],
            ),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_env(),
        )
        try:
            deadline = time.monotonic() + 20
            while _progress_done(err.read_text()) < 5:
                assert proc.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "no progress within 20 s: " + err.read_text()
                time.sleep(0.05)
            proc.send_signal(sig)
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    log = err.read_text()
    expected = scraper.EXIT_INTERRUPTED if sig == signal.SIGINT else scraper.EXIT_TERMINATED
    assert code == expected, log
    assert f"stopped by {sig.name}" in log, log
    assert "left behind" not in log and "LeakError" not in log and "Traceback" not in log, log
    assert "\x1b[" not in log  # stderr is a file: plain lines, no terminal control codes

    records = [json.loads(line) for line in out.read_text().splitlines()]
    fetched = [r["url"] for r in records]
    assert all(r["ok"] for r in records) and len(fetched) == len(set(fetched))
    unfetched = left.read_text().splitlines()
    # Exactly the input minus what was fetched, in input order: nothing lost, nothing twice.
    assert unfetched == [u for u in urls if u not in set(fetched)]
    assert 5 <= len(fetched) < len(urls)
    # The grace was long enough for every request on the wire to finish: nothing the server
    # answered is listed as unfetched.
    answered = {(a.host, a.path) for a in server.arrivals if a.status == 200}
    assert not answered & {key_of(u) for u in unfetched}

    # Resume, reading the rest from stdin: every URL is then fetched exactly once in all.
    resumed = subprocess.run(
        _command("-", *limits, "--rate", "none", "--progress", "off"),
        input=left.read_text(),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=30,
        check=False,
    )
    assert resumed.returncode == scraper.EXIT_OK, resumed.stderr
    more = [json.loads(line)["url"] for line in resumed.stdout.splitlines()]
    assert sorted(more) == sorted(unfetched)
    successes = Counter((a.host, a.path) for a in server.arrivals if a.status == 200)
    assert successes == Counter(key_of(u) for u in urls)


def test_a_leak_after_the_run_still_writes_what_was_not_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The leak check runs after the run: a leak found then must not lose the run's summary,
    since the URLs not fetched are only written from it."""
    urls = ["http://127.0.0.1:9/a", "http://127.0.0.1:9/b"]
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n")

    async def leaky_run(self: Any, source: Any) -> Any:
        async for _ in source:
            pass
        asyncio.get_running_loop().create_task(asyncio.Event().wait(), name="stray")
        return scraper.Summary(
            read=2,
            ok=0,
            failed=0,
            retries=0,
            unfetched=urls,
            stopped_by="SIGINT",
            input_complete=True,
            seconds=0.0,
        )

    monkeypatch.setattr(scraper.Scraper, "run", leaky_run)
    left = tmp_path / "left.txt"
    code = scraper.main([str(tmp_path / "urls.txt"), "--unfetched", str(left), "--progress", "off"])
    err = capsys.readouterr().err
    assert code == scraper.EXIT_LEAKED, err
    assert "left behind" in err and "Event.wait" in err, err  # where the stray task waits
    assert left.read_text().splitlines() == urls
    assert "stopped by SIGINT" in err


# ======================================================================= limits shared in Redis


def _fetched(out: Path) -> list[str]:
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(r["ok"] and r["attempts"] == 1 for r in records), records
    return [r["url"] for r in records]


def test_two_processes_share_every_limit_through_redis(
    server: ScraperServer, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    """Two scraper processes with --redis hold the global cap, each host's cap and each host's
    rate together, as the server saw them.  Each alone would allow twice as much: 3 in flight
    each (6 in all), 2 per host each (4), 5/s per host each (10/s)."""
    server.default = Reply(delay=0.4)  # long enough to press the caps
    parts: list[list[str]] = [[], []]
    for n in range(28):
        proc = n % 2
        host = 0 if n < 12 else (2 if n < 18 else 1)
        path = f"/p{proc}/{n}"
        if host == 1:  # answered at once: only the rate holds these back
            server.script(1, path, Reply())
        parts[proc].append(server.url(host, path))
    limits = ["--concurrency", "3", "--per-host", "2", "--rate", "5/s", "--burst", "1"]
    shared = ["--redis", redis_url, "--redis-prefix", redis_prefix]
    procs: list[subprocess.Popen[str]] = []
    errs = [tmp_path / f"err{i}.txt" for i in (0, 1)]
    outs = [tmp_path / f"out{i}.jsonl" for i in (0, 1)]
    try:
        for i in (0, 1):
            with errs[i].open("w") as stderr:
                procs.append(
                    subprocess.Popen(
                        _command(
                            "-",
                            *limits,
                            *shared,
                            *["--output", str(outs[i]), "--progress", "plain"],
                            *["--progress-interval", "0.1", "--attempts", "1"],
                        ),
                        stdin=subprocess.PIPE,
                        stderr=stderr,
                        text=True,
                        env=_env(),
                    )
                )
        # Both are running (their first progress line is out) before either gets a URL, so
        # that their requests overlap however slowly each started.
        deadline = time.monotonic() + 10
        while not all("progress " in e.read_text() for e in errs):
            assert all(p.poll() is None for p in procs), [e.read_text() for e in errs]
            assert time.monotonic() < deadline, [e.read_text() for e in errs]
            time.sleep(0.02)
        for p, urls in zip(procs, parts, strict=True):
            assert p.stdin is not None
            p.stdin.write("".join(u + "\n" for u in urls))
            p.stdin.close()
        end = time.monotonic() + 15  # about 4 s of fetching, and the processes' exits
        try:
            codes = [p.wait(timeout=max(0.1, end - time.monotonic())) for p in procs]
        except subprocess.TimeoutExpired:
            last = [line for e in errs for line in e.read_text().splitlines()[-2:]]
            pytest.fail("not finished within 15 s; last progress:\n" + "\n".join(last))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = [e.read_text() for e in errs]
    assert codes == [scraper.EXIT_OK] * 2, logs
    for log in logs:
        assert "left behind" not in log and "Traceback" not in log, log

    # Every URL fetched exactly once, by the process it was given to.
    for out, urls in zip(outs, parts, strict=True):
        assert sorted(_fetched(out)) == sorted(urls)
    arrivals = server.arrivals
    everything = parts[0] + parts[1]
    assert Counter((a.host, a.path) for a in arrivals) == Counter(key_of(u) for u in everything)
    # The two processes were at the server at the same time...
    by_proc = [[a.at for a in arrivals if a.path.startswith(f"/p{i}/")] for i in (0, 1)]
    assert max(min(t) for t in by_proc) < min(max(t) for t in by_proc), by_proc
    # ... and together they kept every limit, from the server's side.
    for host in server.hosts:
        assert server.max_in_flight(host) <= 2, host
    assert 2 <= server.max_in_flight_total <= 3
    quick = [a.at for a in arrivals if a.host == server.hosts[1]]
    assert worst_window(quick, 5, 1) <= 0


async def test_redis_limits_hold_in_process_and_close_at_the_end(
    server: ScraperServer, redis_url: str, redis_prefix: str
) -> None:
    """The library form: ``Settings(redis=...)``; the leak check of the suite sees that the
    run closed every Redis limit and connection it made."""
    server.default = Reply(delay=0.15)
    urls = [server.url(n % 3, f"/r/{n}") for n in range(12)]
    results: list[dict[str, Any]] = []
    settings = scraper.Settings(
        concurrency=2,
        per_host=1,
        rate="20/s",
        attempts=1,
        redis=redis_url,
        redis_prefix=redis_prefix,
    )
    run = scraper.Scraper(settings, write=results.append)
    cap, per_host = run._redis_cap, run._per_host
    summary = await run.run(urls)
    assert (summary.ok, summary.failed, summary.unfetched, summary.error) == (12, 0, [], None)
    assert sorted(r["url"] for r in results) == sorted(urls)
    assert all(server.max_in_flight(h) <= 1 for h in server.hosts)
    assert server.max_in_flight_total <= 2
    assert "closed=True" in repr(cap) and per_host is not None and len(per_host) == 0


async def test_redis_lost_stops_the_run_and_loses_no_url(
    server: ScraperServer, own_redis: OwnRedisServer
) -> None:
    """No Redis, no shared limits: no request goes out, the run stops as after a failed
    write, and every URL is left for the next run."""
    urls = [server.url(n % 3, f"/x/{n}") for n in range(8)]
    settings = scraper.Settings(concurrency=2, per_host=1, attempts=2, redis=own_redis.url)
    run = scraper.Scraper(settings)
    own_redis.kill()
    summary = await run.run(urls)
    assert isinstance(run.redis_error, poolkit.RedisUnavailable)
    assert summary.error is not None and "RedisUnavailable" in summary.error
    assert summary.exit_code == scraper.EXIT_FAILED
    assert summary.ok == summary.failed == 0 and sorted(summary.unfetched) == sorted(urls)
    assert server.arrivals == []


def test_redis_option_errors_are_clear(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    urls = tmp_path / "urls.txt"
    urls.write_text("http://127.0.0.1:9/a\n")

    def error(*redis: str) -> str:
        with pytest.raises(SystemExit) as exit_info:
            scraper.main([str(urls), "--progress", "off", *redis])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "--redis URL" in scraper._parser().format_help()
    assert "poolkit[redis]" in scraper._parser().format_help()
    assert "braces" in error("--redis", "redis://127.0.0.1:1/0", "--redis-prefix", "a{b}")
    if importlib.util.find_spec("redis") is not None:
        err = error("--redis", "http://127.0.0.1:6379")
        assert "--redis must be a Redis URL such as redis://" in err and "http://" in err, err
        err = error("--redis", "redis://127.0.0.1:1/0")  # nothing listens on port 1
        assert "--redis: no Redis answers at 127.0.0.1:1" in err, err
    monkeypatch.setitem(sys.modules, "redis", None)  # as if redis-py were not installed
    err = error("--redis", "redis://127.0.0.1:6379/0")
    assert "--redis needs redis-py" in err and "pip install 'poolkit[redis]'" in err, err
