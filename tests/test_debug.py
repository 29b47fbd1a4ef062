"""poolkit.debug (the HTTP endpoint) over real HTTP on 127.0.0.1, and the poolkit command
(poolkit._tools._cli) run against it, as a subprocess and in-process."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import io
import itertools
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import poolkit
from poolkit import debug
from poolkit._leaks import _snapshot
from poolkit._tools import _cli

from .conftest import LOOP_FACTORIES

ROOT = Path(__file__).resolve().parent.parent
WAIT = 10.0  # the bound on every wait; a healthy run takes milliseconds

# Each scene's objects have names of their own: objects of an earlier test that the garbage
# collector has not reclaimed yet are still listed by /debug/pools, and would share a name.
_names = itertools.count(1)


# ----------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: str

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


def fetch(server: debug.DebugServer, path: str, method: str = "GET") -> Response:
    """One request over a real connection (http.client: no proxy from the environment)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=WAIT)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        body = response.read().decode("utf-8")
        return Response(response.status, response.headers, body)
    finally:
        conn.close()


def free_port() -> int:
    """A port nothing listens on (free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def debug_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("poolkit-debug")]


class LoopThread:
    """An event loop running in a thread of its own, as in a program being debugged."""

    def __init__(self, kind: str) -> None:
        self.loop = LOOP_FACTORIES[kind]()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test event loop")
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT)
        self.loop.close()


@dataclasses.dataclass
class Scene:
    """On the loop: a pool of 2 idle workers that ran 5 jobs, and 3 tasks in channel receive."""

    lt: LoopThread
    pool: poolkit.WorkerPool
    channel: poolkit.Channel[int]
    receivers: list[asyncio.Task[int]]
    pool_name: str
    channel_name: str

    def statistics(self) -> poolkit.PoolStatistics:
        async def read() -> poolkit.PoolStatistics:
            return self.pool.statistics()

        stats: poolkit.PoolStatistics = self.lt.run(read())
        return stats


async def _double(x: int) -> int:
    return 2 * x


async def _build(lt: LoopThread) -> Scene:
    n = next(_names)
    channel = poolkit.Channel[int](0, name=f"debug-test-jobs-{n}")
    pool = poolkit.WorkerPool(workers=2, name=f"debug-test-pool-{n}")
    await pool.__aenter__()
    receivers = [asyncio.create_task(channel.receive(), name=f"receiver-{i}") for i in range(3)]
    jobs = [await pool.submit(_double, i) for i in range(5)]
    assert await asyncio.gather(*jobs) == [0, 2, 4, 6, 8]
    for _ in range(100):  # until every receiver waits and every worker is idle again
        if channel.statistics().receivers_waiting == 3 and pool.statistics().idle == 2:
            break
        await asyncio.sleep(0)
    else:
        raise AssertionError("the scene did not settle")
    return Scene(lt, pool, channel, receivers, f"debug-test-pool-{n}", f"debug-test-jobs-{n}")


async def _tear_down(scene: Scene) -> None:
    for task in scene.receivers:
        task.cancel()
    await asyncio.gather(*scene.receivers, return_exceptions=True)
    await scene.pool.shutdown()
    scene.channel.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    if request.param not in LOOP_FACTORIES:
        pytest.skip("uvloop is not installed (pip install -e '.[test]')")
    lt = LoopThread(request.param)
    try:
        yield lt
    finally:
        lt.close()


@pytest.fixture
def scene(loop_thread: LoopThread) -> Iterator[Scene]:
    made: Scene = loop_thread.run(_build(loop_thread))
    try:
        yield made
    finally:
        loop_thread.run(_tear_down(made))


@pytest.fixture
def server(scene: Scene) -> Iterator[debug.DebugServer]:
    with debug.serve(loop=scene.lt.loop) as made:
        yield made


@pytest.fixture
def bare_server() -> Iterator[debug.DebugServer]:
    """A server outside any loop: threads only."""
    with debug.serve() as made:
        yield made


# ----------------------------------------------------------------------- /debug/tasks


def test_tasks_grouped(server: debug.DebugServer, scene: Scene) -> None:
    r = fetch(server, "/debug/tasks?debug=1")
    assert r.status == 200
    assert r.content_type == "text/plain; charset=utf-8"
    assert "task profile: total 5\n" in r.body
    assert "3 @ chan receive\n" in r.body
    assert "poolkit._primitives._channel.Channel.receive" in r.body
    assert "2 @ pool idle\n" in r.body
    assert f"#\towner pool '{scene.pool_name}' worker\n" in r.body
    assert "thread profile: total " in r.body
    assert "#\towner debug server\n" in r.body  # the server thread says whose it is
    assert "test_debug" in r.body  # ... and where it was started (this file's fixture)
    assert fetch(server, "/debug/tasks").body.startswith("task profile: total 5\n")


def test_tasks_in_full(server: debug.DebugServer, scene: Scene) -> None:
    r = fetch(server, "/debug/tasks?debug=2")
    assert r.status == 200
    assert r.content_type == "text/plain; charset=utf-8"
    for i in range(3):
        assert f"task 'receiver-{i}' [chan receive]: on channel '{scene.channel_name}'" in r.body
    assert f"owner pool '{scene.pool_name}' worker 1" in r.body
    assert "thread 'poolkit-debug-server' [" in r.body  # usually in IO wait
    assert "]: owner debug server\n" in r.body
    assert "]: owner debug server request\n" in r.body  # the thread answering
    assert "created by tests.test_debug.server\n" in r.body  # both: the fixture started them
    assert "thread 'test event loop' [" in r.body


@pytest.mark.parametrize("query", ["debug=json", "format=json", "debug=2&format=json"])
def test_tasks_as_json(server: debug.DebugServer, query: str) -> None:
    r = fetch(server, f"/debug/tasks?{query}")
    assert r.status == 200
    assert r.content_type == "application/json"
    data = json.loads(r.body)
    names = sorted(t["name"] for t in data["tasks"])
    assert names[-3:] == ["receiver-0", "receiver-1", "receiver-2"]
    assert len(names) == 5
    states = {t["name"]: t["state"] for t in data["tasks"]}
    assert states["receiver-0"] == "chan receive"
    threads = {t["name"]: t for t in data["threads"]}
    assert threads["poolkit-debug-server"]["owner"] == "debug server"
    assert threads["poolkit-debug-server"]["daemon"] is True
    assert "test event loop" in threads
    assert data["taken"] == pytest.approx(time.time(), abs=60)


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("debug=3", "debug must be 1, 2 or json, got '3'"),
        ("debug=", "debug must be 1, 2 or json, got ''"),
        ("format=xml", "format must be text or json, got 'xml'"),
    ],
)
def test_tasks_bad_query(bare_server: debug.DebugServer, query: str, message: str) -> None:
    r = fetch(bare_server, f"/debug/tasks?{query}")
    assert r.status == 400
    assert r.content_type == "text/plain; charset=utf-8"
    assert message in r.body


def test_endpoint_answers_while_the_loop_is_stuck(scene: Scene) -> None:
    entered, release = threading.Event(), threading.Event()

    async def stuck() -> None:
        entered.set()
        release.wait(WAIT)  # blocks the whole event loop, as a bug would

    with debug.serve(loop=scene.lt.loop) as server:
        done = asyncio.run_coroutine_threadsafe(stuck(), scene.lt.loop)
        try:
            assert entered.wait(WAIT)
            grouped = fetch(server, "/debug/tasks?debug=1")
            full = fetch(server, "/debug/tasks?debug=2")
            pools = fetch(server, "/debug/pools")
        finally:
            release.set()
            done.result(WAIT)
    assert grouped.status == full.status == pools.status == 200
    assert "task profile: total 6\n" in grouped.body
    assert "1 @ running\n" in grouped.body  # the task that holds the loop
    assert "3 @ chan receive\n" in grouped.body
    # The loop's thread is caught inside the stuck task.
    loop_thread = full.body[full.body.index("thread 'test event loop'") :]
    assert loop_thread.startswith("thread 'test event loop' [event wait]")
    assert "test_debug.test_endpoint_answers_while_the_loop_is_stuck.<locals>.stuck" in loop_thread
    assert scene.pool_name in pools.body


def test_threads_only_without_a_loop(bare_server: debug.DebugServer) -> None:
    assert bare_server.loop is None
    r = fetch(bare_server, "/debug/tasks")
    assert r.body.startswith("task profile: total 0\nthread profile: total ")
    assert json.loads(fetch(bare_server, "/debug/tasks?debug=json").body)["tasks"] == []
    assert "tasks: none" in fetch(bare_server, "/").body


async def test_serve_inside_a_loop_shows_its_tasks() -> None:
    async with debug.serve() as server:
        assert server.loop is asyncio.get_running_loop()
        r = await asyncio.to_thread(fetch, server, "/debug/tasks?debug=2")
    assert server.closed
    assert r.status == 200
    assert "test_debug.test_serve_inside_a_loop_shows_its_tasks" in r.body
    assert not debug_threads()


async def test_async_with_while_a_request_is_being_answered() -> None:
    """Closing with a (stalled) client connected: done in a worker thread, the loop stays free."""
    async with debug.serve() as server:
        client = socket.create_connection((server.host, server.port), timeout=WAIT)
        deadline = time.monotonic() + WAIT
        while "answering=1" not in repr(server):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)
    client.close()
    assert server.closed
    assert not debug_threads()


# ----------------------------------------------------------------------- /debug/pools, /metrics


def test_pools(server: debug.DebugServer, scene: Scene) -> None:
    r = fetch(server, "/debug/pools")
    assert r.status == 200
    assert r.content_type == "application/json"
    data = json.loads(r.body)
    [pool] = [e for e in data["pools"] if e["name"] == scene.pool_name]
    assert pool["kind"] == "pool"
    assert pool["statistics"] == dataclasses.asdict(scene.statistics())
    assert pool["statistics"]["succeeded"] == 5
    [channel] = [e for e in data["channels"] if e["name"] == scene.channel_name]
    assert channel["statistics"]["receivers_waiting"] == 3


def test_metrics(server: debug.DebugServer, scene: Scene) -> None:
    parser = pytest.importorskip(
        "prometheus_client.parser", reason="prometheus_client parses the exposition"
    )
    r = fetch(server, "/metrics")
    assert r.status == 200
    assert r.content_type == "text/plain; version=0.0.4; charset=utf-8"
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in parser.text_string_to_metric_families(r.body)
        for s in family.samples
    }
    ids = {("kind", "asyncio"), ("pool", scene.pool_name)}
    assert samples["poolkit_pool_jobs_total", frozenset({*ids, ("outcome", "succeeded")})] == 5
    assert samples["poolkit_pool_workers", frozenset({*ids, ("state", "idle")})] == 2
    channel = frozenset({("channel", scene.channel_name), ("op", "receive")})
    assert samples["poolkit_channel_waiting", channel] == 3


# ----------------------------------------------------------------------- HTTP details


def test_index(bare_server: debug.DebugServer) -> None:
    r = fetch(bare_server, "/")
    assert r.status == 200
    assert r.content_type == "text/plain; charset=utf-8"
    for route in ("/debug/tasks", "/debug/tasks?debug=2", "/debug/pools", "/metrics"):
        assert route in r.body


def test_not_found(bare_server: debug.DebugServer) -> None:
    for path in ("/debug", "/debug/pprof/goroutine", "/nope?debug=1"):
        r = fetch(bare_server, path)
        assert r.status == 404
        assert "no such page" in r.body
    assert fetch(bare_server, "/nope", method="POST").status == 404
    assert fetch(bare_server, "/debug/tasks/").status == 200  # a trailing slash is forgiven


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_read_only(bare_server: debug.DebugServer, method: str) -> None:
    r = fetch(bare_server, "/debug/tasks", method=method)
    assert r.status == 405
    assert r.headers["Allow"] == "GET, HEAD"
    assert "read-only" in r.body


def test_head(bare_server: debug.DebugServer) -> None:
    r = fetch(bare_server, "/debug/tasks", method="HEAD")
    assert r.status == 200
    assert r.body == ""
    assert int(r.headers["Content-Length"]) > 0
    assert r.headers["Server"] == "poolkit-debug"


def test_an_error_is_a_500_and_the_server_carries_on(
    bare_server: debug.DebugServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(_snapshot, "snapshot", broken)
    with caplog.at_level(logging.DEBUG, logger="poolkit.debug"):
        r = fetch(bare_server, "/debug/tasks")
        assert r.status == 500
        assert r.body == "internal error: RuntimeError: boom\n"
        assert fetch(bare_server, "/").status == 200
    [error] = [rec for rec in caplog.records if rec.levelno == logging.ERROR]
    assert error.name == "poolkit.debug"
    assert error.exc_info is not None
    # Requests are logged at DEBUG, on poolkit.debug only.
    assert any(
        rec.levelno == logging.DEBUG and '"GET / ' in rec.getMessage() for rec in caplog.records
    )


def test_requests_are_not_written_to_stderr(
    bare_server: debug.DebugServer, capfd: pytest.CaptureFixture[str]
) -> None:
    fetch(bare_server, "/")
    fetch(bare_server, "/nope")
    assert capfd.readouterr().err == ""


# ----------------------------------------------------------------------- lifecycle


def test_close_joins_every_thread_and_frees_the_port() -> None:
    server = debug.serve()
    try:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.host == "127.0.0.1"
        assert 0 < server.port <= 65535
        assert fetch(server, "/").status == 200
        # (the thread that answered may not have ended yet: close() waits for it)
        assert "poolkit-debug-server" in [t.name for t in debug_threads()]
    finally:
        server.close()
    assert server.closed
    assert not debug_threads()
    server.close()  # idempotent
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((server.host, server.port), timeout=WAIT).close()


def test_close_cuts_a_client_that_sends_nothing() -> None:
    server = debug.serve()
    client = socket.create_connection((server.host, server.port), timeout=WAIT)
    try:
        deadline = time.monotonic() + WAIT
        while "answering=1" not in repr(server):
            assert time.monotonic() < deadline
            time.sleep(0.001)
        started = time.monotonic()
        server.close()
        assert time.monotonic() - started < 5  # not the handler's 10 s read timeout
        assert not debug_threads()
        assert client.recv(100) == b""  # the server hung up
    finally:
        client.close()
        server.close()


def test_close_from_two_threads() -> None:
    server = debug.serve()
    closers = [threading.Thread(target=server.close) for _ in range(4)]
    for t in closers:
        t.start()
    for t in closers:
        t.join(WAIT)
    assert server.closed
    assert not debug_threads()


def test_repr(bare_server: debug.DebugServer) -> None:
    assert repr(bare_server) == (
        f"<DebugServer {bare_server.url} showing=threads answering=0 answered=0 closed=False>"
    )
    fetch(bare_server, "/")
    deadline = time.monotonic() + WAIT
    while "answered=1" not in repr(bare_server):  # counted once its thread is done
        assert time.monotonic() < deadline
        time.sleep(0.001)
    bare_server.close()
    assert repr(bare_server).endswith("answering=0 answered=1 closed=True>")


def test_repr_with_a_loop(server: debug.DebugServer) -> None:
    assert " showing=tasks+threads " in repr(server)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"port": -1}, ValueError, "port must be between 0 and 65535, got -1"),
        ({"port": 65536}, ValueError, "port must be between 0 and 65535, got 65536"),
        ({"port": "8080"}, TypeError, "port must be an int, got '8080'"),
        ({"port": True}, TypeError, "port must be an int, got True"),
        ({"port": 80.0}, TypeError, "port must be an int, got 80.0"),
        ({"host": ""}, ValueError, "host must not be empty"),
        ({"host": b"127.0.0.1"}, TypeError, "host must be a str, got b'127.0.0.1'"),
        ({"loop": "loop"}, TypeError, "loop must be an event loop or None, got 'loop'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str) -> None:
    before = debug_threads()
    with pytest.raises(error, match=re.escape(message)):
        debug.serve(**kwargs)
    assert debug_threads() == before


def test_port_in_use() -> None:
    with debug.serve() as first, pytest.raises(OSError, match="in use") as caught:
        debug.serve(port=first.port)
    assert f"could not listen on 127.0.0.1:{first.port}" in "".join(caught.value.__notes__)


def test_ipv6() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 support in this Python")
    try:
        server = debug.serve("::1")
    except OSError as e:
        pytest.skip(f"cannot listen on ::1 here: {e}")
    with server:
        assert server.url == f"http://[::1]:{server.port}"
        assert fetch(server, "/").status == 200


# ----------------------------------------------------------------------- the command


def run_cli(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """``python -m poolkit ARGS`` in a fresh interpreter that imports this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "poolkit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_cli_dump(server: debug.DebugServer) -> None:
    done = run_cli("dump", server.url, "--debug", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("task profile: total 5\n")
    assert "3 @ chan receive\n" in done.stdout
    assert done.stderr == ""


def test_cli_dump_accepts_a_url_without_scheme(server: debug.DebugServer) -> None:
    done = run_cli("dump", f"127.0.0.1:{server.port}/", "--debug", "2")
    assert done.returncode == 0, done.stderr
    assert "task 'receiver-0' [chan receive]" in done.stdout


@pytest.mark.parametrize("form", ["{port}", ":{port}"])
def test_cli_dump_accepts_a_bare_port_as_localhost(server: debug.DebugServer, form: str) -> None:
    # Regression: "poolkit dump 6060" was read as the host "6060" (HTTP 404 from elsewhere)
    # and ":6060" was rejected; both mean 127.0.0.1, as for Go's tools.
    done = run_cli("dump", form.format(port=server.port), "--debug", "2")
    assert done.returncode == 0, done.stderr
    assert "task 'receiver-0' [chan receive]" in done.stdout


def test_cli_top(server: debug.DebugServer, scene: Scene) -> None:
    done = run_cli("top", server.url, "--count", "2", "--interval", "0.05")
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout  # not a terminal: plain frames
    assert done.stdout.startswith("poolkit top  ")
    frames = done.stdout.split("poolkit top  ")[1:]
    assert len(frames) == 2
    rates = []
    for frame in frames:
        assert frame.startswith(f"{server.url}  ")
        assert frame.endswith("\n\n")  # each frame is followed by a blank line
        [row] = [line for line in frame.splitlines() if line.startswith(scene.pool_name + " ")]
        assert row.split()[1:9] == ["asyncio", "0", "2", "2", "0", "5", "0", "0"]
        rates.append(row.split()[9])
        assert scene.channel_name in frame
    assert rates == ["-", "0.0"]  # no rate before a second poll; then no job finished


def test_cli_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for command in ("dump", "top"):
        done = run_cli(command, url)
        assert done.returncode == 1
        assert done.stdout == ""
        assert f"poolkit {command}: cannot reach {url}/" in done.stderr
        assert "refused" in done.stderr.lower()


def test_cli_dump_json_in_process(
    server: debug.DebugServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(["dump", server.url, "--debug", "json"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("{\n  ")  # indented for people
    assert len(json.loads(out)["tasks"]) == 5


def test_cli_http_error(
    bare_server: debug.DebugServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(_snapshot, "snapshot", broken)
    with caplog.at_level(logging.CRITICAL, logger="poolkit.debug"):
        assert _cli.main(["dump", bare_server.url]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"poolkit dump: {bare_server.url}/debug/tasks?debug=1: HTTP 500 Internal Server Error: "
        "internal error: RuntimeError: boom\n"
    )


def test_cli_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:  # accepts connections (the backlog) but never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        assert _cli.main(["dump", url, "--timeout", "0.2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"poolkit dump: cannot read from {url}/debug/tasks?debug=1: ")
    assert "no answer in time" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_cli_top_on_a_terminal_redraws_in_place(scene: Scene) -> None:
    with debug.serve(loop=scene.lt.loop) as server:
        out = _Terminal()
        assert _cli._top(server.url, 0.01, 2, WAIT, out) == 0
    frames = out.getvalue().split("\x1b[H\x1b[2J")
    assert frames[0] == ""
    assert len(frames) == 3
    assert all(scene.pool_name in frame and not frame.endswith("\n\n") for frame in frames[1:])


def test_cli_top_stops_quietly_on_ctrl_c(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers: list[Any] = [("application/json", '{"pools": []}'), KeyboardInterrupt()]

    def fake_fetch(url: str, timeout: float) -> tuple[str, str]:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert url == "http://example.invalid:1/debug/pools"
        return answer  # type: ignore[no-any-return]

    monkeypatch.setattr(_cli, "_fetch", fake_fetch)
    assert _cli.main(["top", "example.invalid:1", "--interval", "0.001"]) == 0
    captured = capsys.readouterr()
    assert "no pools" in captured.out
    assert captured.err == ""


def test_cli_top_is_tolerant_of_what_it_does_not_know() -> None:
    top = _cli._Top("http://x:1", 1.0)
    data = {
        "pools": [
            {"name": "bare"},  # no kind, no statistics
            {"kind": "thread_pool", "name": "t", "statistics": {"busy": 1, "closed": True}},
            "junk",
        ],
        "channels": [{"kind": "channel", "name": "c", "statistics": {"capacity": "inf"}}],
        "limits": [
            {
                "kind": "limits",
                "name": "both",
                "statistics": {"name": "both", "members": []},
                "members": [{"kind": "limiter", "name": "db"}],
            }
        ],
        "gizmos": [{"kind": "gizmo", "name": "g", "statistics": {"spin": 3, "deep": {"a": 1}}}],
        "limiters": "not a list",
    }
    frame = top.frame(data, 1.0)
    lines = frame.splitlines()
    assert lines[2].split() == ["POOL", "KIND", *_cli._POOL_COLUMNS]
    assert lines[3].split() == ["bare", "?", "-", "-", "-", "-", "-", "-", "-", "-"]
    assert lines[4].split() == ["t", "thread", "1", "-", "-", "-", "-", "-", "-", "-", "closed"]
    assert "c  capacity inf" in frame
    assert "both  members: limiter db" in frame
    assert "GIZMOS\ng  spin 3" in frame


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["dump"], "the following arguments are required: URL"),
        (["dump", "ftp://host:1"], "not an http:// URL: 'ftp://host:1'"),
        (["dump", "host:port"], "not a URL: 'host:port'"),
        (["dump", "host:1", "--debug", "3"], "invalid choice: '3'"),
        (["dump", "host:1", "--timeout", "0"], "must be more than 0 seconds, got '0'"),
        (["dump", "host:1", "extra"], "unrecognized arguments: extra"),
        (["top", "host:1", "--interval", "soon"], "not a number of seconds: 'soon'"),
        (["top", "host:1", "--count", "0"], "must be at least 1, got '0'"),
        (["top", "host:1", "--count", "1.5"], "not a whole number: '1.5'"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_cli_usage_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_cli_no_command_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("usage: poolkit ")
    for command in ("dump", "top", "demo"):
        assert command in captured.err


def test_cli_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"poolkit {poolkit.__version__}\n"


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli.main(["top", "--help"]) == 0
    assert "--interval SECONDS" in capsys.readouterr().out


def test_cli_demo_gets_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str] | None] = []

    class FakeDemo:
        @staticmethod
        def main(argv: list[str] | None = None) -> int:
            seen.append(argv)
            return 7

    monkeypatch.setitem(sys.modules, "poolkit._tools._demo", FakeDemo)
    assert _cli.main(["demo", "--workers", "3", "-h", "extra"]) == 7
    assert _cli.main(["demo"]) == 7
    assert seen == [["--workers", "3", "-h", "extra"], []]


def test_python_dash_m_poolkit() -> None:
    done = run_cli("--version")
    assert done.returncode == 0
    assert done.stdout == f"poolkit {poolkit.__version__}\n"
    assert run_cli().returncode == 2


def test_cli_dump_interrupted(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(url: str, timeout: float) -> tuple[str, str]:
        raise KeyboardInterrupt

    monkeypatch.setattr(_cli, "_fetch", interrupted)
    assert _cli.main(["dump", "127.0.0.1:1"]) == 130
