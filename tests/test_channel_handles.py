"""Channel handles: several producers each closing their own, consumers that go away.

* ``SendHandle``: each producer closes its own; the channel closes when the last one does.
* ``ReceiveHandle``: when the last one closes, the receivers have gone: senders get
  ``ReceiversGone`` instead of waiting forever, and the buffered items are handed back.
"""

from __future__ import annotations

import asyncio
import gc
import math
import threading
from typing import Any

import pytest

import poolkit
from poolkit import Channel, ChannelClosed, EndOfChannel, WouldBlock
from poolkit._core._exceptions import PoolkitError, ReceiversGone
from poolkit._primitives._channel import ReceiveHandle, SendHandle

from .test_channel import wait_until


def join_all(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.join(30)
        assert not t.is_alive()


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def drain(ch: Channel[Any]) -> list[Any]:
    out = []
    while True:
        try:
            out.append(ch.receive_nowait())
        except (WouldBlock, EndOfChannel):
            return out


# ---------------------------------------------------------------- making handles


@pytest.mark.parametrize(
    ("n", "exc", "words"),
    [
        (0, ValueError, "n must be >= 1, got 0"),
        (-2, ValueError, "got -2"),
        (1.0, TypeError, "n must be a positive int, got 1.0"),
        (True, TypeError, "got True"),
        ("2", TypeError, "got '2'"),
    ],
)
def test_bad_counts_name_the_argument_and_value(n: Any, exc: type, words: str) -> None:
    ch: Channel[int] = Channel(1)
    with pytest.raises(exc, match=words):
        ch.send_handles(n)
    with pytest.raises(exc, match=words):
        ch.receive_handles(n)
    s = ch.statistics()
    assert (s.send_handles_open, s.receive_handles_open) == (0, 0)


def test_handles_are_made_by_the_channel_only() -> None:
    ch: Channel[int] = Channel(1)
    with pytest.raises(TypeError, match=r"send handles are made by Channel\.send_handles"):
        SendHandle(ch)
    with pytest.raises(TypeError, match=r"receive handles are made by Channel\.receive_handles"):
        ReceiveHandle(ch)


def test_statistics_and_repr_show_open_handles() -> None:
    ch: Channel[int] = Channel(2, name="jobs")
    s1, s2 = ch.send_handles(2)
    s3 = s1.clone()
    (r1,) = ch.receive_handles(1)
    st = ch.statistics()
    assert (st.send_handles_open, st.receive_handles_open, st.receivers_gone) == (3, 1, False)
    assert repr(ch).endswith("closed=False send_handles=3 receive_handles=1>")
    assert repr(s1) == "<SendHandle open of channel 'jobs' (3 send handles open)>"
    s1.close()
    assert repr(s1) == "<SendHandle closed of channel 'jobs' (2 send handles open)>"
    assert (s1.closed, s2.closed, s1.channel) == (True, False, ch)
    assert repr(r1) == "<ReceiveHandle open of channel 'jobs' (1 receive handles open)>"
    s2.close()
    s3.close()
    assert r1.close() == []
    st = ch.statistics()
    assert (st.send_handles_open, st.receive_handles_open, st.closed) == (0, 0, True)
    # The receivers went after the senders had closed it: senders are told ChannelClosed.
    assert st.receivers_gone
    assert repr(ch).endswith("closed=True receivers_gone=True handed_back=0>")


# ---------------------------------------------------------------- send handles


async def test_each_handle_closes_only_itself_and_the_last_closes_the_channel() -> None:
    ch: Channel[int] = Channel(math.inf)
    a, b, c = ch.send_handles(3)
    await a.send(1)
    a.close()
    a.close()  # idempotent: it must not count twice
    assert not ch.closed
    b.send_nowait(2)
    b.close()
    assert not ch.closed
    assert ch.statistics().send_handles_open == 1
    c.send_blocking(3)
    c.close()
    assert ch.statistics().closed
    assert [x async for x in ch] == [1, 2, 3]  # receivers drain, then the loop ends
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()


async def test_send_through_a_closed_handle_says_it_was_this_handle() -> None:
    ch: Channel[int] = Channel(4, name="jobs")
    a, b = ch.send_handles(2)
    a.close()
    words = "send through a closed send handle of channel 'jobs': this handle was closed"
    with pytest.raises(ChannelClosed, match=words):
        await a.send(1)
    with pytest.raises(ChannelClosed, match=words):
        a.send_nowait(1)
    with pytest.raises(ChannelClosed, match=words):
        a.send_blocking(1)
    case = a.send_case(1)
    with pytest.raises(ChannelClosed, match=words):
        poolkit.select_nowait(case)
    with pytest.raises(ChannelClosed, match=words):
        await poolkit.select(case, b.send_case(2))
    with pytest.raises(ChannelClosed, match="clone"):
        a.clone()
    assert not ch.closed  # b keeps it open; nothing went in
    assert ch.statistics().items_sent == 0
    await b.send(2)
    b.close()
    assert drain(ch) == [2]


async def test_a_case_made_while_open_is_refused_once_its_handle_is_closed() -> None:
    ch: Channel[int] = Channel(1)
    (a,) = ch.send_handles(1)
    other = a.clone()
    case = a.send_case(1)
    assert (await poolkit.select(case)).index == 0
    assert drain(ch) == [1]
    a.close()
    with pytest.raises(ChannelClosed, match="closed send handle"):
        await poolkit.select(case)
    other.close()


async def test_channel_close_still_closes_at_once_for_every_handle() -> None:
    ch: Channel[int] = Channel(0, name="jobs")
    a, b = ch.send_handles(2)
    blocked = asyncio.create_task(a.send(1))
    await settle()
    ch.close()
    with pytest.raises(ChannelClosed, match="send on channel 'jobs', which was closed"):
        await blocked
    with pytest.raises(ChannelClosed, match="which was closed"):
        b.send_nowait(2)
    with pytest.raises(ChannelClosed, match="cannot make a send handle"):
        b.clone()
    a.close()
    b.close()
    assert ch.statistics().send_handles_open == 0


def test_handles_made_after_the_channel_closed_are_an_error() -> None:
    ch: Channel[int] = Channel(1, name="jobs")
    (only,) = ch.send_handles(1)
    only.close()  # the count fell to zero: closed for good, not reopened by a new handle
    with pytest.raises(ChannelClosed, match=r"cannot make a send handle.*send_handles\(n\)"):
        ch.send_handle()
    plain: Channel[int] = Channel(1)
    plain.close()
    with pytest.raises(ChannelClosed, match="cannot make a send handle"):
        plain.send_handles(2)
    assert plain.statistics().send_handles_open == 0


async def test_a_blocked_send_is_not_cut_short_by_closing_another_handle() -> None:
    ch: Channel[int] = Channel(0)
    a, b = ch.send_handles(2)
    blocked = asyncio.create_task(a.send(1))
    await settle()
    a.close()  # its own send is already under way: unaffected while b keeps the channel open
    assert not blocked.done()
    assert await ch.receive() == 1
    await blocked
    closing = asyncio.create_task(b.send(2))
    await settle()
    b.close()  # the last handle: the channel closes, and the blocked send fails like any other
    with pytest.raises(ChannelClosed, match="which was closed"):
        await closing
    assert ch.statistics().items_sent == 1


def test_forgotten_send_handle_warns_and_does_not_close_the_channel() -> None:
    ch: Channel[int] = Channel(1, name="jobs")
    a, b = ch.send_handles(2)
    b.close()
    words = r"<SendHandle open of channel 'jobs' .*> was garbage-collected without being closed"
    with pytest.warns(ResourceWarning, match=words):
        del a  # the last reference: freed (and warned about) here
    assert not ch.closed  # a producer that vanished did not say it was done
    # A handle of a channel that is closed anyway is harmless: no warning.
    ch2: Channel[int] = Channel(1)
    (c,) = ch2.send_handles(1)
    ch2.close()
    del c
    gc.collect()


async def test_producers_in_tasks_and_threads_each_close_their_handle() -> None:
    """N producers, tasks and threads, each with its own handle; the consumers' loops end."""
    ch: Channel[tuple[str, int]] = Channel(3)
    tasks_n, threads_n, per = 4, 3, 50
    handles = ch.send_handles(tasks_n + threads_n)

    async def task_producer(h: SendHandle[tuple[str, int]], name: str) -> None:
        async with h:
            for i in range(per):
                await h.send((name, i))

    def thread_producer(h: SendHandle[tuple[str, int]], name: str) -> None:
        with h:
            for i in range(per):
                h.send_blocking((name, i))

    got: list[tuple[str, int]] = []

    async def consumer() -> None:
        async for item in ch:
            got.append(item)

    threads = [
        threading.Thread(target=thread_producer, args=(h, f"thread {k}"))
        for k, h in enumerate(handles[tasks_n:])
    ]
    for t in threads:
        t.start()
    async with asyncio.TaskGroup() as tg:
        for k, h in enumerate(handles[:tasks_n]):
            tg.create_task(task_producer(h, f"task {k}"))
        for _ in range(2):
            tg.create_task(consumer())
        await asyncio.to_thread(join_all, threads)
    assert sorted(got) == sorted(
        [(f"task {k}", i) for k in range(tasks_n) for i in range(per)]
        + [(f"thread {k}", i) for k in range(threads_n) for i in range(per)]
    )
    s = ch.statistics()
    assert (s.closed, s.send_handles_open, s.items_sent, s.items_received) == (
        True,
        0,
        len(got),
        len(got),
    )


async def test_a_producer_that_fails_still_closes_its_handle() -> None:
    ch: Channel[int] = Channel(math.inf)
    good, bad = ch.send_handles(2)

    async def failing() -> None:
        async with bad:
            await bad.send(1)
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await failing()
    assert not ch.closed
    async with good:
        await good.send(2)
    assert [x async for x in ch] == [1, 2]


# ---------------------------------------------------------------- receive handles


async def test_last_receive_handle_hands_back_buffered_items_in_order() -> None:
    ch: Channel[int] = Channel(5, name="jobs")
    r1, r2 = ch.receive_handles(2)
    for i in range(4):
        ch.send_nowait(i)
    assert await r1.receive() == 0
    assert r1.close() == []  # r2 is still there
    assert r1.close() == []  # idempotent
    assert not ch.closed
    assert r2.receive_nowait() == 1
    assert r2.close() == [2, 3]  # nobody will receive these: they come back, in order
    assert r2.close() == []
    assert ch.handed_back == [2, 3]
    s = ch.statistics()
    assert (s.closed, s.receivers_gone, s.buffered, s.items_handed_back) == (True, True, 0, 2)
    assert s.items_sent == s.items_received + s.items_handed_back
    with pytest.raises(ReceiversGone, match=r"receivers have all gone.*not delivered"):
        await ch.send(9)
    with pytest.raises(ReceiversGone):
        ch.send_nowait(9)
    with pytest.raises(ReceiversGone):
        ch.send_blocking(9)
    with pytest.raises(ReceiversGone):
        poolkit.select_nowait(ch.send_case(9))
    with pytest.raises(ReceiversGone):
        await poolkit.select(ch.send_case(9), Channel[int](0).send_case(9))
    with pytest.raises(ReceiversGone, match="cannot make a send handle"):
        ch.send_handles(1)
    with pytest.raises(ChannelClosed, match="cannot make a receive handle"):
        ch.receive_handle()
    assert ch.statistics().items_sent == 4


@pytest.mark.parametrize("capacity", [0, 1])
async def test_blocked_senders_wake_with_receivers_gone(capacity: int) -> None:
    ch: Channel[str] = Channel(capacity)
    (r,) = ch.receive_handles(1)
    if capacity:
        ch.send_nowait("buffered")
    task_sender = asyncio.create_task(ch.send("task"))
    other: Channel[str] = Channel(0)
    select_sender = asyncio.create_task(
        poolkit.select(ch.send_case("select"), other.send_case("x"))
    )
    thread_outcome: list[BaseException] = []

    def thread_sender() -> None:
        try:
            ch.send_blocking("thread", timeout=10)
        except BaseException as e:
            thread_outcome.append(e)

    t = threading.Thread(target=thread_sender)
    t.start()
    await asyncio.to_thread(wait_until, lambda: ch.statistics().senders_waiting >= 3)
    assert r.close() == (["buffered"] if capacity else [])
    for blocked in (task_sender, select_sender):
        with pytest.raises(ReceiversGone, match="the item was not delivered"):
            await blocked
    await asyncio.to_thread(t.join)
    assert [type(e) for e in thread_outcome] == [ReceiversGone]
    s = ch.statistics()
    assert (s.items_sent, s.items_received, s.items_handed_back, s.senders_waiting) == (
        capacity,
        0,
        capacity,
        0,
    )


async def test_invited_sender_that_has_not_run_yet_is_refused_too() -> None:
    ch: Channel[int] = Channel(1)
    (r,) = ch.receive_handles(1)
    ch.send_nowait(1)
    blocked = asyncio.create_task(ch.send(2))
    await settle()
    assert r.receive_nowait() == 1  # room is kept for the blocked sender, which has not run yet
    assert r.close() == []
    with pytest.raises(ReceiversGone):
        await blocked
    assert ch.statistics().items_sent == 1


async def test_an_item_promised_to_a_woken_receiver_stays_with_it() -> None:
    ch: Channel[int] = Channel(2)
    r1, r2 = ch.receive_handles(2)
    waiting = asyncio.create_task(r1.receive())
    await settle()
    ch.send_nowait(1)  # promised to the waiting receiver, which has not run yet
    ch.send_nowait(2)
    r1.close()
    assert r2.close() == [2]  # 1 is spoken for
    assert await waiting == 1  # a receive already under way is not cut short
    s = ch.statistics()
    assert (s.items_sent, s.items_received, s.items_handed_back) == (2, 1, 1)
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()


@pytest.mark.parametrize("capacity", [0, 2])
async def test_a_promised_receiver_that_withdraws_afterwards_hands_its_item_back(
    capacity: int,
) -> None:
    # Found by the model: the item was promised (so the last close() kept it for the receiver),
    # then the receiver was cancelled before it ran.  Nobody else will receive it: handed back.
    ch: Channel[int] = Channel(capacity)
    (r,) = ch.receive_handles(1)
    waiting = asyncio.create_task(ch.receive())
    await settle()
    ch.send_nowait(1)  # promised to the waiting receiver
    if capacity:
        ch.send_nowait(2)
    waiting.cancel()
    assert r.close() == ([2] if capacity else [])
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert ch.handed_back == ([1, 2] if capacity else [1])  # in the order they were sent
    s = ch.statistics()
    assert s.items_sent == s.items_received + s.items_handed_back
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()


async def test_receivers_waiting_when_the_last_handle_closes_reach_the_end() -> None:
    ch: Channel[int] = Channel(0)
    (r,) = ch.receive_handles(1)

    async def consume() -> list[int]:
        return [x async for x in r]

    consumer = asyncio.create_task(consume())
    await settle()
    assert r.close() == []  # closed from elsewhere while its async for waits: the loop ends
    assert await consumer == []


async def test_receive_through_a_closed_handle_is_an_error() -> None:
    ch: Channel[int] = Channel(3, name="jobs")
    r1, r2 = ch.receive_handles(2)
    ch.send_nowait(1)
    r1.close()
    words = "receive through a closed receive handle of channel 'jobs'"
    with pytest.raises(ChannelClosed, match=words):
        await r1.receive()
    with pytest.raises(ChannelClosed, match=words):
        r1.receive_nowait()
    with pytest.raises(ChannelClosed, match=words):
        r1.receive_blocking()
    with pytest.raises(ChannelClosed, match=words):
        await r1.__anext__()
    with pytest.raises(ChannelClosed, match=words):
        next(iter(r1))
    with pytest.raises(ChannelClosed, match=words):
        poolkit.select_nowait(r1.receive_case())
    with pytest.raises(ChannelClosed, match="clone"):
        r1.clone()
    assert ch.statistics().items_received == 0  # nothing was taken
    assert poolkit.select_nowait(r2.receive_case()).value == 1
    r2.close()


def test_receive_handles_in_threads() -> None:
    ch: Channel[int] = Channel(2)
    (r,) = ch.receive_handles(1)
    got: list[int] = []

    def consume() -> None:
        with r:
            for x in r:
                got.append(x)
                if x == 4:
                    return

    t = threading.Thread(target=consume)
    t.start()
    for i in range(5):
        ch.send_blocking(i, timeout=10)
    t.join()
    assert got == [0, 1, 2, 3, 4]
    assert r.closed
    with pytest.raises(ReceiversGone):
        ch.send_blocking(5, timeout=10)


async def test_consumers_that_vanish_wake_blocked_producers() -> None:
    """Consumers go away (cancelled mid-stream); blocked producers get an error, never hang."""
    ch: Channel[int] = Channel(2)
    receivers = ch.receive_handles(3)
    got: list[int] = []
    started = asyncio.Event()

    async def consumer(r: ReceiveHandle[int]) -> None:
        async with r:
            async for x in r:
                got.append(x)
                started.set()
                await asyncio.sleep(3600)  # a slow consumer, stopped by cancellation

    sent: list[int] = []
    outcomes: list[str] = []

    async def task_producer(base: int) -> None:
        try:
            for i in range(1000):
                await ch.send(base + i)
                sent.append(base + i)
        except ReceiversGone:
            outcomes.append("gone")

    def thread_producer(base: int) -> None:
        try:
            for i in range(1000):
                ch.send_blocking(base + i, timeout=30)
                sent.append(base + i)
        except ReceiversGone:
            outcomes.append("gone")

    consumers = [asyncio.create_task(consumer(r)) for r in receivers]
    producers = [asyncio.create_task(task_producer(k * 10_000)) for k in range(3)]
    threads = [threading.Thread(target=thread_producer, args=(k,)) for k in (50_000, 60_000)]
    for t in threads:
        t.start()
    await started.wait()
    await asyncio.to_thread(wait_until, lambda: ch.statistics().senders_waiting >= 5)
    for c in consumers:  # every consumer vanishes; their async with closes their handles
        c.cancel()
    await asyncio.gather(*consumers, return_exceptions=True)
    await asyncio.wait_for(asyncio.gather(*producers), 10)
    await asyncio.to_thread(join_all, threads)
    assert outcomes == ["gone"] * 5
    handed = ch.handed_back
    assert sorted(got + handed) == sorted(sent)  # nothing lost, nothing twice
    assert len(set(got + handed)) == len(got) + len(handed)
    s = ch.statistics()
    assert (s.receivers_gone, s.senders_waiting, s.receive_handles_open) == (True, 0, 0)


def test_receivers_gone_after_the_senders_closed_it_keeps_channel_closed() -> None:
    ch: Channel[int] = Channel(3)
    (r,) = ch.receive_handles(1)
    ch.send_nowait(1)
    ch.send_nowait(2)
    ch.close()
    late = ch.receive_handle()  # draining a channel closed by its senders is allowed
    assert late.receive_nowait() == 1
    late.close()
    assert r.close() == [2]  # the last one: nobody will receive it
    with pytest.raises(ChannelClosed, match="which was closed"):  # the senders closed it first
        ch.send_nowait(3)
    with pytest.raises(EndOfChannel):
        ch.receive_nowait()


def test_with_block_keeps_what_it_handed_back_in_the_channel() -> None:
    ch: Channel[int] = Channel(3)
    with ch.receive_handle() as r:
        ch.send_nowait(7)
        ch.send_nowait(8)
        assert r.receive_nowait() == 7
    assert ch.handed_back == [8]  # nothing dropped silently


def test_forgotten_receive_handle_warns() -> None:
    ch: Channel[int] = Channel(1, name="jobs")
    (r,) = ch.receive_handles(1)
    with pytest.warns(ResourceWarning, match="ReceiveHandle open of channel 'jobs'"):
        del r
    assert not ch.statistics().receivers_gone


def test_errors_say_whose_fault_it_is() -> None:
    assert issubclass(ReceiversGone, PoolkitError)
    assert not issubclass(ReceiversGone, ChannelClosed)  # not the sender's doing
    doc = poolkit._core._exceptions.__doc__ or ""
    assert "ReceiversGone" in doc and "the other side went away" in doc


# ---------------------------------------------------------------- copies


@pytest.mark.parametrize("copier", ["copy", "deepcopy", "pickle"])
@pytest.mark.parametrize("kind", ["send", "receive"])
def test_a_handle_cannot_be_copied_or_pickled(kind: str, copier: str) -> None:
    # A copy was a handle the channel did not count: closing a handle and its copy closed the
    # channel while another was open, and send_handles_open went to -1.
    import copy
    import pickle

    ch: Channel[int] = Channel(1)
    a, b = ch.send_handles(2) if kind == "send" else ch.receive_handles(2)
    make = {"copy": copy.copy, "deepcopy": copy.deepcopy, "pickle": pickle.dumps}[copier]
    with pytest.raises(TypeError, match=r"cannot be copied or pickled.*clone\(\)"):
        make(a)
    if copier != "copy":
        with pytest.raises(TypeError, match="cannot be copied"):
            make([a])  # inside something else, too
    a.close()
    s = ch.statistics()
    assert (s.send_handles_open, s.receive_handles_open) == ((1, 0) if kind == "send" else (0, 1))
    assert not ch.closed and not s.receivers_gone
    b.close()
    s = ch.statistics()
    assert (s.send_handles_open, s.receive_handles_open) == (0, 0)
