"""A private ``redis-server``: started on a free port of 127.0.0.1, with no persistence, waited
for, and stopped.

One piece of code for the two places that need a server nobody else uses: the Redis benchmark's
command counts (``benchmarks/bench_redis.py``), where other clients' traffic would be counted, and
the fault tests (``tests/redis_support.py``), which kill, pause and restart it.  It lives here
because the benchmarks never import from ``tests/``; the tests import it from here, as they
already import the benchmarks.  Starting one needs no redis-py (readiness is a raw ``PING``);
``delete_keys``, the clean-up both do on the shared server, does.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

__all__ = ["RedisServer", "answers", "delete_keys", "free_port"]


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at host:port (raw socket: no redis-py needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def free_port() -> int:
    """A port of 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def delete_keys(url: str, match: str) -> None:
    """Delete every key that matches the glob ``match`` on ``url``, by SCAN and DEL (never
    FLUSH: the server may be shared).  Needs redis-py."""
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=match, count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: SIGKILL the server when the process that started it dies, even by ``os._exit``
    (pytest-timeout) or SIGKILL, which skip every teardown and ``atexit``."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class RedisServer:
    """A ``redis-server`` of the caller's own, on a free port of 127.0.0.1, with no persistence.

    ``start()`` (and wait until it answers), ``kill()`` (SIGKILL), ``stop()`` (SIGTERM, and wait;
    idempotent), ``pause()`` (SIGSTOP: it holds connections but answers nothing), ``resume()``
    (SIGCONT), ``restart()`` (a fresh server on the same port, with no data).  ``port`` and
    ``url`` stay the same throughout.

    ``binary`` is the server to run (default: ``redis-server`` on PATH).

    Raises:
        RuntimeError: from the constructor, if no ``binary`` is given and ``redis-server`` is
            not on PATH; from ``start()``,
            if it has not answered within ``start_timeout`` seconds.
    """

    def __init__(self, *, start_timeout: float = 5.0, binary: str | None = None) -> None:
        binary = binary or shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH")
        self.binary = binary
        self.start_timeout = start_timeout
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def running(self) -> bool:
        """Whether the server process was started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        deadline = time.monotonic() + self.start_timeout
        while not answers("127.0.0.1", self.port, 0.2):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.01)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.process is not None and self.paused:
            self.process.send_signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        if self.process is None:
            return
        if self.paused:
            self.resume()
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        self.process.wait(5)
        self.process = None

    def stop(self) -> None:
        """Stop it (always safe: idempotent, also when paused or already dead)."""
        if self.process is None:
            return
        self.resume()
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()

    def client(self, **kwargs: Any) -> Any:
        """A blocking redis-py client on this server (the caller closes it)."""
        import redis

        kwargs.setdefault("socket_timeout", 2)
        return redis.Redis.from_url(self.url, **kwargs)
