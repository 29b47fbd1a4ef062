"""poolkit.CapacityLimiter: FIFO with weights, cancellation safety, runtime total, threads."""

from __future__ import annotations

import asyncio
import functools
import math
import random
import threading
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poolkit import CapacityLimiter, NotAcquired
from poolkit._core._wait import Sleeper
from poolkit._primitives._limiter import _Waiter, _waiter

from .conftest import LOOP_FACTORIES, run_on
from .test_channel import (
    FAST,
    LOOP_KINDS,
    STRANDED,
    _drop_under,
    _granted_then_stranded,
    no_automatic_gc,
    stranded,
    timed,
    wait_until,
)


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("total", "exc"),
    [(0, ValueError), (-3, ValueError), (1.5, TypeError), ("2", TypeError), (True, TypeError)],
)
def test_bad_total(total: Any, exc: type) -> None:
    with pytest.raises(exc, match=f"total must be .*got {total!r}"):
        CapacityLimiter(total)


@pytest.mark.parametrize(
    ("weight", "exc"), [(0, ValueError), (-1, ValueError), (2.0, TypeError), (None, TypeError)]
)
async def test_bad_weight(weight: Any, exc: type) -> None:
    lim = CapacityLimiter(3)
    with pytest.raises(exc, match=f"weight must be .*got {weight!r}"):
        await lim.acquire(weight)
    with pytest.raises(exc, match="weight"):
        lim.try_acquire(weight)
    with pytest.raises(exc, match="weight"):
        lim.release(weight)
    assert lim.borrowed == 0


async def test_weight_above_total_fails_at_once() -> None:
    lim = CapacityLimiter(3)
    with pytest.raises(ValueError, match="weight 4 exceeds the limiter's total 3"):
        await lim.acquire(4)
    with pytest.raises(ValueError, match="could never fit"):
        lim.acquire_blocking(4)
    assert lim.statistics().waiting == 0


def test_release_more_than_borrowed_is_an_error() -> None:
    lim = CapacityLimiter(3, name="db")
    with pytest.raises(NotAcquired, match=r"release\(1\) on capacity limiter 'db', but only 0"):
        lim.release()
    assert lim.try_acquire(2)
    with pytest.raises(NotAcquired):
        lim.release(3)
    assert lim.borrowed == 2  # unchanged by the failed release
    assert isinstance(NotAcquired("x"), RuntimeError)


# ---------------------------------------------------------------- basic behaviour


async def test_acquire_release_and_context_manager() -> None:
    lim = CapacityLimiter(2)
    async with lim:
        assert lim.borrowed == 1
        await lim.acquire()
        assert lim.borrowed == 2
        assert not lim.try_acquire()
        lim.release()
    assert lim.borrowed == 0
    s = lim.statistics()
    assert (s.total, s.peak_borrowed, s.acquired_total, s.waiting) == (2, 2, 2, 0)


async def test_waiters_are_served_in_fifo_order() -> None:
    lim = CapacityLimiter(1)
    await lim.acquire()
    order: list[int] = []

    async def take(i: int) -> None:
        await lim.acquire()
        order.append(i)
        lim.release()

    tasks = []
    for i in range(5):
        tasks.append(asyncio.create_task(take(i)))
        await settle(1)
    lim.release()
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3, 4]


async def test_heavy_waiter_is_not_starved_by_light_ones() -> None:
    # A weight-3 request at the head blocks the weight-1 requests behind it even though they
    # would fit: otherwise a stream of light requests could starve it forever.
    lim = CapacityLimiter(3)
    await lim.acquire(1)
    heavy = asyncio.create_task(lim.acquire(3))
    await settle()
    light = asyncio.create_task(lim.acquire(1))
    await settle()
    assert not heavy.done()
    assert not light.done(), "a light request overtook the heavy one at the head"
    assert not lim.try_acquire(1)
    lim.release(1)
    await heavy
    assert lim.borrowed == 3
    assert not light.done()
    lim.release(3)
    await light
    assert lim.borrowed == 1


