"""The CPython and asyncio internals that poolkit's leak tooling relies on, each checked.

``poolkit._leaks._blocked`` and ``poolkit._leaks._introspect`` list what they lean on (their module
docstrings).  A new Python release that changes any of it should fail here, in CI, before a user
meets a wrong answer or a crash.  Also: the interpreters where the heap analysis refuses to run
say so clearly, and the rest of the tooling still works there.
"""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import textwrap
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

import poolkit
from poolkit import leaks
from poolkit._leaks import _blocked, _introspect

VERIFIED = _blocked.analysis_unavailable() is None
needs_analysis = pytest.mark.skipif(
    not VERIFIED, reason=f"the heap analysis does not run here: {_blocked.analysis_unavailable()}"
)


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _dead_ids(*extra: Any) -> set[int]:
    """Run the reachability analysis on the heap as it is, as find_blocked does."""
    probe: list[Any] = []
    objs = gc.get_objects()
    try:
        return _blocked._unreachable(objs, id(probe), set())
    finally:
        objs.clear()


class _Node:
    def __init__(self) -> None:
        self.other: Any = None


# ----------------------------------------------------------------------- reference counting


@needs_analysis
@pytest.mark.usefixtures("no_gc")
def test_an_object_held_only_by_running_code_is_a_root() -> None:
    # A running frame reports none of its locals to gc.get_referents: what it holds must count
    # as referenced from outside the heap, or live objects would look unreachable.
    held = _Node()
    held.other = _Node()
    assert id(held) not in _dead_ids()
    assert id(held.other) not in _dead_ids()


@needs_analysis
@pytest.mark.usefixtures("no_gc")
def test_a_cycle_nothing_holds_is_unreachable_and_a_weak_reference_does_not_hold_it() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    ida, idb = id(a), id(b)
    del a, b
    dead = _dead_ids()
    assert {ida, idb} <= dead
    assert ref() is not None  # not collected: the analysis only looks


@needs_analysis
@pytest.mark.usefixtures("no_gc")
def test_a_held_container_holds_what_it_contains() -> None:
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    keep = [a]
    idb = id(b)
    del a, b
    assert idb not in _dead_ids()
    keep.clear()
    assert idb in _dead_ids()


def test_getrefcount_counts_each_reference_once() -> None:
    obj = _Node()
    before = sys.getrefcount(obj)
    holders = [obj, obj, {"k": obj}]
    assert sys.getrefcount(obj) == before + 3
    assert gc.get_referents(holders).count(obj) == 2


# ----------------------------------------------------------------------- asyncio


async def test_a_task_names_the_future_it_waits_on_in_fut_waiter() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    async def wait() -> None:
        await fut

    kinds: list[type] = [asyncio.Task]
    pure = getattr(asyncio.tasks, "_PyTask", None)
    if pure is not None and pure is not asyncio.Task:
        kinds.append(pure)
    tasks = [kind(wait(), loop=loop) for kind in kinds]
    await asyncio.sleep(0)
    for task in tasks:
        assert task._fut_waiter is fut  # type: ignore[attr-defined]
    fut.set_result(None)
    await asyncio.gather(*tasks)
    for task in tasks:
        assert task._fut_waiter is None  # type: ignore[attr-defined]


async def test_an_await_chain_is_walked_through_coroutines_and_async_generators() -> None:
    gate = asyncio.Event()

    async def inner() -> AsyncIterator[int]:
        await gate.wait()
        yield 1

    async def outer() -> None:
        async for _ in inner():
            pass

    task = asyncio.create_task(outer())
    await asyncio.sleep(0)
    # Each async generator step awaitable has a type without a public name, and its referents
    # include the generator: both are what _coroutine_frames needs.
    assert isinstance(task.get_coro().cr_await, _introspect._ASYNC_GEN_STEPS)  # type: ignore[union-attr]
    names = [f.f_code.co_name for f in _introspect._coroutine_frames(task.get_coro())]
    assert names[-2:] == ["inner", "outer"]
    assert "wait" in names
    gate.set()
    await task


