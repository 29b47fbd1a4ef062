"""The pytest plugin (poolkit.pytest_plugin), run inside pytest with pytester."""

from __future__ import annotations

import pytest

# The inner runs use anyio's pytest plugin for their async tests (anyio is a test dependency).
HEADER = """
import asyncio, gc, queue, threading, time
import pytest
import poolkit

@pytest.fixture
def anyio_backend():
    return "asyncio"

async def _forever(ch):
    await ch.receive()
"""


def run(pytester: pytest.Pytester, body: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_inner=HEADER + body)
    return pytester.runpytest_inprocess("-p", "anyio", "-q", *args)


def test_the_marker_fails_a_test_that_leaks_a_task_and_passes_a_tidy_one(
    pytester: pytest.Pytester,
) -> None:
    result = run(
        pytester,
        """
@pytest.fixture
def no_collection():
    # The leaked task is held only weakly (asyncio's set of tasks): a collection during the
    # check (a loaded machine makes one likely) would destroy it, and the report would say that
    # instead of what it waits for.  The fixture ends after the check.
    enabled = gc.isenabled()
    gc.disable()
    yield
    if enabled:
        gc.enable()

@pytest.mark.anyio
@pytest.mark.no_leaks(timeout=0.05)
async def test_leaky(no_collection):
    asyncio.get_running_loop().create_task(_forever(poolkit.Channel(0)), name="lost-receiver")

@pytest.mark.anyio
@pytest.mark.no_leaks(timeout=0.05)
async def test_tidy():
    task = asyncio.get_running_loop().create_task(asyncio.sleep(0.01))
    await task

@pytest.mark.anyio
async def test_unmarked_leak_is_not_checked():
    asyncio.get_running_loop().create_task(asyncio.sleep(0.2))
""",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*LeakError: 1 task still alive 0.05 s after the block ended*",
            "*1 @ chan receive, blocked forever*",
        ]
    )
    assert "test_leaky" in result.stdout.str()


def test_the_flag_checks_every_test_including_threads(pytester: pytest.Pytester) -> None:
    body = """
STOP = queue.Queue()

def test_thread_left_blocked():
    threading.Thread(target=STOP.get, name="orphan-consumer", daemon=True).start()

def test_thread_joined():
    t = threading.Thread(target=time.sleep, args=(0.01,))
    t.start()
    t.join()

@pytest.mark.no_leaks(enabled=False)
def test_opted_out():
    threading.Thread(target=STOP.get, name="allowed", daemon=True).start()

def test_zz_release():
    for _ in range(2):
        STOP.put(None)
"""
    without = run(pytester, body)
    without.assert_outcomes(passed=4)
    flagged = run(pytester, body, "--poolkit-leaks")
    flagged.assert_outcomes(passed=3, failed=1)
    flagged.stdout.fnmatch_lines(["*1 thread still alive*", "*1 @ queue get*"])


def test_the_ini_option_turns_it_on_for_the_suite(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\npoolkit_leaks = true\n")
    result = run(
        pytester,
        """
@pytest.mark.anyio
async def test_forgotten_worker():
    jobs = poolkit.Channel(1)
    async def worker():
        async for _ in jobs:
            pass
    asyncio.get_running_loop().create_task(worker(), name="never-stopped")
    await asyncio.sleep(0)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*LeakError: 1 task still alive*", "*chan receive*"])


def test_bad_marker_arguments_are_reported(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
@pytest.mark.no_leaks(1)
def test_positional():
    pass

@pytest.mark.no_leaks(timeout=-1)
def test_negative():
    pass
""",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*TypeError: @pytest.mark.no_leaks takes keyword arguments only, got (1,)*",
            "*ValueError: timeout must be >= 0 seconds or None, got -1*",
        ]
    )
