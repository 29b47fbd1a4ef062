"""poolkit.select / select_nowait / select_blocking: exactly one case runs, fairly, atomically."""

from __future__ import annotations

import asyncio
import functools
import random
import threading
import time
from collections.abc import Coroutine
from typing import Any

import pytest

import poolkit
from poolkit import Channel, ChannelClosed, WouldBlock, select, select_nowait

from .test_channel import (
    FAST,
    LOOP_KINDS,
    STRANDED,
    _drop_under,
    _granted_then_stranded,
    lazy_task,
    no_automatic_gc,
    stranded,
    timed,
    wait_until,
)


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def drain(ch: Channel[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(ch.receive_nowait())
        except (WouldBlock, poolkit.EndOfChannel):
            return out


# ---------------------------------------------------------------- bad input


def test_select_needs_cases_of_the_right_kind() -> None:
    with pytest.raises(ValueError, match="at least one case"):
        select_nowait()
    with pytest.raises(TypeError, match="got 3"):
        select_nowait(3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"must be a poolkit\.Channel, got"):
        poolkit.ReceiveCase(object())  # type: ignore[arg-type]
    ch: Channel[int] = Channel(1)
    with pytest.raises(ValueError, match="cannot both send on and receive from"):
        select_nowait(ch.receive_case(), ch.send_case(1))
    assert ch.statistics().items_sent == 0


# ---------------------------------------------------------------- what runs


async def test_select_receives_from_the_ready_channel() -> None:
    a: Channel[str] = Channel(1)
    b: Channel[str] = Channel(1)
    b.send_nowait("from b")
    ca, cb = a.receive_case(), b.receive_case()
    sel = await select(ca, cb)
    assert (sel.index, sel.case, sel.value, sel.closed) == (1, cb, "from b", False)
    assert a.statistics().items_received == 0


async def test_select_sends_where_there_is_room() -> None:
    full: Channel[str] = Channel(1)
    full.send_nowait("old")
    free: Channel[str] = Channel(1)
    sel = await select(full.send_case("x"), free.send_case("y"))
    assert (sel.index, sel.value) == (1, None)
    assert drain(full) == ["old"]
    assert drain(free) == ["y"]


async def test_select_waits_and_runs_exactly_one_case() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)
    task = asyncio.create_task(select(a.receive_case(), b.receive_case()))
    await settle()
    assert not task.done()
    assert a.statistics().receivers_waiting == 1 and b.statistics().receivers_waiting == 1
    b.send_nowait(7)
    with pytest.raises(WouldBlock):
        a.send_nowait(8)  # the select is no longer a receiver on a
    sel = await task
    assert (sel.index, sel.value) == (1, 7)
    assert a.statistics().receivers_waiting == 0 and b.statistics().receivers_waiting == 0


async def test_select_rendezvous_with_blocked_unbuffered_sender() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)
    sender = asyncio.create_task(b.send(5))
    await settle()
    sel = await select(a.receive_case(), b.receive_case())
    assert (sel.index, sel.value) == (1, 5)
    await sender


async def test_select_send_to_waiting_receiver() -> None:
    a: Channel[int] = Channel(0)
    receiver = asyncio.create_task(a.receive())
    await settle()
    sel = await select(a.send_case(1), Channel[int](0).send_case(2))
    assert sel.index == 0
    assert await receiver == 1


async def test_closed_receive_is_a_ready_case_reported_as_closed() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)
    a.close()
    sel = await select(a.receive_case(), b.receive_case())
    assert (sel.index, sel.value, sel.closed) == (0, None, True)
    # ... also when the close happens while the select waits
    c: Channel[int] = Channel(0)
    task = asyncio.create_task(select(b.receive_case(), c.receive_case()))
    await settle()
    c.close()
    sel = await task
    assert (sel.index, sel.closed) == (1, True)


async def test_closed_channel_with_buffered_items_is_drained_first() -> None:
    a: Channel[int] = Channel(2)
    a.send_nowait(1)
    a.close()
    assert (await select(a.receive_case())).value == 1
    assert (await select(a.receive_case())).closed


async def test_send_case_on_closed_channel_raises() -> None:
    a: Channel[int] = Channel(0)
    a.close()
    with pytest.raises(ChannelClosed):
        await select(a.send_case(1))
    b: Channel[int] = Channel(0)
    task = asyncio.create_task(select(b.send_case(1), Channel[int](0).receive_case()))
    await settle()
    b.close()
    with pytest.raises(ChannelClosed):
        await task


