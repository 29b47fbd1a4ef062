"""The seed article's worker pool, done right with a poolkit channel.

The Go example this project grew from gives each worker its own unbuffered channel, sends jobs to
the workers in turn, never collects results, and closes the channels from the same loop that
sends.  A slow worker then stalls every producer, a worker that dies leaks its sender, and nobody
can tell whether every job ran.

The shape that works, in Go and here:

* one shared ``jobs`` channel, bounded so that producers feel backpressure;
* several producers (tasks, and a plain thread to show the bridge) that each send their jobs; when
  the last one is done, *the producing side* closes ``jobs``;
* workers that ``async for`` over ``jobs``: the loop ends by itself once the channel is closed and
  drained, so no worker needs to be told to stop and none is left behind;
* a ``results`` channel that the workers send to and the caller drains, closed when the last worker
  has exited;
* an exact account at the end: every job submitted was processed exactly once.

Run it::

    python examples/channel_shutdown.py --jobs 2000 --workers 8
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import threading
import time
from dataclasses import dataclass

import poolkit


@dataclass(frozen=True, slots=True)
class Job:
    producer: str
    number: int


@dataclass(frozen=True, slots=True)
class Result:
    job: Job
    worker: int
    digest: str


@dataclass(frozen=True, slots=True)
class Report:
    submitted: int
    processed: int
    duplicates: int
    missing: int
    per_worker: dict[int, int]
    seconds: float
    tasks_left: int
    jobs: poolkit.ChannelStatistics


async def execute(job: Job) -> str:
    """Stand-in for real work: a little CPU and a yield to the event loop."""
    await asyncio.sleep(0)
    return hashlib.sha256(f"{job.producer}/{job.number}".encode()).hexdigest()[:12]


async def worker(ident: int, jobs: poolkit.Channel[Job], results: poolkit.Channel[Result]) -> None:
    async for job in jobs:  # ends when jobs is closed and drained: nothing to signal, no leak
        await results.send(Result(job, ident, await execute(job)))


async def task_producer(name: str, count: int, jobs: poolkit.Channel[Job]) -> None:
    for n in range(count):
        await jobs.send(Job(name, n))  # blocks while the buffer is full: backpressure


def thread_producer(name: str, count: int, jobs: poolkit.Channel[Job]) -> None:
    for n in range(count):
        jobs.send_blocking(Job(name, n))  # the same channel, from a plain thread


async def run(jobs_per_producer: int = 500, workers: int = 8, capacity: int = 32) -> Report:
    started = time.perf_counter()
    jobs: poolkit.Channel[Job] = poolkit.Channel(capacity, name="jobs")
    results: poolkit.Channel[Result] = poolkit.Channel(capacity, name="results")
    producers = ["task-a", "task-b", "task-c"]

    async def produce_all() -> None:
        # The producing side owns the channel, so it closes it, once every producer is done.
        async with jobs:
            feeder = threading.Thread(
                target=thread_producer, args=("thread", jobs_per_producer, jobs)
            )
            feeder.start()
            async with asyncio.TaskGroup() as tg:
                for name in producers:
                    tg.create_task(task_producer(name, jobs_per_producer, jobs))
            await asyncio.to_thread(feeder.join)

    async def work_all() -> None:
        # results is closed when the last worker has exited
        async with results, asyncio.TaskGroup() as tg:
            for ident in range(workers):
                tg.create_task(worker(ident, jobs, results))

    seen: dict[Job, int] = {}
    per_worker: dict[int, int] = {}
    async with asyncio.TaskGroup() as tg:
        tg.create_task(produce_all())
        tg.create_task(work_all())
        async for result in results:
            seen[result.job] = seen.get(result.job, 0) + 1
            per_worker[result.worker] = per_worker.get(result.worker, 0) + 1

    expected = {Job(p, n) for p in [*producers, "thread"] for n in range(jobs_per_producer)}
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    return Report(
        submitted=len(expected),
        processed=sum(seen.values()),
        duplicates=sum(c - 1 for c in seen.values() if c > 1),
        missing=len(expected - seen.keys()),
        per_worker=dict(sorted(per_worker.items())),
        seconds=time.perf_counter() - started,
        tasks_left=len(others),
        jobs=jobs.statistics(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs per producer (4 producers)")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--capacity", type=int, default=32, help="buffer of the jobs channel")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args.jobs, args.workers, args.capacity))
    print(f"submitted {report.submitted} jobs from 4 producers (3 tasks, 1 thread)")
    print(f"processed {report.processed} in {report.seconds:.3f}s by {args.workers} workers")
    print(f"  per worker: {report.per_worker}")
    print(f"  duplicates: {report.duplicates}, missing: {report.missing}")
    print(f"  jobs channel: {report.jobs}")
    print(f"  tasks still alive after shutdown: {report.tasks_left}")
    ok = report.missing == 0 and report.duplicates == 0 and report.tasks_left == 0
    print("OK: every job ran exactly once and every worker exited" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
