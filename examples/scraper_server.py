"""A local HTTP server with a real capacity, to try ``scraper.py --adaptive`` against.

It serves at most ``capacity`` requests at once, each for ``service_time`` seconds; a request
that comes while ``capacity`` are in service is answered 503 at once (with ``Retry-After`` if
asked), nothing is queued.  So a client sending more at once gains nothing but 503s, and one
sending fewer leaves capacity unused::

    python examples/scraper_server.py --capacity 8 &     # prints its address, e.g. 127.0.0.1:8347
    seq 1000 | sed 's|^|http://127.0.0.1:8347/|' > urls.txt
    python examples/scraper.py urls.txt -o out.jsonl --per-host 64 --rate none            # 503s
    python examples/scraper.py urls.txt -o out.jsonl --per-host 64 --rate none --adaptive # ~8

It keeps its own records, which a client's cannot fake: every answer (when, which path, which
status) and how many requests it was serving at each moment, read per time slice with
:meth:`CapacityServer.occupancy`.  Ctrl-C (or SIGTERM) prints them per second and stops it.

It runs in a thread with an event loop of its own (``with CapacityServer(8) as server:``, or
``start()``/``stop()``), so what it records does not depend on the loop of the client it
serves; ``stop()`` closes every connection and joins the thread.  It speaks just enough HTTP/1.1
for a GET with keep-alive.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from types import TracebackType

__all__ = ["Answer", "CapacityServer", "Slice", "main"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One request as the server answered it."""

    at: float
    """``time.monotonic()`` when its head had been read."""
    path: str
    status: int
    """200, or 503 when it came with the server full."""


@dataclass(frozen=True, slots=True)
class Slice:
    """How busy the server was during ``[start, start + length)``."""

    start: float
    """``time.monotonic()`` at its start."""
    mean: float
    """Requests in service, averaged over the slice's time."""
    peak: int
    """The most in service at once during the slice."""


