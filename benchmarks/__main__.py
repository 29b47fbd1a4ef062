"""``python -m benchmarks [--scale S] [--repeat N] [--only TEXT] [--loop asyncio|uvloop]``."""

from __future__ import annotations

import argparse
import asyncio
import platform
import sys

from . import _harness
from . import bench_channel as bench_channel  # each module registers its suites
from . import bench_leaks as bench_leaks
from . import bench_limits as bench_limits
from . import bench_pools as bench_pools
from . import bench_process as bench_process
from . import bench_redis as bench_redis
from . import bench_scraper as bench_scraper
from . import bench_threads as bench_threads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the full sizes")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the best is shown")
    parser.add_argument("--only", default="", help="run the suites whose name contains this")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    args = parser.parse_args(argv)
    if args.scale <= 0 or args.repeat < 1:
        parser.error("--scale must be > 0 and --repeat >= 1")
    if args.loop == "uvloop":
        import uvloop

        _harness.LOOP_FACTORY[0] = uvloop.new_event_loop
    else:
        _harness.LOOP_FACTORY[0] = asyncio.new_event_loop
    chosen = [s for s in _harness.suites() if args.only in s.name]
    if not chosen:
        parser.error(f"no benchmark matches --only {args.only!r}")
    print(
        f"poolkit benchmarks: Python {platform.python_version()} on {platform.machine()}, "
        f"loop={args.loop}, scale={args.scale}, best of {args.repeat}"
    )
    results = []
    for suite in chosen:
        print(f"  running {suite.name} ...", file=sys.stderr, flush=True)
        results.append((suite, _harness.measure(suite, args.scale, args.repeat)))
    print()
    print(_harness.table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
