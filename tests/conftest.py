"""Runs ``async def`` tests on several event loops, and fails tests that leave tasks or threads.

* An ``async def`` test runs twice: on the default asyncio loop and on uvloop (poolkit promises to
  use only the public asyncio API, so it must work on any loop).
* ``@pytest.mark.virtual_time`` runs it once, on :class:`poolkit.testing.VirtualTimeLoop`, for tests
  that assert exact timings.
* After the test body returns, no other task may still be alive on its loop, and no thread started
  during the test may still be running: a poolkit object that leaks either fails here.
* ``pytest --eager-tasks`` (Python 3.12+) installs ``asyncio.eager_task_factory`` on every loop
  an ``async def`` test runs on, so that the suites show poolkit behaves the same when tasks start
  eagerly (``.ci/run`` runs the core behaviour suites so on every version that has it).
* An error that nobody retrieved (asyncio's "Future exception was never retrieved", reported to the
  loop's exception handler) fails the test too: no error may be lost silently.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from poolkit.testing import VirtualTimeLoop

pytest_plugins = ["pytester"]  # tests/test_pytest_plugin.py runs pytest inside pytest

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is in the "test" extra
    uvloop = None

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.new_event_loop,
    "virtual": VirtualTimeLoop,
}
if uvloop is not None:
    LOOP_FACTORIES["uvloop"] = uvloop.new_event_loop


EAGER = False  # set by --eager-tasks
UVLOOP_EAGER_PROBLEM: str | None = None


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--eager-tasks",
        action="store_true",
        help="run async tests with asyncio.eager_task_factory installed (Python 3.12+)",
    )


def pytest_configure(config: pytest.Config) -> None:
    global EAGER, UVLOOP_EAGER_PROBLEM
    EAGER = bool(config.getoption("--eager-tasks"))
    if EAGER and not hasattr(asyncio, "eager_task_factory"):
        raise pytest.UsageError("--eager-tasks needs Python 3.12 or newer")
    if EAGER:
        UVLOOP_EAGER_PROBLEM = _uvloop_eager_problem()


def _uvloop_eager_problem() -> str | None:
    """Why uvloop cannot run eager tasks here, if it cannot (uvloop 0.23 on Python 3.13 passes
    an ``eager_start`` argument that the task factory does not take)."""
    if uvloop is None:
        return None

    async def probe() -> None:
        asyncio.get_running_loop().set_task_factory(asyncio.eager_task_factory)
        step = asyncio.sleep(0)
        try:
            await asyncio.create_task(step)
        except TypeError:
            step.close()  # never started: closed here, not reported as "never awaited"
            raise

    loop = uvloop.new_event_loop()
    coro = probe()
    try:
        loop.run_until_complete(coro)
    except TypeError as e:
        coro.close()
        return f"uvloop {uvloop.__version__} cannot run asyncio.eager_task_factory here: {e}"
    finally:
        loop.close()
    return None


def pytest_report_header(config: pytest.Config) -> str | None:
    return "poolkit: tasks start eagerly (asyncio.eager_task_factory)" if EAGER else None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if not inspect.iscoroutinefunction(metafunc.function):
        return
    if metafunc.definition.get_closest_marker("virtual_time"):
        kinds = ["virtual"]
    else:
        kinds = ["asyncio", "uvloop"]
    if "loop_kind" not in metafunc.fixturenames:
        metafunc.fixturenames.append("loop_kind")
    skips = {}
    if "uvloop" not in LOOP_FACTORIES:
        skips["uvloop"] = "uvloop is not installed (pip install -e '.[test]')"
    elif EAGER and UVLOOP_EAGER_PROBLEM is not None:
        skips["uvloop"] = UVLOOP_EAGER_PROBLEM
    params = [
        pytest.param(k, marks=pytest.mark.skip(reason=skips[k]) if k in skips else ())
        for k in kinds
    ]
    metafunc.parametrize("loop_kind", params)


def run_on(kind: str, coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` to completion on a fresh loop of the given kind (helper for sync tests).

    Fails if the loop's exception handler was called, e.g. for an exception never retrieved.
    """
    reported: list[dict[str, Any]] = []
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[kind]) as runner:
        runner.get_loop().set_exception_handler(lambda loop, context: reported.append(context))
        if EAGER:
            runner.get_loop().set_task_factory(asyncio.eager_task_factory)
        try:
            return runner.run(coro)
        finally:
            gc.collect()  # futures dropped by the test report unretrieved errors now, not later
            runner.run(asyncio.sleep(0))
            if reported:
                pytest.fail(f"the event loop reported: {[c.get('message') for c in reported]!r}")


async def _no_leftover_tasks(body: Coroutine[Any, Any, Any]) -> None:
    await body
    for _ in range(3):  # let just-finished tasks run their last step
        await asyncio.sleep(0)
    me = asyncio.current_task()
    leftover = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
    if leftover:
        for t in leftover:
            t.cancel()
        await asyncio.gather(*leftover, return_exceptions=True)
        pytest.fail(f"the test left {len(leftover)} task(s) running: {leftover!r}")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    kind = pyfuncitem.callspec.params["loop_kind"]
    kwargs = {
        name: pyfuncitem.funcargs[name]
        for name in inspect.signature(fn).parameters
        if name in pyfuncitem.funcargs
    }
    run_on(str(kind), _no_leftover_tasks(fn(**kwargs)))
    return True


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 2.0
    while True:
        extra = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if extra:
        pytest.fail(f"the test left {len(extra)} thread(s) running: {extra!r}")
