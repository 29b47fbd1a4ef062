"""Channels between threads and asyncio tasks: no polling, no lost items, no blocked event loop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter

import pytest

import poolkit
from poolkit import Channel, ChannelClosed, EndOfChannel, WouldBlock


def test_threads_only_producers_and_consumers() -> None:
    ch: Channel[tuple[int, int]] = Channel(8)
    got: list[tuple[int, int]] = []
    lock = threading.Lock()

    def produce(p: int) -> None:
        for i in range(2000):
            ch.send_blocking((p, i))

    def consume() -> None:
        for item in ch:
            with lock:
                got.append(item)

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(4)]
    consumers = [threading.Thread(target=consume) for _ in range(3)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join()
    ch.close()
    for t in consumers:
        t.join()
    assert sorted(got) == sorted((p, i) for p in range(4) for i in range(2000))
    s = ch.statistics()
    assert (s.items_sent, s.items_received, s.buffered) == (8000, 8000, 0)


def test_each_producer_order_is_preserved_with_one_consumer() -> None:
    ch: Channel[tuple[int, int]] = Channel(4)

    def produce(p: int) -> None:
        for i in range(3000):
            ch.send_blocking((p, i))

    producers = [threading.Thread(target=produce, args=(p,)) for p in range(3)]
    for t in producers:
        t.start()
    got = [ch.receive_blocking(timeout=10) for _ in range(9000)]
    for t in producers:
        t.join()
    for p in range(3):
        assert [i for q, i in got if q == p] == list(range(3000))


async def test_producer_threads_feed_consumer_tasks() -> None:
    ch: Channel[int] = Channel(16)
    n_threads, per_thread = 4, 2500

    def produce(base: int) -> None:
        for i in range(per_thread):
            ch.send_blocking(base + i)

    async def consume() -> Counter[int]:
        seen: Counter[int] = Counter()
        async for item in ch:
            seen[item] += 1
        return seen

    consumers = [asyncio.create_task(consume()) for _ in range(3)]
    threads = [threading.Thread(target=produce, args=(k * per_thread,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    # The loop stays responsive while threads push: a ticker keeps running.
    ticks = 0
    while any(t.is_alive() for t in threads):
        ticks += 1
        await asyncio.sleep(0.001)
    for t in threads:
        t.join()
    ch.close()
    total: Counter[int] = Counter()
    for c in await asyncio.gather(*consumers):
        total += c
    assert total == Counter(range(n_threads * per_thread))
    assert ticks > 0


async def test_consumer_threads_fed_by_tasks() -> None:
    ch: Channel[int] = Channel(0)  # unbuffered: each task waits for a thread to take its item
    results: list[int] = []
    lock = threading.Lock()

    def consume() -> None:
        for item in ch:
            with lock:
                results.append(item)

    threads = [threading.Thread(target=consume) for _ in range(3)]
    for t in threads:
        t.start()

    async def produce(base: int) -> None:
        for i in range(300):
            await ch.send(base + i)

    await asyncio.gather(*(produce(k * 1000) for k in range(4)))
    ch.close()
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    assert sorted(results) == sorted(k * 1000 + i for k in range(4) for i in range(300))


async def test_tasks_on_two_loops_in_two_threads() -> None:
    ch: Channel[int] = Channel(2)

    def other_loop() -> None:
        async def produce() -> None:
            for i in range(1000):
                await ch.send(i)
            ch.close()

        asyncio.run(produce())

    t = threading.Thread(target=other_loop)
    t.start()
    got = [x async for x in ch]
    await asyncio.to_thread(t.join)
    assert got == list(range(1000))


def test_blocking_timeouts_and_no_item_consumed() -> None:
    ch: Channel[int] = Channel(1)
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="receive timed out"):
        ch.receive_blocking(timeout=0.05)
    assert time.monotonic() - t0 >= 0.04
    ch.send_blocking(1)
    with pytest.raises(TimeoutError, match="send timed out"):
        ch.send_blocking(2, timeout=0.02)
    assert ch.receive_blocking() == 1
    with pytest.raises(WouldBlock):
        ch.receive_nowait()
    with pytest.raises(TimeoutError):
        ch.receive_blocking(timeout=0)
    s = ch.statistics()
    assert (s.senders_waiting, s.receivers_waiting) == (0, 0)


def test_close_wakes_blocked_threads() -> None:
    ch: Channel[int] = Channel(0)
    outcomes: list[str] = []

    def recv() -> None:
        try:
            ch.receive_blocking()
        except EndOfChannel:
            outcomes.append("end")

    def send() -> None:
        try:
            ch.send_blocking(1)
        except ChannelClosed:
            outcomes.append("closed")

    r = threading.Thread(target=recv)
    r.start()
    while ch.statistics().receivers_waiting < 1:
        time.sleep(0.001)
    ch.close()
    r.join()
    ch2: Channel[int] = Channel(0)
    ch = ch2
    s = threading.Thread(target=send)
    s.start()
    while ch2.statistics().senders_waiting < 1:
        time.sleep(0.001)
    ch2.close()
    s.join()
    assert outcomes == ["end", "closed"]


async def test_blocking_calls_refuse_to_block_the_event_loop() -> None:
    ch: Channel[int] = Channel(0)
    with pytest.raises(RuntimeError, match="would block the event loop"):
        ch.receive_blocking()
    with pytest.raises(RuntimeError, match="would block the event loop"):
        ch.send_blocking(1)
    with pytest.raises(RuntimeError, match="would block the event loop"):
        poolkit.select_blocking(ch.receive_case())
    s = ch.statistics()
    assert (s.senders_waiting, s.receivers_waiting, s.items_sent) == (0, 0, 0)
    # ... but a blocking call that does not need to wait is fine
    ch2: Channel[int] = Channel(1)
    ch2.send_blocking(1)
    assert ch2.receive_blocking() == 1


def test_select_blocking_in_threads() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)
    got: list[tuple[int, object]] = []

    def selector() -> None:
        for _ in range(200):
            sel = poolkit.select_blocking(a.receive_case(), b.receive_case(), timeout=10)
            got.append((sel.index, sel.value))

    t = threading.Thread(target=selector)
    t.start()
    for i in range(100):
        a.send_blocking(i)
        b.send_blocking(-i)
    t.join()
    assert sorted(v for _, v in got if isinstance(v, int)) == sorted(
        list(range(100)) + [-i for i in range(100)]
    )
    with pytest.raises(TimeoutError):
        poolkit.select_blocking(a.receive_case(), timeout=0.01)
    assert a.statistics().receivers_waiting == 0


async def test_select_blocking_thread_against_async_senders() -> None:
    a: Channel[int] = Channel(0)
    b: Channel[int] = Channel(0)

    def selector() -> list[int]:
        out = []
        for _ in range(100):
            sel = poolkit.select_blocking(a.receive_case(), b.receive_case(), timeout=10)
            out.append(sel.value)
        return out

    fut = asyncio.ensure_future(asyncio.to_thread(selector))
    for i in range(50):
        await a.send(i)
        await b.send(100 + i)
    assert sorted(await fut) == list(range(50)) + list(range(100, 150))


def test_cross_thread_stress_with_selects_timeouts_and_cancellation() -> None:
    """Threads and two event loops hammer three channels with sends, receives and selects that
    time out and get cancelled at random; every item whose send returned is received exactly once.

    Bounded to about two seconds.  The thread switch interval is shortened so that races between
    a select being claimed through one channel and inspected through another actually happen.
    """
    import random
    import sys

    unbuffered: Channel[int] = Channel(0)
    other: Channel[int] = Channel(0)
    small: Channel[int] = Channel(2)
    chans = [unbuffered, other, small]
    sent: list[int] = []
    received: list[int] = []
    record = threading.Lock()
    counter = iter(range(1, 10**9))
    stop = time.monotonic() + 2.0

    def note(where: list[int], item: int) -> None:
        with record:
            where.append(item)

    def thread_sender(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            with record:
                item = next(counter)
            try:
                if rng.random() < 0.5:
                    rng.choice(chans).send_blocking(item, timeout=rng.choice([0, 1e-5, 1e-3]))
                else:
                    a, b = rng.sample(chans, 2)
                    poolkit.select_blocking(a.send_case(item), b.send_case(item), timeout=1e-4)
            except TimeoutError:
                continue
            note(sent, item)

    def thread_receiver(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            try:
                if rng.random() < 0.5:
                    item = rng.choice(chans).receive_blocking(timeout=rng.choice([0, 1e-5, 1e-3]))
                else:
                    sel = poolkit.select_blocking(
                        *(c.receive_case() for c in rng.sample(chans, 2)), timeout=1e-4
                    )
                    item = sel.value
            except TimeoutError:
                continue
            note(received, item)

    def loop_worker(seed: int, use_uvloop: bool) -> None:
        async def main() -> None:
            rng = random.Random(seed)
            while time.monotonic() < stop:
                ch = rng.choice(chans)
                with record:
                    item = next(counter)
                if rng.random() < 0.5:
                    op = asyncio.ensure_future(ch.send(item))
                else:
                    op = asyncio.ensure_future(
                        poolkit.select(*(c.receive_case() for c in rng.sample(chans, 2)))
                    )
                done, _ = await asyncio.wait([op], timeout=rng.choice([0, 1e-4, 1e-3]))
                if not done:
                    op.cancel()
                    await asyncio.wait([op])
                if op.cancelled():
                    continue
                result = op.result()
                if result is None:
                    note(sent, item)
                else:
                    note(received, result.value)

        if use_uvloop:
            import uvloop

            uvloop.run(main())
        else:
            asyncio.run(main())

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        threads = [threading.Thread(target=thread_sender, args=(s,)) for s in (1, 2)]
        threads += [threading.Thread(target=thread_receiver, args=(s,)) for s in (3, 4)]
        threads += [threading.Thread(target=loop_worker, args=(5, False))]
        threads += [threading.Thread(target=loop_worker, args=(6, True))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    for ch in chans:
        ch.close()
        while True:
            try:
                received.append(ch.receive_nowait())
            except EndOfChannel:
                break
        s = ch.statistics()
        assert (s.senders_waiting, s.receivers_waiting, s.buffered) == (0, 0, 0)
        assert ch._promised == 0
        assert ch._invited == 0
    assert len(sent) > 1000, "the stress did too little to mean anything"
    assert sorted(received) == sorted(sent)
    assert sum(c.statistics().items_sent for c in chans) == len(sent)


@pytest.mark.parametrize("call", ["receive", "send", "select"])
def test_thread_timeouts_longer_than_a_lock_can_wait_mean_forever(call: str) -> None:
    # threading.Lock.acquire() rejects timeouts above threading.TIMEOUT_MAX with OverflowError.
    ch: Channel[int] = Channel(0)
    outcome: list[object] = []

    def wait() -> None:
        try:
            if call == "receive":
                ch.receive_blocking(timeout=1e12)
            elif call == "send":
                ch.send_blocking(1, timeout=1e12)
            else:
                outcome.append(poolkit.select_blocking(ch.receive_case(), timeout=1e12).closed)
        except Exception as exc:
            outcome.append(type(exc).__name__)

    t = threading.Thread(target=wait)
    t.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        s = ch.statistics()
        if s.receivers_waiting + s.senders_waiting == 1 or outcome:
            break
        time.sleep(0.001)
    ch.close()
    t.join()
    expected = {"receive": "EndOfChannel", "send": "ChannelClosed", "select": True}[call]
    assert outcome == [expected]
