"""The scraper example end to end: 5,000 real HTTP requests, 64 at a time, to a local server.

poolkit's side is ``examples/scraper.py``'s own ``run()`` (a ``WorkerPool`` fed by a
``Channel``, limits taken for every attempt, tenacity retries armed); the alternative is what
one writes without poolkit: ``asyncio.gather`` over a coroutine per URL, each holding an
``asyncio.Semaphore(64)``.  Both use the same aiohttp session (``scraper.make_session``), read
every body and build the same result record.  The server is a minimal keep-alive HTTP server in
a process of its own (on uvloop when installed), so the client's loop is what is measured.

Two suites: time per request, and the peak RSS of a fresh process doing the whole run (gather
makes 5,000 tasks up front; the pool holds its workers and a bounded channel).

Needs aiohttp (the "scraper" extra); without it, nothing is registered.
"""

from __future__ import annotations

import asyncio
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType, TracebackType
from typing import Any

from ._harness import Case, Suite, peak_rss, register, run_async, timed

CONCURRENCY = 64
HOSTS = 4
ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scraper.py"

_SERVER_SCRIPT = r"""
import asyncio, sys
try:
    import uvloop
except ImportError:
    uvloop = None

BODY = b"x" * 512
ANSWER = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    + BODY
)

class Http(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.pending = b""

    def data_received(self, data):
        data = self.pending + data
        heads = data.count(b"\r\n\r\n")  # GETs without bodies: one head, one request
        self.pending = data[data.rfind(b"\r\n\r\n") + 4:] if heads else data
        if heads:
            self.transport.write(ANSWER * heads)

async def main(hosts):
    loop = asyncio.get_running_loop()
    servers = [
        await loop.create_server(Http, "127.0.0.1", 0, backlog=1024) for _ in range(hosts)
    ]
    print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until the benchmark closes our stdin

(uvloop.run if uvloop is not None else asyncio.run)(main(int(sys.argv[1])))
"""


class _Server:
    """The HTTP server process: ``with _Server() as ports:``."""

    def __enter__(self) -> list[int]:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER_SCRIPT, str(HOSTS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._stop()
            raise RuntimeError("the benchmark's HTTP server did not start")
        return [int(port) for port in line.split()]

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        proc = self._proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def _urls(ports: list[int], n: int) -> list[str]:
    return [f"http://127.0.0.1:{ports[i % len(ports)]}/page/{i}" for i in range(n)]


def _load_scraper() -> ModuleType:
    """examples/scraper.py as a module (examples/ is not a package)."""
    name = "poolkit_example_scraper"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def _settings(scraper: ModuleType) -> Any:
    """The scraper as it runs by default (4 attempts, backoff and jitter), with no per-host
    limit, so that both sides do the same work: 64 requests at a time."""
    return scraper.Settings(concurrency=CONCURRENCY, per_host=None, rate=None)


async def _gather_semaphore(scraper: ModuleType, urls: list[str]) -> list[dict[str, Any]]:
    """The usual asyncio way: a coroutine per URL, all gathered, 64 allowed at once."""
    semaphore = asyncio.Semaphore(CONCURRENCY)
    async with scraper.make_session(_settings(scraper)) as session:

        async def one(url: str) -> dict[str, Any]:
            async with semaphore:
                t0 = time.monotonic()
                async with session.get(url, allow_redirects=False) as response:
                    body = await response.read()
                    return {
                        "url": url,
                        "host": url.split("/")[2],
                        "ok": response.status < 400,
                        "status": response.status,
                        "bytes": len(body),
                        "attempts": 1,
                        "seconds": round(time.monotonic() - t0, 6),
                        "error": None,
                        "location": response.headers.get("Location"),
                    }

        return list(await asyncio.gather(*(one(u) for u in urls)))


def _time_case(kind: str):  # type: ignore[no-untyped-def]
    def run(n: int) -> float:
        scraper = _load_scraper()
        with _Server() as ports:
            urls = _urls(ports, n)
            results: list[dict[str, Any]] = []

            async def main() -> float:
                if kind == "poolkit":
                    body = scraper.run(urls, _settings(scraper), write=results.append)
                else:
                    body = _gather_semaphore(scraper, urls)
                return await timed(body)

            seconds = run_async(main)
        if kind == "poolkit" and len(results) != n:
            raise RuntimeError(f"the scraper returned {len(results)} results for {n} URLs")
        return seconds

    return run


through_http = Suite(
    f"scraper: 5k HTTP GETs to a local server, {CONCURRENCY} at a time",
    unit="request",
    items=5_000,
)
through_http.cases += [
    Case("poolkit scraper (examples/scraper.py run())", _time_case("poolkit"), poolkit=True),
    Case("gather + Semaphore, same aiohttp session", _time_case("gather")),
]

# ----------------------------------------------------------------- peak memory

_RSS_SCRIPT = r"""
import asyncio, importlib.util, sys
sys.path.insert(0, sys.argv[1])
from benchmarks import bench_scraper as b
kind, n, ports = sys.argv[2], int(sys.argv[3]), [int(p) for p in sys.argv[4].split(",")]
scraper = b._load_scraper()
urls = b._urls(ports, n)
if kind == "poolkit":
    count = 0
    def write(record):
        global count
        count += 1
    asyncio.run(scraper.run(urls, b._settings(scraper), write=write))
    assert count == n, count
else:
    assert len(asyncio.run(b._gather_semaphore(scraper, urls))) == n
"""


def _peak_rss(kind: str):  # type: ignore[no-untyped-def]
    """Peak RSS in MiB of a fresh interpreter doing the run (imports included, alike)."""

    def run(n: int) -> float:
        with _Server() as ports:
            return peak_rss(_RSS_SCRIPT, str(ROOT), kind, str(n), ",".join(map(str, ports)))

    return run


memory = Suite(
    f"scraper: 5k HTTP GETs, {CONCURRENCY} at a time, peak RSS of the whole process",
    unit="MiB",
    items=5_000,
    kind="figure",
)
memory.cases += [
    Case("poolkit scraper (examples/scraper.py run())", _peak_rss("poolkit"), poolkit=True),
    Case("gather + Semaphore, same aiohttp session", _peak_rss("gather")),
]

if importlib.util.find_spec("aiohttp") is not None:  # else there is nothing to compare
    register(through_http)
    register(memory)
