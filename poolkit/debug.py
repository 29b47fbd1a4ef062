"""A read-only HTTP endpoint for looking inside a running program: its tasks, threads and pools.

::

    server = poolkit.debug.serve(port=6060)   # inside the event loop, or pass loop=
    ...                                        # then, from a shell: poolkit dump 127.0.0.1:6060
    server.close()

Routes (``GET`` or ``HEAD``; another method on a route is answered ``405``, an unknown path
``404``):

``/debug/tasks``
    The loop's tasks and the process's threads, as text: ``?debug=1`` (the default) groups
    identical stacks, most common first, like Go's ``/debug/pprof/goroutine?debug=1``;
    ``?debug=2`` lists every task and thread in full; ``?debug=json`` (or ``?format=json``) is
    the same snapshot as JSON.  Any other value is answered ``400``.
``/debug/pools``
    Every live pool, channel, limiter, bucket, ``Limits`` and ``PerKey`` with its statistics,
    as JSON (what ``poolkit top`` polls).  A ``ProcessPool``'s entry (``"kind":
    "process_pool"``) also has its worker processes: ``worker_pids``, how many ``crashed``,
    were ``killed`` or ``recycled``, and its ``start_method``.
``/metrics``
    The same objects in the Prometheus text format, for a scraper.
``/``
    A list of these routes.

How it stays out of the way
---------------------------
The server lives in threads of its own: ``poolkit-debug-server`` accepts connections, and each
request is answered in a short-lived ``poolkit-debug-request`` thread.  Neither ever asks the
event loop anything: a task snapshot reads the loop's tasks directly (see
:func:`poolkit.leaks.snapshot`).  So the endpoint answers when the loop is stuck, which is
exactly when one wants to look.

Requests are logged at DEBUG on the ``poolkit.debug`` logger, never to stderr; an error while
answering is logged at ERROR there and answered ``500``, and the server carries on.

It shows stack traces, file paths and object names from inside the program, and anyone who can
connect can read them: it listens on ``127.0.0.1`` unless told otherwise, and should not be
reachable from outside the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

from ._core import _registry
from ._leaks import _introspect, _snapshot

__all__ = ["DebugServer", "serve"]

logger = logging.getLogger("poolkit.debug")

_TEXT: Final = "text/plain; charset=utf-8"
_JSON: Final = "application/json"
_PROMETHEUS: Final = "text/plain; version=0.0.4; charset=utf-8"

# How long close() lets requests being answered finish before cutting their connections.
_GRACE: Final = 1.0


class _BadRequest(Exception):
    """The client asked for something that makes no sense: answered 400 with this message."""


Query = dict[str, list[str]]
Answer = tuple[int, str, str]  # status, content type, body


def _param(query: Query, name: str, default: str) -> str:
    values = query.get(name)
    return default if not values else values[-1]


# ----------------------------------------------------------------------- routes


def _tasks(server: _Server, query: Query) -> Answer:
    debug = _param(query, "debug", "1")
    if debug not in ("1", "2", "json"):
        raise _BadRequest(f"debug must be 1, 2 or json, got {debug!r}")
    form = _param(query, "format", "text")
    if form not in ("text", "json"):
        raise _BadRequest(f"format must be text or json, got {form!r}")
    loop = server.loop
    snap = _snapshot.snapshot(loop, tasks=loop is not None)
    if debug == "json" or form == "json":
        return 200, _JSON, json.dumps(snap.to_json(), allow_nan=False)
    return 200, _TEXT, snap.dump(int(debug))


def _pools(server: _Server, query: Query) -> Answer:
    from ._observe import _metrics  # only when asked: most programs never serve it

    return 200, _JSON, json.dumps(_metrics.objects_json(), allow_nan=False)


def _metrics_text(server: _Server, query: Query) -> Answer:
    from ._observe import _metrics

    return 200, _PROMETHEUS, _metrics.exposition()


_INDEX = """\
poolkit debug server

