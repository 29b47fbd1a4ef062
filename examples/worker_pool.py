"""The seed article's Go worker pool, done right with poolkit.WorkerPool.

The Go original starts five workers with a channel each, sends every job to every worker in turn,
and closes the channels.  Three things are wrong with it: jobs are dealt round-robin whatever a
worker's load (one slow job stalls everything behind it on that worker), nobody collects results
or errors, and nothing bounds the submitters, so a fast producer piles up goroutines.

Here: one bounded queue shared by every worker (a free worker takes the next job; a full queue
makes submitters wait), a handle per job carrying its result or error, live counters while it
runs, and a shutdown that either drains everything or, with ``--cancel-after``, cancels what is
running and hands back what never started, so it can be stored or resubmitted.  At the end the
books must balance and no worker task may be left.

    python examples/worker_pool.py --jobs 400 --workers 5
    python examples/worker_pool.py --jobs 400 --workers 5 --cancel-after 0.2
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass

import poolkit


@dataclass(frozen=True, slots=True)
class Job:
    number: int
    size: int

    async def execute(self) -> int:
        """Stand-in for real work: takes a little time, fails now and then."""
        await asyncio.sleep(self.size / 1000)
        if self.number % 37 == 36:
            raise RuntimeError(f"job {self.number} failed")
        return self.number * self.size


@dataclass(frozen=True, slots=True)
class Report:
    stats: poolkit.PoolStatistics
    results: int
    errors: int
    handed_back: int
    tasks_left: int
    balanced: bool


async def run(
    jobs: int = 200,
    workers: int = 5,
    queue_size: int = 10,
    cancel_after: float | None = None,
    seed: int = 1,
    show: bool = False,
) -> Report:
    rng = random.Random(seed)
    pool = poolkit.WorkerPool(workers=workers, queue_size=queue_size, name="go-example")
    handles: list[poolkit.Job[int]] = []

    async def producer() -> None:
        for n in range(jobs):
            try:
                handles.append(await pool.submit(Job(n, rng.randint(1, 20)).execute))
            except poolkit.PoolClosed:
                return  # the pool was shut down under us (--cancel-after)

    async def show_counters() -> None:
        while True:
            await asyncio.sleep(0.05)
            if show:
                print(f"  {pool!r}")

    feeding = asyncio.create_task(producer())
    watching = asyncio.create_task(show_counters())
    if cancel_after is None:
        await feeding  # every job submitted (submit waits while the queue is full) ...
        handed = await pool.shutdown()  # ... then drain: everything queued and running finishes
    else:
        await asyncio.sleep(cancel_after)
        handed = await pool.shutdown(cancel=True)  # cancel the running, hand back the queued
        await feeding
    watching.cancel()
    await asyncio.gather(watching, return_exceptions=True)

    results = errors = 0
    for h in handles:
        if h.cancelled() or isinstance(h.exception(), poolkit.JobHandedBack):
            continue
        if h.exception() is not None:
            errors += 1
        else:
            results += 1
    s = pool.statistics()
    balanced = s.submitted == (
        s.succeeded + s.failed + s.cancelled + s.timed_out + s.queued + s.running + s.handed_back
    )
    left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return Report(s, results, errors, len(handed), len(left), balanced)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--workers", type=int, default=5)
    parser.add_argument("--queue-size", type=int, default=10)
    parser.add_argument("--cancel-after", type=float, default=None, help="seconds, then cancel")
    parser.add_argument("--quiet", action="store_true", help="do not print live counters")
    args = parser.parse_args(argv)
    report = asyncio.run(
        run(args.jobs, args.workers, args.queue_size, args.cancel_after, show=not args.quiet)
    )
    s = report.stats
    print(
        f"submitted {s.submitted}: {s.succeeded} succeeded, {s.failed} failed, "
        f"{s.cancelled} cancelled, {s.handed_back} handed back"
    )
    print(f"results collected: {report.results}, errors collected: {report.errors}")
    if s.started:
        print(
            f"mean queue wait {s.queue_wait_total / s.started * 1000:.1f} ms, "
            f"mean run time {s.run_time_total / s.started * 1000:.1f} ms"
        )
    print(f"worker tasks left: {s.workers}, other tasks left: {report.tasks_left}")
    ok = (
        report.balanced
        and s.workers == 0
        and report.tasks_left == 0
        and report.results == s.succeeded
        and report.errors == s.failed
    )
    print("OK: the books balance and no task is left" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
