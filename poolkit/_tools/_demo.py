"""``poolkit demo``: a crawl of an imaginary web site, then a leak caught in the act.

No network and no set-up: the "web" is a table of pages with made-up latencies and the odd
transient failure.  The crawl goes through a ``WorkerPool`` paced by per-host limits (two
requests at a time and twenty a second per host, through ``PerKey`` and ``Limits``) with
retries, while the live counters of the pool are printed.  Then a task is leaked on purpose (a
collector waiting on a channel that nobody will ever close) and ``no_leaks`` catches it and
prints the grouped dump, showing it as blocked forever.  The demo exits 0 when every page was
accounted for and the leak was caught.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import sys
import time
from typing import TextIO

from poolkit._core._exceptions import LeakError
from poolkit._leaks._introspect import track_tasks
from poolkit._leaks._noleaks import no_leaks
from poolkit._pools._pool import WorkerPool
from poolkit._pools._retry import RetryPolicy
from poolkit._primitives._channel import Channel
from poolkit._primitives._composite import Limits, PerKey
from poolkit._primitives._limiter import CapacityLimiter
from poolkit._primitives._ratelimit import TokenBucket

__all__ = ["main"]

HOSTS = ("docs.example", "shop.example", "news.example", "wiki.example", "api.example")


class FakeWeb:
    """Pages with latencies of 5 to 40 ms; one request in twelve fails once, then succeeds."""

    def __init__(self, pages: int, seed: int) -> None:
        rng = random.Random(seed)
        self.urls = [f"https://{HOSTS[n % len(HOSTS)]}/page/{n}" for n in range(pages)]
        self.latency = {url: rng.uniform(0.005, 0.04) for url in self.urls}
        self.flaky = {url for url in self.urls if rng.random() < 1 / 12}

    async def fetch(self, url: str) -> int:
        await asyncio.sleep(self.latency[url])
        if url in self.flaky:
            self.flaky.discard(url)
            raise ConnectionError(f"connection reset by {url.split('/')[2]}")
        return len(url) * 100  # "bytes"


def _line(pool: WorkerPool, started: float, before: tuple[float, int]) -> str:
    s = pool.statistics()
    elapsed = time.monotonic() - started
    then, done_then = before
    done = s.succeeded + s.failed
    rate = (done - done_then) / max(elapsed - then, 1e-9)
    return (
        f"[{elapsed:5.2f} s] pool {s.name!r}: workers {s.workers} (busy {s.busy}) "
        f"| queued {s.queued:3} | done {s.succeeded:3} failed {s.failed} "
        f"retried {s.retried:2} | {rate:5.0f} pages/s"
    )


async def crawl(web: FakeWeb, workers: int, out: TextIO) -> tuple[int, int]:
    per_host: PerKey[str, Limits] = PerKey(
        lambda: Limits(CapacityLimiter(2), TokenBucket("20/s", 2)), name="hosts"
    )
    pool = WorkerPool(
        workers=workers,
        queue_size=workers * 2,
        name="crawler",
        limit=per_host,
        key=lambda job: job.args[0].split("/")[2],  # the host
        retry=RetryPolicy.attempts(3, initial=0.01, jitter=0.005, on=ConnectionError),
    )
    live = out.isatty()
    started = time.monotonic()

    async def show() -> None:
        before = (0.0, 0)
        while True:
            await asyncio.sleep(0.25)
            line = _line(pool, started, before)
            s = pool.statistics()
            before = (time.monotonic() - started, s.succeeded + s.failed)
            out.write(f"\r{line}" if live else f"{line}\n")
            out.flush()

    async with pool, asyncio.TaskGroup() as tg:
        ticker = tg.create_task(show(), name="demo counters")
        ok = failed = 0
        async for outcome in pool.map(web.fetch, web.urls, outcomes=True):
            if outcome.ok:
                ok += 1
            else:
                failed += 1
        ticker.cancel()
    s = pool.statistics()
    out.write(("\n" if live else "") + _line(pool, started, (0.0, 0)) + "  (finished)\n")
    keys = per_host.statistics()
    out.write(
        f"crawled {ok} pages, {failed} failed, {s.retried} retries; per-host limits made "
        f"{keys.created_total}, forgotten once idle {keys.forgotten_total}\n"
    )
    return ok, failed


async def leak(out: TextIO) -> bool:
    """Leak a task on purpose and let ``no_leaks`` catch it."""

    async def collector(results: Channel[int]) -> None:
        async for _ in results:  # waits for a close() that never comes
            pass

    # A real program's leaked task lingers until the garbage collector happens to run; hold it
    # off so that what this demo shows does not depend on when that is.
    collecting = gc.isenabled()
    gc.disable()
    try:
        async with no_leaks(timeout=0.2):
            asyncio.get_running_loop().create_task(
                collector(Channel(0, name="results")), name="results collector"
            )
    except LeakError as error:
        out.write(f"no_leaks() caught it:\n\nLeakError: {error}\n")
        caught = any(t.blocked for t in error.snapshot.tasks)
    else:
        out.write("no_leaks() did not catch the leak\n")
        caught = False
    finally:
        # End the leaked task while the collector is still off: once it runs, it may destroy the
        # unreachable task first ("Task was destroyed but it is pending!").
        me = asyncio.current_task()
        others = [task for task in asyncio.all_tasks() if task is not me]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        del others
        if collecting:
            gc.enable()
    return caught


async def run(pages: int, workers: int, seed: int, out: TextIO) -> int:
    track_tasks()  # creation sites for every task, so the dump says where the leak was made
    web = FakeWeb(pages, seed)
    out.write(
        f"poolkit demo: crawling {pages} pages on {len(HOSTS)} hosts with {workers} workers,"
        " 2 at a time and 20/s per host, retrying connection errors\n"
    )
    ok, failed = await crawl(web, workers, out)
    out.write("\nNow a leak: a task waiting on a channel that nobody will ever close.\n")
    caught = await leak(out)
    if ok + failed != pages:
        out.write(f"error: {pages - ok - failed} pages unaccounted for\n")
        return 1
    return 0 if caught else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poolkit demo", description=__doc__.split("\n")[0])
    parser.add_argument("--pages", type=int, default=200, help="pages to crawl (default 200)")
    parser.add_argument("--workers", type=int, default=16, help="pool workers (default 16)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the fake web (default 1)")
    args = parser.parse_args(argv)
    if args.pages < 1 or args.workers < 1:
        parser.error("--pages and --workers must be at least 1")
    return asyncio.run(run(args.pages, args.workers, args.seed, sys.stdout))
