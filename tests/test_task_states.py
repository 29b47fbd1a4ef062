"""Every state that dumps can name shows in a dump, for a task or thread really waiting there.

``poolkit._leaks._introspect`` names a task's or thread's state after the function it waits in
(``Channel.receive`` -> ``chan receive``), keyed by code objects.  Each entry of its table is
exercised here: a scene puts a task or a thread in that function, a snapshot is taken, and the
dump must show the state with the function on the stack.  A function that moved, was renamed or
never runs suspended (an entry that can never match) fails this test instead of silently taking
its label out of every dump.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import selectors
import signal
import socket
import socketserver
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import poolkit
from poolkit import leaks
from poolkit._leaks import _introspect
from poolkit._leaks._introspect import Info

SETTLE = 0.3  # real seconds for threads and tasks to reach their waits (a bound, not a timing)


def _on_stack(info: Info, where: str) -> bool:
    """Whether the function ``where`` names (perhaps inherited: its code's own name) is on the
    stack of ``info``."""
    code = _introspect._resolve(where)
    assert code is not None, where
    module = where.partition(":")[0]
    return any(
        f.function == code.co_qualname and f.filename == code.co_filename for f in info.stack
    ) or any(f.module == module and f.function == code.co_qualname for f in info.stack)


class Scenes:
    """Collects (where, expected state) pairs and checks them against one snapshot."""

    def __init__(self) -> None:
        self.expected: list[tuple[str, str]] = []
        self.cleanups: list[Callable[[], Any]] = []

    def expect(self, where: str, state: str) -> None:
        self.expected.append((where, state))

    def check(self, snap: leaks.Snapshot) -> list[str]:
        infos: list[Info] = [*snap.tasks, *snap.threads]
        problems = []
        for where, state in self.expected:
            there = [i for i in infos if _on_stack(i, where)]
            if not there:
                problems.append(f"{where}: nobody on the stack")
            elif not any(i.state == state for i in there):
                problems.append(f"{where}: state {[i.state for i in there]}, expected {state!r}")
        return problems


def _thread(target: Callable[[], Any], name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def _quietly(fn: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):
        fn()


async def _task_scenes(sc: Scenes, stack: contextlib.AsyncExitStack) -> list[asyncio.Task[Any]]:
    """Tasks waiting in every asyncio-side function of the table."""
    loop = asyncio.get_running_loop()
    tasks: list[asyncio.Task[Any]] = []

    def start(coro: Any, where: str, state: str) -> None:
        tasks.append(loop.create_task(coro, name=where))
        sc.expect(where, state)

    ch: poolkit.Channel[int] = poolkit.Channel(0)
    start(ch.send(1), "poolkit._primitives._channel:Channel.send", "chan send")
    empty: poolkit.Channel[int] = poolkit.Channel(0)
    start(empty.receive(), "poolkit._primitives._channel:Channel.receive", "chan receive")

    async def drain(it: AsyncIterator[int]) -> None:
        async for _ in it:
            pass

    start(
        drain(poolkit.Channel[int](0)),
        "poolkit._primitives._channel:Channel.__anext__",
        "chan receive",
    )
    send_handle = poolkit.Channel[int](0).send_handle()
    receive_handle = poolkit.Channel[int](0).receive_handle()
    iterated_handle = poolkit.Channel[int](0).receive_handle()
    sc.cleanups += [send_handle.close, receive_handle.close, iterated_handle.close]
    start(send_handle.send(1), "poolkit._primitives._channel:SendHandle.send", "chan send")
    start(
        receive_handle.receive(),
        "poolkit._primitives._channel:ReceiveHandle.receive",
        "chan receive",
    )
    start(
        drain(iterated_handle),
        "poolkit._primitives._channel:ReceiveHandle.__anext__",
        "chan receive",
    )
    start(poolkit.select(empty.receive_case()), "poolkit._primitives._channel:select", "select")

    full = poolkit.CapacityLimiter(1)
    await full.acquire()
    start(full.acquire(), "poolkit._primitives._limiter:CapacityLimiter.acquire", "semacquire")

    async def enter(cm: Any) -> None:
        async with cm:
            pass

    start(enter(full), "poolkit._primitives._limiter:CapacityLimiter.__aenter__", "semacquire")
    bucket = poolkit.TokenBucket(0.001, 1)
    bucket.try_acquire()
    sc.cleanups.append(lambda: setattr(bucket, "rate", float("inf")))
    start(bucket.acquire(), "poolkit._primitives._ratelimit:TokenBucket.acquire", "rate wait")
    start(enter(bucket), "poolkit._primitives._ratelimit:TokenBucket.__aenter__", "rate wait")
    both = poolkit.Limits(full)
    start(both.acquire(), "poolkit._primitives._composite:Limits.acquire", "limits wait")

    async def hold(cm: Any) -> None:
        async with cm:
            pass

    start(hold(both.hold()), "poolkit._primitives._composite:Limits.hold", "limits wait")
    start(enter(both), "poolkit._primitives._composite:Limits.__aenter__", "limits wait")
    per_key: poolkit.PerKey[str, poolkit.CapacityLimiter] = poolkit.PerKey(
        lambda: poolkit.CapacityLimiter(1)
    )
    await per_key.acquire("k")
    start(per_key.acquire("k"), "poolkit._primitives._composite:PerKey.acquire", "limits wait")
    start(hold(per_key.hold("k")), "poolkit._primitives._composite:PerKey.hold", "limits wait")

    # Pools: an idle worker, a worker waiting on the pool's limit (a rate wait through a
    # combined limit), a submitter waiting for room, a shutdown waiting for a job, a map.
    idle = await stack.enter_async_context(poolkit.WorkerPool(workers=1, name="idle"))
    await idle.submit(asyncio.sleep, 0)
    sc.expect("poolkit._pools._pool:_JobQueue.wait_for_job", "pool idle")
    rated = await stack.enter_async_context(
        poolkit.WorkerPool(workers=1, limit=poolkit.Limits(bucket), name="rated")
    )
    await rated.submit(asyncio.sleep, 0)
    sc.expect("poolkit._primitives._ratelimit:wait_async", "rate wait")
    gate = asyncio.Event()
    busy = poolkit.WorkerPool(workers=1, queue_size=1, name="busy")
    stack.push_async_callback(busy.shutdown)
    await busy.submit(gate.wait)
    await asyncio.sleep(0)
    await busy.submit(gate.wait)  # fills the queue
    start(busy.submit(gate.wait), "poolkit._pools._pool:WorkerPool.submit", "pool submit")
    sc.cleanups.append(gate.set)

    def submit_from_thread() -> None:
        with contextlib.suppress(Exception):
            busy.submit_blocking(gate.wait).result(30)

    _thread(submit_from_thread, "submit-blocking")
    sc.expect("poolkit._pools._bridge:ThreadDoor._put_from_thread", "pool submit")
    closing = poolkit.WorkerPool(workers=1, name="closing")
    await closing.submit(gate.wait)
    await asyncio.sleep(0)
    start(closing.shutdown(), "poolkit._pools._pool:WorkerPool.shutdown", "pool shutdown")

    async def consume_map() -> None:
        async with poolkit.WorkerPool(workers=1, name="mapping") as pool:
            async for _ in pool.map(lambda _: gate.wait(), range(2)):
                pass

    start(consume_map(), "poolkit._pools._map:map_async", "pool map")
    thread_pool = poolkit.ThreadPool(workers=1, name="closing-async")
    released = threading.Event()
    thread_pool.submit(released.wait, 30)
    sc.cleanups.append(released.set)
    start(
        thread_pool.shutdown_async(),
        "poolkit._pools._thread_pool:ThreadPool.shutdown_async",
        "pool shutdown",
    )

    # asyncio itself.
    start(asyncio.sleep(3600), "asyncio.tasks:sleep", "sleep")
    never = loop.create_future()
    start(asyncio.wait([never]), "asyncio.tasks:wait", "wait")
    sc.expect("asyncio.tasks:_wait", "wait")
    start(asyncio.wait_for(loop.create_future(), 3600), "asyncio.tasks:wait_for", "wait")
    q: asyncio.Queue[int] = asyncio.Queue(1)
    start(q.get(), "asyncio.queues:Queue.get", "queue get")
    q2: asyncio.Queue[int] = asyncio.Queue(1)
    q2.put_nowait(1)
    start(q2.put(2), "asyncio.queues:Queue.put", "queue put")
    start(q2.join(), "asyncio.queues:Queue.join", "queue join")
    start(asyncio.Event().wait(), "asyncio.locks:Event.wait", "event wait")
    lock = asyncio.Lock()
    await lock.acquire()
    start(lock.acquire(), "asyncio.locks:Lock.acquire", "lock acquire")
    sem = asyncio.Semaphore(0)
    start(sem.acquire(), "asyncio.locks:Semaphore.acquire", "semacquire")
    cond = asyncio.Condition()

    async def cond_wait() -> None:
        async with cond:
            await cond.wait()

    start(cond_wait(), "asyncio.locks:Condition.wait", "cond wait")
    start(asyncio.Barrier(2).wait(), "asyncio.locks:Barrier.wait", "barrier wait")

    async def task_group() -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(asyncio.sleep(3600))

    start(task_group(), "asyncio.taskgroups:TaskGroup.__aexit__", "taskgroup wait")

    # Streams and sockets.
    async def answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()  # until the client closes
        w.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    stack.callback(writer.close)
    start(reader.read(1), "asyncio.streams:StreamReader._wait_for_data", "IO wait")
    silent_peer, sink = socket.socketpair()  # a peer that never reads: the writer must wait
    stack.callback(silent_peer.close)
    _, drain_writer = await asyncio.open_connection(sock=sink)
    stack.callback(drain_writer.transport.abort)
    drain_writer.transport.set_write_buffer_limits(high=1)
    drain_writer.write(b"x" * (8 << 20))
    start(drain_writer.drain(), "asyncio.streams:StreamWriter.drain", "IO wait")
    a, b = socket.socketpair()
    a.setblocking(False)
    stack.callback(a.close)
    stack.callback(b.close)
    start(
        loop.sock_recv(a, 1),
        "asyncio.selector_events:BaseSelectorEventLoop.sock_recv",
        "IO wait",
    )
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    stack.callback(listener.close)
    start(
        loop.sock_accept(listener),
        "asyncio.selector_events:BaseSelectorEventLoop.sock_accept",
        "IO wait",
    )
    return tasks


async def _thread_scenes(
    sc: Scenes, stack: contextlib.ExitStack, astack: contextlib.AsyncExitStack
) -> None:
    """Threads blocked in every blocking function of the table."""
    chans: list[poolkit.Channel[int]] = [poolkit.Channel(0) for _ in range(6)]
    sc.cleanups += [ch.close for ch in chans]  # one channel per scene, or they would pair up
    a, b, c, d, e, f = chans
    threads = [
        (
            lambda: a.send_blocking(1),
            "poolkit._primitives._channel:Channel.send_blocking",
            "chan send",
        ),
        (
            b.receive_blocking,
            "poolkit._primitives._channel:Channel.receive_blocking",
            "chan receive",
        ),
        (lambda: list(c), "poolkit._primitives._channel:Channel.__iter__", "chan receive"),
    ]
    send_handle = d.send_handle()
    receive_handle = e.receive_handle()
    iterated_handle = f.receive_handle()
    sc.cleanups += [send_handle.close, receive_handle.close, iterated_handle.close]
    threads += [
        (
            lambda: send_handle.send_blocking(1),
            "poolkit._primitives._channel:SendHandle.send_blocking",
            "chan send",
        ),
        (
            receive_handle.receive_blocking,
            "poolkit._primitives._channel:ReceiveHandle.receive_blocking",
            "chan receive",
        ),
        (
            lambda: list(iterated_handle),
            "poolkit._primitives._channel:ReceiveHandle.__iter__",
            "chan receive",
        ),
    ]
    empty: poolkit.Channel[int] = poolkit.Channel(0)
    sc.cleanups.append(empty.close)
    threads.append(
        (
            lambda: poolkit.select_blocking(empty.receive_case(), timeout=30),
            "poolkit._primitives._channel:select_blocking",
            "select",
        )
    )
    full = poolkit.CapacityLimiter(1)
    full.try_acquire()
    sc.cleanups.append(lambda: setattr(full, "total", 100))

    def enter(cm: Any) -> Callable[[], None]:
        def run() -> None:
            with cm:
                pass

        return run

    threads += [
        (
            lambda: full.acquire_blocking(timeout=30),
            "poolkit._primitives._limiter:CapacityLimiter.acquire_blocking",
            "semacquire",
        ),
        (enter(full), "poolkit._primitives._limiter:CapacityLimiter.__enter__", "semacquire"),
    ]
    bucket = poolkit.TokenBucket(0.001, 1)
    bucket.try_acquire()
    sc.cleanups.append(lambda: setattr(bucket, "rate", float("inf")))
    threads += [
        (
            lambda: bucket.acquire_blocking(timeout=30),
            "poolkit._primitives._ratelimit:TokenBucket.acquire_blocking",
            "rate wait",
        ),
        (enter(bucket), "poolkit._primitives._ratelimit:TokenBucket.__enter__", "rate wait"),
    ]
    limits = poolkit.Limits(full)
    rated = poolkit.Limits(bucket)
    threads += [
        (
            lambda: limits.acquire_blocking(timeout=30),
            "poolkit._primitives._composite:Limits.acquire_blocking",
            "limits wait",
        ),
        (
            enter(limits.hold_blocking()),
            "poolkit._primitives._composite:Limits.hold_blocking",
            "limits wait",
        ),
        (enter(limits), "poolkit._primitives._composite:Limits.__enter__", "limits wait"),
        (
            lambda: rated.acquire_blocking(timeout=30),
            "poolkit._primitives._ratelimit:wait_thread",
            "rate wait",  # the buckets' own threads show it too
        ),
    ]
    per_key: poolkit.PerKey[str, poolkit.CapacityLimiter] = poolkit.PerKey(
        lambda: poolkit.CapacityLimiter(1)
    )
    per_key.acquire_blocking("k")
    sc.cleanups.append(lambda: per_key.release("k"))
    threads += [
        (
            lambda: (per_key.acquire_blocking("k", timeout=30), per_key.release("k")),
            "poolkit._primitives._composite:PerKey.acquire_blocking",
            "limits wait",
        ),
        (
            enter(per_key.hold_blocking("k")),
            "poolkit._primitives._composite:PerKey.hold_blocking",
            "limits wait",
        ),
    ]

    # ThreadPool: an idle worker, a submitter waiting for room, a shutdown waiting for a job,
    # a worker inside a blocking call (running), a worker waiting on the pool's limit.
    release = threading.Event()
    sc.cleanups.append(release.set)
    held = threading.Lock()
    held.acquire()
    sc.cleanups.append(held.release)
    idle = await astack.enter_async_context(poolkit.ThreadPool(workers=1, name="idle-threads"))
    await asyncio.wrap_future(idle.submit(time.sleep, 0))
    sc.expect("poolkit._pools._thread_pool:ThreadPool._wait_for_job", "pool idle")
    busy = poolkit.ThreadPool(workers=1, queue_size=1, name="busy-threads")
    astack.push_async_callback(busy.shutdown_async)
    busy.submit(held.acquire, True, 30)  # a C call: no frame of its own, the worker is running
    await asyncio.to_thread(busy.submit, release.wait, 30)  # fills the queue
    threads.append(
        (
            lambda: busy.submit(release.wait, 30),
            "poolkit._pools._thread_pool:ThreadPool.submit",
            "pool submit",
        )
    )
    sc.expect("poolkit._pools._thread_pool:_Worker._attempt", "running")
    closing = poolkit.ThreadPool(workers=1, name="closing-threads")
    closing.submit(release.wait, 30)
    threads.append(
        (closing.shutdown, "poolkit._pools._thread_pool:ThreadPool.shutdown", "pool shutdown")
    )
    limited = await astack.enter_async_context(
        poolkit.ThreadPool(workers=1, limit=full, name="limited")
    )
    limited.submit(time.sleep, 0)
    sc.expect("poolkit._pools._thread_pool:_Worker._run", "limit wait")

    # ProcessPool: an idle worker thread, one whose process runs a job, one whose process is
    # still starting (a slow initializer), a map waiting for a result, a shutdown waiting for a
    # job.  Each is stopped by a cancelling shutdown, from a thread (this is async code).
    def processes(**options: Any) -> poolkit.ProcessPool:
        pool = poolkit.ProcessPool(workers=1, kill_grace=0.1, **options)

        def stop() -> None:
            thread = threading.Thread(target=pool.shutdown, kwargs={"cancel": True})
            thread.start()
            thread.join(30)

        sc.cleanups.append(stop)
        return pool

    idle_p = processes(name="idle-processes")
    await asyncio.to_thread(lambda: idle_p.submit(pow, 2, 2).result(30))
    sc.expect("poolkit._pools._process_pool:ProcessPool._take", "pool idle")
    busy_p = processes(name="busy-processes")
    busy_p.submit(time.sleep, 30)
    sc.expect("poolkit._pools._process_pool:_Slot._exchange", "running")
    # (A cancelling shutdown does not stop a worker whose initializer runs: keep it short.)
    starting = processes(initializer=time.sleep, initargs=(2,), name="starting-processes")
    starting.submit(pow, 2, 2)
    sc.expect("poolkit._pools._process_pool:_Slot._start_process", "process start")
    mapping = processes(name="mapping-processes")
    threads.append(
        (
            lambda: list(mapping.map(time.sleep, [30])),
            "poolkit._pools._process_pool:ProcessMap._sync",
            "pool map",
        )
    )
    closing_p = poolkit.ProcessPool(workers=1, kill_grace=0.1, name="closing-processes")
    closing_p.submit(time.sleep, 30)
    sc.cleanups.append(lambda: [os.kill(pid, signal.SIGKILL) for pid in closing_p.worker_pids])
    threads.append(
        (
            closing_p.shutdown,
            "poolkit._pools._process_pool:ProcessPool.shutdown",
            "pool shutdown",
        )
    )

    # The standard library.
    cond = threading.Condition()

    def cond_wait() -> None:
        with cond:
            cond.wait(30)

    blocker = threading.Thread(target=release.wait, args=(30,))
    blocker.start()
    event = threading.Event()
    semaphore = threading.Semaphore(0)
    future: concurrent.futures.Future[int] = concurrent.futures.Future()
    sc.cleanups += [event.set, semaphore.release, lambda: future.set_result(1)]

    def notify() -> None:
        with cond:
            cond.notify_all()

    sc.cleanups.append(notify)
    barrier = threading.Barrier(2, timeout=30)
    sc.cleanups.append(barrier.abort)
    empty_q: queue.Queue[int] = queue.Queue(1)
    full_q: queue.Queue[int] = queue.Queue(1)
    full_q.put(1)
    sc.cleanups.append(lambda: (empty_q.put_nowait(0), full_q.get_nowait()))
    threads += [
        (cond_wait, "threading:Condition.wait", "cond wait"),
        (lambda: event.wait(30), "threading:Event.wait", "event wait"),
        (lambda: blocker.join(30), "threading:Thread.join", "join"),
        (lambda: semaphore.acquire(timeout=30), "threading:Semaphore.acquire", "semacquire"),
        (barrier.wait, "threading:Barrier.wait", "barrier wait"),
        (lambda: empty_q.get(timeout=30), "queue:Queue.get", "queue get"),
        (lambda: full_q.put(2, timeout=30), "queue:Queue.put", "queue put"),
        (
            lambda: future.result(30),
            "concurrent.futures._base:Future.result",
            "future wait",
        ),
    ]
    for kind in ("EpollSelector", "PollSelector", "SelectSelector", "KqueueSelector"):
        cls = getattr(selectors, kind, None)
        if cls is None:
            continue
        sel = cls()
        r, w = socket.socketpair()
        stack.callback(r.close)
        stack.callback(w.close)
        sel.register(r, selectors.EVENT_READ)
        stack.callback(sel.close)
        sc.cleanups.append(lambda w=w: w.send(b"!"))
        threads.append((lambda sel=sel: sel.select(30), f"selectors:{kind}.select", "IO wait"))
    server = socketserver.TCPServer(("127.0.0.1", 0), socketserver.BaseRequestHandler)
    stack.callback(server.server_close)
    sc.cleanups.append(server.shutdown)
    threads.append(
        (
            lambda: server.serve_forever(poll_interval=0.2),
            "socketserver:BaseServer.serve_forever",
            "IO wait",
        )
    )
    executor = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1))
    await asyncio.wrap_future(executor.submit(time.sleep, 0))
    sc.expect("concurrent.futures.thread:_worker", "executor idle")
    loop = asyncio.new_event_loop()
    threads.append(
        (loop.run_forever, "asyncio.base_events:BaseEventLoop.run_forever", "event loop")
    )
    sc.cleanups.append(lambda: loop.call_soon_threadsafe(loop.stop))
    stack.callback(loop.close)

    for target, where, state in threads:
        _thread(lambda target=target: _quietly(target), where)
        sc.expect(where, state)
    stack.callback(blocker.join, 30)


def test_every_labelled_state_shows_in_a_dump() -> None:
    assert _introspect.unresolved_states() == []

    async def scene() -> list[str]:
        sc = Scenes()
        tasks: list[asyncio.Task[Any]] = []
        problems: list[str] = []
        async with contextlib.AsyncExitStack() as astack:
            with contextlib.ExitStack() as stack:
                try:
                    tasks += await _task_scenes(sc, astack)
                    await _thread_scenes(sc, stack, astack)
                    await asyncio.sleep(SETTLE)  # for the threads to reach their waits
                    snap = leaks.snapshot()
                    problems += sc.check(snap)
                finally:
                    for cleanup in sc.cleanups:
                        _quietly(cleanup)
                    for task in tasks:
                        task.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    for t in threading.enumerate():
                        if t is not threading.current_thread() and t.daemon:
                            await asyncio.to_thread(t.join, 10)
        # Every entry of the table was exercised by some scene.
        exercised = {where for where, _ in sc.expected}
        listed = {where for where, _, _ in _introspect._STATE_TABLE}
        platform = {w for w in _introspect._OPTIONAL if _introspect._resolve(w) is None}
        missing = listed - exercised - platform
        if missing:
            problems.append(f"entries no scene exercises: {sorted(missing)}")
        if problems:
            problems.append(snap.dump(2))
        return problems

    problems = asyncio.run(scene())
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize("kind", ["limiter", "bucket"])
async def test_a_pool_worker_waiting_on_the_pools_limit_says_so(kind: str) -> None:
    # Regression: a worker waiting on limit= was shown as "pool idle" while `poolkit top`
    # showed it busy; a ThreadPool worker inside a blocking call too.
    limit: poolkit.CapacityLimiter | poolkit.TokenBucket
    if kind == "limiter":
        limit = poolkit.CapacityLimiter(1)
        await limit.acquire()
    else:
        limit = poolkit.TokenBucket(0.001, 1)
        limit.try_acquire()
    async with poolkit.WorkerPool(workers=1, limit=limit, name="limited") as pool:
        job = await pool.submit(asyncio.sleep, 0)
        for _ in range(5):
            await asyncio.sleep(0)
        (worker,) = [t for t in leaks.snapshot().tasks if t.owner == "pool 'limited' worker 1"]
        assert worker.state == ("limit wait" if kind == "limiter" else "rate wait")
        job.cancel()


def test_a_thread_pool_worker_inside_a_blocking_call_is_running() -> None:
    held = threading.Lock()
    held.acquire()
    with poolkit.ThreadPool(workers=1, name="sleepy") as pool:
        pool.submit(held.acquire, True, 30)  # blocks in C: no frame of the job's own
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            (worker,) = [t for t in leaks.snapshot().threads if t.owner == "pool 'sleepy' worker 1"]
            if worker.state != "pool idle":
                break
            time.sleep(0.01)
        assert worker.state == "running"
        held.release()