async def test_starvation_case_with_a_stream_of_light_requests() -> None:
    # The case: while light requests keep coming, a heavy one still gets in promptly.
    lim = CapacityLimiter(4)
    stop = False
    served_heavy_after: list[int] = []
    light_done = 0

    async def light() -> None:
        nonlocal light_done
        while not stop:
            async with lim:
                light_done += 1
                await asyncio.sleep(0)

    lights = [asyncio.create_task(light()) for _ in range(6)]
    await settle(3)
    before = light_done
    await lim.acquire(4)
    served_heavy_after.append(light_done - before)
    lim.release(4)
    stop = True
    await asyncio.gather(*lights)
    assert served_heavy_after[0] < 20, "the heavy request waited for many light ones"


# ---------------------------------------------------------------- cancellation and timeouts


async def test_cancelled_waiter_holds_nothing_and_wakes_the_next() -> None:
    lim = CapacityLimiter(2)
    await lim.acquire(2)
    a = asyncio.create_task(lim.acquire(2))
    b = asyncio.create_task(lim.acquire(1))
    await settle()
    a.cancel()
    with pytest.raises(asyncio.CancelledError):
        await a
    lim.release(1)  # b (now at the head) fits
    await b
    assert lim.borrowed == 2
    assert lim.statistics().waiting == 0


async def test_cancelled_at_the_instant_of_the_grant_holds_nothing() -> None:
    # gh-90155: the waiter is granted, then cancelled before it runs.
    lim = CapacityLimiter(1)
    await lim.acquire()
    waiter = asyncio.create_task(lim.acquire())
    nxt = asyncio.create_task(lim.acquire())
    await settle()
    lim.release()  # grants `waiter` ...
    waiter.cancel()  # ... which is cancelled before it resumes
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await nxt  # the grant passed on
    assert lim.borrowed == 1
    lim.release()
    assert lim.borrowed == 0


@pytest.mark.virtual_time
async def test_timeout_is_exact_and_holds_nothing() -> None:
    loop = asyncio.get_running_loop()
    lim = CapacityLimiter(1)
    await lim.acquire()
    with pytest.raises(TimeoutError, match=r"no capacity within 2\.5 s"):
        await lim.acquire(timeout=2.5)
    assert loop.time() == 2.5
    assert lim.statistics().waiting == 0
    with pytest.raises(TimeoutError):
        await lim.acquire(timeout=0)
    lim.release()
    assert lim.borrowed == 0


@pytest.mark.virtual_time
async def test_timed_out_head_lets_the_next_waiter_in() -> None:
    lim = CapacityLimiter(3)
    await lim.acquire(2)
    heavy = asyncio.create_task(lim.acquire(3, timeout=1))
    await settle()
    light = asyncio.create_task(lim.acquire(1))
    await settle()
    assert not light.done()
    with pytest.raises(TimeoutError):
        await heavy
    await light  # the head left; the light one fits
    assert lim.borrowed == 3


# ---------------------------------------------------------------- changing total


async def test_growing_total_wakes_waiters() -> None:
    lim = CapacityLimiter(1)
    await lim.acquire()
    waiters = [asyncio.create_task(lim.acquire()) for _ in range(3)]
    await settle()
    lim.total = 4
    await asyncio.gather(*waiters)
    assert lim.borrowed == 4


async def test_shrinking_total_lets_holders_finish() -> None:
    lim = CapacityLimiter(4)
    await lim.acquire(3)
    lim.total = 2
    assert lim.borrowed == 3  # current holders keep what they have
    assert not lim.try_acquire()
    waiter = asyncio.create_task(lim.acquire())
    await settle()
    lim.release(2)  # borrowed 1 < total 2: the waiter fits
    await waiter
    assert lim.borrowed == 2
    assert "borrowed=2/2" in repr(lim)


async def test_shrinking_below_a_waiters_weight_fails_it() -> None:
    lim = CapacityLimiter(4)
    await lim.acquire(4)
    heavy = asyncio.create_task(lim.acquire(3))
    light = asyncio.create_task(lim.acquire(1))
    await settle()
    lim.total = 2
    with pytest.raises(ValueError, match="lowered while waiting"):
        await heavy
    lim.release(4)
    await light
    with pytest.raises(TypeError):
        lim.total = 2.5  # type: ignore[assignment]


