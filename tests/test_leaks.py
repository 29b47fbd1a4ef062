"""poolkit.leaks: snapshots and dumps, provably blocked tasks, no_leaks(), and the watchdog."""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import poolkit
from poolkit import leaks
from poolkit.leaks import LeakError, Watchdog, no_leaks

HERE = __file__


@pytest.fixture
def no_gc() -> Iterator[None]:
    """A task nothing can reach is freed by the next collection; hold collections off so the
    test sees it before the collector does (which is what happens in a real program too, until
    the collector gets round to it)."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def _cancel_others() -> None:
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for t in others:
        t.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _receive(ch: poolkit.Channel[Any]) -> Any:
    return await ch.receive()


async def _wait_on(fut: asyncio.Future[Any]) -> Any:
    return await fut


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


# ----------------------------------------------------------------------- snapshots


async def test_snapshot_names_states_stacks_and_counts() -> None:
    ch: poolkit.Channel[int] = poolkit.Channel(0)
    limiter = poolkit.CapacityLimiter(1)
    await limiter.acquire()
    receivers = [asyncio.create_task(_receive(ch), name=f"rx-{i}") for i in range(3)]

    async def hold_limiter() -> None:
        async with limiter:
            pass

    blocked = asyncio.create_task(hold_limiter(), name="sem")
    sleeper = asyncio.create_task(asyncio.sleep(30), name="zzz")
    await _settle()

    snap = leaks.snapshot()
    by_name = {t.name: t for t in snap.tasks}
    assert {"rx-0", "rx-1", "rx-2", "sem", "zzz"} <= set(by_name)
    assert by_name["rx-0"].state == "chan receive"
    assert by_name["sem"].state == "semacquire"
    assert by_name["zzz"].state == "sleep"
    me = asyncio.current_task()
    assert me is not None
    assert by_name[me.get_name()].state == "running"
    # The stack is innermost first and ends in this file's coroutine.
    assert by_name["rx-0"].stack[-1].function == "_receive"
    assert by_name["rx-0"].stack[-1].filename == HERE
    assert any(f.function == "Channel.receive" for f in by_name["rx-0"].stack)
    assert any(t.name == threading.current_thread().name for t in snap.threads)

    text = snap.dump(1)
    assert text.startswith(f"task profile: total {len(snap.tasks)}\n")
    assert "3 @ chan receive\n" in text
    assert f"thread profile: total {len(snap.threads)}" in text
    # Most common group first.
    assert text.index("3 @ chan receive") < text.index("1 @ semacquire")

    full = snap.dump(2)
    for name in ("rx-0", "rx-1", "rx-2", "sem", "zzz"):
        assert f"task {name!r} [" in full

    data = json.loads(json.dumps(snap.to_json()))
    assert len(data["tasks"]) == len(snap.tasks)
    assert {t["name"] for t in data["tasks"]} == set(by_name)

    with pytest.raises(ValueError, match="debug must be 1 or 2, got 3"):
        snap.dump(3)
    with pytest.raises(TypeError, match="loop must be an event loop"):
        leaks.snapshot("loop")  # type: ignore[arg-type]

    limiter.release()
    for t in [*receivers, blocked, sleeper]:
        t.cancel()
    await asyncio.gather(*receivers, blocked, sleeper, return_exceptions=True)


async def test_poolkit_tasks_carry_owner_and_creation_site() -> None:
    line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
    async with poolkit.WorkerPool(workers=2, name="fetch") as pool:  # the workers start here
        await pool.submit(asyncio.sleep, 0)
        await _settle()
        snap = leaks.snapshot()
        workers = [t for t in snap.tasks if t.owner and t.owner.startswith("pool 'fetch' worker")]
        assert len(workers) == pool.statistics().workers >= 1
        assert all(t.state == "pool idle" for t in workers)
        site = workers[0].created_at
        assert site is not None and site.filename == HERE and site.line == line
        assert workers[0].age is not None and workers[0].age >= 0
        assert "#\towner pool 'fetch' worker\n" in snap.dump(1)


async def test_track_tasks_and_labels_show_in_dumps() -> None:
    leaks.track_tasks()
    try:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        task = asyncio.create_task(asyncio.sleep(30), name="tracked")
        leaks.label(task, host="example.com")
        await _settle()
        info = next(t for t in leaks.snapshot().tasks if t.name == "tracked")
        assert info.created_at is not None
        assert (info.created_at.filename, info.created_at.line) == (HERE, line)
        assert info.labels == {"host": "example.com"}
        assert "{host=example.com}" in leaks.snapshot().dump(2)
    finally:
        leaks.track_tasks(enabled=False)
    untracked = asyncio.create_task(asyncio.sleep(30), name="untracked")
    await _settle()
    info = next(t for t in leaks.snapshot().tasks if t.name == "untracked")
    assert info.created_at is None
    with pytest.raises(TypeError, match="must be a str"):
        leaks.label(task, n=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="needs a task or a thread"):
        leaks.label("x")  # type: ignore[arg-type]
    task.cancel()
    untracked.cancel()
    await asyncio.gather(task, untracked, return_exceptions=True)


def test_snapshot_from_another_thread_while_the_loop_is_stuck() -> None:
    loop = asyncio.new_event_loop()
    stuck, release = threading.Event(), threading.Event()
    ch: poolkit.Channel[int] = poolkit.Channel(0)

    async def main() -> None:
        waiting = [loop.create_task(_receive(ch), name=f"w{i}") for i in range(4)]
        await _settle()
        stuck.set()
        release.wait(10)  # the loop thread blocks here: nothing else runs on the loop
        for t in waiting:
            t.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    runner = threading.Thread(target=loop.run_until_complete, args=(main(),))
    runner.start()
    try:
        assert stuck.wait(10)
        snap = leaks.snapshot(loop)
        states = sorted(t.state for t in snap.tasks)
        assert states == ["chan receive"] * 4 + ["running"]
        loop_thread = next(t for t in snap.threads if t.ident == runner.ident)
        assert loop_thread.state == "event wait"
    finally:
        release.set()
        runner.join(10)
        loop.close()


# ----------------------------------------------------------------------- find_blocked


# The heap analysis reads every object the test process holds: 10-30 s alone in the full
# suite, two to three times that while CI runs three suites on two cores (60 s was exceeded).
@pytest.mark.timeout(240)
@pytest.mark.usefixtures("no_gc")
async def test_find_blocked_tells_unreachable_waits_from_reachable_ones() -> None:
    held: poolkit.Channel[int] = poolkit.Channel(0)
    reachable_future = asyncio.get_running_loop().create_future()
    asyncio.create_task(_receive(poolkit.Channel(0)), name="orphan-channel")
    asyncio.create_task(_wait_on(asyncio.get_running_loop().create_future()), name="orphan-fut")
    asyncio.create_task(_receive(held), name="held-channel")
    asyncio.create_task(_wait_on(reachable_future), name="held-future")
    asyncio.create_task(asyncio.sleep(30), name="sleeping")
    limiter = poolkit.CapacityLimiter(1)
    await limiter.acquire()

    async def take(lim: poolkit.CapacityLimiter) -> None:
        await lim.acquire()

    asyncio.create_task(take(limiter), name="held-limiter")
    orphan_limiter = poolkit.CapacityLimiter(1)
    await orphan_limiter.acquire()
    asyncio.create_task(take(orphan_limiter), name="orphan-limiter")
    del orphan_limiter
    await _settle()

    found = leaks.find_blocked()
    assert sorted(t.name for t in found) == ["orphan-channel", "orphan-fut", "orphan-limiter"]
    assert all(t.blocked for t in found)
    assert {t.name: t.state for t in found}["orphan-channel"] == "chan receive"
    marked = {t.name for t in leaks.snapshot(blocked=True).tasks if t.blocked}
    assert marked == {"orphan-channel", "orphan-fut", "orphan-limiter"}
    assert "blocked forever" in leaks.snapshot(blocked=True).dump(1)

    # Once something alive holds the future again, the task is no longer provably blocked.
    me = asyncio.current_task()
    orphan = next(t for t in asyncio.all_tasks() if t.get_name() == "orphan-fut")
    assert orphan is not me
    assert "orphan-fut" not in {t.name for t in leaks.find_blocked()}
    del orphan
    assert "orphan-fut" in {t.name for t in leaks.find_blocked()}
    limiter.release()
    await _cancel_others()


@pytest.mark.usefixtures("no_gc")
async def test_a_dropped_pool_that_was_never_shut_down_is_blocked_forever() -> None:
    pool = poolkit.WorkerPool(workers=3, name="dropped")
    await pool.submit(asyncio.sleep, 0)
    await _settle()
    assert leaks.find_blocked() == []  # we still hold the pool: it could be shut down
    del pool
    found = leaks.find_blocked()
    assert len(found) == 3
    assert all(t.owner is not None and t.owner.startswith("pool 'dropped'") for t in found)
    await _cancel_others()


async def test_find_blocked_ignores_tasks_a_thread_will_wake() -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    started = threading.Event()

    def later(f: asyncio.Future[int]) -> None:
        started.set()
        time.sleep(0.05)
        loop.call_soon_threadsafe(f.set_result, 1)

    thread = threading.Thread(target=later, args=(fut,))
    thread.start()
    task = asyncio.create_task(_wait_on(fut), name="woken-by-thread")
    del fut
    started.wait(5)
    names = {t.name for t in leaks.find_blocked()}
    assert "woken-by-thread" not in names
    assert await task == 1
    thread.join(5)
    with pytest.raises(TypeError, match="loop must be an event loop"):
        leaks.find_blocked(3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- no_leaks: caught


@pytest.mark.usefixtures("no_gc")
async def test_a_task_blocked_on_a_channel_nobody_closes_is_caught_as_blocked() -> None:
    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            asyncio.create_task(_receive(poolkit.Channel(0)), name="forgotten")
    error = caught.value
    assert isinstance(error, AssertionError) and isinstance(error, poolkit.PoolkitError)
    assert [t.name for t in error.snapshot.tasks] == ["forgotten"]
    assert error.snapshot.tasks[0].blocked
    assert error.snapshot.threads == ()
    message = str(error)
    assert message.startswith("1 task still alive 0.05 s after the block ended; 1 of the tasks")
    assert "1 @ chan receive, blocked forever" in message
    await _cancel_others()


async def test_a_worker_loop_that_never_gets_a_stop_is_caught() -> None:
    jobs: poolkit.Channel[int] = poolkit.Channel(4)
    seen: list[int] = []

    async def worker() -> None:
        async for item in jobs:
            seen.append(item)

    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            workers = [asyncio.create_task(worker(), name=f"worker-{i}") for i in range(2)]
            for i in range(5):
                await jobs.send(i)
            # jobs.close() forgotten
    assert sorted(seen) == [0, 1, 2, 3, 4]
    snap = caught.value.snapshot
    assert sorted(t.name for t in snap.tasks) == ["worker-0", "worker-1"]
    assert {t.state for t in snap.tasks} == {"chan receive"}
    assert not any(t.blocked for t in snap.tasks)  # we hold the channel: it could be closed
    assert "2 @ chan receive\n" in str(caught.value)
    jobs.close()
    await asyncio.gather(*workers)


async def test_a_pool_left_open_is_caught_with_its_owner() -> None:
    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            pool = poolkit.WorkerPool(workers=2, name="left-open")
            await pool.submit(asyncio.sleep, 0)
    snap = caught.value.snapshot
    assert snap.tasks and all(t.owner and "left-open" in t.owner for t in snap.tasks)
    assert "#\towner pool 'left-open' worker" in str(caught.value)
    await pool.shutdown()


async def test_a_forgotten_create_task_is_caught_with_where_it_was_made() -> None:
    leaks.track_tasks()
    try:
        with pytest.raises(LeakError) as caught:
            async with no_leaks(timeout=0.05):
                line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
                task = asyncio.create_task(asyncio.sleep(10), name="fire-and-forget")
    finally:
        leaks.track_tasks(enabled=False)
    (info,) = caught.value.snapshot.tasks
    assert info.name == "fire-and-forget" and info.state == "sleep" and not info.blocked
    assert info.created_at is not None and (info.created_at.filename, info.created_at.line) == (
        HERE,
        line,
    )
    assert f"#\tcreated by {__name__}." in str(caught.value)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_the_grouped_report_names_the_leaked_tasks() -> None:
    # Regression: the grouped dump in LeakError's message showed only the stack, so a leaked
    # create_task(..., name="collector") could not be told from other tasks running that code.
    async def collect() -> None:
        await asyncio.sleep(10)

    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            tasks = [asyncio.create_task(collect(), name="collector")]
            tasks += [asyncio.create_task(collect(), name=f"shard-{i}") for i in range(7)]
            tasks.append(asyncio.create_task(collect()))  # a default name: not worth a mention
    report = str(caught.value)
    assert "8 tasks still alive" not in report and "9 tasks still alive" in report
    group = report.split("9 @ sleep\n", 1)[1]
    names = group.split("\n", 1)[0]
    assert names == (
        "#\tnames 'collector', 'shard-0', 'shard-1', 'shard-2', 'shard-3' and 3 more"
    ), report
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_a_thread_blocked_on_a_queue_is_caught() -> None:
    q: queue.Queue[int | None] = queue.Queue()
    with pytest.raises(LeakError) as caught, no_leaks(timeout=0.05):
        thread = threading.Thread(target=q.get, name="consumer")
        thread.start()
    try:
        (info,) = caught.value.snapshot.threads
        assert (info.name, info.state) == ("consumer", "queue get")
        assert "1 thread still alive" in str(caught.value)
        assert "thread profile: total 1" in str(caught.value)
    finally:
        q.put(None)
        thread.join(5)


async def test_a_thread_left_by_async_code_is_caught_too() -> None:
    release = threading.Event()
    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            thread = threading.Thread(target=release.wait, name="waiter")
            thread.start()
    assert [t.name for t in caught.value.snapshot.threads] == ["waiter"]
    release.set()
    thread.join(5)


# ----------------------------------------------------------------------- no_leaks: not flagged


@pytest.mark.virtual_time
async def test_tasks_that_finish_within_the_budget_pass_and_later_ones_fail() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with no_leaks(timeout=0.4):
        asyncio.create_task(asyncio.sleep(0.3))
    assert 0.3 <= loop.time() - start < 0.4  # it waited just long enough
    start = loop.time()
    with pytest.raises(LeakError):
        async with no_leaks(timeout=0.4):
            late = asyncio.create_task(asyncio.sleep(0.5))
    assert loop.time() - start == pytest.approx(0.4)  # the whole budget, no more
    await late


def test_threads_that_finish_within_the_budget_pass() -> None:
    with no_leaks(timeout=2.0):
        thread = threading.Thread(target=time.sleep, args=(0.02,))
        thread.start()
    assert not thread.is_alive()


async def test_tasks_and_threads_alive_at_entry_are_excused_unless_asked() -> None:
    before = asyncio.create_task(asyncio.sleep(30), name="before")
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="before-thread")
    thread.start()
    try:
        async with no_leaks(timeout=0.01):
            pass
        with pytest.raises(LeakError) as caught:
            async with no_leaks(timeout=0.01, ignore_current=False):
                pass
        names = {t.name for t in caught.value.snapshot.tasks}
        assert "before" in names
        assert asyncio.current_task().get_name() not in names  # type: ignore[union-attr]
        assert "before-thread" in {t.name for t in caught.value.snapshot.threads}
    finally:
        release.set()
        thread.join(5)
        before.cancel()
        await asyncio.gather(before, return_exceptions=True)


async def test_ignore_rules_by_name_and_by_function() -> None:
    async def background_flusher() -> None:
        await asyncio.sleep(30)

    async with no_leaks(timeout=0.01, ignore_names="metrics-*"):
        a = asyncio.create_task(asyncio.sleep(30), name="metrics-push")
    async with no_leaks(timeout=0.01, ignore_functions=[f"{__name__}.*background_flusher"]):
        b = asyncio.create_task(background_flusher(), name="flusher")
    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.01, ignore_names=["metrics-*"]):
            c = asyncio.create_task(asyncio.sleep(30), name="other")
    assert [t.name for t in caught.value.snapshot.tasks] == ["other"]
    for t in (a, b, c):
        t.cancel()
    await asyncio.gather(a, b, c, return_exceptions=True)


async def test_an_exception_in_the_block_is_reported_instead_of_leaks() -> None:
    with pytest.raises(KeyError):
        async with no_leaks(timeout=0.01):
            task = asyncio.create_task(asyncio.sleep(30))
            raise KeyError("boom")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_as_decorators_they_keep_the_signature_and_check_each_call() -> None:
    @no_leaks(timeout=0.01)
    async def leaky(n: int, *, name: str = "x") -> int:
        asyncio.create_task(asyncio.sleep(30), name=name)
        return n

    @no_leaks(timeout=0.01)
    async def tidy(n: int) -> int:
        return n * 2

    assert list(inspect.signature(leaky).parameters) == ["n", "name"]
    assert leaky.__name__ == "leaky"
    assert await tidy(4) == 8
    assert await tidy(5) == 10  # a fresh check per call
    with pytest.raises(LeakError):
        await leaky(1, name="deco")
    await _cancel_others()

    @no_leaks(timeout=0.01)
    def sync_tidy() -> str:
        return "ok"

    assert sync_tidy() == "ok"


async def test_one_object_is_one_block_at_a_time_and_arguments_are_checked() -> None:
    guard = no_leaks(timeout=0.01)
    async with guard:
        with pytest.raises(RuntimeError, match="already in use"):
            async with guard:
                pass
    async with guard:  # reusable afterwards
        pass
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds or None, got -1"):
        no_leaks(timeout=-1)
    with pytest.raises(ValueError, match="finite number of seconds, got inf"):
        no_leaks(timeout=float("inf"))
    with pytest.raises(TypeError, match="timeout must be a number"):
        no_leaks(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ignore_names must be strings"):
        no_leaks(ignore_names=[1])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="ignore_current must be True or False"):
        no_leaks(ignore_current=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="decorates a function"):
        no_leaks()(3)  # type: ignore[call-overload]
    assert "timeout=0.01" in repr(guard)


# ----------------------------------------------------------------------- watchdog


@pytest.mark.virtual_time
async def test_watchdog_reports_steady_growth_once_per_window() -> None:
    reports: list[leaks.Growth] = []
    leaked: list[asyncio.Task[None]] = []
    async with Watchdog(interval=1.0, window=3, on_growth=reports.append) as dog:
        for _ in range(6):
            leaked.append(asyncio.create_task(asyncio.sleep(1000)))
            await asyncio.sleep(1.0)
        await asyncio.sleep(0.5)
    task_reports = [r for r in reports if r.what == "tasks"]
    # Six samples, one more task before each: growth over samples 1-3, then 3-5 (re-armed).
    assert len(task_reports) == 2
    assert task_reports[0].last - task_reports[0].first == 2
    assert task_reports[0].samples == 3 and task_reports[0].seconds == pytest.approx(2.0)
    assert dog.reports == reports
    assert "live tasks grew from" in str(task_reports[0])
    for t in leaked:
        t.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)


@pytest.mark.virtual_time
async def test_watchdog_leaves_rising_and_falling_counts_alone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    dog = Watchdog(interval=1.0, window=3)
    held: list[asyncio.Task[None]] = []
    for step in [1, -1, 1, -1, 1, -1, 1, -1]:
        if step > 0:
            held.append(asyncio.create_task(asyncio.sleep(1000)))
        else:
            held.pop().cancel()
        await _settle()
        assert [r for r in dog.check() if r.what == "tasks"] == []
    assert not [r for r in caplog.records if r.name == "poolkit.leaks"]
    # A plain climb is reported, logged as a warning.
    with caplog.at_level("WARNING", logger="poolkit.leaks"):
        found = []
        for _ in range(3):
            held.append(asyncio.create_task(asyncio.sleep(1000)))
            await _settle()
            found += dog.check()
    assert [r.what for r in found] == ["tasks"]
    assert any("live tasks grew" in r.getMessage() for r in caplog.records)
    for t in held:
        t.cancel()
    await asyncio.gather(*held, return_exceptions=True)


def test_watchdog_counts_workers_and_runs_in_a_thread() -> None:
    with poolkit.ThreadPool(workers=3, name="wd") as pool:
        pool.submit(time.sleep, 0).result()
        sample = Watchdog().sample()
        assert sample.workers >= pool.statistics().workers >= 1
        assert sample.threads == threading.active_count()
    dog = Watchdog(interval=0.01, window=2, on_growth=lambda g: 1 / 0)
    with dog:
        assert any(t.name == "poolkit-watchdog" for t in threading.enumerate())
        time.sleep(0.05)
    assert not any(t.name == "poolkit-watchdog" for t in threading.enumerate())


def test_watchdog_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="interval must be a positive number of seconds, got 0"):
        Watchdog(interval=0)
    with pytest.raises(ValueError, match="window must be at least 2 samples, got 1"):
        Watchdog(window=1)
    with pytest.raises(TypeError, match="window must be an int"):
        Watchdog(window=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_growth must be at least 1, got 0"):
        Watchdog(min_growth=0)
    with pytest.raises(TypeError, match="on_growth must be callable"):
        Watchdog(on_growth=3)  # type: ignore[arg-type]


async def test_idle_default_executor_threads_are_not_leaks() -> None:
    async with no_leaks(timeout=0.05):
        assert await asyncio.to_thread(sum, [1, 2]) == 3  # leaves an idle asyncio_N thread
    assert any(t.name.startswith(("asyncio_", "uvloop_")) for t in threading.enumerate())


async def test_a_default_executor_thread_still_running_a_call_is_a_leak() -> None:
    release = threading.Event()
    with pytest.raises(LeakError) as caught:
        async with no_leaks(timeout=0.05):
            busy = asyncio.ensure_future(asyncio.to_thread(release.wait, 10))
            await asyncio.sleep(0.01)
    (info,) = caught.value.snapshot.threads
    assert info.state == "event wait"
    assert info.name.startswith(("asyncio_", "uvloop_"))
    release.set()
    assert await busy is True


def test_a_task_the_collector_destroys_inside_the_block_is_still_reported() -> None:
    seen: list[str] = []

    async def main() -> LeakError:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: seen.append(context["message"]))
        with pytest.raises(LeakError) as caught:
            async with no_leaks(timeout=0.05):
                asyncio.create_task(_receive(poolkit.Channel(0)), name="collected")
                await asyncio.sleep(0)
                gc.collect()  # nothing can reach it: the collector destroys it, pending
        assert loop.get_exception_handler() is not None  # the user's handler is back
        return caught.value

    error = asyncio.run(main())
    assert seen == ["Task was destroyed but it is pending!"]  # still passed on to the handler
    assert str(error).startswith("1 task destroyed by the garbage collector while still pending")
    (info,) = error.snapshot.tasks
    assert info.name == "collected" and info.blocked
    assert info.state.startswith("destroyed while pending")  # its stack may be gone by then


async def test_the_loops_exception_handler_is_restored() -> None:
    loop = asyncio.get_running_loop()
    before = loop.get_exception_handler()
    async with no_leaks(timeout=0.01):
        assert loop.get_exception_handler() is not before
    assert loop.get_exception_handler() is before


async def test_overlapping_blocks_on_one_loop_give_the_handler_back() -> None:
    loop = asyncio.get_running_loop()
    mine: list[str] = []

    def handler(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        mine.append(context["message"])

    loop.set_exception_handler(handler)
    try:
        a_in, b_in, a_out = asyncio.Event(), asyncio.Event(), asyncio.Event()

        async def block_a() -> None:
            async with no_leaks(timeout=0.01):
                a_in.set()
                await b_in.wait()
            a_out.set()  # A leaves while B's watch is in front of its own

        async def block_b() -> None:
            await a_in.wait()
            async with no_leaks(timeout=0.01):
                b_in.set()
                await a_out.wait()

        # B's task first: with eager tasks, each runs as it is created, and B must already be
        # alive when A's block begins (or A rightly counts it as a task its block started).
        b = asyncio.create_task(block_b())
        await asyncio.gather(asyncio.create_task(block_a()), b)
        assert loop.get_exception_handler() is handler
        loop.call_exception_handler({"message": "still mine"})
        assert mine == ["still mine"]
    finally:
        loop.set_exception_handler(None)


def test_a_task_from_before_the_block_destroyed_inside_it_is_not_blamed_on_it() -> None:
    seen: list[str] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: seen.append(context["message"])
        )
        asyncio.create_task(_receive(poolkit.Channel(0)), name="older")
        await asyncio.sleep(0)
        async with no_leaks(timeout=0.01):
            gc.collect()  # destroys the older orphan while the block runs

    asyncio.run(main())
    assert seen == ["Task was destroyed but it is pending!"]


def test_generator_functions_cannot_be_decorated() -> None:
    def numbers() -> Iterator[int]:
        yield 1

    async def more() -> Any:
        yield 2

    for func in (numbers, more):
        with pytest.raises(TypeError, match="cannot check the generator function"):
            no_leaks()(func)
    with pytest.raises(ValueError, match=r"interval must be at most threading\.TIMEOUT_MAX"):
        Watchdog(interval=1e12)


async def test_a_clean_block_never_walks_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    import poolkit._leaks._noleaks

    def walked(*args: object) -> set[int]:
        raise AssertionError("find_blocked ran although nothing leaked")

    monkeypatch.setattr(poolkit._leaks._noleaks, "blocked_ids", walked)
    async with no_leaks(timeout=0.05):
        await asyncio.create_task(asyncio.sleep(0.01))  # finished by the end: nothing to report
    with no_leaks(timeout=0.05):
        pass
