"""Fixtures and helpers shared by the tests of the limits kept in Redis.

Use them with ``from tests.redis_support import *  # noqa: F403`` is *not* needed: import the
fixtures by name into the test module (pytest finds fixtures imported into a module)::

    from tests.redis_support import OwnRedisServer, own_redis, redis_prefix, redis_url

* ``redis_url``: the shared server at 127.0.0.1:6379 (``"redis://127.0.0.1:6379/0"``).  Where
  none answers the test is skipped, saying so -- unless ``POOLKIT_REQUIRE_REDIS=1`` (CI), which
  makes it fail instead.
* ``redis_prefix``: a random key prefix for the test; every key under it is deleted afterwards
  (never FLUSH: the server is shared).
* ``redis_client``: a blocking ``redis.Redis`` on the shared server, for inspecting keys.
* ``own_redis``: an :class:`OwnRedisServer` of the test's own on a free port, for fault tests
  (kill, pause with SIGSTOP, resume, restart); always stopped at teardown.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

__all__ = [
    "SHARED_URL",
    "OwnRedisServer",
    "commandstats",
    "own_redis",
    "redis_client",
    "redis_prefix",
    "redis_url",
    "require_redis",
]

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 6379
SHARED_URL = f"redis://{SHARED_HOST}:{SHARED_PORT}/0"


def _answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis server answers PING at host:port (raw socket: no redis-py needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def require_redis(reason: str = "") -> None:
    """Skip (or, with ``POOLKIT_REQUIRE_REDIS=1``, fail) unless redis-py and the shared server
    are there."""
    required = os.environ.get("POOLKIT_REQUIRE_REDIS") == "1"
    try:
        import redis  # noqa: F401
    except ImportError:
        message = "redis-py is not installed (pip install -e '.[redis,test]')"
        if required:
            pytest.fail(f"{message}, and POOLKIT_REQUIRE_REDIS=1")
        pytest.skip(message)
    if not _answers(SHARED_HOST, SHARED_PORT):
        message = (
            f"no Redis server answers at {SHARED_HOST}:{SHARED_PORT} (start one, e.g. "
            f"'redis-server --daemonize yes'){reason}"
        )
        if required:
            pytest.fail(f"{message}, and POOLKIT_REQUIRE_REDIS=1 says the Redis tests must run")
        pytest.skip(message)


@pytest.fixture
def redis_url() -> str:
    """The shared server's URL; skips (or fails, see the module docstring) if it is not there."""
    require_redis()
    return SHARED_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    """A blocking client on the shared server, closed after the test."""
    import redis

    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A random key prefix; every key under it on the shared server is deleted after the test
    (keys whose hash tag follows the prefix included: ``{prefix}:{key}:...``)."""
    import redis

    prefix = f"pktest-{secrets.token_hex(6)}"
    yield prefix
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i : i + 500])
    finally:
        client.close()


def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls} (lower-case names, e.g. 'evalsha')."""
    info = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if isinstance(value, dict)
    }


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """Linux: SIGKILL the server when the test process dies, even by os._exit (pytest-timeout),
    which skips every fixture's teardown."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedisServer:
    """A ``redis-server`` of the test's own, on a free port of 127.0.0.1, with no persistence.

    ``kill()`` (SIGKILL), ``stop()`` (and wait), ``pause()`` (SIGSTOP: it holds connections but
    answers nothing), ``resume()`` (SIGCONT), ``restart()`` (a fresh server on the same port,
    with no data).  ``url`` stays the same throughout.
    """

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            required = os.environ.get("POOLKIT_REQUIRE_REDIS") == "1"
            message = "redis-server is not on PATH: the fault tests need their own server"
            if required:
                pytest.fail(message)
            pytest.skip(message)
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None
        self.paused = False

    def start(self) -> None:
        assert self.binary is not None
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
        deadline = time.monotonic() + 5.0
        while not _answers("127.0.0.1", self.port, 0.2):
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


@pytest.fixture
def own_redis() -> Iterator[OwnRedisServer]:
    """A started :class:`OwnRedisServer`, stopped at teardown whatever happened."""
    try:
        import redis  # noqa: F401
    except ImportError:
        if os.environ.get("POOLKIT_REQUIRE_REDIS") == "1":
            pytest.fail("redis-py is not installed, and POOLKIT_REQUIRE_REDIS=1")
        pytest.skip("redis-py is not installed (pip install -e '.[redis,test]')")
    server = OwnRedisServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