# ---------------------------------------------------------------- threads


def test_threads_share_the_count_with_tasks() -> None:
    lim = CapacityLimiter(3)
    current = 0
    peak = 0
    guard = threading.Lock()

    def enter() -> None:
        nonlocal current, peak
        with guard:
            current += 1
            peak = max(peak, current)

    def leave() -> None:
        nonlocal current
        with guard:
            current -= 1

    def thread_worker() -> None:
        for _ in range(200):
            with lim:
                enter()
                time.sleep(0)
                leave()

    async def task_worker() -> None:
        for _ in range(200):
            async with lim:
                enter()
                await asyncio.sleep(0)
                leave()

    async def main() -> None:
        await asyncio.gather(*(task_worker() for _ in range(4)))

    threads = [threading.Thread(target=thread_worker) for _ in range(4)]
    for t in threads:
        t.start()
    asyncio.run(main())
    for t in threads:
        t.join()
    assert peak <= 3
    assert peak >= 2, "the test never overlapped anything"
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total) == (0, 0, 1600)
    assert s.peak_borrowed <= 3


def test_acquire_blocking_timeout_and_refusal_in_loop() -> None:
    lim = CapacityLimiter(1)
    lim.acquire_blocking()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        lim.acquire_blocking(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    assert lim.statistics().waiting == 0

    async def in_loop() -> None:
        with pytest.raises(RuntimeError, match="would block the event loop"):
            lim.acquire_blocking()

    asyncio.run(in_loop())
    lim.release()


# ---------------------------------------------------------------- invariants


@settings(max_examples=150, deadline=None)
@given(
    total=st.integers(1, 5),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["acquire", "release", "cancel", "step", "total"]), st.integers(1, 5)
        ),
        max_size=60,
    ),
    loop_kind=st.sampled_from([k for k in ("asyncio", "uvloop") if k in LOOP_FACTORIES]),
)
def test_random_acquire_release_cancel_never_exceeds_total(
    total: int, ops: list[tuple[str, int]], loop_kind: str
) -> None:
    """borrowed never exceeds total (when total was not lowered below it) and ends at zero."""

    async def main() -> None:
        lim = CapacityLimiter(total)
        holders: list[int] = []  # weights held by finished acquires
        tasks: list[tuple[asyncio.Task[None], int]] = []
        lowered = False
        for op, n in ops:
            if op == "acquire":
                w = min(n, lim.total)

                async def acq(w: int = w) -> None:
                    await lim.acquire(w)
                    holders.append(w)

                tasks.append((asyncio.create_task(acq()), w))
            elif op == "release" and holders:
                lim.release(holders.pop(n % len(holders)))
            elif op == "cancel" and tasks:
                tasks[n % len(tasks)][0].cancel()
            elif op == "total":
                lowered = lowered or n < lim.total
                lim.total = n
            else:
                await asyncio.sleep(0)
            if not lowered:
                assert lim.borrowed <= lim.total
            # Weight granted to waiters that have not run yet is borrowed but not yet "held".
            assert sum(holders) <= lim.borrowed
        for task, _ in tasks:
            task.cancel()
        await asyncio.gather(*(t for t, _ in tasks), return_exceptions=True)
        for w in holders:
            lim.release(w)
        assert lim.borrowed == 0
        assert lim.statistics().waiting == 0

    with asyncio.Runner(loop_factory=LOOP_FACTORIES[loop_kind]) as runner:
        runner.run(main())


@pytest.mark.parametrize("seed", range(4))
async def test_stress_random_cancellation_keeps_the_cap(seed: int) -> None:
    rng = random.Random(seed)
    lim = CapacityLimiter(rng.randint(2, 5))
    inside = 0
    peak = 0

    async def worker() -> None:
        nonlocal inside, peak
        for _ in range(50):
            w = rng.randint(1, lim.total)
            await lim.acquire(w)
            inside += w
            peak = max(peak, inside)
            try:
                for _ in range(rng.randint(0, 2)):
                    await asyncio.sleep(0)
            finally:
                inside -= w
                lim.release(w)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    for _ in range(200):
        await asyncio.sleep(0)
        if rng.random() < 0.05:
            rng.choice(workers).cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    assert peak <= lim.total
    assert lim.borrowed == 0
    assert lim.statistics().waiting == 0
    assert math.isfinite(peak)


