"""Unit tests for poolkit.Channel: every rule of the channel contract, one at a time."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import math
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import pytest

import poolkit
from poolkit import Channel, ChannelClosed, EndOfChannel, WouldBlock

from .conftest import LOOP_FACTORIES

T = TypeVar("T")


async def settle(n: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(n):
        await asyncio.sleep(0)


def lazy_task(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task that starts at the loop's next turn even under ``--eager-tasks``.

    For tests that pin one interleaving step by step: an eager start would run the first step
    before the test's next line.  (``asyncio.Task`` itself never starts eagerly unless asked.)
    """
    return asyncio.Task(coro)


# ---------------------------------------------------------------- construction and bad input


@pytest.mark.parametrize("capacity", [0, 1, 7, 10**9, math.inf])
def test_valid_capacities(capacity: float) -> None:
    assert Channel(capacity).capacity == capacity


@pytest.mark.parametrize(
    ("capacity", "exc", "words"),
    [
        (-1, ValueError, "capacity must be >= 0, got -1"),
        (-math.inf, TypeError, "got -inf"),
        (1.5, TypeError, "got 1.5"),
        (2.0, TypeError, "got 2.0"),
        (math.nan, TypeError, "got nan"),
        ("3", TypeError, "got '3'"),
        (None, TypeError, "got None"),
        (True, TypeError, "got True"),
    ],
)
def test_bad_capacity_names_argument_and_value(capacity: Any, exc: type, words: str) -> None:
    with pytest.raises(exc, match="capacity") as info:
        Channel(capacity)
    assert words in str(info.value)


def test_bad_name() -> None:
    with pytest.raises(TypeError, match="name must be a str or None, got 3"):
        Channel(1, name=3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("timeout", "exc"),
    [(-1, ValueError), (math.nan, ValueError), ("1", TypeError), (True, TypeError)],
)
async def test_bad_timeout(timeout: Any, exc: type) -> None:
    ch: Channel[int] = Channel(1)
    with pytest.raises(exc, match=r"timeout must be .*got"):
        await ch.send(1, timeout=timeout)
    with pytest.raises(exc, match="timeout"):
        await ch.receive(timeout=timeout)
    with pytest.raises(exc, match="timeout"):
        ch.receive_blocking(timeout=timeout)
    with pytest.raises(exc, match="timeout"):
        await poolkit.select(ch.receive_case(), timeout=timeout)
    assert ch.statistics().items_sent == 0


def test_generic_subscription_works_at_runtime() -> None:
    ch = Channel[int](3)
    ch.send_nowait(1)
    assert ch.receive_nowait() == 1


# ---------------------------------------------------------------- buffered