class CapacityServer:
    """``with CapacityServer(8) as server:`` serves ``server.url(path)`` with capacity 8.

    Args:
        capacity: Requests served at once; one more is answered 503 at once.
        service_time: Seconds each admitted request takes before its answer.
        retry_after: Send ``Retry-After: <seconds>`` with each 503 (``None``: no header).
        port: The port on 127.0.0.1 (0: a free one).
        size: Bytes of body of a 200.

    Raises:
        ValueError: If ``capacity`` is below 1 or a duration is negative.
    """

    def __init__(
        self,
        capacity: int,
        *,
        service_time: float = 0.05,
        retry_after: int | None = None,
        port: int = 0,
        size: int = 100,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be an int >= 1, got {capacity!r}")
        if not (service_time >= 0 and math.isfinite(service_time)):
            raise ValueError(f"service_time must be a finite number >= 0, got {service_time!r}")
        if retry_after is not None and retry_after < 0:
            raise ValueError(f"retry_after must be >= 0 or None, got {retry_after!r}")
        self.capacity = capacity
        self.service_time = service_time
        self.retry_after = retry_after
        self.size = size
        self.host = ""
        """``"127.0.0.1:PORT"`` once started: what a client keys the host by."""
        self._port = port
        self._lock = threading.Lock()
        self._answers: list[Answer] = []
        self._in_service = 0
        # (time.monotonic(), in service from then on): a step function, one step per change.
        self._steps: list[tuple[float, int]] = [(time.monotonic(), 0)]
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def url(self, path: str = "/") -> str:
        return f"http://{self.host}{path}"

    # ----------------------------------------------------------------- records

    @property
    def answers(self) -> list[Answer]:
        """Every answer so far, in the order they were given."""
        with self._lock:
            return list(self._answers)

    def occupancy(
        self, start: float | None = None, end: float | None = None, *, length: float = 0.05
    ) -> list[Slice]:
        """Requests in service per slice of ``length`` seconds, from ``start`` (default: when
        the server was made) to ``end`` (default: now), from the server's own records."""
        with self._lock:
            steps = list(self._steps)
        t0 = steps[0][0] if start is None else start
        t1 = time.monotonic() if end is None else end
        n = max(0, int((t1 - t0) / length + 1e-9))
        area, peak = [0.0] * n, [0] * n
        for k, (since, level) in enumerate(steps):
            until = steps[k + 1][0] if k + 1 < len(steps) else t1
            a, b = max(since, t0), min(until, t0 + n * length)
            if b <= a:
                continue
            for i in range(int((a - t0) / length), min(n, int((b - t0) / length) + 1)):
                overlap = min(b, t0 + (i + 1) * length) - max(a, t0 + i * length)
                if overlap > 0:
                    area[i] += level * overlap
                    peak[i] = max(peak[i], level)
        return [Slice(t0 + i * length, area[i] / length, peak[i]) for i in range(n)]

    def _admit(self) -> bool:
        with self._lock:
            if self._in_service >= self.capacity:
                return False
            self._in_service += 1
            self._steps.append((time.monotonic(), self._in_service))
            return True

    def _done(self) -> None:
        with self._lock:
            self._in_service -= 1
            self._steps.append((time.monotonic(), self._in_service))

    def _answered(self, answer: Answer) -> None:
        with self._lock:
            self._answers.append(answer)

    # ----------------------------------------------------------------- running

    def start(self) -> CapacityServer:
        self._thread = threading.Thread(target=self._serve, name="capacity-server")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the capacity server did not start within 10 s")
        if self._error is not None:
            raise RuntimeError("the capacity server failed to start") from self._error
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
            raise RuntimeError("the capacity server did not stop within 10 s")
        self._thread = None

    def __enter__(self) -> CapacityServer:
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

        def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.create_task(self._connection(reader, writer))
            handlers.add(task)
            task.add_done_callback(handlers.discard)

        server = await asyncio.start_server(on_connect, "127.0.0.1", self._port, backlog=512)
        try:
            address, port = server.sockets[0].getsockname()[:2]
            self.host = f"{address}:{port}"
            self._ready.set()
            await self._stop.wait()
        finally:
            server.close()
            for task in list(handlers):
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Serve one request; False when the connection is over."""
        head = await reader.readuntil(b"\r\n\r\n")
        at = time.monotonic()
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        path = parts[1] if len(parts) > 1 else "/"
        keep_alive = not any(
            line.lower().replace(" ", "") == "connection:close" for line in lines[1:]
        )
        if not self._admit():
            extra = "" if self.retry_after is None else f"Retry-After: {self.retry_after}\r\n"
            status, body = 503, b""
            head_out = f"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n{extra}"
        else:
            try:
                await asyncio.sleep(self.service_time)
            finally:
                self._done()  # before a byte of the answer goes out
            status, body = 200, b"x" * self.size
            head_out = f"HTTP/1.1 200 OK\r\nContent-Length: {self.size}\r\n"
        if not keep_alive:
            head_out += "Connection: close\r\n"
        self._answered(Answer(at, path, status))
        writer.write(head_out.encode("latin-1") + b"\r\n" + body)
        await writer.drain()
        return keep_alive


# ======================================================================= the command


def report(server: CapacityServer) -> str:
    """The server's records per second: answers, 503s, and requests in service (the median
    and the most of its 50 ms slices)."""
    answers = server.answers
    if not answers:
        return "no requests\n"
    t0 = answers[0].at
    lines = ["second  answers  503s  in service: median  peak"]
    second = 0
    while t0 + second <= answers[-1].at:
        a, b = t0 + second, t0 + second + 1
        inside = [x for x in answers if a <= x.at < b]
        busy = [x.status == 503 for x in inside]
        slices = server.occupancy(a, min(b, time.monotonic()))
        median = statistics.median(s.mean for s in slices) if slices else 0.0
        peak = max((s.peak for s in slices), default=0)
        lines.append(f"{second:6}  {len(inside):7}  {sum(busy):4}  {median:18.1f}  {peak:4}")
        second += 1
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="scraper_server.py", description=(__doc__ or "").split("\n\n")[0]
    )
    p.add_argument("--capacity", type=int, default=8, help="requests served at once")
    p.add_argument("--service-time", type=float, default=0.05, help="seconds per request")
    p.add_argument("--retry-after", type=int, help="send Retry-After: N with each 503")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    args = p.parse_args(argv)
    try:
        server = CapacityServer(
            args.capacity,
            service_time=args.service_time,
            retry_after=args.retry_after,
            port=args.port,
        )
    except ValueError as exc:
        p.error(str(exc))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    with server:
        print(server.host, flush=True)
        print(
            f"serving at most {server.capacity} at once, {server.service_time * 1000:g} ms each; "
            f"Ctrl-C prints what it saw",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    sys.stderr.write(report(server))
    return 0


if __name__ == "__main__":
    sys.exit(main())