# ---------------------------------------------------------------- regressions from review


class _LowerFirst:
    """A lock stand-in that lets "another thread" change the limiter just before it is taken."""

    def __init__(self, real: Any, hook: Any) -> None:
        self.real, self.hook, self.fired = real, hook, False

    def acquire(self, *args: Any) -> bool:
        if not self.fired:
            self.fired = True
            t = threading.Thread(target=self.hook)
            t.start()
            t.join()
        return bool(self.real.acquire(*args))

    def release(self) -> None:
        self.real.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.real.release()


async def test_total_lowered_between_check_and_queue_fails_the_acquire() -> None:
    lim = CapacityLimiter(4)
    lim.try_acquire(1)
    real = lim._lock

    def lower() -> None:
        object.__setattr__(lim, "_lock", real)
        lim.total = 2

    object.__setattr__(lim, "_lock", _LowerFirst(real, lower))
    with pytest.raises(ValueError, match="weight 3 exceeds the limiter's total 2"):
        await lim.acquire(3)  # 3 <= 4 when first checked; 2 by the time it would queue
    assert lim.statistics().waiting == 0
    lim.release(1)
    assert lim.try_acquire(1)


def test_waiter_on_a_closed_loop_does_not_block_the_limiter() -> None:
    lim = CapacityLimiter(1)
    lim.try_acquire()
    loop = asyncio.new_event_loop()
    task = loop.create_task(lim.acquire())
    for _ in range(3):
        loop.call_soon(loop.stop)
        loop.run_forever()
    loop.close()
    lim.release()
    lim.acquire_blocking(timeout=1)
    assert lim.borrowed == 1
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose


# ---------------------------------------------------------------- waiters stranded on a closed loop
# (see tests/test_channel.py: the same rules, the same helpers)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_release_skips_stranded_waiters_fast_and_serves_the_live_one(kind: str) -> None:
    lim = CapacityLimiter(1)
    lim.try_acquire()
    s = stranded(kind, lim._lock, [lim.acquire] * STRANDED)  # no reference kept to the tasks
    live = threading.Thread(target=lim.acquire_blocking, kwargs={"timeout": 10})
    live.start()
    # The live one, queuing, already dropped the stranded ones from the head of the queue.
    wait_until(lambda: lim.statistics().waiting == 1)
    _, took = timed(lim.release)
    live.join()
    assert took < FAST
    s.check(STRANDED)
    st = lim.statistics()
    assert (st.borrowed, st.waiting, st.acquired_total) == (1, 0, 2)  # the live one holds it
    lim.release()
    assert lim.try_acquire()  # and no capacity was lost to the stranded ones


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_lowering_total_skips_stranded_heavy_waiters_fast(kind: str) -> None:
    lim = CapacityLimiter(4)
    lim.try_acquire(4)
    s = stranded(kind, lim._lock, [functools.partial(lim.acquire, 3)] * STRANDED)
    t0 = time.perf_counter()
    lim.total = 2  # each of them is now too heavy: woken (in vain) and dropped
    assert time.perf_counter() - t0 < FAST
    s.check(STRANDED)
    assert lim.statistics().waiting == 0


