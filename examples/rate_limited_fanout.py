"""Fan out over a list of work with a concurrency cap, a global rate and a rate per host.

A scraper's shape without the network: each item names a host; "fetching" it takes a little
time.  poolkit keeps, at once,

* at most ``--concurrency`` fetches in flight (a ``CapacityLimiter``),
* at most ``--rate`` fetches started per second overall (a ``TokenBucket``),
* at most ``--per-host`` fetches started per second to any one host (a ``PerKey`` of buckets),

all enforced as one ``Limits``: the slot is taken first, then the global token and the host's
token together.  (Taking the host's token first, outside the ``Limits``, looks equivalent but is
not: the fetch then waits for a slot with its token already spent, and a host's starts bunch up
later, beyond its rate.  This example's own check caught exactly that.)  At the end the program
checks its log: the cap was never exceeded and no window of time saw more starts than the rates
allow, overall or for any host.

Run it on real time::

    python examples/rate_limited_fanout.py --items 200 --rate 100 --per-host 20

or on virtual time (instant, and exact), as its test does::

    python examples/rate_limited_fanout.py --virtual
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from dataclasses import dataclass

import poolkit
from poolkit.testing import VirtualTimeLoop


@dataclass(frozen=True, slots=True)
class Report:
    items: int
    seconds: float
    peak_in_flight: int
    worst_global_excess: float  # starts beyond rate*w + burst in the worst window (<= 0: held)
    worst_host_excess: float
    hosts: int
    per_key: poolkit.PerKeyStatistics


def worst_excess(starts: list[float], rate: float, burst: float) -> float:
    """The most any window of the log exceeds ``rate * w + burst`` (negative: it never did)."""
    starts = sorted(starts)
    worst = -burst
    for i in range(len(starts)):
        for j in range(i, len(starts)):
            worst = max(worst, (j - i + 1) - (rate * (starts[j] - starts[i]) + burst))
    return worst


async def run(
    items: int = 120,
    concurrency: int = 8,
    rate: float = 50.0,
    per_host: float = 10.0,
    hosts: int = 6,
    seed: int = 1,
) -> Report:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    work = [(f"host{rng.randrange(hosts)}.example", n) for n in range(items)]

    global_burst = max(1, int(rate // 10))
    host_burst = 2
    by_host: poolkit.PerKey[str, poolkit.TokenBucket] = poolkit.PerKey(
        lambda: poolkit.TokenBucket(per_host, host_burst), name="per host"
    )
    limits = poolkit.Limits(
        poolkit.CapacityLimiter(concurrency, name="in flight"),
        poolkit.TokenBucket(rate, global_burst, name="overall rate"),
        by_host,
        name="fan-out",
    )

    starts: list[float] = []
    host_starts: dict[str, list[float]] = {}
    in_flight = 0
    peak = 0

    async def fetch(host: str, n: int) -> None:
        nonlocal in_flight, peak
        async with limits.hold(host):  # a slot, then the global and the host's token together
            t = loop.time()
            starts.append(t)
            host_starts.setdefault(host, []).append(t)
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(rng.uniform(0.01, 0.2))  # the "request"
            in_flight -= 1

    t0 = loop.time()
    async with asyncio.TaskGroup() as tg:
        for host, n in work:
            tg.create_task(fetch(host, n))
    seconds = loop.time() - t0

    return Report(
        items=len(starts),
        seconds=seconds,
        peak_in_flight=peak,
        worst_global_excess=worst_excess(starts, rate, global_burst),
        worst_host_excess=max(worst_excess(s, per_host, host_burst) for s in host_starts.values()),
        hosts=len(host_starts),
        per_key=by_host.statistics(),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rate", type=float, default=50.0, help="fetches per second overall")
    parser.add_argument("--per-host", type=float, default=10.0, help="fetches per second per host")
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--virtual", action="store_true", help="run on virtual time")
    args = parser.parse_args(argv)
    factory = VirtualTimeLoop if args.virtual else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        report = runner.run(run(args.items, args.concurrency, args.rate, args.per_host, args.hosts))
    clock = "virtual" if args.virtual else "real"
    print(
        f"{report.items} fetches to {report.hosts} hosts in {report.seconds:.2f} s ({clock} time)"
    )
    print(f"  in flight at most: {report.peak_in_flight} (cap {args.concurrency})")
    print(f"  worst window vs the global rate:   {report.worst_global_excess:+.2f} starts")
    print(f"  worst window vs a host's rate:     {report.worst_host_excess:+.2f} starts")
    print(f"  per-host limits: {report.per_key}")
    ok = (
        report.items == args.items
        and report.peak_in_flight <= args.concurrency
        and report.worst_global_excess <= 1e-9
        and report.worst_host_excess <= 1e-9
    )
    print("OK: every limit held" if ok else "FAILED: a limit was exceeded")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
