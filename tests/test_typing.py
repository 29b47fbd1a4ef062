"""A user's types flow through the pools.

``.ci/run`` checks this file with ``mypy --strict``: each ``assert_type`` fails the check if the
pool's signature loses the type, and each ``# type: ignore[...]`` on a misuse fails it (as an
unused ignore, under ``--strict``) if the signature stops catching that misuse.  pytest runs it
too, so every line is real code that does what its types say.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
from collections.abc import AsyncIterator, Iterator
from typing import assert_type

from poolkit import (
    Job,
    Outcome,
    ProcessJob,
    ProcessMap,
    ProcessPool,
    ThreadJob,
    ThreadPool,
    WorkerPool,
)


async def fetch(url: str, *, retries: int = 0) -> bytes:
    await asyncio.sleep(0)
    return f"{url}/{retries}".encode()


def parse(data: bytes) -> int:
    return len(data)


async def _worker_pool() -> None:
    async with WorkerPool(workers=2) as pool:
        job = await pool.submit(fetch, "a", retries=1)
        assert_type(job, Job[bytes])
        assert_type(await job, bytes)
        assert await job == b"a/1"

        quick = pool.submit_nowait(parse, b"abc")  # a plain function runs on the loop
        assert_type(quick, Job[int])
        assert await quick == 3

        results = pool.map(fetch, ["x", "y"])
        assert_type(results, AsyncIterator[bytes])
        assert [r async for r in results] == [b"x/0", b"y/0"]

        outcomes = pool.map(fetch, ["z"], outcomes=True)
        assert_type(outcomes, AsyncIterator[Outcome[str, bytes]])
        async for outcome in outcomes:
            assert_type(outcome.item, str)
            assert_type(outcome.value, bytes | None)
            assert (outcome.item, outcome.value) == ("z", b"z/0")

        def from_thread() -> bytes:
            future = pool.submit_blocking(fetch, "t")
            assert_type(future, cf.Future[bytes])
            return future.result(timeout=5)

        assert await asyncio.to_thread(from_thread) == b"t/0"


def test_worker_pool_types_flow() -> None:
    asyncio.run(_worker_pool())


def test_thread_pool_types_flow() -> None:
    with ThreadPool(workers=2) as pool:
        job = pool.submit(parse, b"abcd")
        assert_type(job, ThreadJob[int])
        assert_type(job.result(), int)
        assert job.result(timeout=5) == 4

        results = pool.map(parse, [b"a", b"bb"])
        assert_type(results, Iterator[int])
        assert list(results) == [1, 2]

        outcomes = pool.map(parse, [b"ccc"], outcomes=True)
        assert_type(outcomes, Iterator[Outcome[bytes, int]])
        assert [(o.item, o.value) for o in outcomes] == [(b"ccc", 3)]


def test_process_pool_types_flow() -> None:
    # len and math-free builtins are importable by name in the worker processes.
    with ProcessPool(workers=1) as pool:
        job = pool.submit(len, b"abcd")
        assert_type(job, ProcessJob[int])
        assert job.result(timeout=30) == 4

        results = pool.map(len, [b"a", b"bb"])
        assert_type(results, ProcessMap[int])
        assert list(results) == [1, 2]

        outcomes = pool.map(len, [b"ccc"], outcomes=True)
        assert_type(outcomes, ProcessMap[Outcome[bytes, int]])
        assert [(o.item, o.value) for o in outcomes] == [(b"ccc", 3)]


async def _process_pool_async(pool: ProcessPool) -> None:
    """Only type-checked: awaiting a job gives its result, async for its map's."""
    assert_type(await pool.submit(len, b"ab"), int)
    job = await pool.submit_async(len, b"abc")
    assert_type(job, ProcessJob[int])
    assert_type(await job, int)
    async for n in pool.map(len, [b"a"]):
        assert_type(n, int)


async def _misuse_is_caught(pool: WorkerPool, threads: ThreadPool) -> None:
    """Never run: only type-checked.  Each line is a mistake the signatures must catch."""
    await pool.submit(fetch, 1)  # type: ignore[call-overload]
    await pool.submit(fetch, "a", retry=2)  # type: ignore[call-arg]
    pool.map(fetch, [1, 2])  # type: ignore[arg-type]
    threads.submit(parse, "not bytes")  # type: ignore[arg-type]
    threads.map(parse, ["not bytes"])  # type: ignore[arg-type]
    ProcessPool().submit(parse, "not bytes")  # type: ignore[arg-type]
    await ProcessPool().submit_async(parse, "not bytes")  # type: ignore[arg-type]