async def test_release_from_a_task_skips_stranded_waiters_fast() -> None:
    lim = CapacityLimiter(1)
    await lim.acquire()
    s = await asyncio.to_thread(stranded, "asyncio", lim._lock, [lim.acquire] * STRANDED)
    t0 = time.perf_counter()
    lim.release()
    assert time.perf_counter() - t0 < FAST
    s.check(STRANDED)
    async with lim:
        assert lim.borrowed == 1


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "gc"])
def test_granted_waiter_closed_under_the_lock_gives_its_weight_back(cyclic: bool) -> None:
    lim = CapacityLimiter(2)
    lim.try_acquire(2)
    with no_automatic_gc(cyclic):
        s = _granted_then_stranded(
            "asyncio",
            lim._lock,
            functools.partial(lim.acquire, 2),
            functools.partial(lim.release, 2),
        )
        assert lim.borrowed == 2  # granted to the stranded task, which will never run
        took = _drop_under(lim._lock, s, cyclic)
    assert took < FAST
    assert s.destroyed == [True]  # closed under the lock: the case this test is about
    lim.acquire_blocking(2, timeout=10)  # the grant came back
    assert lim.statistics().borrowed == 2
    lim.release(2)


def _strand(*starts: Any) -> None:
    s = stranded("asyncio", threading.Lock(), list(starts))
    s.check(0)  # none destroyed yet: they are still queued


def test_a_stranded_heavy_head_holds_up_no_waiter_that_fits() -> None:
    # total 2, 1 held; a heavy acquire(2) at the head will never run.  acquire(1) timed out
    # though 1 unit was free, and `waiting` counted the dead waiter.
    lim = CapacityLimiter(2)
    assert lim.try_acquire(1)
    _strand(functools.partial(lim.acquire, 2))
    assert len(lim._queue) == 1
    assert lim.statistics().waiting == 0

    async def main() -> None:  # on virtual time
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await lim.acquire(1, timeout=1)
        assert loop.time() == t0  # at once

    run_on("virtual", main())
    assert (lim.borrowed, lim.statistics().waiting) == (2, 0)
    lim.release(1)
    assert lim.try_acquire(1)  # and try_acquire, which refused while it was queued
    lim.release(2)


def test_peak_counts_only_grants_that_were_made() -> None:
    lim = CapacityLimiter(4)
    assert lim.try_acquire(3)
    _strand(functools.partial(lim.acquire, 4))
    lim.release(3)  # the head fits, but its loop is closed: never granted
    s = lim.statistics()
    assert (s.borrowed, s.peak_borrowed, s.acquired_total, s.waiting) == (0, 3, 1, 0)


# ---------------------------------------------------------------- the contended path (issue 13)
# A release that finds the limiter full and, at the head, a task of the running loop that wants
# the weight released hands it straight over; a waiting task's waiter is made inline, without
# Sleeper.__init__; ``__aexit__`` releases when called and returns an awaitable that is done.


def _slots(cls: type) -> list[str]:
    return [name for klass in cls.__mro__ for name in getattr(klass, "__slots__", ())]


@pytest.mark.parametrize("form", ["async with", "acquire"])
async def test_inline_task_waiters_set_every_slot_that_sleeper_sets(form: str) -> None:
    # The contended paths fill a bare _Waiter() in themselves: a slot that Sleeper.__init__ gains
    # one day and they do not set would be an AttributeError in some rare path much later.
    lim = CapacityLimiter(2)
    await lim.acquire(2)
    weight = 1 if form == "async with" else 2

    async def wait() -> None:
        if form == "async with":
            async with lim:
                pass
        else:
            await lim.acquire(weight)
            lim.release(weight)

    task = asyncio.create_task(wait())
    await settle()
    (w,) = lim._queue
    loop = asyncio.get_running_loop()
    ref = _waiter(weight, loop)
    assert isinstance(w, _Waiter)
    assert set(_slots(_Waiter)) >= set(_slots(Sleeper))
    for name in _slots(_Waiter):
        if name == "fut":
            assert isinstance(w.fut, asyncio.Future)
            assert not w.fut.done()
            assert w.fut.get_loop() is loop
        else:
            assert getattr(w, name) == getattr(ref, name), name
    assert ref.fut is not None
    ref.fut.cancel()
    lim.release(2)
    await task
    assert (lim.borrowed, lim.statistics().acquired_total) == (0, 2)


