"""A local HTTP server for the scraper's tests: several hosts, scripted answers, full records.

Each virtual host is a port on 127.0.0.1, so a host is ``"127.0.0.1:PORT"``, exactly what a
client puts in its ``Host`` header and what the scraper keys its per-host limits on.  The server
runs in a thread of its own with its own event loop, so what it records is independent of the
loop under test.  It speaks just enough HTTP/1.1 (GET, keep-alive, ``Content-Length``) and records:

* every request's arrival (``time.monotonic()`` and ``time.time()``, when its head was read),
* per host and over all hosts, the most requests in flight at once (from arrival until the
  answer is written, or until the client goes away),
* for each 429 or 503 with ``Retry-After``, the earliest moment it allowed a retry.

Answers are scripted per path with :class:`Reply` (a status, ``Retry-After`` in seconds or as
an HTTP date, a delay, or a dropped connection); a path with no script left gets the default.
Used as a context manager (or ``start()``/``stop()``), binding port 0; ``stop()`` closes every
connection and joins the thread, so nothing outlives the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Arrival", "Reply", "ScraperServer"]


@dataclass(frozen=True, slots=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    delay: float = 0.0
    """Seconds to wait before answering (the request counts as in flight meanwhile)."""
    retry_after: float | None = None
    """Send ``Retry-After: <seconds>`` (an integer number of seconds, rounded up)."""
    retry_after_date: float | None = None
    """Send ``Retry-After: <HTTP date>``, this many seconds from now rounded up to a whole
    second (HTTP dates have no fractions)."""
    drop: bool = False
    """Close the connection without answering."""
    size: int = 100
    """Bytes of body."""


@dataclass(frozen=True, slots=True)
class Arrival:
    """One request as the server saw it."""

    host: str
    path: str
    at: float
    """``time.monotonic()`` when its head had been read."""
    wall: float
    """``time.time()`` at the same moment."""
    status: int | None
    """What it was answered (``None``: dropped, or the client went away first)."""
    not_before: float | None
    """For an answer with Retry-After in seconds: the monotonic time it allows a retry from."""
    not_before_wall: float | None
    """For an answer with Retry-After as a date: that date, as ``time.time()``."""


class ScraperServer:
    """``with ScraperServer(hosts=3) as server:`` serves ``server.url(i, path)``."""

    def __init__(self, hosts: int = 3, *, default: Reply | None = None) -> None:
        self._n_hosts = hosts
        self.default = default if default is not None else Reply()
        self.hosts: list[str] = []
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._scripts: dict[tuple[str, str], deque[Reply]] = {}
        self._arrivals: list[Arrival] = []
        self._in_flight: dict[str, int] = defaultdict(int)
        self._max_in_flight: dict[str, int] = defaultdict(int)
        self._total = 0
        self._max_total = 0
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    # ----------------------------------------------------------------- set-up

    def url(self, host: int, path: str) -> str:
        return f"http://{self.hosts[host]}{path}"

    def script(self, host: int, path: str, *replies: Reply) -> str:
        """Answer the next requests for ``path`` on host ``host`` with ``replies``, in order;
        return the URL."""
        with self._lock:
            self._scripts[(self.hosts[host], path)] = deque(replies)
        return self.url(host, path)

    def _next_reply(self, host: str, path: str) -> Reply:
        with self._lock:
            script = self._scripts.get((host, path))
            return script.popleft() if script else self.default

    # ----------------------------------------------------------------- records

    @property
    def arrivals(self) -> list[Arrival]:
        with self._lock:
            return list(self._arrivals)

    def max_in_flight(self, host: str) -> int:
        with self._lock:
            return self._max_in_flight[host]

    @property
    def max_in_flight_total(self) -> int:
        with self._lock:
            return self._max_total

    def _begin(self, host: str) -> None:
        with self._lock:
            self._in_flight[host] += 1
            self._total += 1
            self._max_in_flight[host] = max(self._max_in_flight[host], self._in_flight[host])
            self._max_total = max(self._max_total, self._total)

    def _book(self, arrival: Arrival) -> None:
        """Record a request that is over (for the server) and take it off the in-flight count."""
        with self._lock:
            self._arrivals.append(arrival)
            self._in_flight[arrival.host] -= 1
            self._total -= 1
            if not self._total:
                self._idle.notify_all()

    def wait_idle(self, timeout: float = 5.0) -> None:
        """Wait until no request is in flight (so that requests a client abandoned are booked)."""
        with self._idle:
            if not self._idle.wait_for(lambda: not self._total, timeout):
                raise TimeoutError(f"{self._total} request(s) still in flight after {timeout} s")

    # ----------------------------------------------------------------- running

    def start(self) -> ScraperServer:
        self._thread = threading.Thread(target=self._serve, name="scraper-test-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("the test server failed to start") from self._error
        return self

    def stop(self) -> None:
        loop, stop, thread = self._loop, self._stop, self._thread
        if thread is None:
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already finished
                loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        if thread.is_alive():
            raise RuntimeError("the test server did not stop within 10 s")
        self._thread = None

    def __enter__(self) -> ScraperServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            with asyncio.Runner() as runner:
                runner.run(self._main())
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        handlers: set[asyncio.Task[None]] = set()
        servers: list[asyncio.Server] = []

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            address, port = writer.get_extra_info("sockname")[:2]
            task = asyncio.create_task(self._connection(f"{address}:{port}", reader, writer))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

        try:
            for _ in range(self._n_hosts):
                server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
                address, port = server.sockets[0].getsockname()[:2]
                self.hosts.append(f"{address}:{port}")
                servers.append(server)
            self._ready.set()
            await self._stop.wait()
        finally:
            for server in servers:
                server.close()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            for server in servers:
                await server.wait_closed()

    async def _connection(
        self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while await self._one_request(host, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_request(
        self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection is over."""
        request_line = await reader.readline()
        if not request_line:
            return False
        keep_alive = True
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "connection" and value.strip().lower() == "close":
                keep_alive = False
        path = request_line.decode("latin-1").split(" ")[1]
        at, wall = time.monotonic(), time.time()
        reply = self._next_reply(host, path)
        self._begin(host)
        booked = False
        try:
            if reply.delay and await _client_left(reader, reply.delay):
                return False
            if reply.drop:
                return False
            headers = [f"Content-Length: {reply.size}", "Content-Type: text/plain"]
            not_before = not_before_wall = None
            if reply.retry_after is not None:
                seconds = math.ceil(reply.retry_after)
                not_before = time.monotonic() + seconds
                headers.append(f"Retry-After: {seconds}")
            if reply.retry_after_date is not None:
                not_before_wall = float(math.ceil(time.time() + reply.retry_after_date))
                date = email.utils.formatdate(not_before_wall, usegmt=True)
                headers.append(f"Retry-After: {date}")
            if not keep_alive:
                headers.append("Connection: close")
            head = f"HTTP/1.1 {reply.status} X\r\n" + "".join(h + "\r\n" for h in headers)
            # Booked before a byte goes out: the client cannot see the answer (and send its next
            # request) before the records show this one answered and no longer in flight.
            self._book(Arrival(host, path, at, wall, reply.status, not_before, not_before_wall))
            booked = True
            writer.write(head.encode("latin-1") + b"\r\n" + b"x" * reply.size)
            await writer.drain()
        finally:
            if not booked:  # dropped, or the client went away: booked before the close
                self._book(Arrival(host, path, at, wall, None, None, None))
        return keep_alive


async def _client_left(reader: asyncio.StreamReader, delay: float) -> bool:
    """Wait ``delay`` seconds; True if the client closed the connection meanwhile (so that a
    request it gave up on stops counting as in flight when it goes, not when we would answer)."""
    try:
        async with asyncio.timeout(delay):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
