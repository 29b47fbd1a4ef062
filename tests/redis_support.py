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

import os
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from benchmarks._redis_server import RedisServer, answers, delete_keys

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
    if not answers(SHARED_HOST, SHARED_PORT):
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
    prefix = f"pktest-{secrets.token_hex(6)}"
    yield prefix
    delete_keys(redis_url, f"{prefix}:*")


def commandstats(client: Any) -> dict[str, int]:
    """``INFO commandstats`` as {command: calls} (lower-case names, e.g. 'evalsha')."""
    info = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(value["calls"])
        for name, value in info.items()
        if isinstance(value, dict)
    }


class OwnRedisServer(RedisServer):
    """A :class:`~benchmarks._redis_server.RedisServer` of the test's own (kill, pause, resume,
    restart: see there); where ``redis-server`` is not on PATH the test is skipped, or fails
    with ``POOLKIT_REQUIRE_REDIS=1``."""

    def __init__(self) -> None:
        try:
            super().__init__()
        except RuntimeError:
            message = "redis-server is not on PATH: the fault tests need their own server"
            if os.environ.get("POOLKIT_REQUIRE_REDIS") == "1":
                pytest.fail(message)
            pytest.skip(message)


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
