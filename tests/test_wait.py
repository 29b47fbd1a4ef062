"""poolkit._core._wait: the one way every primitive waits, wakes, gives up and takes its lock.

The garbage collector may start inside a primitive's critical section (any allocation there can
start one) and close, right there, a coroutine stranded on a closed event loop.  Its clean-up
(``async with limiter:`` exiting, a ``finally:``) then calls the very primitive whose lock its
thread holds.  Provoked deterministically: a thread holds the lock and runs ``gc.collect()``
while the stranded coroutine is garbage in a reference cycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from poolkit import (
    CapacityLimiter,
    Channel,
    Limits,
    PerKey,
    TokenBucket,
    WouldBlock,
)
from poolkit._core import _wait
from poolkit._primitives import _ratelimit as rl

GRACE = 5.0  # a bound for work deferred to another thread; it takes milliseconds


def wait_until(cond: Callable[[], bool], limit: float = GRACE) -> None:
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.001)


@contextlib.contextmanager
def no_automatic_gc() -> Iterator[None]:
    """What is made in the block is collected only on purpose (gc.collect() under the lock)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def strand_in_a_cycle(make: Callable[[], Coroutine[Any, Any, Any]]) -> None:
    """Run ``make()`` as a task on a new loop until it waits, then close the loop: the task can
    never run again, and only a reference cycle keeps it (call it inside no_automatic_gc())."""
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": expected
    loop.create_task(make())  # noqa: RUF006  (stranded on purpose)
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()


def collect_holding(lock: Any) -> bool:
    """Run a full collection in a thread that holds ``lock``, as an allocation under the lock
    may; True if it returned (the bug: a clean-up that waits for the lock never returns)."""
    done = threading.Event()

    def run() -> None:
        with lock:
            gc.collect()
        done.set()

    threading.Thread(target=run, daemon=True, name="collector").start()
    return done.wait(GRACE)


# ---------------------------------------------------------------- GC under the lock (bug 1)


def test_async_with_limiter_closed_by_the_gc_under_the_lock_releases_later() -> None:
    lim = CapacityLimiter(2)
    closed: list[bool] = []

    async def user() -> None:
        try:
            async with lim:
                await asyncio.sleep(3600)  # stranded here
        finally:
            closed.append(True)

    with no_automatic_gc():
        strand_in_a_cycle(user)
        assert lim.borrowed == 1
        returned = collect_holding(lim._lock)
        assert returned, "release() waited for the lock its thread holds"
    assert closed == [True]  # the collection did close it, under the lock
    wait_until(lambda: lim.borrowed == 0)  # released as soon as the lock was free
    assert lim.try_acquire(2)


@pytest.mark.parametrize("last", [True, False], ids=["last-handle", "other-handles-open"])
def test_async_with_send_handle_closed_by_the_gc_under_the_lock_closes_later(last: bool) -> None:
    ch: Channel[int] = Channel(1)
    handles = ch.send_handles(1 if last else 2)

    async def producer() -> None:
        async with handles[0]:
            await asyncio.sleep(3600)

    with no_automatic_gc():
        strand_in_a_cycle(producer)
        returned = collect_holding(ch._lock)
        assert returned, "SendHandle.close() waited for its own thread's lock"
    wait_until(lambda: handles[0].closed)
    s = ch.statistics()
    assert (s.send_handles_open, s.closed) == (0, True) if last else (1, False)
    if not last:
        handles[1].close()
    assert ch.closed


def test_async_with_receive_handle_closed_by_the_gc_under_the_lock_hands_back_later() -> None:
    ch: Channel[int] = Channel(2)
    (rh,) = ch.receive_handles(1)
    ch.send_nowait(1)

    async def consumer() -> None:
        async with rh:
            await asyncio.sleep(3600)

    with no_automatic_gc():
        strand_in_a_cycle(consumer)
        returned = collect_holding(ch._lock)
        assert returned, "ReceiveHandle.close() waited for its thread's lock"
    wait_until(lambda: rh.closed)
    assert ch.handed_back == [1]
    assert ch.statistics().receivers_gone


def test_async_with_channel_closed_by_the_gc_under_the_lock_closes_it_later() -> None:
    ch: Channel[int] = Channel(1)

    async def owner() -> None:
        async with ch:
            await asyncio.sleep(3600)

    with no_automatic_gc():
        strand_in_a_cycle(owner)
        returned = collect_holding(ch._lock)
        assert returned, "Channel.close() waited for its own thread's lock"
    wait_until(lambda: ch.closed)


