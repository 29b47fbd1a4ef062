"""Channels against a reference model: random sends, receives, closes and cancellations.

The model is a FIFO queue with real-time order: every item whose send returned is received exactly
once; an item whose send raised (cancelled, closed) is never received; if send(a) returned before
send(b) started, a is received before b; a receive that raised took nothing.  Counters must agree
with the model at every step.
"""

from __future__ import annotations

import asyncio
import math
import random
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

from .conftest import LOOP_FACTORIES


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
            except (asyncio.CancelledError, ChannelClosed):
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
            except (asyncio.CancelledError, ChannelClosed):
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
        except (WouldBlock, ChannelClosed):
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
        assert s.items_sent - s.items_received >= s.buffered >= 0
        # Only a receive cancelled after being promised an item can push the buffer over capacity.
        assert s.buffered <= self.capacity + self.receive_cancels

    @invariant()
    def nobody_waits_needlessly(self) -> None:
        # The fairness invariants of poolkit/_channel.py, read off its internals (single-threaded
        # here, so no lock is needed; asserting under it would deadlock on the repr).
        ch = self.ch
        receivers = sum(1 for w in ch._recvq if w.live())
        senders = sum(1 for w in ch._sendq if w.live())
        promised, invited, held = ch._promised, ch._invited, len(ch._buf)
        assert promised >= 0
        assert invited >= 0
        if receivers:
            assert held == promised, "a receiver waits beside a free item"
        if senders:
            assert self.capacity - (held - promised) - invited <= 0, "a sender waits beside room"
            assert receivers <= invited, "a sender and a receiver wait for each other"

    def teardown(self) -> None:
        try:
            self.ch.close()
            for _ in range(400):
                if all(t.done() for _, t in self.tasks):
                    break
                self.run_one_iteration()
            assert all(t.done() for _, t in self.tasks), "tasks still blocked after close()"
            for _, t in self.tasks:
                if not t.cancelled() and t.exception() is not None:
                    assert isinstance(t.exception(), (ChannelClosed, EndOfChannel))
            while True:
                try:
                    self.received.append((self.ch.receive_nowait(), self.tick()))
                except EndOfChannel:
                    break
            got = [item for item, _ in self.received]
            assert len(got) == len(set(got)), "an item was received twice"
            assert set(got) == set(self.sent), "sent and received items differ"
            assert not (set(got) & self.failed), "an item whose send failed was received"
            when = dict(self.received)
            for a, (_, a_end) in self.sent.items():
                for b, (b_start, _) in self.sent.items():
                    if a_end < b_start:
                        assert when[a] < when[b], f"{a} was sent before {b} but received after"
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