async def test_exit_returns_an_awaitable_that_is_done_and_can_be_awaited_again() -> None:
    lim = CapacityLimiter(1)
    await lim.__aenter__()
    done = lim.__aexit__(None, None, None)
    assert lim.borrowed == 0  # released on the call
    ran: list[int] = []
    asyncio.get_running_loop().call_soon(ran.append, 1)
    for _ in range(3):  # done, however often: it does not even yield to the loop
        await done
    assert ran == []
    async with lim:
        assert lim.borrowed == 1
    assert lim.borrowed == 0


async def test_a_light_release_does_not_hand_over_past_a_heavy_head() -> None:
    lim = CapacityLimiter(2)
    order: list[str] = []
    release = [asyncio.Event(), asyncio.Event()]

    async def holder(i: int) -> None:
        async with lim:
            await release[i].wait()

    async def heavy() -> None:
        await lim.acquire(2)
        order.append("heavy")
        lim.release(2)  # release(2) with a light head: no hand-over, _serve() grants it

    async def light() -> None:
        async with lim:
            order.append("light")

    holders = [asyncio.create_task(holder(i)) for i in range(2)]
    await settle()
    tasks = [asyncio.create_task(heavy())]
    await settle()
    tasks.append(asyncio.create_task(light()))
    await settle()
    release[0].set()  # one unit back: the heavy head does not fit, the light one must wait
    await settle()
    assert order == []
    assert (lim.borrowed, lim.statistics().waiting) == (1, 2)
    release[1].set()
    await asyncio.gather(*holders, *tasks)
    assert order == ["heavy", "light"]
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total, s.peak_borrowed) == (0, 0, 4, 2)


@pytest.mark.parametrize("form", ["async with", "release"])
async def test_no_hand_over_while_borrowed_exceeds_a_lowered_total(form: str) -> None:
    lim = CapacityLimiter(3)
    out = [asyncio.Event() for _ in range(3)]
    got: list[int] = []

    async def holder(i: int) -> None:
        if form == "async with":
            async with lim:
                await out[i].wait()
        else:
            await lim.acquire()
            await out[i].wait()
            lim.release()

    async def waiter() -> None:
        async with lim:
            got.append(lim.borrowed)

    holders = [asyncio.create_task(holder(i)) for i in range(3)]
    await settle()
    w = asyncio.create_task(waiter())
    await settle()
    lim.total = 2
    out[0].set()
    await settle()
    assert (got, lim.borrowed) == ([], 2)  # 2 + 1 would exceed the new total: it waits
    out[1].set()
    await settle()
    assert got == [2]  # now it fits
    out[2].set()
    await asyncio.gather(*holders, w)
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total, s.peak_borrowed) == (0, 0, 4, 3)


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("form", ["async with", "release"])
async def test_hand_over_to_a_cancelled_head_passes_the_unit_on(form: str, when: str) -> None:
    # gh-90155 on the hand-over path: the head is cancelled just before the unit is handed to it
    # (its future is cancelled: nothing can be set on it) or just after (before it runs).
    lim = CapacityLimiter(1)
    out = asyncio.Event()
    got: list[str] = []

    async def holder() -> None:
        if form == "async with":
            async with lim:
                await out.wait()
        else:
            await lim.acquire()
            await out.wait()
            lim.release()

    async def waiter(name: str) -> None:
        async with lim:
            got.append(name)

    h = asyncio.create_task(holder())
    await settle()
    b = asyncio.create_task(waiter("b"))
    await settle()
    c = asyncio.create_task(waiter("c"))
    await settle()
    assert lim.statistics().waiting == 2
    if when == "before":
        b.cancel()
        out.set()
        await settle(1)  # the holder runs first and hands over to the cancelled head
    else:
        out.set()
        await settle(1)  # the holder hands over to b ...
        assert not b.done()
        b.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await b
    await asyncio.gather(h, c)
    assert got == ["c"]
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total) == (0, 0, 2)