def test_select_nowait_is_the_default_case() -> None:
    a: Channel[int] = Channel(0)
    with pytest.raises(WouldBlock, match="no case is ready"):
        select_nowait(a.receive_case(), a.receive_case())
    a2: Channel[int] = Channel(1)
    a2.send_nowait(3)
    assert select_nowait(a.receive_case(), a2.receive_case()).value == 3


@pytest.mark.virtual_time
async def test_select_timeout_is_exact_and_runs_nothing() -> None:
    loop = asyncio.get_running_loop()
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(1)
    b.send_nowait(0)
    with pytest.raises(TimeoutError, match="select timed out"):
        await select(a.receive_case(), b.send_case(1), timeout=1.25)
    assert loop.time() == 1.25
    assert drain(b) == [0]
    assert a.statistics().receivers_waiting == 0 and b.statistics().senders_waiting == 0


# ---------------------------------------------------------------- fairness


def test_select_nowait_is_fair_between_ready_cases() -> None:
    a: Channel[int] = Channel(10_000)
    b: Channel[int] = Channel(10_000)
    for i in range(10_000):
        a.send_nowait(i)
        b.send_nowait(i)
    picks = [select_nowait(a.receive_case(), b.receive_case()).index for _ in range(10_000)]
    share = picks.count(0) / len(picks)
    assert 0.4 < share < 0.6, share


def test_select_is_uniform_over_three_when_one_is_not_ready() -> None:
    # A random start + linear scan would give the case after the unready one two thirds of the
    # picks; a uniform choice among the ready cases gives each half.
    chans: list[Channel[int]] = [Channel(5000) for _ in range(3)]
    for i in range(5000):
        chans[0].send_nowait(i)
        chans[2].send_nowait(i)
    picks = [select_nowait(*(c.receive_case() for c in chans)).index for _ in range(5000)]
    assert picks.count(1) == 0
    assert 0.4 < picks.count(0) / 5000 < 0.6


async def test_async_select_is_fair_between_always_ready_channels() -> None:
    a: Channel[int] = Channel(4000)
    b: Channel[int] = Channel(4000)
    for i in range(4000):
        a.send_nowait(i)
        b.send_nowait(i)
    counts = [0, 0]
    for _ in range(4000):
        counts[(await select(a.receive_case(), b.receive_case())).index] += 1
    assert 0.4 < counts[0] / 4000 < 0.6


async def test_waiting_select_is_not_biased_to_first_case() -> None:
    # Both cases become ready while the select waits (two blocked unbuffered senders that it
    # invites); which one wins must not always be the first.
    wins = [0, 0]
    for _ in range(200):
        a: Channel[int] = Channel(0)
        b: Channel[int] = Channel(0)
        sa = asyncio.create_task(a.send(0))
        sb = asyncio.create_task(b.send(1))
        await settle()
        sel = await select(a.receive_case(), b.receive_case())
        wins[sel.index] += 1
        a.close()
        b.close()
        results = await asyncio.gather(sa, sb, return_exceptions=True)
        # exactly one send succeeded: the one the select received
        assert [r is None for r in results] == [sel.index == 0, sel.index == 1]
    assert min(wins) > 50, wins


# ---------------------------------------------------------------- atomicity and cancellation


async def test_cancelled_select_runs_nothing() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(1)
    b.send_nowait(0)
    task = asyncio.create_task(select(a.receive_case(), b.send_case(1)))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert a.statistics().receivers_waiting == 0 and b.statistics().senders_waiting == 0
    assert drain(b) == [0]


async def test_select_cancelled_after_promise_takes_nothing() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)
    task = asyncio.create_task(select(a.receive_case(), b.receive_case()))
    await settle()
    a.send_nowait(1)  # promised to the select, which has not run yet
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert drain(a) == [1]
    assert b.statistics().receivers_waiting == 0


async def test_select_send_cancelled_after_invitation_delivers_nothing() -> None:
    a: Channel[int] = Channel(1)
    a.send_nowait(0)
    task = asyncio.create_task(select(a.send_case(1), Channel[int](0).receive_case()))
    await settle()
    assert a.receive_nowait() == 0  # room kept for the select
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert drain(a) == []
    a.send_nowait(2)  # the room was given back


async def test_concurrent_selects_each_run_exactly_one_case() -> None:
    # 40 selects over 3 channels, 40 items spread over them: every select gets exactly one item,
    # and every item goes to exactly one select.
    rng = random.Random(7)
    chans: list[Channel[int]] = [Channel(rng.choice([0, 1, 4])) for _ in range(3)]

    async def one() -> int:
        sel = await select(*(c.receive_case() for c in chans))
        assert isinstance(sel.value, int)
        return sel.value

    tasks = [asyncio.create_task(one()) for _ in range(40)]
    for item in range(40):
        await chans[rng.randrange(3)].send(item)
        if rng.random() < 0.3:
            await asyncio.sleep(0)
    got = await asyncio.gather(*tasks)
    assert sorted(got) == list(range(40))
    for c in chans:
        s = c.statistics()
        assert s.receivers_waiting == 0 and s.buffered == 0