def test_per_key_and_limits_hold_closed_by_the_gc_under_the_lock_release_later() -> None:
    cap = CapacityLimiter(4)
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1))
    limits = Limits(cap, per_key)

    async def user() -> None:
        async with per_key.hold("a"), limits.hold("b"):
            await asyncio.sleep(3600)

    with no_automatic_gc():
        strand_in_a_cycle(user)
        assert cap.borrowed == 1
        assert len(per_key) == 2
        # The exits need the limiter's lock and the PerKey's: hold both.
        with per_key._lock:
            returned = collect_holding(cap._lock)
            assert returned, "hold() waited for a lock its thread holds"
    wait_until(lambda: cap.borrowed == 0 and per_key.statistics().keys == 0)
    assert per_key.try_acquire("a")
    assert per_key.try_acquire("b")


def test_bucket_calls_in_a_finally_closed_by_the_gc_under_the_lock_happen_later() -> None:
    now = [0.0]
    bucket = TokenBucket(1, 2, clock=lambda: now[0])
    assert bucket.try_acquire(2)
    r = bucket.reserve(1)
    assert r.delay == 1.0
    said: list[object] = []

    async def user() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            said.append(r.cancel())  # what it will give back, said before it has the lock
            bucket.rate = 4

    with no_automatic_gc():
        strand_in_a_cycle(user)
        returned = collect_holding(rl.LOCK)
        assert returned, "the bucket waited for the lock its thread holds"
    assert said == [1]
    wait_until(lambda: r.cancelled and bucket.rate == 4)
    assert bucket.statistics().reserved == 0


def test_calls_that_cannot_be_deferred_answer_at_once_during_a_gc_under_the_lock() -> None:
    ch: Channel[int] = Channel(1)
    lim = CapacityLimiter(1)
    said: list[str] = []

    async def user() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            try:
                ch.send_nowait(1)
            except WouldBlock:
                said.append("WouldBlock")
            said.append(f"try_acquire {lim.try_acquire()}")
            try:
                lim.statistics()
            except RuntimeError as e:
                said.append(type(e).__name__)

    with no_automatic_gc():
        strand_in_a_cycle(user)
        with ch._lock:  # both locks held by the thread the collection interrupts
            returned = collect_holding(lim._lock)
            assert returned
    assert said == ["WouldBlock", "try_acquire False", "Busy"]
    # Outside a collection, the same calls wait for the lock as always.
    ch.send_nowait(1)
    assert lim.try_acquire()


def test_the_same_calls_from_another_thread_during_a_collection_wait_as_always() -> None:
    # A collection running in one thread does not stop another thread from waiting for a lock.
    lim = CapacityLimiter(1)
    took: list[bool] = []
    started = threading.Event()

    def other() -> None:
        started.set()
        took.append(lim.try_acquire())

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and not started.is_set():
            t = threading.Thread(target=other)
            with lim._lock:  # held by the collecting thread: `other` must wait, then succeed
                t.start()
                started.wait(GRACE)
                time.sleep(0.01)
            t.join(GRACE)

    gc.callbacks.append(callback)  # after poolkit's: it knows the collection has started
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert took == [True]


def test_collecting_here_is_true_only_in_the_collecting_thread_during_a_collection() -> None:
    seen: list[tuple[bool, bool]] = []

    def other() -> None:
        seen.append((_wait.collecting_here(), "a" in _wait.GC_PHASE))

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            seen.append((_wait.collecting_here(), "a" in _wait.GC_PHASE))
            t = threading.Thread(target=other)
            t.start()
            t.join(GRACE)

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    assert seen == [(True, True), (False, True)]
    assert not _wait.collecting_here() and "a" not in _wait.GC_PHASE


def test_a_ctrl_c_during_a_collection_is_not_lost() -> None:
    # The main thread runs a pending signal handler at the entry of the next Python function;
    # were poolkit's gc callback a Python function, a SIGINT that arrived while C code collected
    # would raise KeyboardInterrupt in it, which gc prints as "ignored" and drops (measured: 10
    # runs in 10 with this loop).
    script = (
        "import gc, sys, time\n"
        "import poolkit\n"
        "print('ready', flush=True)\n"
        "end = time.monotonic() + 20\n"
        "try:\n"
        "    while time.monotonic() < end:\n"
        "        gc.collect()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n"
    )
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
            proc.communicate()
        assert (out, proc.returncode) == ("interrupted\n", 0), err
        assert "Exception ignored" not in err


# ---------------------------------------------------------------- laying to rest (bugs 4, 6)


class _RacedFuture:
    """A future that another thread resolves between our ``done()`` and ``set_result()``."""

    def done(self) -> bool:
        return False

    def set_result(self, result: object) -> None:
        raise asyncio.InvalidStateError("invalid state")