async def test_a_stranded_waiter_left_at_the_head_by_a_hand_over_is_dropped_next() -> None:
    lim = CapacityLimiter(1)
    out = [asyncio.Event(), asyncio.Event()]

    async def user(i: int) -> None:
        async with lim:
            await out[i].wait()

    a = asyncio.create_task(user(0))
    await settle()
    b = asyncio.create_task(user(1))
    await settle()
    s = await asyncio.to_thread(stranded, "asyncio", lim._lock, [lim.__aenter__])
    assert len(lim._queue) == 2  # b, then the stranded one
    out[0].set()
    await a  # hands the unit over to b: the stranded waiter is the head now ...
    assert lim.statistics().waiting == 0  # ... and counts nowhere
    out[1].set()
    await b  # the next release drops it at the latest, and grants it nothing
    s.check(1)
    st = lim.statistics()
    assert (st.borrowed, st.waiting, st.acquired_total, len(lim._queue)) == (0, 0, 2, 0)
    async with lim:
        assert lim.borrowed == 1


def test_tasks_of_two_loops_in_two_threads_share_the_limiter() -> None:
    # The hand-over resolves the head's future directly only if it belongs to the loop running
    # here; a task of the other loop is woken through its own loop, as Sleeper.wake() does.
    lim = CapacityLimiter(3)
    guard = threading.Lock()
    inside = peak = entered = 0

    async def user(n: int) -> None:
        nonlocal inside, peak, entered
        for _ in range(n):
            async with lim:
                with guard:
                    inside += 1
                    entered += 1
                    peak = max(peak, inside)
                await asyncio.sleep(0)
                with guard:
                    inside -= 1

    async def main() -> None:
        await asyncio.gather(*(user(300) for _ in range(8)))

    other = threading.Thread(target=asyncio.run, args=(main(),))
    other.start()
    asyncio.run(main())
    other.join()
    assert entered == 2 * 8 * 300
    assert peak <= 3
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total) == (0, 0, entered)


@pytest.mark.parametrize("seed", range(6))
async def test_stress_hand_overs_and_cancellations_keep_the_cap_and_fifo(seed: int) -> None:
    """``async with`` and weighted ``acquire``/``release`` mixed, with cancellations at random
    moments (many at the instant of a hand-over: right after a release): the cap holds, the
    accounting ends at zero, and the tasks that had to wait and were not cancelled are served in
    the order they queued up."""
    rng = random.Random(seed)
    total = rng.randint(2, 4)
    lim = CapacityLimiter(total)
    inside = 0
    entered = 0
    arrivals: list[int] = []  # the tasks that had to queue, in the order they did
    served: list[int] = []  # the same, in the order they got in
    tickets = iter(range(1_000_000))
    workers: list[asyncio.Task[None]] = []

    def queued(weight: int) -> bool:  # would an acquire of ``weight`` have to wait right now?
        return bool(lim._queue) or lim.borrowed + weight > total

    async def hold(ticket: int, waits: bool, weight: int) -> None:
        nonlocal inside, entered
        if waits:
            served.append(ticket)
        inside += weight
        entered += 1
        assert inside <= total
        assert inside <= lim.borrowed
        try:
            for _ in range(rng.randint(0, 2)):
                await asyncio.sleep(0)
        finally:
            inside -= weight

    async def worker() -> None:
        for _ in range(40):
            ticket = next(tickets)
            if rng.random() < 0.6:
                waits = queued(1)
                if waits:
                    arrivals.append(ticket)
                async with lim:
                    await hold(ticket, waits, 1)
            else:
                weight = rng.randint(1, total)
                waits = queued(weight)
                if waits:
                    arrivals.append(ticket)
                await lim.acquire(weight)
                try:
                    await hold(ticket, waits, weight)
                finally:
                    lim.release(weight)
            if rng.random() < 0.1:  # right after a release, which may have just handed over
                rng.choice(workers).cancel()

    workers += [asyncio.create_task(worker()) for _ in range(10)]
    for _ in range(300):
        await asyncio.sleep(0)
        if rng.random() < 0.03:
            rng.choice(workers).cancel()
    await asyncio.gather(*workers, return_exceptions=True)
    got_in = set(served)
    assert served == [t for t in arrivals if t in got_in], "a waiter was overtaken"
    assert len(served) > 20, "the test hardly ever made anyone wait"
    s = lim.statistics()
    assert (s.borrowed, s.waiting, s.acquired_total) == (0, 0, entered)
    assert s.peak_borrowed <= total