async def test_selects_that_send_and_receive_across_each_other() -> None:
    # Two tasks each select {receive from mine, send to yours} on unbuffered channels: exactly one
    # hand-off happens per round, no deadlock and no lost item.
    x: Channel[int] = Channel(0)
    y: Channel[int] = Channel(0)
    got: list[tuple[str, Any]] = []

    async def party(name: str, mine: Channel[int], yours: Channel[int], item: int) -> None:
        sel = await select(mine.receive_case(), yours.send_case(item), timeout=5)
        got.append((name, sel.value if sel.index == 0 else "sent"))

    await asyncio.gather(party("p", x, y, 1), party("q", y, x, 2))
    assert sorted(got) in ([("p", 2), ("q", "sent")], [("p", "sent"), ("q", 1)])


async def test_sender_invited_by_a_select_that_went_elsewhere_waits_again() -> None:
    # Unbuffered ch: a blocked sender is invited by a select's receive registration; the select is
    # then satisfied by another channel before the sender runs.  The sender must not "deliver"
    # into the empty hand-off slot: there is no receiver, so it waits again.
    ch: Channel[int] = Channel(0)
    other: Channel[int] = Channel(1)
    sender = lazy_task(ch.send(1))
    await settle()
    selecting = lazy_task(select(ch.receive_case(), other.receive_case()))
    await asyncio.sleep(0)  # the select registers on both channels and invites the sender
    other.send_nowait(2)  # satisfied elsewhere before the sender runs
    assert (await selecting).value == 2
    await settle()
    assert not sender.done()
    s = ch.statistics()
    assert (s.buffered, s.items_sent, s.senders_waiting) == (0, 0, 1)
    assert await ch.receive() == 1
    await sender


async def test_sender_cancelled_while_waiting_again_after_failed_invitation() -> None:
    # The second await point of a send: invited, found no receiver, queued again, then cancelled.
    ch: Channel[int] = Channel(0)
    other: Channel[int] = Channel(1)
    sender = lazy_task(ch.send(1))
    await settle()
    selecting = lazy_task(select(ch.receive_case(), other.receive_case()))
    await asyncio.sleep(0)
    other.send_nowait(2)
    await selecting
    await settle()  # the sender has run, found no receiver and is waiting again
    assert ch.statistics().senders_waiting == 1
    sender.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sender
    s = ch.statistics()
    assert (s.senders_waiting, s.items_sent, s.buffered) == (0, 0, 0)
    receiver = lazy_task(ch.receive())
    await settle()
    assert not receiver.done()  # the cancelled sender delivered nothing
    ch.send_nowait(3)
    assert await receiver == 3


async def test_senders_requeued_after_failed_invitations_keep_their_order() -> None:
    # Two blocked senders are invited by two selects that then win elsewhere; both go back to the
    # queue, and must do so in the order they first blocked.
    ch: Channel[str] = Channel(0)
    o1: Channel[str] = Channel(0)
    o2: Channel[str] = Channel(0)
    s1 = lazy_task(ch.send("first"))
    await asyncio.sleep(0)
    s2 = lazy_task(ch.send("second"))
    await asyncio.sleep(0)
    r1 = lazy_task(select(ch.receive_case(), o1.receive_case()))
    r2 = lazy_task(select(ch.receive_case(), o2.receive_case()))
    await asyncio.sleep(0)  # r1 invites s1, r2 invites s2
    o1.send_nowait("x")
    o2.send_nowait("y")  # both selects win elsewhere before s1 and s2 run
    await settle()
    assert [(await r1).value, (await r2).value] == ["x", "y"]
    assert [await ch.receive(), await ch.receive()] == ["first", "second"]
    await asyncio.gather(s1, s2)


async def test_select_send_case_keeps_its_place_when_its_receiver_goes_elsewhere() -> None:
    ch: Channel[str] = Channel(0)
    other: Channel[str | None] = Channel(0)
    x = lazy_task(select(ch.send_case("select-first"), other.send_case(None)))
    await asyncio.sleep(0)
    s2 = lazy_task(ch.send("plain-second"))
    await asyncio.sleep(0)  # queued: the select's send, then the plain send
    o: Channel[str] = Channel(0)
    r = lazy_task(select(ch.receive_case(), o.receive_case()))
    await asyncio.sleep(0)  # r invites the select's send case ...
    o.send_nowait("elsewhere")  # ... and wins elsewhere before the select runs
    await settle()
    assert [await ch.receive(), await ch.receive()] == ["select-first", "plain-second"]
    await asyncio.gather(x, s2, r)


