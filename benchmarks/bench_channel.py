"""Channel benchmarks: bounded producer/consumer, unbuffered hand-off, select, thread bridge."""

from __future__ import annotations

import asyncio
import threading
import time

import anyio

import poolkit

from ._harness import Case, Suite, register, run_async, timed

CAPACITY = 64

# ----------------------------------------------------------------- bounded producer/consumer

bounded = register(Suite(f"producer/consumer, capacity {CAPACITY}", unit="item", items=300_000))


def _poolkit_bounded(n: int) -> float:
    async def main() -> float:
        ch: poolkit.Channel[int] = poolkit.Channel(CAPACITY)

        async def produce() -> None:
            for i in range(n):
                await ch.send(i)
            ch.close()

        async def consume() -> None:
            async for _ in ch:
                pass

        return await timed(asyncio.gather(produce(), consume()))

    return run_async(main)


def _queue_bounded(n: int) -> float:
    async def main() -> float:
        q: asyncio.Queue[int | None] = asyncio.Queue(CAPACITY)

        async def produce() -> None:
            for i in range(n):
                await q.put(i)
            await q.put(None)

        async def consume() -> None:
            while await q.get() is not None:
                pass

        return await timed(asyncio.gather(produce(), consume()))

    return run_async(main)


def _anyio_bounded(n: int, size: float = CAPACITY) -> float:
    async def main() -> float:
        send, recv = anyio.create_memory_object_stream[int](size)

        async def produce() -> None:
            async with send:
                for i in range(n):
                    await send.send(i)

        async def consume() -> None:
            async with recv:
                async for _ in recv:
                    pass

        return await timed(asyncio.gather(produce(), consume()))

    return run_async(main)


bounded.cases += [
    Case("poolkit.Channel", _poolkit_bounded, poolkit=True),
    Case("asyncio.Queue", _queue_bounded),
    Case("anyio memory object stream", _anyio_bounded),
]

# ----------------------------------------------------------------- unbuffered hand-off

handoff = register(Suite("unbuffered hand-off (rendezvous)", unit="item", items=50_000))


def _poolkit_handoff(n: int) -> float:
    async def main() -> float:
        ch: poolkit.Channel[int] = poolkit.Channel(0)

        async def produce() -> None:
            for i in range(n):
                await ch.send(i)
            ch.close()

        async def consume() -> None:
            async for _ in ch:
                pass

        return await timed(asyncio.gather(produce(), consume()))

    return run_async(main)


def _queue_join_handoff(n: int) -> float:
    """The closest stdlib rendezvous: put, then wait until the consumer marked it done."""

    async def main() -> float:
        q: asyncio.Queue[int | None] = asyncio.Queue(1)

        async def produce() -> None:
            for i in range(n):
                await q.put(i)
                await q.join()
            await q.put(None)

        async def consume() -> None:
            while await q.get() is not None:
                q.task_done()

        return await timed(asyncio.gather(produce(), consume()))

    return run_async(main)


handoff.cases += [
    Case("poolkit.Channel(0)", _poolkit_handoff, poolkit=True),
    Case("asyncio.Queue(1) + join()", _queue_join_handoff),
    Case("anyio memory object stream (0)", lambda n: _anyio_bounded(n, 0)),
]

# ----------------------------------------------------------------- select over 4 channels

SELECT_CAPACITY = 16  # not the default (0): named in the title

select4 = register(
    Suite(
        f"select over 4 channels (capacity {SELECT_CAPACITY}), 4 producers",
        unit="item",
        items=60_000,
    )
)


def _poolkit_select(n: int) -> float:
    async def main() -> float:
        chans: list[poolkit.Channel[int]] = [poolkit.Channel(SELECT_CAPACITY) for _ in range(4)]
        per = n // 4

        async def produce(ch: poolkit.Channel[int]) -> None:
            for i in range(per):
                await ch.send(i)

        async def consume() -> None:
            cases = [c.receive_case() for c in chans]
            for _ in range(per * 4):
                await poolkit.select(*cases)

        return await timed(asyncio.gather(consume(), *(produce(c) for c in chans)))

    return run_async(main)


def _wait_select(n: int) -> float:
    """Stdlib: one pending get() task per queue and asyncio.wait(FIRST_COMPLETED)."""

    async def main() -> float:
        queues: list[asyncio.Queue[int]] = [asyncio.Queue(SELECT_CAPACITY) for _ in range(4)]
        per = n // 4

        async def produce(q: asyncio.Queue[int]) -> None:
            for i in range(per):
                await q.put(i)

        async def consume() -> None:
            getters = {asyncio.ensure_future(q.get()): q for q in queues}
            got = 0
            while got < per * 4:
                done, _ = await asyncio.wait(getters, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    q = getters.pop(fut)
                    fut.result()
                    got += 1
                    if got < per * 4:
                        getters[asyncio.ensure_future(q.get())] = q
            for fut in getters:
                fut.cancel()

        return await timed(asyncio.gather(consume(), *(produce(q) for q in queues)))

    return run_async(main)


select4.cases += [
    Case("poolkit.select", _poolkit_select, poolkit=True),
    Case("asyncio.wait(FIRST_COMPLETED) on get()s", _wait_select),
]

# ----------------------------------------------------------------- thread -> task bridge

bridge = register(Suite("thread producer -> task consumer, capacity 64", unit="item", items=50_000))


def _poolkit_bridge(n: int) -> float:
    async def main() -> float:
        ch: poolkit.Channel[int] = poolkit.Channel(CAPACITY)

        def produce() -> None:
            for i in range(n):
                ch.send_blocking(i)
            ch.close()

        t0 = time.perf_counter()
        thread = threading.Thread(target=produce)
        thread.start()
        async for _ in ch:
            pass
        await asyncio.to_thread(thread.join)
        return time.perf_counter() - t0

    return run_async(main)


def _threadsafe_bridge(n: int) -> float:
    """Stdlib with backpressure: run_coroutine_threadsafe(queue.put(x)).result() per item."""

    async def main() -> float:
        q: asyncio.Queue[int | None] = asyncio.Queue(CAPACITY)
        loop = asyncio.get_running_loop()

        def produce() -> None:
            for i in range(n):
                asyncio.run_coroutine_threadsafe(q.put(i), loop).result()
            asyncio.run_coroutine_threadsafe(q.put(None), loop).result()

        t0 = time.perf_counter()
        thread = threading.Thread(target=produce)
        thread.start()
        while await q.get() is not None:
            pass
        await asyncio.to_thread(thread.join)
        return time.perf_counter() - t0

    return run_async(main)


bridge.cases += [
    Case("poolkit.Channel.send_blocking", _poolkit_bridge, poolkit=True),
    Case("run_coroutine_threadsafe(Queue.put)", _threadsafe_bridge),
]