def test_lay_to_rest_tolerates_a_future_resolved_by_another_thread_meanwhile() -> None:
    # The registrations of one select share a future; two threads may lay two of them to rest
    # at once.  The InvalidStateError escaped from whatever public call had run lay_to_rest()
    # (a send_nowait() whose item had been delivered, say).
    loop = asyncio.new_event_loop()
    loop.close()
    w = _wait.Sleeper(loop)
    w.fut = _RacedFuture()  # type: ignore[assignment]
    _wait.bury(w)
    _wait.lay_to_rest()
    assert not _wait.graveyard


@pytest.mark.parametrize("lock_free", [True, False], ids=["lock-free", "lock-held"])
def test_waiters_buried_by_a_closing_coroutine_are_laid_to_rest(lock_free: bool) -> None:
    # The withdrawal of a coroutine being closed (GeneratorExit) serves the next waiter, which
    # is stranded too and buried; nothing laid it to rest, and its task stayed alive, until some
    # unrelated slow path somewhere did.
    lim = CapacityLimiter(2)
    assert lim.try_acquire(1)
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)
    a = loop.create_task(lim.acquire(2))  # the head: does not fit
    b = loop.create_task(lim.acquire(1))  # behind it
    for _ in range(3):
        loop.run_until_complete(asyncio.sleep(0))
    loop.close()
    b_ref = weakref.ref(b)
    del b
    a._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose
    if lock_free:
        a.get_coro().close()
    else:
        done = threading.Event()

        def close_holding() -> None:
            with lim._lock:
                a.get_coro().close()
                done.set()

        threading.Thread(target=close_holding).start()
        assert done.wait(GRACE)
    gc.collect()
    wait_until(lambda: b_ref() is None)  # b was destroyed: nothing holds it any more
    assert lim.statistics().waiting == 0
    assert lim.try_acquire(1)


# ---------------------------------------------------------------- deferred work


def test_deferred_work_runs_in_one_thread_that_ends() -> None:
    lock = threading.Lock()
    ran: list[int] = []
    with lock:
        for i in range(50):
            _wait.locked_soon(lock, ran.append, i)
        deferred = [t for t in threading.enumerate() if t.name == "poolkit-deferred"]
        assert len(deferred) == 1  # not one thread per piece of work
        assert ran == []  # nothing runs while the lock is held
    wait_until(lambda: len(ran) == 50)
    assert ran == list(range(50))
    deferred[0].join(GRACE)
    assert not deferred[0].is_alive()


def test_deferred_work_reports_errors_and_goes_on(monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: reported.append(args.exc_value))
    ran: list[int] = []

    def fail() -> None:
        raise ValueError("boom")

    lock = threading.Lock()
    with lock:
        _wait.locked_soon(lock, fail)
        _wait.locked_soon(lock, ran.append, 1)
    wait_until(lambda: ran == [1])
    assert len(reported) == 1 and isinstance(reported[0], ValueError)


@pytest.mark.parametrize(
    ("message", "raises"),
    [("can't start new thread", True), ("can't create new thread at interpreter shutdown", False)],
)
def test_a_thread_that_cannot_start_is_an_error_except_at_shutdown(
    monkeypatch: pytest.MonkeyPatch, message: str, raises: bool
) -> None:
    def refuse(self: threading.Thread) -> None:
        raise RuntimeError(message)

    lock = threading.Lock()
    ran: list[int] = []
    with lock:
        with monkeypatch.context() as m:
            m.setattr(threading.Thread, "start", refuse)
            if raises:
                with pytest.raises(RuntimeError, match="can't start new thread"):
                    _wait.locked_soon(lock, ran.append, 1)
            else:
                _wait.locked_soon(lock, ran.append, 1)  # dropped: nothing will wait again
        _wait.locked_soon(lock, ran.append, 2)  # a thread starts again
    wait_until(lambda: 2 in ran)
    assert ran == ([1, 2] if raises else [2])  # an error leaves the work queued, not lost


EXIT_WITH_STRANDED_WAITERS = """
import asyncio
from poolkit import TokenBucket

for _ in range(2):  # the first round's bucket and tasks are left to the collection at exit
    bucket = TokenBucket(1000, 1)
    bucket.try_acquire()
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda loop, context: None)  # "Task was destroyed": expected
    for _ in range(9):
        asyncio.ensure_future(bucket.acquire(), loop=loop)
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()
print("exiting")
"""


def test_a_process_exits_with_waiters_stranded() -> None:
    # At exit, the last collection closes the stranded coroutines; their clean-up deferred work
    # to a thread, and on Python 3.11 Thread.start() at shutdown waits for ever: the exit hung.
    done = subprocess.run(
        [sys.executable, "-c", EXIT_WITH_STRANDED_WAITERS],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (0, "exiting\n"), done.stderr[-2000:]
