"""Unit tests for poolkit.Channel: every rule of the channel contract, one at a time."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

import poolkit
from poolkit import Channel, ChannelClosed, EndOfChannel, WouldBlock


async def settle(n: int = 5) -> None:
    """Let every ready task run a few steps."""
    for _ in range(n):
        await asyncio.sleep(0)


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
    sender = asyncio.create_task(a.send(1, timeout=1))
    await settle()
    selecting = asyncio.create_task(poolkit.select(a.receive_case(), b.receive_case()))
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
    sender = asyncio.create_task(ch.send("a"))
    await settle()
    receiver = asyncio.create_task(ch.receive())
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
    sb = asyncio.create_task(ch.send("b"))
    sc = asyncio.create_task(ch.send("c"))
    await asyncio.sleep(0)  # b and c are blocked, in that order
    r2 = asyncio.create_task(ch.receive())
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
    from poolkit import _channel

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
    sender = asyncio.create_task(ch.send(1, timeout=1.0))
    await settle()
    tasks: list[asyncio.Task[poolkit.Selected]] = []

    def at_098() -> None:
        # Next iteration, at 0.995: the select registers (inviting the sender), other is fed (so
        # the select goes elsewhere), then the sender's timer fires 5 ms early and loses the race
        # to the invitation; the sender runs in the iteration after that.
        tasks.append(asyncio.create_task(poolkit.select(ch.receive_case(), other.receive_case())))
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
