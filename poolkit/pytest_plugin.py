"""A pytest plugin: fail tests that leave tasks or threads running (``poolkit.no_leaks``).

pytest loads it on its own once poolkit is installed (it is registered by entry point).  It does
nothing until asked:

* for one test, with a marker (its keyword arguments are those of :func:`poolkit.no_leaks`)::

      @pytest.mark.no_leaks(timeout=1.0, ignore_names=["metrics-*"])
      async def test_shutdown(): ...

* for a whole suite, with ``pytest --poolkit-leaks`` or in the configuration::

      [tool.pytest.ini_options]
      poolkit_leaks = true

  A test can then opt out with ``@pytest.mark.no_leaks(enabled=False)``.

The check wraps the test function itself (not its fixtures): ``async def`` tests are checked
for tasks of their loop and for threads, plain tests for threads.  Tasks and threads alive when
the test function starts (started by fixtures, say) are excused.  It works with whatever runs
``async def`` tests (anyio's plugin, pytest-asyncio in function mode, a ``conftest.py`` of one's
own), as long as it calls the test function it finds on the test item, which they all do.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

from ._leaks._noleaks import NoLeaks

__all__: list[str] = []

_MARKER = "no_leaks"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("poolkit")
    group.addoption(
        "--poolkit-leaks",
        action="store_true",
        default=False,
        help="fail every test that leaves asyncio tasks or threads running (poolkit.no_leaks)",
    )
    parser.addini(
        "poolkit_leaks",
        type="bool",
        default=False,
        help="fail every test that leaves asyncio tasks or threads running (poolkit.no_leaks)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "no_leaks(timeout=0.4, ignore_names=(), ignore_functions=(), ignore_current=True, "
        "enabled=True): fail the test if it leaves tasks or threads running (poolkit.no_leaks)",
    )


def _checker(item: pytest.Function) -> NoLeaks | None:
    marker = item.get_closest_marker(_MARKER)
    suite = bool(item.config.getoption("poolkit_leaks") or item.config.getini("poolkit_leaks"))
    if marker is None:
        return NoLeaks() if suite else None
    if marker.args:
        raise TypeError(
            f"@pytest.mark.no_leaks takes keyword arguments only, got {marker.args!r}"
            f" on {item.nodeid}"
        )
    options = dict(marker.kwargs)
    enabled = options.pop("enabled", True)
    if not isinstance(enabled, bool):
        raise TypeError(f"no_leaks(enabled=...) must be True or False, got {enabled!r}")
    return NoLeaks(**options) if enabled else None


@pytest.hookimpl(wrapper=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> Generator[None, object, object]:
    checker = _checker(pyfuncitem)
    if checker is None:
        return (yield)
    original = pyfuncitem.obj
    pyfuncitem.obj = checker(original)  # the same check no_leaks() gives as a decorator
    try:
        return (yield)
    finally:
        pyfuncitem.obj = original