async def test_buffered_fifo_and_nowait_twins() -> None:
    ch: Channel[int] = Channel(3)
    for i in range(3):
        ch.send_nowait(i)
    with pytest.raises(WouldBlock, match="no room"):
        ch.send_nowait(99)
    assert [ch.receive_nowait() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(WouldBlock, match="no item"):
        ch.receive_nowait()
    s = ch.statistics()
    assert (s.items_sent, s.items_received, s.buffered, s.peak_buffered) == (3, 3, 0, 3)


async def test_send_blocks_when_full_until_room() -> None:
    ch: Channel[str] = Channel(1)
    await ch.send("a")
    sender = asyncio.create_task(ch.send("b"))
    await settle()
    assert not sender.done()
    assert ch.statistics().senders_waiting == 1
    assert await ch.receive() == "a"
    await settle()
    assert sender.done() and sender.exception() is None
    assert await ch.receive() == "b"


async def test_receive_blocks_until_item() -> None:
    ch: Channel[str] = Channel(4)
    receiver = asyncio.create_task(ch.receive())
    await settle()
    assert not receiver.done()
    assert ch.statistics().receivers_waiting == 1
    await ch.send("x")
    assert await receiver == "x"


async def test_blocked_senders_are_served_in_arrival_order() -> None:
    ch: Channel[int] = Channel(1)
    ch.send_nowait(0)
    senders = []
    for i in range(1, 6):
        senders.append(asyncio.create_task(ch.send(i)))
        await settle(1)
    got = [await ch.receive() for _ in range(6)]
    assert got == [0, 1, 2, 3, 4, 5]
    await asyncio.gather(*senders)


async def test_blocked_receivers_are_served_in_arrival_order() -> None:
    ch: Channel[int] = Channel(2)
    order: list[tuple[int, int]] = []

    async def recv(who: int) -> None:
        order.append((who, await ch.receive()))

    tasks = []
    for who in range(4):
        tasks.append(asyncio.create_task(recv(who)))
        await settle(1)
    for i in range(4):
        await ch.send(i * 10)
    await asyncio.gather(*tasks)
    assert sorted(order) == [(0, 0), (1, 10), (2, 20), (3, 30)]


async def test_unbounded_never_blocks() -> None:
    ch: Channel[int] = Channel(math.inf)
    for i in range(10_000):
        ch.send_nowait(i)
    s = ch.statistics()
    assert s.buffered == 10_000 and s.peak_buffered == 10_000
    assert [ch.receive_nowait() for _ in range(10000)] == list(range(10_000))


# ---------------------------------------------------------------- unbuffered (rendezvous)


async def test_unbuffered_send_waits_for_a_receiver() -> None:
    ch: Channel[str] = Channel(0)
    sender = asyncio.create_task(ch.send("x"))
    await settle()
    assert not sender.done(), "an unbuffered send returned with no receiver"
    with pytest.raises(WouldBlock):
        ch.send_nowait("y")
    assert await ch.receive() == "x"
    await settle()
    assert sender.done() and sender.exception() is None
    assert ch.statistics().buffered == 0


async def test_unbuffered_send_nowait_succeeds_with_waiting_receiver() -> None:
    ch: Channel[str] = Channel(0)
    receiver = asyncio.create_task(ch.receive())
    await settle()
    ch.send_nowait("x")
    with pytest.raises(WouldBlock):
        ch.send_nowait("y")  # the one receiver is already served
    assert await receiver == "x"


async def test_unbuffered_ping_pong_many_items() -> None:
    ch: Channel[int] = Channel(0)

    async def producer() -> None:
        async with ch:
            for i in range(500):
                await ch.send(i)

    task = asyncio.create_task(producer())
    assert [x async for x in ch] == list(range(500))
    await task
    s = ch.statistics()
    assert (s.items_sent, s.items_received, s.peak_buffered) == (500, 500, 0)


@pytest.mark.virtual_time
async def test_unbuffered_send_returns_only_after_receiver_arrives() -> None:
    loop = asyncio.get_running_loop()
    ch: Channel[str] = Channel(0)
    done_at: list[float] = []

    async def sender() -> None:
        await ch.send("x")
        done_at.append(loop.time())

    task = asyncio.create_task(sender())
    await asyncio.sleep(5)
    assert done_at == []
    assert await ch.receive() == "x"
    await task
    assert done_at == [5.0]


# ---------------------------------------------------------------- spinning once
# A task that has to wait while a partner is on its way to serve it yields once, still scheduled
# and with no future, and parks on a future only if nobody served it meanwhile; with nobody on
# its way it parks at once (poolkit/_primitives/_channel.py, "Spinning once").


def count_parks(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every waiter given a future from now on (spinning ones get none)."""
    from poolkit._primitives import _channel

    parked: list[object] = []
    park = _channel._park

    def counting_park(w: Any) -> None:
        parked.append(w)
        park(w)

    monkeypatch.setattr(_channel, "_park", counting_park)
    return parked


async def test_a_hand_off_between_two_tasks_parks_nobody_on_a_future(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each side is served by the other before it runs again: no future per item (two per item
    made the unbuffered hand-off cost 1.3 times asyncio.Queue(1) + join(); it is now 0.7)."""
    parked = count_parks(monkeypatch)
    for capacity in (0, 4):
        ch: Channel[int] = Channel(capacity)

        async def producer(ch: Channel[int] = ch) -> None:
            async with ch:
                for i in range(1000):
                    await ch.send(i)

        task = asyncio.create_task(producer())
        assert [x async for x in ch] == list(range(1000))
        await task
        # The consumer's first wait (nobody on the way yet) and its last (the end).
        assert len(parked) <= 2, f"capacity {capacity}: {len(parked)} futures for 1000 items"
        parked.clear()


async def test_a_waiter_with_nobody_on_its_way_parks_at_once() -> None:
    """So a task blocked on a channel that nothing else can reach is unreachable from its first
    step on (what poolkit.leaks.find_blocked and the garbage collector go by)."""
    ch: Channel[int] = Channel(0)
    receiver = lazy_task(ch.receive())
    await asyncio.sleep(0)
    assert ch._recvq[0].fut is not None
    full: Channel[int] = Channel(1)
    full.send_nowait(0)
    sender = lazy_task(full.send(1))
    await asyncio.sleep(0)
    assert full._sendq[0].fut is not None
    receiver.cancel()
    sender.cancel()
    await asyncio.gather(receiver, sender, return_exceptions=True)


async def test_the_quick_task_waiter_sets_what_the_constructor_sets() -> None:
    """Channel._task_waiter() makes its waiter without __init__, or reuses the channel's spare:
    either way every slot of _Waiter and Sleeper must be set as the constructor sets it."""
    from poolkit._primitives import _channel

    loop = asyncio.get_running_loop()
    ch: Channel[str] = Channel(0)
    slots = {name for cls in _channel._Waiter.__mro__ for name in getattr(cls, "__slots__", ())}
    assert slots >= {"fut", "loop", "thread", "tlock", "item", "arrival", "state", "sel"}
    for round_ in ("new", "spare"):
        if round_ == "spare":  # a finished hand-off leaves the receiver's waiter as the spare
            receiver = lazy_task(ch.receive())
            await asyncio.sleep(0)
            ch.send_nowait("x")
            assert await receiver == "x"
            assert ch._spare is not None
        made = _channel._Waiter("item", loop, None, -1, 7)
        with ch._lock:
            quick = ch._task_waiter("item", 7)
        assert ch._spare is None
        for name in sorted(slots):
            assert hasattr(quick, name), f"{round_}: slot {name!r} not set"
            if name != "fut":
                assert getattr(quick, name) == getattr(made, name), f"{round_}: {name!r}"
        assert quick.fut is None  # it spins, or its caller parks it:
        _channel._park(quick)
        assert quick.fut is not None and quick.fut.get_loop() is loop and not quick.fut.done()


async def test_a_spinning_receiver_served_then_cancelled_before_it_runs_takes_nothing() -> None:
    ch: Channel[str] = Channel(0)
    receivers: list[asyncio.Task[str]] = []

    async def sender() -> None:
        await ch.send("x")
        receivers[0].cancel()  # right after the hand-off, before the receiver runs again

    s = lazy_task(sender())
    await asyncio.sleep(0)  # it parks: nobody is on the way
    receivers.append(lazy_task(ch.receive()))
    await asyncio.sleep(0)  # the receiver queues, invites the sender, and spins
    assert ch._recvq[0].fut is None
    with pytest.raises(asyncio.CancelledError):
        await receivers[0]
    await s
    st = ch.statistics()
    assert (st.items_sent, st.items_received, st.buffered, st.receivers_waiting) == (1, 0, 1, 0)
    assert ch.receive_nowait() == "x"  # still there, for the next receiver


async def test_a_spinning_sender_invited_then_cancelled_delivers_nothing() -> None:
    ch: Channel[str] = Channel(1)
    first = lazy_task(ch.receive())
    await asyncio.sleep(0)  # it parks: nobody is on the way
    sender = lazy_task(ch.send("c"))  # its first step comes before the receiver's next
    ch.send_nowait("a")  # promised to the receiver, which has yet to run
    ch.send_nowait("b")  # the buffer is full
    await asyncio.sleep(0)  # the sender queues and spins; the receiver takes "a"
    assert ch._sendq[0].fut is None
    assert await first == "a"
    assert ch.receive_nowait() == "b"  # room: the sender is invited
    sender.cancel()  # before it ran again: "c" must not go in
    with pytest.raises(asyncio.CancelledError):
        await sender
    st = ch.statistics()
    assert (st.items_sent, st.buffered, st.senders_waiting) == (2, 0, 0)
    ch.send_nowait("d")  # the room kept for it is free again
    assert ch.receive_nowait() == "d"


async def test_an_unbuffered_spinning_sender_invited_then_cancelled_delivers_nothing() -> None:
    ch: Channel[str] = Channel(0)
    first = ch.receive()  # driven by hand: it runs only when this test says
    assert first.send(None) is not None  # it parks, on a future: nobody is on the way
    ch.send_nowait("a")  # promised to it; it has yet to run
    sender = lazy_task(ch.send("b"))
    await asyncio.sleep(0)
    assert ch._sendq[0].fut is None  # a receiver is on its way: the sender spins
    second = ch.receive()
    assert second.send(None) is None  # it queues, invites the sender, and spins
    sender.cancel()  # before the sender ran: it must not hand "b" over
    with pytest.raises(asyncio.CancelledError):
        await sender
    with pytest.raises(StopIteration) as done:
        first.send(None)
    assert done.value.value == "a"
    second.close()  # the second receiver withdraws
    st = ch.statistics()
    assert (st.items_sent, st.senders_waiting, st.receivers_waiting) == (1, 0, 0)
    with pytest.raises(WouldBlock):
        ch.receive_nowait()


async def test_a_thread_hands_an_item_to_a_spinning_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """Waking a spinning task from another thread needs no future nor call_soon_threadsafe: it
    is scheduled already, and finds its item when it runs."""
    ch: Channel[int] = Channel(0)
    thread = threading.Thread(target=ch.send_blocking, args=(5,))
    thread.start()
    wait_until(lambda: ch.statistics().senders_waiting == 1)
    parked = count_parks(monkeypatch)
    receiver = lazy_task(ch.receive())
    await asyncio.sleep(0)  # it invites the thread's send, and spins
    thread.join(10)  # (holding up the loop: the receiver cannot run meanwhile)
    assert not thread.is_alive()
    assert await receiver == 5
    assert parked == []


async def test_only_the_first_in_line_spins_so_blocked_senders_keep_their_order() -> None:
    """A sender that queues behind a parked one parks too, even with a receiver on its way:
    were it to spin, it would be scheduled already when both are invited, and run (and hand
    its item over) first."""
    ch: Channel[int] = Channel(0)
    s0 = lazy_task(ch.send(0))
    await asyncio.sleep(0)  # parked: nobody on the way
    s1 = lazy_task(ch.send(1))
    await asyncio.sleep(0)  # parked, behind s0
    r0 = ch.receive()  # receivers driven by hand: they run only when this test says
    assert r0.send(None) is None  # it invites s0, and spins
    await asyncio.sleep(0)  # s0 hands 0 over to r0, which has yet to run
    s2 = lazy_task(ch.send(2))
    await asyncio.sleep(0)  # a receiver is on its way, but s1 is queued ahead: s2 parks
    assert [w.fut is None for w in ch._sendq] == [False, False]
    with pytest.raises(StopIteration) as done:
        r0.send(None)
    assert done.value.value == 0
    r1, r2 = ch.receive(), ch.receive()
    assert r1.send(None) is None  # it invites s1, and spins
    assert r2.send(None) is not None  # queued behind r1, it parks; it invites s2
    await settle()
    assert s1.done() and s2.done()
    got = []
    for r in (r1, r2):
        with pytest.raises(StopIteration) as done:
            r.send(None)
        got.append(done.value.value)
    assert got == [1, 2]
    await s0


async def test_an_invited_sender_whose_receiver_went_elsewhere_keeps_its_turn() -> None:
    """It queues again ahead of the sender that arrived while it was invited, and is served
    first."""
    loop = asyncio.get_running_loop()
    ch: Channel[int] = Channel(0)
    other: Channel[int] = Channel(1)
    first = lazy_task(ch.send(1))
    await settle(2)  # parked on a future
    # Next turn: the select invites the first sender; the second arrives while it is invited;
    # then the select is served by the other channel, before the first sender runs.
    chooser = lazy_task(poolkit.select(ch.receive_case(), other.receive_case()))
    second = lazy_task(ch.send(2))
    loop.call_soon(other.send_nowait, 0)
    await settle()
    assert (await chooser).value == 0
    assert not first.done() and not second.done()
    assert await ch.receive() == 1
    assert await ch.receive() == 2
    await asyncio.gather(first, second)


# ---------------------------------------------------------------- close


async def test_close_is_idempotent_and_send_after_close_raises() -> None:
    ch: Channel[int] = Channel(2, name="jobs")
    ch.close()
    ch.close()
    assert ch.closed
    with pytest.raises(ChannelClosed, match="send on channel 'jobs', which was closed"):
        await ch.send(1)
    with pytest.raises(ChannelClosed):
        ch.send_nowait(1)
    with pytest.raises(ChannelClosed):
        ch.send_blocking(1)
    assert ch.statistics().items_sent == 0


async def test_receivers_drain_then_end_of_channel() -> None:
    ch: Channel[int] = Channel(3)
    for i in range(3):
        await ch.send(i)
    ch.close()
    assert [await ch.receive() for _ in range(3)] == [0, 1, 2]
    with pytest.raises(EndOfChannel, match="closed and drained"):
        await ch.receive()
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()
    with pytest.raises(EndOfChannel):
        ch.receive_blocking()


async def test_close_wakes_blocked_senders_with_channel_closed_and_drops_nothing() -> None:
    ch: Channel[int] = Channel(1)
    await ch.send(0)
    senders = [asyncio.create_task(ch.send(i)) for i in (1, 2)]
    await settle()
    ch.close()
    results = await asyncio.gather(*senders, return_exceptions=True)
    assert all(isinstance(r, ChannelClosed) for r in results)
    # The item that was in before close() is still delivered; the blocked ones never went in.
    assert [x async for x in ch] == [0]
    assert ch.statistics().items_sent == 1


async def test_close_wakes_blocked_receivers_with_end_of_channel() -> None:
    ch: Channel[int] = Channel(0)
    receivers = [asyncio.create_task(ch.receive()) for _ in range(3)]
    await settle()
    ch.close()
    results = await asyncio.gather(*receivers, return_exceptions=True)
    assert all(isinstance(r, EndOfChannel) for r in results)


async def test_unbuffered_close_while_sender_waits_delivers_nothing() -> None:
    ch: Channel[int] = Channel(0)
    sender = asyncio.create_task(ch.send(1))
    await settle()
    ch.close()
    with pytest.raises(ChannelClosed):
        await sender
    with pytest.raises(EndOfChannel):
        await ch.receive()


async def test_invited_sender_fails_if_channel_closes_before_it_runs() -> None:
    ch: Channel[int] = Channel(1)
    ch.send_nowait(0)
    sender = asyncio.create_task(ch.send(1))
    await settle()
    assert ch.receive_nowait() == 0  # invites the sender ...
    ch.close()  # ... but the channel closes before it runs
    with pytest.raises(ChannelClosed):
        await sender
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()


async def test_async_for_and_context_manager_close() -> None:
    ch: Channel[int] = Channel(2)

    async def producer() -> None:
        async with ch:
            for i in range(20):
                await ch.send(i)

    task = asyncio.create_task(producer())
    assert [x async for x in ch] == list(range(20))
    await task
    assert ch.closed


# ---------------------------------------------------------------- timeouts (virtual time)


@pytest.mark.virtual_time
async def test_receive_timeout_is_exact_and_consumes_nothing() -> None:
    loop = asyncio.get_running_loop()
    ch: Channel[int] = Channel(1)
    with pytest.raises(TimeoutError, match="receive timed out"):
        await ch.receive(timeout=2.5)
    assert loop.time() == 2.5
    assert ch.statistics().receivers_waiting == 0
    await ch.send(7)
    assert await ch.receive(timeout=1) == 7
    assert loop.time() == 2.5


@pytest.mark.virtual_time
async def test_send_timeout_is_exact_and_delivers_nothing() -> None:
    loop = asyncio.get_running_loop()
    ch: Channel[int] = Channel(1)
    await ch.send(1)
    with pytest.raises(TimeoutError, match="send timed out"):
        await ch.send(2, timeout=0.75)
    assert loop.time() == 0.75
    assert ch.statistics().senders_waiting == 0
    assert ch.receive_nowait() == 1
    with pytest.raises(WouldBlock):
        ch.receive_nowait()


@pytest.mark.virtual_time
async def test_timeout_zero_means_do_not_wait() -> None:
    ch: Channel[int] = Channel(0)
    with pytest.raises(TimeoutError):
        await ch.receive(timeout=0)
    with pytest.raises(TimeoutError):
        await ch.send(1, timeout=0)
    assert asyncio.get_running_loop().time() == 0


@pytest.mark.virtual_time
async def test_timeout_that_is_met_returns_the_item() -> None:
    loop = asyncio.get_running_loop()
    ch: Channel[int] = Channel(0)

    async def later() -> None:
        await asyncio.sleep(1)
        await ch.send(42)

    task = asyncio.create_task(later())
    assert await ch.receive(timeout=3) == 42
    assert loop.time() == 1
    await task


@pytest.mark.virtual_time
async def test_invited_sender_whose_deadline_passed_does_not_wait_again() -> None:
    # Unbuffered: a select's receive invites the blocked sender, but the select is satisfied by
    # another channel and the sender's deadline passes before the sender runs.  The sender must
    # time out rather than queue up again past its deadline.
    loop = asyncio.get_running_loop()
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(1)
    sender = lazy_task(a.send(1, timeout=1))
    await settle()
    selecting = lazy_task(poolkit.select(a.receive_case(), b.receive_case()))
    await asyncio.sleep(0)  # the select registers on a (inviting the sender) and on b
    b.send_nowait(2)  # ... and is satisfied by b before the sender runs
    loop.advance(2)
    with pytest.raises(TimeoutError):
        await sender
    assert (await selecting).value == 2
    assert a.statistics().senders_waiting == 0
    with pytest.raises(WouldBlock):
        a.receive_nowait()


# ---------------------------------------------------------------- cancellation is atomic


async def test_cancelled_blocked_receive_leaves_item_for_next_receiver() -> None:
    ch: Channel[str] = Channel(1)
    first = asyncio.create_task(ch.receive())
    second = asyncio.create_task(ch.receive())
    await settle()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await ch.send("x")
    assert await second == "x"


@pytest.mark.parametrize("capacity", [0, 1, 3])
async def test_receive_cancelled_after_being_promised_an_item_takes_nothing(capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    receiver = asyncio.create_task(ch.receive())
    await settle()
    ch.send_nowait("x")  # promised to the receiver, which has not run yet
    receiver.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiver
    assert ch.statistics().buffered == 1
    assert ch.receive_nowait() == "x"
    assert ch.statistics().items_received == 1


async def test_promise_passes_to_next_receiver_when_first_is_cancelled() -> None:
    ch: Channel[str] = Channel(0)
    r1 = asyncio.create_task(ch.receive())
    await asyncio.sleep(0)
    r2 = asyncio.create_task(ch.receive())
    await settle()
    ch.send_nowait("x")  # promised to r1
    r1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await r1
    assert await r2 == "x"


async def test_send_cancelled_after_invitation_delivers_nothing() -> None:
    ch: Channel[str] = Channel(1)
    ch.send_nowait("a")
    s1 = asyncio.create_task(ch.send("b"))
    await asyncio.sleep(0)
    s2 = asyncio.create_task(ch.send("c"))
    await settle()
    assert ch.receive_nowait() == "a"  # room is kept for s1, which has not run yet
    s1.cancel()
    with pytest.raises(asyncio.CancelledError):
        await s1
    await s2  # the room went to the next sender
    assert ch.receive_nowait() == "c"
    with pytest.raises(WouldBlock):
        ch.receive_nowait()


async def test_unbuffered_sender_cancelled_after_receiver_arrived_delivers_nothing() -> None:
    ch: Channel[str] = Channel(0)
    sender = lazy_task(ch.send("a"))
    await settle()
    receiver = lazy_task(ch.receive())
    await asyncio.sleep(0)  # the receiver registers and invites the blocked sender
    sender.cancel()  # ... which is cancelled before it can hand "a" over
    with pytest.raises(asyncio.CancelledError):
        await sender
    await settle()
    assert not receiver.done()
    ch.send_nowait("b")
    assert await receiver == "b"


async def test_cancelled_send_is_removed_from_the_queue() -> None:
    ch: Channel[int] = Channel(0)
    senders = [asyncio.create_task(ch.send(i)) for i in range(3)]
    await settle()
    senders[1].cancel()
    await settle()
    assert ch.statistics().senders_waiting == 2
    assert [await ch.receive(), await ch.receive()] == [0, 2]
    await asyncio.gather(senders[0], senders[2])
    assert senders[1].cancelled()


@pytest.mark.virtual_time
async def test_timeout_racing_a_send_loses_nothing() -> None:
    # A sender and asyncio.timeout() fire at the same virtual instant, in both orders.  When the
    # send wins, the receive is cancelled after being promised the item: the item must stay in the
    # channel.  When the timeout wins, the send finds no receiver.  Nothing is ever lost.
    ch: Channel[int] = Channel(0)
    sent: list[int] = []
    got: list[int] = []
    left_in_channel = 0
    for i in range(20):

        async def send_at_deadline(i: int = i) -> None:
            await asyncio.sleep(0.5)
            try:
                ch.send_nowait(i)
                sent.append(i)
            except WouldBlock:
                pass

        task = asyncio.create_task(send_at_deadline())
        if i % 2:
            await asyncio.sleep(0)  # the sender's timer is scheduled before the deadline's
        try:
            async with asyncio.timeout(0.5):
                got.append(await ch.receive())
        except TimeoutError:
            pass
        await task
        while True:
            try:
                got.append(ch.receive_nowait())
                left_in_channel += 1
            except WouldBlock:
                break
    assert sorted(got) == sent
    assert left_in_channel > 0, "the promise-then-cancel race never happened"


# ---------------------------------------------------------------- statistics and repr


async def test_statistics_and_repr_show_live_figures() -> None:
    ch: Channel[int] = Channel(2, name="work")
    await ch.send(1)
    await ch.send(2)
    blocked = asyncio.create_task(ch.send(3))
    await settle()
    s = ch.statistics()
    assert s == poolkit.ChannelStatistics(
        name="work",
        capacity=2,
        buffered=2,
        senders_waiting=1,
        receivers_waiting=0,
        items_sent=2,
        items_received=0,
        closed=False,
        peak_buffered=2,
        send_handles_open=0,
        receive_handles_open=0,
        receivers_gone=False,
        items_handed_back=0,
    )
    assert repr(ch) == (
        "<Channel 'work' capacity=2 buffered=2 senders_waiting=1 receivers_waiting=0 "
        "sent=2 received=0 closed=False>"
    )
    with pytest.raises(AttributeError):
        s.buffered = 5  # type: ignore[misc]
    ch.close()
    with pytest.raises(ChannelClosed):
        await blocked
    assert "closed=True" in repr(ch)
    assert "capacity=inf" in repr(Channel(math.inf))


# ---------------------------------------------------------------- regressions from review


async def test_blocked_sender_is_not_overtaken_when_its_room_frees_up() -> None:
    # An invited sender's item went straight to a waiting receiver, so the room kept for it is
    # free again: the next blocked sender must get it, not a newcomer.
    ch: Channel[str] = Channel(1)
    ch.send_nowait("a")
    sb = lazy_task(ch.send("b"))
    sc = lazy_task(ch.send("c"))
    await asyncio.sleep(0)  # b and c are blocked, in that order
    r2 = lazy_task(ch.receive())
    assert ch.receive_nowait() == "a"  # invites b
    await asyncio.sleep(0)  # r2 waits; b runs and its item is promised to r2
    with pytest.raises(WouldBlock):
        ch.send_nowait("d")  # c is ahead of any newcomer
    assert await r2 == "b"
    await asyncio.gather(sb, sc)
    assert ch.receive_nowait() == "c"


async def test_newcomer_sender_queues_behind_blocked_senders() -> None:
    ch: Channel[int] = Channel(1)
    ch.send_nowait(0)
    blocked = asyncio.create_task(ch.send(1))
    await settle()
    assert ch.receive_nowait() == 0  # room appears; it is kept for the blocked sender
    with pytest.raises(WouldBlock):
        ch.send_nowait(2)
    await blocked
    assert ch.receive_nowait() == 1


def test_send_trusts_a_receiver_only_after_claiming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # A select registration can look live and be claimed through another channel, by another
    # thread, a moment later.  Emulate the hint being stale: the send must not count on it.
    from poolkit._primitives import _channel

    ch: Channel[int] = Channel(0)
    claim = _channel._SelectClaim()
    assert claim.take()  # the select already won elsewhere ...
    ch._recvq.append(_channel._Waiter(None, None, claim, 0))  # ... but is still queued here
    monkeypatch.setattr(_channel._Waiter, "live", lambda self: True)
    with pytest.raises(WouldBlock):
        ch.send_nowait(1)
    ch._recvq.append(_channel._Waiter(None, None, claim, 0))
    with pytest.raises(WouldBlock):
        poolkit.select_nowait(ch.send_case(1))
    s = ch.statistics()
    assert (s.items_sent, s.buffered) == (0, 0)


@pytest.mark.virtual_time
async def test_timeout_is_not_lost_when_the_timer_fires_early() -> None:
    # uvloop fires timers up to a millisecond before loop.time() reaches them.  If a sender's
    # timer fires (losing the race to an invitation) while loop.time() is still short of the
    # deadline, and the invitation then falls through, the sender must not queue up again with
    # no timer left: it times out.  Emulated with a virtual loop that fires timers 10 ms early.
    loop = asyncio.get_running_loop()
    loop._clock_resolution = 0.01  # type: ignore[attr-defined]
    ch: Channel[int] = Channel(0)
    other: Channel[int] = Channel(1)
    sender = lazy_task(ch.send(1, timeout=1.0))
    await settle()
    tasks: list[asyncio.Task[poolkit.Selected]] = []

    def at_098() -> None:
        # Next iteration, at 0.995: the select registers (inviting the sender), other is fed (so
        # the select goes elsewhere), then the sender's timer fires 5 ms early and loses the race
        # to the invitation; the sender runs in the iteration after that.
        tasks.append(lazy_task(poolkit.select(ch.receive_case(), other.receive_case())))
        loop.call_soon(other.send_nowait, 2)
        loop.advance(0.015)

    loop.call_at(0.98, at_098)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sender, 5)  # a lost timeout shows up as a hang until t=5
    assert loop.time() == 0.995
    assert (await tasks[0]).value == 2
    assert ch.statistics().senders_waiting == 0


@pytest.mark.parametrize("capacity", [0, 1])
def test_receiver_on_a_closed_loop_is_skipped(capacity: int) -> None:
    # A task left waiting on a loop that was closed without cancelling it can never run; a sender
    # must not count on it (nor leave the channel fuller than its capacity).
    ch: Channel[str] = Channel(capacity)
    loop = asyncio.new_event_loop()
    task = loop.create_task(ch.receive())
    for _ in range(3):
        loop.call_soon(loop.stop)
        loop.run_forever()
    assert ch.statistics().receivers_waiting == 1
    loop.close()
    for _ in range(capacity):
        ch.send_nowait("fits")
    with pytest.raises(WouldBlock):
        ch.send_nowait("no room")
    s = ch.statistics()
    assert (s.buffered, s.items_sent, s.receivers_waiting) == (capacity, capacity, 0)
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # abandoned on purpose


# ---------------------------------------------------------------- waiters stranded on a closed loop
#
# A task left blocked on an event loop that was closed without cancelling it can never run.  Whoever
# meets its waiter skips it, and must not be slowed down by it, nor lose anything to it.  Dropping
# the last reference to such a task destroys it, and its clean-up wants the channel's lock: that
# must happen after the lock is released, never under it (the bug: ~0.1 s stall per task, with the
# lock held, and a promise lost when the clean-up gave up).  The tests keep no reference to the
# stranded tasks: a reference would keep them alive and hide the bug.

STRANDED = 10
FAST = 0.05  # a bug detector, not a timing test: the bug took about 0.1 s per stranded task
LOOP_KINDS = [
    pytest.param(k, marks=pytest.mark.skipif(k not in LOOP_FACTORIES, reason="no uvloop"))
    for k in ("asyncio", "uvloop")
]


class Stranded:
    """Start coroutines as tasks on a fresh loop, let them block, close the loop, keep no task.

    ``destroyed`` fills with one entry per task as it is destroyed (asyncio reports "Task was
    destroyed but it is pending!"), saying whether ``lock`` was held at that moment.
    """

    def __init__(
        self,
        kind: str,
        lock: Any,
        starts: list[Callable[[], Coroutine[Any, Any, Any]]],
        keep: bool = False,
    ) -> None:
        self.destroyed: list[bool] = []
        self.other_reports: list[str] = []
        self.kept: list[asyncio.Task[Any]] = []  # only with keep=True: the tests' own hook
        loop = LOOP_FACTORIES[kind]()
        lock_held = lock.locked

        def report(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            if context["message"] == "Task was destroyed but it is pending!":
                self.destroyed.append(lock_held())
            else:
                self.other_reports.append(context["message"])

        loop.set_exception_handler(report)

        async def start() -> None:
            for fn in starts:
                asyncio.ensure_future(fn())  # noqa: RUF006  # stranded on purpose, unreferenced
            for _ in range(3):
                await asyncio.sleep(0)
            if keep:
                self.kept = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]

        loop.run_until_complete(start())
        self.loop = loop

    def close(self) -> None:
        self.loop.close()

    def check(self, n: int) -> None:
        """All ``n`` tasks were destroyed, none with the lock held, and nothing else went wrong."""
        assert self.destroyed == [False] * n
        assert self.other_reports == []


def stranded(
    kind: str, lock: Any, starts: list[Callable[[], Coroutine[Any, Any, Any]]]
) -> Stranded:
    s = Stranded(kind, lock, starts)
    s.close()
    return s


def timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - t0


def wait_until(cond: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not cond():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.001)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_send_nowait_skips_stranded_receivers_fast_and_serves_the_live_one(kind: str) -> None:
    ch: Channel[str] = Channel(0)
    s = stranded(kind, ch._lock, [ch.receive] * STRANDED)
    got: list[str] = []
    live = threading.Thread(target=lambda: got.append(ch.receive_blocking(timeout=10)))
    live.start()
    wait_until(lambda: ch.statistics().receivers_waiting == STRANDED + 1)
    _, took = timed(ch.send_nowait, "x")
    live.join()
    assert took < FAST
    assert got == ["x"]
    s.check(STRANDED)
    st = ch.statistics()
    assert (st.items_sent, st.items_received, st.buffered, st.receivers_waiting) == (1, 1, 0, 0)


@pytest.mark.parametrize("kind", LOOP_KINDS)
@pytest.mark.parametrize("capacity", [0, 1])
def test_send_forms_skip_stranded_receivers_fast(kind: str, capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    s = stranded(kind, ch._lock, [ch.receive] * STRANDED)
    if capacity:
        _, took = timed(ch.send_blocking, "x")  # the thread form: into the buffer
    else:
        with pytest.raises(WouldBlock):
            timed(ch.send_nowait, "x")  # nobody left to take it
        took = 0.0
    assert took < FAST
    s.check(STRANDED)
    st = ch.statistics()
    assert (st.items_sent, st.buffered, st.receivers_waiting) == (capacity, capacity, 0)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_receive_skips_stranded_senders_fast_and_invites_the_live_one(kind: str) -> None:
    ch: Channel[str] = Channel(1)
    ch.send_nowait("first")
    s = stranded(kind, ch._lock, [functools.partial(ch.send, f"lost {i}") for i in range(STRANDED)])
    live = threading.Thread(target=ch.send_blocking, args=("live",), kwargs={"timeout": 10})
    live.start()
    wait_until(lambda: ch.statistics().senders_waiting == STRANDED + 1)
    item, took = timed(ch.receive_nowait)
    assert took < FAST
    assert item == "first"
    live.join()
    assert ch.receive_blocking(timeout=10) == "live"
    s.check(STRANDED)
    ch.send_nowait("room is not lost")
    st = ch.statistics()
    assert (st.items_sent, st.items_received, st.buffered, st.senders_waiting) == (3, 2, 1, 0)


@pytest.mark.parametrize("kind", LOOP_KINDS)
def test_close_skips_stranded_senders_and_receivers_fast(kind: str) -> None:
    full: Channel[int] = Channel(0)
    empty: Channel[int] = Channel(0)
    s1 = stranded(kind, full._lock, [functools.partial(full.send, i) for i in range(STRANDED)])
    s2 = stranded(kind, empty._lock, [empty.receive] * STRANDED)
    _, took1 = timed(full.close)
    _, took2 = timed(empty.close)
    assert took1 < FAST and took2 < FAST
    s1.check(STRANDED)
    s2.check(STRANDED)


async def test_async_forms_skip_stranded_waiters_fast() -> None:
    # The same from a task of another, live loop: send/receive/async for on the running loop.
    ch: Channel[int] = Channel(0)
    s = await asyncio.to_thread(stranded, "asyncio", ch._lock, [ch.receive] * STRANDED)
    live = asyncio.create_task(ch.receive())
    await settle()
    t0 = time.perf_counter()
    await ch.send(1)
    assert time.perf_counter() - t0 < FAST
    assert await live == 1
    s.check(STRANDED)
    ch2: Channel[int] = Channel(1)
    ch2.send_nowait(0)
    s2 = await asyncio.to_thread(
        stranded, "asyncio", ch2._lock, [functools.partial(ch2.send, i) for i in range(STRANDED)]
    )
    t0 = time.perf_counter()
    assert await ch2.receive() == 0
    assert time.perf_counter() - t0 < FAST
    s2.check(STRANDED)
    await ch2.send(5)  # the room was not kept for a stranded sender
    ch2.close()
    assert [x async for x in ch2] == [5]


# ---------------------------------------------------------------- closed by the GC under the lock
#
# The garbage collector may close a waiting coroutine at any allocation, also in code that holds
# the channel's lock in the same thread.  Its clean-up must neither wait for that lock (a stall, or
# a deadlock) nor give up (losing the promise or invitation it was holding).  Provoked
# deterministically: the test holds the lock and drops the last reference to the task, or lets
# gc.collect() find it in a reference cycle.


def _granted_then_stranded(
    kind: str, lock: Any, start: Callable[[], Coroutine[Any, Any, Any]], grant: Callable[[], Any]
) -> Stranded:
    """A task blocks, is granted what it waited for (and scheduled), then its loop is closed
    before it runs; the test keeps the only reference to it."""
    s = Stranded(kind, lock, [start], keep=True)
    grant()
    s.close()  # drops the scheduled wake-up: only s.kept holds the task now
    return s


@contextlib.contextmanager
def no_automatic_gc(on: bool = True) -> Iterator[None]:
    """Everything made in the block stays in the youngest generation, until collected on purpose."""
    if not on:
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _drop_under(lock: Any, s: Stranded, cyclic: bool) -> float:
    """Drop the kept task while holding ``lock``; return how long the locked section took.

    With ``cyclic``, the task is left in a reference cycle and ``gc.collect(0)`` finds it: call it
    inside :func:`no_automatic_gc`, around the stranding too, so that the cycle is young.
    """
    if cyclic:
        assert not gc.isenabled()
        cycle: list[Any] = [s.kept]
        cycle.append(cycle)
        s.kept = []
        del cycle
        t0 = time.perf_counter()
        with lock:
            gc.collect(0)  # closes the coroutine here, in this thread, under the lock
        return time.perf_counter() - t0
    t0 = time.perf_counter()
    with lock:
        s.kept.clear()  # the last reference: the coroutine is closed here, under the lock
    return time.perf_counter() - t0


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "gc"])
@pytest.mark.parametrize("capacity", [0, 1])
def test_receiver_closed_under_the_lock_passes_its_promise_on(capacity: int, cyclic: bool) -> None:
    ch: Channel[str] = Channel(capacity)
    with no_automatic_gc(cyclic):
        s = _granted_then_stranded("asyncio", ch._lock, ch.receive, lambda: ch.send_nowait("x"))
        assert ch.statistics().items_sent == 1  # promised to the stranded receiver
        took = _drop_under(ch._lock, s, cyclic)
    assert took < FAST
    assert s.destroyed == [True]  # the GC did it under the lock: that is the point of the test
    assert ch.receive_blocking(timeout=10) == "x"  # the promise was passed on, not lost
    st = ch.statistics()
    assert (st.items_sent, st.items_received, st.buffered) == (1, 1, 0)


@pytest.mark.parametrize("cyclic", [False, True], ids=["refcount", "gc"])
def test_sender_closed_under_the_lock_passes_its_invitation_on(cyclic: bool) -> None:
    ch: Channel[str] = Channel(1)
    ch.send_nowait("first")
    with no_automatic_gc(cyclic):
        s = _granted_then_stranded(
            "asyncio", ch._lock, functools.partial(ch.send, "never"), ch.receive_nowait
        )
        took = _drop_under(ch._lock, s, cyclic)
    assert took < FAST
    assert s.destroyed == [True]
    ch.send_blocking("next", timeout=10)  # the room kept for the stranded sender is free again
    assert ch.receive_nowait() == "next"
    st = ch.statistics()
    assert (st.items_sent, st.items_received, st.buffered, st.senders_waiting) == (2, 2, 0, 0)
