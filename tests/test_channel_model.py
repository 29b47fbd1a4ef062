"""Channels against a reference model: random sends, receives, closes and cancellations.

The model is a FIFO queue with real-time order: every item whose send returned is received exactly
once, or handed back exactly once when the last receive handle closes; an item whose send raised
(cancelled, closed, receivers gone) is never received nor handed back; if send(a) returned before
send(b) started, a is received before b (and b is not received if a was handed back); a receive
that raised took nothing.  Send and receive handles are made, used and closed at random: the
channel closes when the last send handle does, and refuses senders once the last receive handle
has.  Counters must agree with the model at every step.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import poolkit
from poolkit import Channel, ChannelClosed, EndOfChannel, WouldBlock
from poolkit._core._exceptions import ReceiversGone
from poolkit._primitives._channel import ReceiveHandle, SendHandle

from .conftest import LOOP_FACTORIES
from .test_channel_handles import join_all

SEND_FAILED = (asyncio.CancelledError, ChannelClosed, ReceiversGone)


class ChannelMachine(RuleBasedStateMachine):
    loop_kind = "asyncio"

    def __init__(self) -> None:
        super().__init__()
        self.loop = LOOP_FACTORIES[self.loop_kind]()
        self.clock = 0
        self.next_item = 0
        self.ch: Channel[int] = Channel(0)
        self.capacity: float = 0
        self.tasks: list[tuple[str, asyncio.Task[None]]] = []
        self.sent: dict[int, tuple[int, int]] = {}  # item -> (start tick, end tick)
        self.failed: set[int] = set()  # items whose send raised
        self.received: list[tuple[int, int]] = []  # (item, tick) in completion order
        self.receive_cancels = 0
        # A second channel that selects also wait on; feeding it satisfies them elsewhere, which
        # leaves their registration on ch stale (the trickiest path of a hand-off).
        self.other: Channel[int] = Channel(math.inf)
        self.send_handles: list[SendHandle[int]] = []
        self.recv_handles: list[ReceiveHandle[int]] = []
        self.handed: list[int] = []  # returned by the last receive handle's close()

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    @initialize(capacity=st.sampled_from([0, 1, 2, 3, math.inf]))
    def make_channel(self, capacity: float) -> None:
        self.capacity = capacity
        self.ch = Channel(capacity)

    # ------------------------------------------------------------ operations

    def _new_item(self) -> int:
        self.next_item += 1
        return self.next_item

    @rule()
    def start_send(self) -> None:
        item = self._new_item()

        async def go() -> None:
            start = self.tick()
            try:
                await self.ch.send(item)
            except SEND_FAILED:
                self.failed.add(item)
                raise
            self.sent[item] = (start, self.tick())

        self.tasks.append(("send", self.loop.create_task(go())))

    @rule()
    def start_receive(self) -> None:
        async def go() -> None:
            item = await self.ch.receive()
            self.received.append((item, self.tick()))

        self.tasks.append(("receive", self.loop.create_task(go())))

    @rule()
    def start_select_receive(self) -> None:
        async def go() -> None:
            sel = await poolkit.select(self.ch.receive_case(), self.other.receive_case())
            if sel.index == 0 and not sel.closed:
                self.received.append((sel.value, self.tick()))

        self.tasks.append(("receive", self.loop.create_task(go())))

    @rule()
    def feed_other(self) -> None:
        self.other.send_nowait(-1)

    @rule()
    def start_select_send(self) -> None:
        item = self._new_item()
        other: Channel[int] = Channel(0)

        async def go() -> None:
            start = self.tick()
            try:
                await poolkit.select(self.ch.send_case(item), other.send_case(-1))
            except SEND_FAILED:
                self.failed.add(item)
                raise
            self.sent[item] = (start, self.tick())

        self.tasks.append(("send", self.loop.create_task(go())))

    @rule()
    def send_nowait(self) -> None:
        item = self._new_item()
        start = self.tick()
        try:
            self.ch.send_nowait(item)
        except (WouldBlock, ChannelClosed, ReceiversGone):
            self.failed.add(item)
            return
        self.sent[item] = (start, self.tick())

    @rule()
    def receive_nowait(self) -> None:
        try:
            item = self.ch.receive_nowait()
        except (WouldBlock, EndOfChannel):
            return
        self.received.append((item, self.tick()))

    @precondition(lambda self: any(not t.done() for _, t in self.tasks))
    @rule(data=st.data())
    def cancel_a_task(self, data: st.DataObject) -> None:
        live = [(kind, t) for kind, t in self.tasks if not t.done()]
        kind, task = data.draw(st.sampled_from(live))
        task.cancel()
        if kind == "receive":
            self.receive_cancels += 1

    @rule()
    def close(self) -> None:
        self.ch.close()

    # ------------------------------------------------------------ handles

    @rule(n=st.integers(1, 3))
    def make_send_handles(self, n: int) -> None:
        was_closed = self.ch.closed
        try:
            self.send_handles += self.ch.send_handles(n)
        except (ChannelClosed, ReceiversGone):
            assert was_closed
            return
        assert not was_closed

    @precondition(lambda self: self.send_handles)
    @rule(data=st.data())
    def close_send_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.send_handles))
        h.close()
        still_open = sum(1 for h in self.send_handles if not h.closed)
        assert self.ch.statistics().send_handles_open == still_open
        if not still_open:
            assert self.ch.closed, "the last send handle closed, but the channel did not"

    @precondition(lambda self: self.send_handles)
    @rule(data=st.data())
    def start_send_through_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.send_handles))
        item = self._new_item()

        async def go() -> None:
            start = self.tick()
            try:
                await h.send(item)
            except SEND_FAILED:
                self.failed.add(item)
                raise
            self.sent[item] = (start, self.tick())

        self.tasks.append(("send", self.loop.create_task(go())))

    @precondition(lambda self: self.send_handles)
    @rule(data=st.data())
    def clone_send_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.send_handles))
        try:
            self.send_handles.append(h.clone())
        except (ChannelClosed, ReceiversGone):
            assert h.closed or self.ch.closed

    @rule(n=st.integers(1, 3))
    def make_receive_handles(self, n: int) -> None:
        was_gone = self.ch.statistics().receivers_gone
        try:
            self.recv_handles += self.ch.receive_handles(n)
        except ChannelClosed:
            assert was_gone
            return
        assert not was_gone

    @precondition(lambda self: self.recv_handles)
    @rule(data=st.data())
    def close_receive_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.recv_handles))
        was_closed = h.closed
        handed = h.close()
        self.handed += handed
        still_open = sum(1 for h in self.recv_handles if not h.closed)
        st_ = self.ch.statistics()
        assert st_.receive_handles_open == still_open
        if handed:
            assert not was_closed and not still_open, "only the last close hands items back"
        if not still_open:
            assert st_.receivers_gone and st_.closed and st_.buffered == 0

    @precondition(lambda self: self.recv_handles)
    @rule(data=st.data())
    def start_receive_through_handle(self, data: st.DataObject) -> None:
        h = data.draw(st.sampled_from(self.recv_handles))

        async def go() -> None:
            item = await h.receive()
            self.received.append((item, self.tick()))

        self.tasks.append(("receive", self.loop.create_task(go())))

    def run_one_iteration(self) -> None:
        # call_soon(stop) + run_forever runs exactly the callbacks that are ready now: the finest
        # interleaving the rules can reach.
        self.loop.call_soon(self.loop.stop)
        self.loop.run_forever()

    @rule()
    def run_loop(self) -> None:
        self.run_one_iteration()

    @rule()
    def run_loop_again(self) -> None:  # a second rule doubles how often the loop gets to run
        self.run_one_iteration()

    # ------------------------------------------------------------ invariants

    @invariant()
    def counters_match_the_model(self) -> None:
        s = self.ch.statistics()
        assert s.items_sent == len(self.sent)
        assert s.items_received == len(self.received)
        # More may be handed back later: an item promised to a receiver that then withdraws.
        assert s.items_handed_back >= len(self.handed)
        assert s.items_sent - s.items_received - s.items_handed_back >= s.buffered >= 0
        # Only a receive cancelled after being promised an item can push the buffer over capacity.
        assert s.buffered <= self.capacity + self.receive_cancels

    @invariant()
    def nobody_waits_needlessly(self) -> None:
        # The fairness invariants of poolkit/_primitives/_channel.py, read off its internals
        # (single-threaded here, so no lock is needed; asserting under it would deadlock on the
        # repr).
        ch = self.ch
        receivers = sum(1 for w in ch._recvq if w.live())
        senders = sum(1 for w in ch._sendq if w.live())
        promised, invited, held = ch._promised, ch._invited, len(ch._buf)
        assert promised >= 0
        assert invited >= 0
        assert ch._sent == ch._received + len(ch._handed) + held  # every item is somewhere
        if ch.statistics().receivers_gone:
            assert held == promised, "items nobody will receive were not handed back"
        if receivers:
            assert held == promised, "a receiver waits beside a free item"
        if senders:
            assert self.capacity - (held - promised) - invited <= 0, "a sender waits beside room"
            assert receivers <= invited, "a sender and a receiver wait for each other"

    def teardown(self) -> None:
        try:
            for h in self.send_handles:
                h.close()
            for r in self.recv_handles:
                self.handed += r.close()
            self.ch.close()
            for _ in range(400):
                if all(t.done() for _, t in self.tasks):
                    break
                self.run_one_iteration()
            assert all(t.done() for _, t in self.tasks), "tasks still blocked after close()"
            for _, t in self.tasks:
                if not t.cancelled() and t.exception() is not None:
                    assert isinstance(t.exception(), (ChannelClosed, EndOfChannel, ReceiversGone))
            while True:
                try:
                    self.received.append((self.ch.receive_nowait(), self.tick()))
                except EndOfChannel:
                    break
            got = [item for item, _ in self.received]
            handed = self.ch.handed_back  # what close() returned, and what was freed after it
            assert set(self.handed) <= set(handed)
            self.handed = handed
            out = got + self.handed
            assert len(out) == len(set(out)), "an item was received (or handed back) twice"
            assert set(out) == set(self.sent), "sent and received + handed back items differ"
            assert not (set(out) & self.failed), "an item whose send failed came out"
            when = dict(self.received)
            back = {item: i for i, item in enumerate(self.handed)}
            for a, (_, a_end) in self.sent.items():
                for b, (b_start, _) in self.sent.items():
                    if a_end >= b_start:
                        continue
                    if b in when:
                        assert a in when, f"{a} was sent before {b}, handed back, {b} received"
                        assert when[a] < when[b], f"{a} was sent before {b} but received after"
                    elif a in back:
                        assert back[a] < back[b], f"{a}, {b} handed back out of order"
        finally:
            self.loop.close()


machine_settings = settings(
    max_examples=400,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


ChannelMachine.TestCase.settings = machine_settings
TestChannelModelAsyncio = ChannelMachine.TestCase


class UvloopChannelMachine(ChannelMachine):
    loop_kind = "uvloop"


UvloopChannelMachine.TestCase.settings = machine_settings
TestChannelModelUvloop = pytest.mark.skipif(
    "uvloop" not in LOOP_FACTORIES, reason="uvloop is not installed (pip install -e '.[test]')"
)(UvloopChannelMachine.TestCase)


# ---------------------------------------------------------------- randomized stress


@pytest.mark.parametrize("seed", range(6))
async def test_stress_with_random_cancellation(seed: int) -> None:
    """Producers, consumers and selecting consumers, with tasks cancelled at random moments.

    Accounting must balance exactly: every item whose send returned is received exactly once.
    """
    rng = random.Random(seed)
    a: Channel[int] = Channel(rng.choice([0, 1, 5]))
    b: Channel[int] = Channel(rng.choice([0, 2]))
    delivered: list[int] = []
    received: list[int] = []

    async def producer(ch: Channel[int], base: int) -> None:
        for i in range(200):
            await ch.send(base + i)
            delivered.append(base + i)
            if rng.random() < 0.2:
                await asyncio.sleep(0)

    async def consumer(ch: Channel[int]) -> None:
        async for item in ch:
            received.append(item)
            if rng.random() < 0.2:
                await asyncio.sleep(0)

    async def selector() -> None:
        while True:
            sel = await poolkit.select(a.receive_case(), b.receive_case())
            if sel.closed:
                return
            received.append(sel.value)

    tasks: list[asyncio.Task[Any]] = []
    for k in range(3):
        tasks.append(asyncio.create_task(producer(a, k * 1000)))
        tasks.append(asyncio.create_task(producer(b, 10_000 + k * 1000)))
    consumers = [asyncio.create_task(consumer(a)), asyncio.create_task(consumer(b))]
    consumers += [asyncio.create_task(selector()) for _ in range(2)]
    for _ in range(300):
        await asyncio.sleep(0)
        if rng.random() < 0.05:
            victim = rng.choice(tasks + consumers)
            victim.cancel()
            if victim in consumers:  # keep a way to drain each channel, whichever was lost
                consumers.append(asyncio.create_task(consumer(a)))
                consumers.append(asyncio.create_task(consumer(b)))
    await asyncio.gather(*tasks, return_exceptions=True)
    a.close()
    b.close()
    consumers.append(asyncio.create_task(consumer(a)))
    consumers.append(asyncio.create_task(consumer(b)))
    await asyncio.gather(*consumers, return_exceptions=True)
    assert sorted(received) == sorted(delivered)
    assert len(set(received)) == len(received)
    for ch in (a, b):
        s = ch.statistics()
        assert s.items_sent == s.items_received
        assert (s.buffered, s.senders_waiting, s.receivers_waiting) == (0, 0, 0)


@pytest.mark.parametrize("seed", range(8))
async def test_stress_handles_with_random_cancellation(seed: int) -> None:
    """Producers (tasks and threads) and consumers each with a handle of their own, tasks cancelled
    at random moments; either the producers finish (the channel closes when the last send handle
    does) or every consumer goes away (the producers left get ReceiversGone, never hang).

    Accounting must balance exactly: every item whose send returned was received exactly once or
    handed back exactly once, and nothing else came out.
    """
    rng = random.Random(seed)
    ch: Channel[int] = Channel(rng.choice([0, 1, 5, 16]))
    n_tasks, n_threads, n_consumers, per = 4, 2, 3, 150
    senders = ch.send_handles(n_tasks + n_threads)
    receivers = ch.receive_handles(n_consumers)
    delivered: list[int] = []
    received: list[int] = []
    outcomes: list[str] = []
    consumers_vanish = rng.random() < 0.5

    async def producer(h: SendHandle[int], base: int) -> None:
        async with h:
            try:
                for i in range(per):
                    await h.send(base + i)
                    delivered.append(base + i)
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)
            except ReceiversGone:
                outcomes.append("gone")

    def thread_producer(h: SendHandle[int], base: int) -> None:
        with h:
            try:
                for i in range(per):
                    h.send_blocking(base + i, timeout=30)
                    delivered.append(base + i)
            except ReceiversGone:
                outcomes.append("gone")

    async def consumer(r: ReceiveHandle[int]) -> None:
        async with r:
            if rng.random() < 0.5:
                async for item in r:
                    received.append(item)
                    if rng.random() < 0.3:
                        await asyncio.sleep(0)
            else:
                while True:
                    sel = await poolkit.select(r.receive_case())
                    if sel.closed:
                        return
                    received.append(sel.value)

    threads = [
        threading.Thread(target=thread_producer, args=(h, 100_000 * (k + 1)))
        for k, h in enumerate(senders[n_tasks:])
    ]
    for t in threads:
        t.start()
    producers = [
        asyncio.create_task(producer(h, 1000 * k)) for k, h in enumerate(senders[:n_tasks])
    ]
    consumers = [asyncio.create_task(consumer(r)) for r in receivers]
    for _ in range(200):
        await asyncio.sleep(0)
        if rng.random() < 0.05:
            victim = rng.choice(producers + consumers)
            victim.cancel()
            if victim in consumers and not consumers_vanish:
                live = [r for r in receivers if not r.closed]
                if live:  # a replacement, made from a handle that is still open: race-free
                    receivers.append(live[0].clone())
                    consumers.append(asyncio.create_task(consumer(receivers[-1])))
    if consumers_vanish:
        for c in consumers:
            c.cancel()
    await asyncio.wait_for(asyncio.gather(*producers, *consumers, return_exceptions=True), 30)
    await asyncio.to_thread(join_all, threads)
    s = ch.statistics()
    assert s.closed and s.receivers_gone  # by the last send handle, or the last receive handle
    if not consumers_vanish and not all(c.cancelled() for c in consumers):
        assert not outcomes  # a consumer was there to the end: nobody was refused
    out = received + ch.handed_back
    assert sorted(out) == sorted(delivered), "an item was lost, or came out twice"
    assert len(set(out)) == len(out)
    assert s.items_sent == s.items_received + s.items_handed_back == len(out)
    assert (s.send_handles_open, s.receive_handles_open, s.senders_waiting) == (0, 0, 0)


@pytest.mark.parametrize("seed", range(8))
async def test_unbuffered_hand_offs_cancelled_at_every_step(seed: int) -> None:
    """Producers and consumers on an unbuffered channel, each in one of its forms (send with and
    without a timer; receive, ``async for``, select), cancelled at random moments: between two
    task steps as well as between loop turns, so also while a task spins (it has queued and is
    scheduled, with no future: "Spinning once" in poolkit/_primitives/_channel.py), right after
    it was served there, and while it is parked.

    A send that raised delivered nothing; a receive that raised took nothing; every item whose
    send returned comes out exactly once, and each producer's items in the order it sent them.
    """
    rng = random.Random(seed)
    loop = asyncio.get_running_loop()
    ch: Channel[int] = Channel(0)
    other: Channel[int] = Channel(0)  # never fed: a select on it waits on ch alone
    delivered: list[int] = []
    failed: list[int] = []
    received: list[int] = []
    producers = iter(range(1, 1000))  # each producer task sends base, base + 1, ...: its own

    async def producer(timed: bool) -> None:
        base = next(producers) * 1_000_000
        for item in range(base, base + 1_000_000):
            try:
                if timed:
                    await ch.send(item, timeout=60)
                else:
                    await ch.send(item)
            except asyncio.CancelledError:
                failed.append(item)
                raise
            delivered.append(item)

    async def consumer(form: int) -> None:
        if form == 0:
            async for item in ch:
                received.append(item)
            return
        while True:
            if form == 1:
                received.append(await ch.receive())
            elif form == 2:
                received.append(await ch.receive(timeout=60))
            else:
                sel = await poolkit.select(ch.receive_case(), other.receive_case())
                received.append(sel.value)

    def start(kind: int) -> asyncio.Task[None]:
        if kind < 2:
            return asyncio.create_task(producer(timed=kind == 1))
        return asyncio.create_task(consumer(kind - 2))

    tasks = {start(kind): kind for kind in (0, 1, 2, 3, 4, 5)}
    for _ in range(1500):
        await asyncio.sleep(0)
        if rng.random() < 0.15:
            victim = rng.choice(list(tasks))
            if rng.random() < 0.5:
                victim.cancel()
            else:
                loop.call_soon(victim.cancel)  # lands between other tasks' steps
            kind = tasks.pop(victim)
            tasks[start(kind)] = kind  # a replacement of the same kind
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    ch.close()
    while True:  # items promised to a receiver that was cancelled are still in the channel
        try:
            received.append(ch.receive_nowait())
        except EndOfChannel:
            break
    assert len(delivered) > 100, "too few hand-offs to mean anything"
    assert sorted(received) == sorted(delivered), "an item was lost, or came out twice"
    assert not set(failed) & set(received), "an item whose send was cancelled came out"
    by_producer: dict[int, list[int]] = {}
    for item in received:
        by_producer.setdefault(item // 1_000_000, []).append(item)
    for items in by_producer.values():
        assert items == sorted(items), "a producer's items came out of order"
    s = ch.statistics()
    assert s.items_sent == s.items_received == len(delivered)
    assert (s.buffered, s.senders_waiting, s.receivers_waiting) == (0, 0, 0)