# ---------------------------------------------------------------- selects stranded on a closed loop
# (see tests/test_channel.py: the same rules, the same helpers)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_send_skips_stranded_selects_fast_and_serves_the_live_one(kind: str) -> None:
    a: Channel[str] = Channel(0)
    b: Channel[str] = Channel(1)

    def one() -> Coroutine[Any, Any, poolkit.Selected]:
        return select(a.receive_case(), b.receive_case())

    s = stranded(kind, a._lock, [one] * STRANDED)
    got: list[Any] = []
    live = threading.Thread(
        target=lambda: got.append(poolkit.select_blocking(a.receive_case(), timeout=10).value)
    )
    live.start()
    wait_until(lambda: a.statistics().receivers_waiting == STRANDED + 1)
    _, took = timed(a.send_nowait, "x")
    live.join()
    assert took < FAST
    assert got == ["x"]
    s.check(STRANDED)
    # Their registrations on b are stale now: skipped (and let go) by the next send there.
    _, took = timed(b.send_nowait, "y")
    assert took < FAST
    st = b.statistics()
    assert (st.buffered, st.receivers_waiting, len(b._recvq)) == (1, 0, 0)
    assert select_nowait(b.receive_case()).value == "y"


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_receive_skips_stranded_select_senders_fast(kind: str) -> None:
    a: Channel[int] = Channel(1)
    b: Channel[int] = Channel(1)
    a.send_nowait(-1)
    b.send_nowait(-2)
    s = stranded(
        kind,
        a._lock,
        [functools.partial(select, a.send_case(i), b.send_case(i)) for i in range(STRANDED)],
    )
    sel, took = timed(select_nowait, a.receive_case())  # invites them, in vain
    assert took < FAST
    assert sel.value == -1
    s.check(STRANDED)
    a.send_nowait(1)  # the room was not kept for any of them
    assert b.receive_nowait() == -2  # their stale registrations on b are skipped
    b.send_nowait(2)
    assert (drain(a), drain(b)) == ([1], [2])


async def test_select_from_a_task_skips_stranded_selects_fast() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)

    def one() -> Coroutine[Any, Any, poolkit.Selected]:
        return select(a.receive_case(), b.receive_case())

    s = await asyncio.to_thread(stranded, "asyncio", a._lock, [one] * STRANDED)
    live = asyncio.create_task(select(a.receive_case()))
    await settle()
    t0 = time.perf_counter()
    assert (await select(a.send_case(1))).index == 0
    assert time.perf_counter() - t0 < FAST
    assert (await live).value == 1
    s.check(STRANDED)


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "gc"])
@pytest.mark.parametrize("capacity", [0, 1])
def test_select_closed_under_the_lock_passes_its_promise_on(capacity: int, cyclic: bool) -> None:
    a: Channel[str] = Channel(capacity)
    b: Channel[str] = Channel(capacity)

    def one() -> Coroutine[Any, Any, poolkit.Selected]:
        return select(a.receive_case(), b.receive_case())

    with no_automatic_gc(cyclic):
        s = _granted_then_stranded("asyncio", a._lock, one, lambda: a.send_nowait("x"))
        took = _drop_under(a._lock, s, cyclic)
    assert took < FAST
    assert s.destroyed == [True]
    assert a.receive_blocking(timeout=10) == "x"  # the promise was passed on, not lost
    st = a.statistics()
    assert (st.items_sent, st.items_received, st.buffered) == (1, 1, 0)
    b.close()
    assert poolkit.select_blocking(b.receive_case(), timeout=10).closed  # nothing stuck on b


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "gc"])
def test_select_sender_closed_under_the_lock_passes_its_invitation_on(cyclic: bool) -> None:
    a: Channel[str] = Channel(1)
    a.send_nowait("first")
    other: Channel[str] = Channel(0)
    with no_automatic_gc(cyclic):
        s = _granted_then_stranded(
            "asyncio",
            a._lock,
            functools.partial(select, a.send_case("never"), other.send_case("never")),
            a.receive_nowait,
        )
        took = _drop_under(a._lock, s, cyclic)
    assert took < FAST
    assert s.destroyed == [True]
    a.send_blocking("next", timeout=10)  # the room kept for the stranded select is free again
    assert drain(a) == ["next"]