/debug/tasks              tasks and threads, grouped by identical stack (?debug=1, the default)
/debug/tasks?debug=2      every task and thread in full
/debug/tasks?debug=json   the same snapshot as JSON
/debug/pools              live pools, channels, limiters and buckets with their statistics (JSON;
                          a process pool's include its worker PIDs)
/metrics                  the same in the Prometheus text format
"""


def _index(server: _Server, query: Query) -> Answer:
    tasks = "from the loop it was given" if server.loop is not None else "none: it has no loop"
    return 200, _TEXT, f"{_INDEX}\ntasks: {tasks}\n"


_ROUTES: dict[str, Callable[[_Server, Query], Answer]] = {
    "/": _index,
    "/debug/tasks": _tasks,
    "/debug/pools": _pools,
    "/metrics": _metrics_text,
}


# ----------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    """Answers one request (one per connection: HTTP/1.0)."""

    server: _Server
    server_version = "poolkit-debug"
    timeout = 10.0  # seconds a client may take to send its request or read the answer

    def version_string(self) -> str:
        return self.server_version  # without the Python version

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _not_allowed(self) -> None:
        path = urlsplit(self.path).path
        if _route(path) is None:
            self._send(404, _TEXT, _not_found(path), send_body=True)
        else:
            message = f"{self.command} is not allowed: this endpoint is read-only (GET, HEAD)\n"
            self._send(405, _TEXT, message, send_body=True, allow=True)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _answer(self, send_body: bool) -> None:
        url = urlsplit(self.path)
        route = _route(url.path)
        if route is None:
            self._send(404, _TEXT, _not_found(url.path), send_body)
            return
        try:
            status, content_type, body = route(
                self.server, parse_qs(url.query, keep_blank_values=True)
            )
        except _BadRequest as e:
            status, content_type, body = 400, _TEXT, f"bad request: {e}"
        except Exception as e:
            # A bug of ours, not the client's: say so briefly, log the details, keep serving.
            logger.exception("poolkit debug server: answering %s failed", self.path)
            status, content_type, body = 500, _TEXT, f"internal error: {type(e).__name__}: {e}"
        self._send(status, content_type, body, send_body)

    def _send(
        self, status: int, content_type: str, body: str, send_body: bool, allow: bool = False
    ) -> None:
        if not body.endswith("\n"):
            body += "\n"
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if allow:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if send_body:
            self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)


def _route(path: str) -> Callable[[_Server, Query], Answer] | None:
    return _ROUTES.get(path.rstrip("/") or "/")


def _not_found(path: str) -> str:
    return f"no such page: {path} (see / for the list)"


class _Server(ThreadingHTTPServer):
    """The HTTP server, with request threads that are named, tracked and joined on close."""

    daemon_threads = True  # a request being answered never holds up the end of the process
    block_on_close = False  # DebugServer.close() joins them itself, cutting stalled clients

    def __init__(
        self,
        address: tuple[Any, ...],
        family: socket.AddressFamily,
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        self.address_family = family
        self.loop = loop
        self.lock = threading.Lock()
        self.answering: dict[threading.Thread, socket.socket] = {}  # connections being answered
        # Every request thread not yet seen ended: one that has left ``answering`` is still
        # alive for a moment, and close() must not return before it is gone.
        self.threads: set[threading.Thread] = set()
        self.answered = 0
        self.origin: _registry.Origin | None = None  # the server thread's, set once it exists
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() looks up the host's fully qualified name, which can wait on
        # DNS for seconds; nothing here uses it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._answer,
            args=(request, client_address),
            name="poolkit-debug-request",
            daemon=self.daemon_threads,
        )
        # Made by the server thread, but the line that matters is the one that started it.
        made = self.origin
        if made is not None:
            origin = _registry.Origin(made.code, made.line, made.module, "debug server request")
            _registry.set_origin(thread, origin)
        with self.lock:
            self.threads = {t for t in self.threads if t.is_alive()}
            self.threads.add(thread)
            self.answering[thread] = request
        try:
            thread.start()
        except BaseException:
            with self.lock:
                del self.answering[thread]
                self.threads.discard(thread)
            raise

    def _answer(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.lock:
                self.answering.pop(threading.current_thread(), None)
                self.answered += 1

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Mostly a client that went away mid-answer: not worth more than DEBUG, never stderr.
        logger.debug(
            "poolkit debug server: connection from %s failed", client_address, exc_info=True
        )

    def accept_until(self, wake: socket.socket) -> None:
        """Accept connections until ``wake`` becomes readable (the body of the server thread);
        then close ``wake``."""
        with wake, selectors.DefaultSelector() as selector:
            selector.register(self.socket, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            while True:
                ready = selector.select()
                if any(key.fileobj is wake for key, _ in ready):
                    return
                try:
                    self._accept_one()
                except Exception:  # pragma: no cover - the thread must survive anything
                    logger.exception("poolkit debug server: accepting a connection failed")

    def _accept_one(self) -> None:
        try:
            request, client_address = self.get_request()
        except (BlockingIOError, ConnectionAbortedError):
            return  # the client gave up before it was accepted (the socket is non-blocking)
        except OSError:
            # Out of file descriptors, say: the connection stays in the backlog and the
            # listening socket stays readable, so wait a little rather than spin.
            logger.debug("poolkit debug server: accept failed", exc_info=True)
            time.sleep(0.1)
            return
        try:
            self.process_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
            self.shutdown_request(request)

    def finish_answering(self) -> None:
        """Wait for the requests being answered; cut the connections of the slow ones."""
        with self.lock:
            answering = dict(self.answering)
        for conn in answering.values():
            _shutdown(conn, socket.SHUT_RD)  # a client still sending its request gets EOF
        deadline = time.monotonic() + _GRACE
        for thread in answering:
            thread.join(max(0.0, deadline - time.monotonic()))
        for thread, conn in answering.items():
            if thread.is_alive():  # a client that does not read its answer
                _shutdown(conn, socket.SHUT_RDWR)
        with self.lock:
            threads, self.threads = self.threads, set()
        for thread in threads:
            thread.join()

    def busy(self) -> bool:
        """Whether a request thread is still alive."""
        with self.lock:
            return any(t.is_alive() for t in self.threads)


def _shutdown(conn: socket.socket, how: int) -> None:
    try:
        conn.shutdown(how)
    except OSError:
        pass  # already closed by the request thread


# ----------------------------------------------------------------------- the public part


class DebugServer:
    """A running debug endpoint, made by :func:`serve`.

    ``close()`` (or leaving ``with``/``async with``) stops it: when it returns, the port is
    free and none of its threads is left.  Until then it keeps serving even if this object is
    dropped, as a debug endpoint started at program start usually is; a server never closed
    stops with the process (its threads are daemon threads).
    """

    __slots__ = ("_closed", "_closing", "_host", "_port", "_server", "_thread", "_url", "_wake")

    def __init__(self, server: _Server, thread: threading.Thread, wake: socket.socket) -> None:
        self._server = server
        self._thread = thread
        self._wake = wake
        self._closing = threading.Lock()
        self._closed = False
        host, port = server.server_address[:2]
        self._host = str(host)
        self._port = int(port)
        shown = f"[{self._host}]" if ":" in self._host else self._host
        self._url = f"http://{shown}:{self._port}"

    @property
    def host(self) -> str:
        """The address it listens on, as bound (``127.0.0.1`` for ``localhost``)."""
        return self._host

    @property
    def port(self) -> int:
        """The port it listens on: the one the system chose, when ``serve()`` was given 0."""
        return self._port

    @property
    def url(self) -> str:
        """``http://host:port``, to hand to ``poolkit dump`` or a browser."""
        return self._url

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop whose tasks ``/debug/tasks`` shows (``None``: threads only)."""
        return self._server.loop

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop serving, and wait until every thread of the server has ended.

        Requests being answered get a second to finish, then their connections are cut.
        Idempotent; a call made while another thread is closing waits for it to finish.
        """
        with self._closing:
            if self._closed:
                return
            self._closed = True
            try:
                self._wake.send(b"x")
            except OSError:  # pragma: no cover - the socket pair cannot fill up with one byte
                pass
            self._thread.join()
            self._server.finish_answering()
            self._server.server_close()
            self._wake.close()
            logger.debug("poolkit debug server on %s closed", self._url)

    def __enter__(self) -> DebugServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> DebugServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close.  With no request being answered that takes well under a millisecond, so it is
        done in place; otherwise in a worker thread, so as not to hold up the loop for the time
        those requests take to finish."""
        if self._server.busy():
            await asyncio.to_thread(self.close)
        else:
            self.close()

    def __repr__(self) -> str:
        server = self._server
        with server.lock:
            answering, answered = len(server.answering), server.answered
        tasks = "tasks+threads" if server.loop is not None else "threads"
        return (
            f"<DebugServer {self._url} showing={tasks} answering={answering} "
            f"answered={answered} closed={self._closed}>"
        )


def serve(
    host: str = "127.0.0.1", port: int = 0, *, loop: asyncio.AbstractEventLoop | None = None
) -> DebugServer:
    """Start a debug HTTP endpoint on ``host:port`` (``port=0``: any free port; see ``.port``).

    ``loop`` is the event loop whose tasks ``/debug/tasks`` shows.  By default it is the running
    loop when ``serve()`` is called from inside one; called from outside any loop, the server
    shows threads only (pass ``loop=`` to show a loop's tasks from anywhere).  The server keeps
    a reference to the loop until it is closed.

    Returns at once, listening; the server runs in threads of its own and never blocks the loop
    (see the module docstring).  Raises ``TypeError``/``ValueError`` for bad arguments and
    ``OSError`` if it cannot listen (the port is taken, the host is not this machine's).
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, got {host!r}")
    if not host:
        raise ValueError("host must not be empty, got ''")
    if not isinstance(port, int) or isinstance(port, bool):
        raise TypeError(f"port must be an int, got {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be between 0 and 65535, got {port!r}")
    if loop is None:
        loop = _introspect.running_loop()
    elif not isinstance(loop, asyncio.AbstractEventLoop):
        raise TypeError(f"loop must be an event loop or None, got {loop!r}")

    try:
        family, _, _, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        server = _Server(address, family, loop)
    except OSError as e:
        e.add_note(f"poolkit.debug.serve() could not listen on {host}:{port}")
        raise
    try:
        server.socket.setblocking(False)  # accept() must never wait: see _Server._accept_one
        wake, waker = socket.socketpair()
    except BaseException:
        server.server_close()
        raise
    thread = threading.Thread(
        target=server.accept_until, args=(wake,), name="poolkit-debug-server", daemon=True
    )
    server.origin = _registry.record_origin(thread, "debug server")
    debug_server = DebugServer(server, thread, waker)
    try:
        thread.start()
    except BaseException:
        server.server_close()
        wake.close()
        waker.close()
        raise
    logger.debug("poolkit debug server listening on %s", debug_server.url)
    return debug_server