async def test_all_tasks_and_current_frames_are_readable_from_another_thread() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.create_task(asyncio.sleep(3600), name="seen from a thread")
    await asyncio.sleep(0)
    found: list[Any] = []
    await asyncio.to_thread(lambda: found.append(leaks.snapshot(loop)))
    (snap,) = found
    assert "seen from a thread" in {t.name for t in snap.tasks}
    assert any(t.state == "running" for t in snap.threads)  # the thread that took it
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def test_a_frames_locals_can_be_read_for_self() -> None:
    # Dumps name the poolkit object a task waits on from the frame's ``self`` (on 3.13, f_locals
    # is a write-through proxy, PEP 667; reading it must still work).
    class Holder:
        def frame(self) -> Any:
            return sys._getframe()

    holder = Holder()
    assert holder.frame().f_locals.get("self") is holder


# ----------------------------------------------------------------------- safety


def _run(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *flags, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_importing_every_public_module_emits_no_warning() -> None:
    # Regression: on 3.13, building the async generator step types left two awaitables never
    # awaited, and "python -W error -c 'import poolkit.leaks'" failed.
    done = _run(
        "import poolkit, poolkit.leaks, poolkit.debug, poolkit.testing, poolkit.prometheus",
        "-W",
        "error",
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


@needs_analysis
def test_the_asyncio_modules_free_list_survives_repeated_analyses() -> None:
    # Regression for CPython gh-122695 (3.12.0 to 3.12.4): gc.get_referents(_asyncio) hands out
    # freed future iterators; dropping them again corrupts the free list (a loop that eats memory,
    # or a crash).  The analysis must never traverse module objects.  In a child process with a
    # memory cap, so that a regression fails this test instead of the whole run.
    done = _run(
        """
        import asyncio, gc, resource
        import poolkit
        from poolkit import leaks
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

        async def main():
            loop = asyncio.get_running_loop()
            async def receive(ch):
                await ch.receive()
            orphans = [loop.create_task(receive(poolkit.Channel(0))) for _ in range(3)]
            del orphans
            await asyncio.sleep(0)
            for round in range(5):
                for _ in range(40):
                    iterator = iter(loop.create_future())
                    del iterator
                assert len(leaks.find_blocked()) == 3, round
                assert sum(t.blocked for t in leaks.snapshot(blocked=True).tasks) == 3
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()
            print("ok")

        gc.disable()
        asyncio.run(main())
        """
    )
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout == "ok\n"


# ----------------------------------------------------------------------- where it cannot run


def test_interpreters_outside_the_verified_list_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if VERIFIED:
        monkeypatch.setattr(_blocked, "VERIFIED", ())  # as on a CPython that CI does not run
    version = ".".join(map(str, sys.version_info[:3]))
    reason = _blocked.analysis_unavailable()
    assert reason is not None and version in reason
    with pytest.raises(poolkit.HeapAnalysisUnavailable, match=version.replace(".", r"\.")):
        leaks.find_blocked()
    with pytest.raises(poolkit.HeapAnalysisUnavailable):
        leaks.snapshot(blocked=True)
    assert isinstance(poolkit.HeapAnalysisUnavailable("x"), RuntimeError)
    assert leaks.HeapAnalysisUnavailable is poolkit.HeapAnalysisUnavailable
    # Everything else still works.
    assert leaks.snapshot().threads


@pytest.mark.usefixtures("no_gc")
async def test_no_leaks_still_reports_a_leak_where_the_analysis_cannot_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if VERIFIED:
        monkeypatch.setattr(_blocked, "VERIFIED", ())

    async def receive(ch: poolkit.Channel[int]) -> None:
        await ch.receive()

    with pytest.raises(poolkit.LeakError) as caught:
        async with poolkit.no_leaks(timeout=0.01):
            task = asyncio.create_task(receive(poolkit.Channel(0)), name="forgotten")
    error = caught.value
    assert [t.name for t in error.snapshot.tasks] == ["forgotten"]
    assert not error.snapshot.tasks[0].blocked  # not known here
    message = str(error)
    assert "which of them are blocked forever is not known here" in message
    assert "blocked forever (nothing alive" not in message
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
