"""Fetch a list of URLs politely, resumably and without leaving anything behind.

A real scraper on poolkit and aiohttp (``pip install 'poolkit[scraper]'``).  URLs are read from a
file, or from stdin, and flow through a closable :class:`poolkit.Channel` into a
:class:`poolkit.WorkerPool`.  The limits are held *inside* the HTTP client, by
:func:`poolkit.http.aiohttp_middleware`, so that every request on the wire passes them, including
aiohttp's own re-send of a request whose kept-alive connection the server had closed; they keep

* at most ``--concurrency`` requests in flight over all hosts (a ``CapacityLimiter``; or, when
  hosts have no limits of their own, simply as many workers),
* at most ``--per-host`` requests in flight to any one host (a ``CapacityLimiter`` per host),
* at most ``--rate`` request starts per host, in bursts of ``--burst`` (a ``TokenBucket`` per
  host, through ``PerKey``).

A request holds them until its body is read.

With ``--adaptive``, each host's concurrency is an :class:`poolkit.AdaptiveLimiter` instead of a
fixed cap: it starts at 10 (or ``--per-host`` if lower), and follows the host's latency and its
429/503 answers and timeouts, up to ``--per-host``; a ``Retry-After`` pauses every request to
that host for as long (at most ``--max-retry-after``).  A 429/503 without one keeps its slot for
as long as a request served takes, so that a slot too many does not get a refusal every round
trip from a host that sheds load at once.  Use it when you do not know what each host can take:
against a host that serves 8 at once and refuses the rest, ``--per-host 64 --adaptive`` keeps
about 7.7 requests in service, and about 5 % of its requests are refused once it has settled
(with a fixed 64: about 65 %; ``examples/scraper_server.py`` is such a host).

With ``--redis URL`` (``pip install 'poolkit[redis]'``) the same three limits are kept in Redis
instead, so that several scraper processes, on one machine or many, hold them together: the
global cap is a ``RedisCapacityLimiter``, each host's cap and rate a ``RedisCapacityLimiter`` and a
``RedisTokenBucket`` made by a ``PerKey(..., with_key=True)`` factory, all under the key prefix
``--redis-prefix``.  Every process naming the same URL and prefix shares them; the first to create
a limit in Redis sets its size, so give them all the same limits (or another prefix).  The
processes do not split the input between them: give each its own part of the URLs::

    python examples/scraper.py part1.txt -o out1.jsonl --redis redis://127.0.0.1:6379/0 &
    python examples/scraper.py part2.txt -o out2.jsonl --redis redis://127.0.0.1:6379/0 &

With ``--redis`` and ``--adaptive`` together, ``--per-host`` is a ceiling that all the processes
share, and each process adapts its own limit per host under it (an adaptive limiter learns from
the requests of its own process), as independent clients of one server do: each hears the
host's 503s and latency, so together they back off.

A Redis that cannot be reached at the start is an error (exit status 2); one lost during the run
stops it as a failed write does: the URLs not fetched are listed for the next run.

Connection errors, timeouts, 429 and 5xx answers are retried by the pool's tenacity policy, with
exponential backoff and jitter, or after the delay the server named in ``Retry-After`` (seconds
or an HTTP date; poolkit's ``wait_retry_after`` reads it, and ``stop_if_retry_after_exceeds``
gives up on a URL whose server asks for longer than ``--max-retry-after``).  Each request of a
retry takes the limits afresh, and none are held while a job waits to retry, so a retry is paced
like any other request.

Ctrl-C (SIGINT) or SIGTERM stops the run: no new URL is taken, requests already on the wire get
``--grace`` seconds to finish, then they are cancelled.  The URLs never fetched, including those
cancelled mid-flight, are written to ``--unfetched`` in input order, so that

    python examples/scraper.py urls.txt -o results.jsonl --unfetched left.txt
    python examples/scraper.py left.txt -o more.jsonl --unfetched left2.txt

together fetch every URL exactly once.  A second signal skips the grace.  The whole run is
checked by ``poolkit.no_leaks()``: no task or thread may outlive it.

Results are JSON lines, one per URL that was fetched or given up on (``--output``, default
stdout)::

    {"url": ..., "host": ..., "ok": true, "status": 200, "bytes": 5120, "attempts": 1,
     "seconds": 0.031, "error": null, "location": null}

``attempts`` counts the requests that went on the wire for the URL: aiohttp's own re-send is one,
so it can exceed ``--attempts``, which counts the scraper's tries.

Redirects are not followed (a redirect's target is another request, maybe to another host, that
must pass the limits too): a 3xx answer is a result, with its ``Location``.

Progress goes to stderr: a live table per host on a terminal, a plain line every
``--progress-interval`` seconds otherwise (with ``--adaptive``, each host's limit now).  Exit
status: 0 when every URL was fetched with a status below 400, 1 when some were not (or the run
stopped on an error), 2 for bad arguments (a ``--redis`` that does not answer included), 3 if
tasks or threads were left behind, 130 after SIGINT and 143 after SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import json
import math
import os
import random
import re
import signal
import stat
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import tenacity

import poolkit
from poolkit import (
    retry_after_of,
    stop_if_retry_after_exceeds,
    wait_retry_after,
)
from poolkit.http import aiohttp_middleware
from poolkit.redis import RedisCapacityLimiter, RedisTokenBucket

try:
    import aiohttp
except ModuleNotFoundError:  # pragma: no cover - the "scraper" extra is not installed
    _HAVE_AIOHTTP = False
else:
    _HAVE_AIOHTTP = True

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_LEAKED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "RetryableError",
    "Scraper",
    "Settings",
    "Summary",
    "main",
    "make_session",
    "parse_retry_after",
    "run",
]

EXIT_OK = 0
EXIT_FAILED = 1  # some URLs were given up on, or answered with a status >= 400
EXIT_LEAKED = 3
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, the shell's convention
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

# Where a URL is, as far as progress and shutdown care; the counted phases have a counter of
# the same name in HostCounts.
_READ = "read"  # taken from the input, not yet submitted
_WAITING = "waiting"  # being submitted, or waiting for its limits
_REQUESTING = "in_flight"  # on the wire
_BACKOFF = "retrying"  # an attempt failed in a retryable way; sleeping before the next
_OVER = "over"  # its job has ended
_COUNTED = (_WAITING, _REQUESTING, _BACKOFF)

_ADAPTIVE_START = 10  # an adaptive host limit's first total (at most the ceiling)


def _need_aiohttp() -> None:
    if not _HAVE_AIOHTTP:
        raise RuntimeError(
            "the scraper needs aiohttp, which is an optional extra: pip install 'poolkit[scraper]'"
        )


# ======================================================================= settings


@dataclass(frozen=True, slots=True)
class Settings:
    """How the scraper behaves; every field has a command-line option of the same name."""

    concurrency: int = 16
    """Requests in flight at once, over all hosts."""
    per_host: int | None = 4
    """Requests in flight at once to one host (``None``: no cap of its own); with ``adaptive``,
    the most a host's limit can grow to (``None``: up to ``concurrency``)."""
    rate: float | str | None = "5/s"
    """Request starts per second per host, or a string such as ``"300/min"`` (``None``: no
    limit)."""
    burst: float | None = None
    """How many starts a host may get at once after being idle (default: one second's worth)."""
    attempts: int = 4
    """Attempts per URL in all (1: no retries)."""
    backoff: float = 0.5
    """The first wait before a retry, in seconds; it doubles with each retry."""
    max_backoff: float = 30.0
    """The longest wait before a retry, unless the server asks for longer with Retry-After."""
    jitter: float = 0.5
    """Up to this many seconds are added at random to each wait, so retries do not herd."""
    max_retry_after: float = 120.0
    """A Retry-After longer than this many seconds is not waited for: the URL fails instead."""
    timeout: float = 30.0
    """Seconds for one request, from connecting to the end of the body."""
    grace: float = 10.0
    """After a stop signal, seconds for requests in flight to finish before they are cancelled."""
    workers: int | None = None
    """Worker tasks (default: twice ``concurrency``, so that jobs sleeping before a retry or
    waiting for a busy host do not keep the other hosts idle)."""
    progress_interval: float = 1.0
    """Seconds between progress reports."""
    redis: str | None = None
    """A Redis URL (``"redis://127.0.0.1:6379/0"``): keep the global cap and each host's cap and
    rate there, shared by every process that names the same URL and ``redis_prefix``
    (``None``: in this process only)."""
    redis_prefix: str = "poolkit:scraper"
    """The first part of every Redis key the limits use; processes with another prefix have
    limits of their own."""
    adaptive: bool = False
    """Give each host an :class:`poolkit.AdaptiveLimiter` that finds how many requests at once
    it takes, from its latency, its 429/503 answers and timeouts, up to ``per_host``; a
    Retry-After pauses the host.  Starts at 10, or ``per_host`` if lower.  With ``redis``, each
    process adapts its own, under the caps and rates shared in Redis."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "attempts"):
            _check_int(getattr(self, name), name, 1)
        for name in ("per_host", "workers"):
            if getattr(self, name) is not None:
                _check_int(getattr(self, name), name, 1)
        if self.rate is not None:
            poolkit.parse_rate(self.rate, "rate")  # raises with a message naming it
        if self.burst is not None:
            _check_seconds(self.burst, "burst")
            if self.burst < 1:
                raise ValueError(f"burst must be >= 1, got {self.burst!r}")
        for name in (
            "backoff",
            "max_backoff",
            "jitter",
            "max_retry_after",
            "timeout",
            "grace",
            "progress_interval",
        ):
            _check_seconds(getattr(self, name), name)
        if self.timeout == 0 or self.progress_interval == 0:
            raise ValueError("timeout and progress_interval must be > 0")
        if self.redis is not None and (not isinstance(self.redis, str) or not self.redis):
            raise TypeError(f"redis must be a Redis URL or None, got {self.redis!r}")
        if not isinstance(self.redis_prefix, str):
            raise TypeError(f"redis_prefix must be a str, got {self.redis_prefix!r}")
        if not self.redis_prefix or "{" in self.redis_prefix or "}" in self.redis_prefix:
            raise ValueError(
                f"redis_prefix must be a non-empty str without braces, got {self.redis_prefix!r}"
            )
        if not isinstance(self.adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {self.adaptive!r}")

    @property
    def per_host_limits(self) -> bool:
        return self.per_host is not None or self.rate is not None or self.adaptive

    @property
    def ceiling(self) -> int:
        """The most an adaptive host limit grows to: ``per_host``, or else ``concurrency`` (more
        could never be in flight to one host)."""
        return self.per_host if self.per_host is not None else self.concurrency

    @property
    def pool_workers(self) -> int:
        """Twice the cap when hosts have limits of their own (a worker waiting for a busy host
        must not hold up the others; the global limiter keeps the cap), else the cap itself."""
        if self.workers is not None:
            return self.workers
        return 2 * self.concurrency if self.per_host_limits else self.concurrency


def _check_int(value: object, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def _check_seconds(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def make_session(
    settings: Settings, middlewares: Iterable[aiohttp.ClientMiddlewareType] = ()
) -> aiohttp.ClientSession:
    """The aiohttp session the scraper uses (the benchmark's alternative uses the same one).

    Its connection pool is as large as the concurrency cap, so that poolkit's limits, not the
    connector, decide who waits.  Its innermost middleware gives each request on the wire
    ``settings.timeout`` seconds from connecting to the end of its body, which it reads;
    ``middlewares`` go around it (the scraper's limits: see :class:`Scraper`).
    """
    _need_aiohttp()
    connector = aiohttp.TCPConnector(limit=settings.concurrency, limit_per_host=0)
    return aiohttp.ClientSession(
        connector=connector,
        # No timeout of aiohttp's own: it runs from the call of session.get(), so it would
        # count the wait for the limits, which the outer middlewares take.
        timeout=aiohttp.ClientTimeout(),
        headers={"User-Agent": "poolkit-scraper-example"},
        middlewares=(*middlewares, _timed(settings.timeout)),
    )


def _timed(timeout: float) -> aiohttp.ClientMiddlewareType:
    """A middleware that gives each request on the wire ``timeout`` seconds, from connecting to
    the end of its body (which it reads: ``read()`` then returns it from memory)."""

    async def timed(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        async with asyncio.timeout(timeout):
            response = await handler(request)
            await response.read()  # it closes the response if it fails
            return response

    return timed


# ======================================================================= retries


class RetryableError(Exception):
    """An attempt failed in a way worth retrying: no connection, a timeout, 429 or a 5xx.

    ``status`` is the HTTP status if there was an answer; ``retry_after`` the delay in seconds
    the server asked for, if it did.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class _NotStarted(Exception):
    """A stop came while the job waited for its limits: the URL is left for the next run."""


_SCHEME_AND_NETLOC = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://([^/?#]*)")


def _origin(url: str) -> tuple[bool, str]:
    """(is it http or https, its host as the limits key: ``netloc``, lower case).  What
    ``urllib.parse.urlsplit`` would say, at a twentieth of the cost: it runs for every URL."""
    m = _SCHEME_AND_NETLOC.match(url)
    if m is None:
        return False, ""
    return m[1].lower() in ("http", "https"), m[2].lower()


# The library's parser, under the name this example has always exported.
parse_retry_after = poolkit.parse_retry_after


def _jitter(rng: random.Random, most: float) -> Callable[[tenacity.RetryCallState], float]:
    """A tenacity wait of up to ``most`` seconds at random, from ``rng`` (seeded, in tests)."""
    return lambda state: rng.uniform(0, most)


# ======================================================================= bookkeeping


@dataclass(slots=True)
class HostCounts:
    """One host's counters, as shown by the progress report."""

    done: int = 0
    """URLs answered with a status below 400."""
    failed: int = 0
    """URLs given up on, or answered with a status of 400 or more (not retried)."""
    retries: int = 0
    """Attempts beyond the first."""
    waiting: int = 0
    """Jobs waiting for a worker or for this host's limits."""
    in_flight: int = 0
    """Requests on the wire now."""
    retrying: int = 0
    """Jobs sleeping before their next attempt."""
    limit: int | None = None
    """With ``--adaptive``: the host's limit at the end of the run (in :attr:`Summary.hosts`;
    the progress report reads the limiter itself)."""


@dataclass(slots=True, eq=False)
class _Item:
    seq: int  # its line in the input, so that unfetched URLs keep their order
    url: str
    host: str
    counts: HostCounts  # its host's (shared) counters
    attempts: int = 0
    phase: str = _READ
    started: float = 0.0
    job: poolkit.Job[dict[str, Any]] | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """What a run did; ``unfetched`` is what is left for the next run, in input order."""

    read: int
    """URLs taken from the input."""
    ok: int
    """Fetched with a status below 400."""
    failed: int
    """Given up on, or answered with a status of 400 or more."""
    retries: int
    """Attempts beyond the first, over all URLs."""
    unfetched: list[str]
    """Never fetched, or cancelled mid-flight: fetch them next time."""
    stopped_by: str | None
    """``"SIGINT"``, ``"SIGTERM"`` or whatever was passed to :meth:`Scraper.stop`; ``None``
    when the input was finished."""
    input_complete: bool
    """Whether the input was read to its end (after a stop, to list it in ``unfetched``)."""
    seconds: float
    hosts: dict[str, HostCounts] = field(default_factory=dict)
    error: str | None = None
    """Why the run stopped on its own, if it did (writing a result failed, or Redis could not be
    reached)."""

    @property
    def exit_code(self) -> int:
        if self.error is not None:
            return EXIT_FAILED
        if self.stopped_by == "SIGTERM":
            return EXIT_TERMINATED
        if self.stopped_by is not None:
            return EXIT_INTERRUPTED
        return EXIT_OK if self.failed == 0 else EXIT_FAILED


# ======================================================================= the scraper


_Member = poolkit.CapacityLimiter | RedisCapacityLimiter | poolkit.PerKey[str, poolkit.Limits]
_HostPart = poolkit.CapacityLimiter | poolkit.TokenBucket | RedisCapacityLimiter | RedisTokenBucket

# The URL whose request is going out, for the session's middlewares: aiohttp calls them in the
# task that called session.get(), the worker running the URL's attempt.
_CURRENT: contextvars.ContextVar[_Item] = contextvars.ContextVar("scraper_item")


def _host_of_request(request: object) -> str:
    """The limits key of a request: the host of the URL it is for, as the progress counts it."""
    return _CURRENT.get().host


class Scraper:
    """One run: ``summary = await Scraper(settings, write=...).run(urls)``.

    ``write`` receives one result dict per URL fetched or given up on (the JSON lines);
    ``progress`` is where reports go (``None``: nowhere), ``live`` whether to redraw a table
    (for a terminal) rather than print lines.  :meth:`stop` may be called at any time, e.g. from
    a signal handler: the first call stops the run gracefully, the second cancels what is left.

    The limits (:attr:`limits`) are held by the session, in a middleware
    (:func:`poolkit.http.aiohttp_middleware`, keyed by host), for each request on the wire
    until its body is read; the pool's workers carry the jobs and cap how many there are.
    :meth:`_on_the_wire`, inside it, counts each request that goes out.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        write: Callable[[dict[str, Any]], None] | None = None,
        progress: TextIO | None = None,
        live: bool = False,
        seed: int | None = None,
    ) -> None:
        _need_aiohttp()
        self.settings = s = settings if settings is not None else Settings()
        self._write_result = write if write is not None else (lambda record: None)
        self.write_error: BaseException | None = None
        """The first exception ``write`` raised, if any: the run stopped at it."""
        self._progress = progress
        self._live = live
        self._lines_shown = 0
        self._per_host: poolkit.PerKey[str, poolkit.Limits] | None = None
        self.limits: poolkit.Limits | None = None
        # The global cap when kept in Redis; run() closes it, and the PerKey (which closes the
        # Redis limits its factory made).
        self._redis_cap: RedisCapacityLimiter | None = None
        self.redis_error: poolkit.RedisUnavailable | None = None
        """Set if Redis could not be reached during the run: the run stopped at it."""
        if s.redis is not None:
            # The global cap is in Redis, so it is needed even where the workers alone would
            # cap this process: they cannot cap the processes together.
            self._redis_cap = RedisCapacityLimiter(
                s.redis, "in-flight", s.concurrency, prefix=s.redis_prefix, name="in flight"
            )
            members: list[_Member] = [self._redis_cap]
            if s.per_host_limits:
                self._per_host = poolkit.PerKey(
                    self._redis_host_limits, with_key=True, name="per host"
                )
                members.append(self._per_host)
            self.limits = poolkit.Limits(*members, name="scraper")
        elif s.per_host_limits or s.pool_workers > s.concurrency:
            members = [poolkit.CapacityLimiter(s.concurrency, name="in flight")]
            if s.per_host_limits:
                self._per_host = poolkit.PerKey(self._host_limits, name="per host")
                members.append(self._per_host)
            self.limits = poolkit.Limits(*members, name="scraper")
        # else the pool's workers are the cap, and no limit is needed on top of them.
        self._middlewares: list[aiohttp.ClientMiddlewareType] = [self._on_the_wire]
        if self.limits is not None:
            # Around the other one, which then runs with the limits held.  429 and 503 answers
            # and timeouts reach the adaptive limiters (--adaptive), with their Retry-After.
            self._middlewares.insert(
                0,
                aiohttp_middleware(
                    self.limits, key=_host_of_request if self._per_host is not None else None
                ),
            )
        retry = None
        if s.attempts > 1:
            # The server's Retry-After if it sent one (a 429 or 503 usually does), else
            # exponential backoff; jitter on top of either, so that retries do not herd.  A
            # Retry-After beyond max_retry_after stops the retries: the URL fails at once.
            # (RetryPolicy(retry_after=max_retry_after) with the jitter on both waits.)
            wait: Any = wait_retry_after(
                tenacity.wait_exponential(multiplier=s.backoff, max=s.max_backoff),
                max_delay=s.max_retry_after,
            )
            if s.jitter:
                wait += _jitter(random.Random(seed), s.jitter)
            retry = poolkit.RetryPolicy(
                stop=tenacity.stop_after_attempt(s.attempts)
                | stop_if_retry_after_exceeds(s.max_retry_after),
                wait=wait,
                retry=tenacity.retry_if_exception_type(RetryableError),
            )
        self.pool = poolkit.WorkerPool(
            workers=s.pool_workers,
            # A short queue lets workers take the next URL without waiting for the dispatcher;
            # after a stop, the jobs still queued are cancelled and listed as unfetched.
            queue_size=s.concurrency,
            name="scraper",
            retry=retry,
        )
        self.channel: poolkit.Channel[_Item] = poolkit.Channel(s.concurrency, name="urls")
        self.hosts: dict[str, HostCounts] = {}
        self._outstanding: dict[int, _Item] = {}  # submitted, not settled; by seq
        self._unfetched: list[_Item] = []
        self._holding: _Item | None = None  # the item the dispatcher is submitting
        self._read = self._ok = self._failed = self._retries = 0
        self._stopped_by: str | None = None
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second stop: no more grace for anything
        self._input_complete = False
        self._session: aiohttp.ClientSession | None = None
        self._t0 = time.monotonic()
        self._last_report = (self._t0, 0)

    def _adaptive_limiter(self) -> poolkit.AdaptiveLimiter:
        s = self.settings
        # A Retry-After pauses the host at most as long as a retry would wait for it.
        return poolkit.AdaptiveLimiter(
            min(s.ceiling, _ADAPTIVE_START), max=s.ceiling, max_pause=s.max_retry_after
        )

    def _host_limits(self) -> poolkit.Limits:
        s = self.settings
        parts: list[poolkit.CapacityLimiter | poolkit.TokenBucket] = []
        if s.adaptive:
            parts.append(self._adaptive_limiter())
        elif s.per_host is not None:
            parts.append(poolkit.CapacityLimiter(s.per_host))
        if s.rate is not None:
            parts.append(poolkit.TokenBucket(s.rate, s.burst))
        return poolkit.Limits(*parts)

    def _redis_host_limits(self, host: str) -> poolkit.Limits:
        """``_host_limits`` kept in Redis: the same cap and rate for ``host`` in every process
        (the PerKey passes the host: the Redis keys are named after it; it closes them when it
        forgets the host, or when it is closed).  An adaptive limit stays in this process."""
        s = self.settings
        assert s.redis is not None
        # A brace in a Redis key would move its Cluster hash tag; a host cannot have one
        # legally, but the input is not trusted: encode it as a URL would.
        name = host.replace("{", "%7B").replace("}", "%7D")
        parts: list[_HostPart] = []
        if s.adaptive:
            parts.append(self._adaptive_limiter())
        if s.per_host is not None:
            parts.append(
                RedisCapacityLimiter(
                    s.redis, f"host-cap:{name}", s.per_host, prefix=s.redis_prefix, name=host
                )
            )
        if s.rate is not None:
            parts.append(
                RedisTokenBucket(
                    s.redis, f"host-rate:{name}", s.rate, s.burst, prefix=s.redis_prefix, name=host
                )
            )
        return poolkit.Limits(*parts)

    def host_limit(self, host: str) -> int | None:
        """With ``--adaptive``, ``host``'s limit now (``None`` otherwise)."""
        if not self.settings.adaptive or self._per_host is None:
            return None
        stats = self._per_host.statistics_for(host)
        if stats is not None:
            for member in stats.members if isinstance(stats, poolkit.LimitsStatistics) else ():
                if isinstance(member, poolkit.AdaptiveLimiterStatistics):
                    return member.total
        # Not made yet, or forgotten: a PerKey forgets an adaptive limiter only while it is
        # still at its first total, and the next request to the host gets a new one.
        return min(self.settings.ceiling, _ADAPTIVE_START)

    async def _close_redis(self) -> None:
        """Close the limits kept in Redis (idempotent): they give back what they hold and stop
        their heartbeats, and the last one closes the connections and the wake-up
        subscription."""
        cap, self._redis_cap = self._redis_cap, None
        if cap is None:
            return
        if self._per_host is not None:
            await self._per_host.aclose()
        await cap.aclose()

    # ----------------------------------------------------------------- stopping

    def stop(self, reason: str = "stopped") -> None:
        """Stop taking URLs and let requests in flight finish within the grace; a second call
        cancels them now.  Synchronous, for signal handlers; safe before or after the run."""
        if self._stopped_by is None:
            self._stopped_by = reason
            self._stop.set()
            self.channel.close()  # the feeder's pending send fails: that URL was not taken
            self._report()
        else:
            self._hurry.set()
            for item in list(self._outstanding.values()):
                if item.job is not None:
                    item.job.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopped_by is not None

    # ----------------------------------------------------------------- the run

    async def run(self, urls: Iterable[str] | AsyncIterable[str]) -> Summary:
        """Fetch every URL of ``urls`` (blank lines and ``#`` comments are skipped)."""
        s = self.settings
        self._t0 = time.monotonic()
        self._last_report = (self._t0, 0)
        tasks: list[asyncio.Task[Any]] = []
        async with make_session(s, self._middlewares) as session:
            self._session = session
            try:
                feeder = asyncio.create_task(self._feed(urls), name="scraper feeder")
                dispatcher = asyncio.create_task(self._dispatch(), name="scraper dispatcher")
                stopped = asyncio.create_task(self._stop.wait(), name="scraper stop signal")
                tasks += [feeder, dispatcher, stopped]
                if self._progress is not None:
                    tasks.append(asyncio.create_task(self._reports(), name="scraper progress"))
                await asyncio.wait([dispatcher, stopped], return_when=asyncio.FIRST_COMPLETED)
                if not self.stopping:
                    # The input is done and every URL has a worker: drain, unless stopped.
                    draining = asyncio.create_task(self.pool.shutdown(), name="scraper drain")
                    tasks.append(draining)
                    await asyncio.wait([draining, stopped], return_when=asyncio.FIRST_COMPLETED)
                if self.stopping:
                    await self._wind_down(dispatcher)
                await self.pool.shutdown()  # done by now; returns at once
                # After a stop the feeder lists the rest of the input; give it the grace too.
                hurry = asyncio.create_task(self._hurry.wait(), name="scraper hurry")
                tasks.append(hurry)
                done, _ = await asyncio.wait(
                    [feeder, hurry], timeout=s.grace, return_when=asyncio.FIRST_COMPLETED
                )
                if feeder in done:
                    feeder.result()
            finally:
                await self.pool.shutdown(cancel=True)  # a no-op unless something raised
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
                for item in list(self._outstanding.values()):
                    self._settle(item)  # done-callbacks not yet run
                self._session = None
                if s.adaptive:
                    for host, counts in self.hosts.items():
                        counts.limit = self.host_limit(host)
                await self._close_redis()  # nothing holds them now: the pool is shut down
        crashed = [o for o in outcomes if isinstance(o, Exception)]
        if crashed:  # a bug in the feeder, the dispatcher or the progress task: not hidden
            raise crashed[0]
        self._report(final=True)
        error = self.write_error if self.write_error is not None else self.redis_error
        return Summary(
            read=self._read,
            ok=self._ok,
            failed=self._failed,
            retries=self._retries,
            unfetched=[i.url for i in sorted(self._unfetched, key=lambda i: i.seq)],
            stopped_by=self._stopped_by,
            input_complete=self._input_complete,
            seconds=time.monotonic() - self._t0,
            hosts={h: dataclasses.replace(c) for h, c in self.hosts.items()},  # copies
            error=None if error is None else _describe(error),
        )

    async def _wind_down(self, dispatcher: asyncio.Task[None]) -> None:
        """After a stop: take nothing more, let requests on the wire finish, cancel the rest."""
        dispatcher.cancel()  # a cancelled submit submitted nothing; _dispatch keeps its item
        await asyncio.wait([dispatcher])
        while True:  # whatever is still buffered in the channel
            try:
                self._leave(self.channel.receive_nowait())
            except (poolkit.WouldBlock, poolkit.EndOfChannel):
                break
        # Jobs not on the wire (waiting for limits, or sleeping before a retry) stop now; the
        # ones that get their limits meanwhile refuse to start (see _attempt).
        for item in list(self._outstanding.values()):
            if item.phase != _REQUESTING and item.job is not None:
                item.job.cancel()
        try:
            await self.pool.shutdown(timeout=self.settings.grace)
        except TimeoutError:  # pragma: no cover - aiohttp honours cancellation
            pass

    async def _feed(self, urls: Iterable[str] | AsyncIterable[str]) -> None:
        """Read the input into the channel; after a stop, list the rest as unfetched."""
        source = _aiter_lines(urls)
        send, unfetched = self.channel.send, self._unfetched
        try:
            async for line in source:
                item = self._item(line)
                if item is not None:
                    try:
                        await send(item)
                    except poolkit.ChannelClosed:
                        unfetched.append(item)  # stopped while waiting: it was not sent
            self._input_complete = True
        finally:
            self.channel.close()
            await source.aclose()

    def _item(self, line: str) -> _Item | None:
        """The item to send for one input line, or ``None``: a blank line or a comment; a URL
        that is not http(s) (given up on); any URL after a stop (listed as unfetched)."""
        url = line.strip()
        if not url or url[0] == "#":
            return None
        web, host = _origin(url)
        counts = self.hosts.get(host)
        if counts is None:
            counts = self.hosts[host] = HostCounts()
        item = _Item(self._read, url, host, counts)
        self._read += 1
        if self._stopped_by is not None:
            self._unfetched.append(item)
        elif not web or not host:
            self._give_up(item, None, "not an http(s) URL")
        else:
            return item
        return None

    async def _dispatch(self) -> None:
        try:
            async for item in self.channel:
                self._holding = item
                item.counts.waiting += 1  # _move(item, _WAITING) from _READ, inlined
                item.phase = _WAITING
                job = await self.pool.submit(self._attempt, item)
                self._holding = None
                item.job = job
                self._outstanding[item.seq] = item
                job.add_done_callback(functools.partial(self._settle, item))
        finally:
            held = self._holding
            if held is not None:  # cancelled (by a stop) while submitting: not submitted
                self._holding = None
                self._move(held, _OVER)
                self._leave(held)

    def _move(self, item: _Item, phase: str) -> None:
        """Put ``item`` in ``phase``, keeping its host's counters in step."""
        counts = item.counts
        if item.phase in _COUNTED:
            setattr(counts, item.phase, getattr(counts, item.phase) - 1)
        if phase in _COUNTED:
            setattr(counts, phase, getattr(counts, phase) + 1)
        item.phase = phase

    def _leave(self, item: _Item) -> None:
        self._unfetched.append(item)

    async def _attempt(self, item: _Item) -> dict[str, Any]:
        """One attempt, run by the pool (so: once per try); the session's middlewares hold the
        limits for its request, and :meth:`_on_the_wire` counts it.

        This and the call-backs around it run once per URL and are kept lean (phases moved by
        hand where they are known, no helper calls on success): on a fast server, the
        scraper's own bookkeeping is a measurable part of the time per request.
        """
        if self._stopped_by is not None:
            raise _NotStarted(item.url)  # a stop came while it waited for a worker
        assert self._session is not None
        if item.phase is not _WAITING:  # a retry: waiting for its limits again
            self._move(item, _WAITING)
        _CURRENT.set(item)
        try:
            # Redirects are not followed: every request the scraper makes goes through the
            # limits, and a redirect's target may be another host.  Its Location is recorded.
            async with self._session.get(item.url, allow_redirects=False) as response:
                body = await response.read()  # read already, inside the limits
                status = response.status
                location = response.headers.get("Location")
                if status == 429 or status >= 500:
                    raise RetryableError(
                        f"HTTP {status}",
                        status=status,
                        retry_after=retry_after_of(response),
                    )
        except RetryableError:
            self._move(item, _BACKOFF)
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            self._move(item, _BACKOFF)
            raise RetryableError(_describe(exc)) from exc
        except BaseException:
            self._move(item, _WAITING)  # settled soon (cancelled, or not retried)
            raise
        item.counts.in_flight -= 1  # the job ends as this returns; _settle() writes the record
        item.phase = _OVER
        error = None if status < 400 else f"HTTP {status}"
        return self._record(item, status, len(body), error, location)

    async def _on_the_wire(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """The session's middleware inside the limits: it runs for each request that goes on
        the wire, with the request's limits held (aiohttp's own re-send of a request whose
        kept-alive connection was closed comes here too: the server may see it)."""
        # Go out on the loop's next turn, not from inside the step that granted the limits
        # (or finished the worker's previous request): the responses that came in together
        # are then all handled first, and the new requests sent together.  Measured on a fast
        # local server, that batching saves more CPU per request than the extra turn costs
        # (see benchmarks/bench_scraper.py).
        await asyncio.sleep(0)
        item = _CURRENT.get()
        if self._stopped_by is not None:
            raise _NotStarted(item.url)  # it got its limits after a stop: leave it for later
        counts = item.counts
        attempts = item.attempts = item.attempts + 1
        if attempts == 1:
            item.started = time.monotonic()
        else:
            counts.retries += 1
            self._retries += 1
        if item.phase is _WAITING:
            counts.waiting -= 1
            counts.in_flight += 1
            item.phase = _REQUESTING
        response = await handler(request)
        if (
            self.settings.adaptive
            and response.status in (429, 503)
            and not parse_retry_after(response.headers.get("Retry-After"))
        ):
            # A host that sheds load answers at once, so a slot above its capacity would get a
            # 429/503 every round trip until the limit comes down.  The slot is kept as long as
            # a request served takes instead: a slot too many sends one request a latency.
            # (A Retry-After pauses the host as soon as the answer is reported: no holding
            # back that report, which is made when this returns.)
            await asyncio.sleep(self._latency_of(item.host))
        return response

    def _latency_of(self, host: str) -> float:
        """The adaptive limiter's smoothed latency for ``host`` (0 before it has one)."""
        assert self._per_host is not None
        stats = self._per_host.statistics_for(host)
        for member in stats.members if isinstance(stats, poolkit.LimitsStatistics) else ():
            if isinstance(member, poolkit.AdaptiveLimiterStatistics):
                latency = member.smoothed_latency
                return latency if latency == latency else 0.0  # nan: none yet
        return 0.0

    def _record(
        self,
        item: _Item,
        status: int | None,
        size: int | None,
        error: str | None,
        location: str | None = None,
    ) -> dict[str, Any]:
        return {
            "url": item.url,
            "host": item.host,
            "ok": error is None,
            "status": status,
            "bytes": size,
            "attempts": item.attempts,
            "seconds": round(time.monotonic() - item.started, 6) if item.attempts else 0.0,
            "error": error,
            "location": location,
        }

    def _give_up(self, item: _Item, status: int | None, error: str) -> None:
        if self._write(item, self._record(item, status, None, error)):
            self._failed += 1
            item.counts.failed += 1

    def _write(self, item: _Item, record: dict[str, Any]) -> bool:
        """Hand ``record`` to ``write``.  If that fails (a closed pipe, a full disk), the URL has
        no result: it is listed as unfetched, and the run stops there (``write_error``)."""
        if self.write_error is None:
            try:
                self._write_result(record)
                return True
            except Exception as exc:
                self.write_error = exc
                self.stop(f"a failed write ({type(exc).__name__}: {exc})")
        self._leave(item)
        return False

    def _settle(self, item: _Item, _job: object = None) -> None:
        """The job of ``item`` is over: write its result, or list it as unfetched.  (Called back
        by the job, or at the end of the run for jobs whose call-back has not run yet.)"""
        job = item.job
        if job is None or not job.done() or self._outstanding.pop(item.seq, None) is None:
            return  # not over yet, or settled already
        if item.phase is not _OVER:
            self._move(item, _OVER)
        counts = item.counts
        if job.cancelled():
            self._leave(item)
            return
        exc = job.exception()
        if exc is None:
            record = job.result()
            if record["ok"]:
                if self._write(item, record):
                    self._ok += 1
                    counts.done += 1
            else:
                self._give_up(item, record["status"], record["error"])
        elif isinstance(exc, (_NotStarted, poolkit.JobHandedBack)):
            self._leave(item)
        elif isinstance(exc, poolkit.RedisUnavailable):
            # The shared limits cannot be taken, so no request may go out: this URL (whose
            # attempt never started) and every one after it are left for the next run.
            self._leave(item)
            if self.redis_error is None:
                self.redis_error = exc
                self.stop(f"Redis unavailable ({_describe(exc)})")
        elif isinstance(exc, RetryableError):
            why = str(exc)
            if exc.retry_after is not None and exc.retry_after > self.settings.max_retry_after:
                why += f" (Retry-After {exc.retry_after:.0f} s is beyond the limit)"
            self._give_up(item, exc.status, f"{why} after {item.attempts} attempt(s)")
        else:
            self._give_up(item, None, _describe(exc))

    # ----------------------------------------------------------------- progress

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(self.settings.progress_interval)
            self._report(periodic=True)

    def _report(self, *, periodic: bool = False, final: bool = False) -> None:
        try:
            self._show(periodic=periodic, final=final)
        except OSError:  # a closed or full stderr: the fetching goes on without progress
            self._progress = None

    def _show(self, *, periodic: bool, final: bool) -> None:
        out = self._progress
        if out is None:
            return
        now = time.monotonic()
        finished = self._ok + self._failed
        then, finished_then = self._last_report
        if periodic:  # the rate shown is over the last period
            self._last_report = (now, finished)
        elapsed = now - self._t0
        rate = (finished - finished_then) / (now - then) if now > then else 0.0
        if final:
            rate = finished / elapsed if elapsed > 0 else 0.0
        in_flight = sum(c.in_flight for c in self.hosts.values())
        retrying = sum(c.retrying for c in self.hosts.values())
        waiting = sum(c.waiting for c in self.hosts.values())
        head = (
            f"t={elapsed:.1f}s done={self._ok} failed={self._failed} retrying={retrying} "
            f"in_flight={in_flight} waiting={waiting} read={self._read} rate={rate:.1f}/s"
        )
        if self.stopping:
            head += f" stopping({self._stopped_by})"
        busiest = sorted(
            self.hosts.items(),
            key=lambda kv: (-(kv[1].in_flight + kv[1].retrying + kv[1].waiting), kv[0]),
        )
        adaptive = self.settings.adaptive
        if not self._live:
            hosts = " ".join(
                f"{h}[done={c.done} failed={c.failed} retrying={c.retrying} "
                f"in_flight={c.in_flight}{f' limit={self.host_limit(h)}' if adaptive else ''}]"
                for h, c in busiest[:4]
            )
            more = f" +{len(busiest) - 4} hosts" if len(busiest) > 4 else ""
            out.write(f"progress {head} {hosts}{more}\n")
            out.flush()
            return
        width = max([len("host"), *(len(h) for h, _ in busiest[:8])])
        lines = [
            head,
            f"  {'host':<{width}} {'done':>7} {'failed':>7} {'retrying':>8} {'in flight':>9}"
            + (f" {'limit':>5}" if adaptive else ""),
        ]
        for h, c in busiest[:8]:
            lines.append(
                f"  {h:<{width}} {c.done:>7} {c.failed:>7} {c.retrying:>8} {c.in_flight:>9}"
                + (f" {self.host_limit(h):>5}" if adaptive else "")
            )
        if len(busiest) > 8:
            lines.append(f"  ... and {len(busiest) - 8} more hosts")
        # Go back over the previous table and clear to the end of the screen.
        rewind = f"\x1b[{self._lines_shown}F\x1b[J" if self._lines_shown else ""
        out.write(rewind + "\n".join(lines) + "\n")
        out.flush()
        self._lines_shown = 0 if final else len(lines)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _aiter_lines(urls: Iterable[str] | AsyncIterable[str]) -> AsyncGenerator[str, None]:
    if isinstance(urls, AsyncIterable):
        try:
            async for line in urls:
                yield line
        finally:
            aclose = getattr(urls, "aclose", None)
            if aclose is not None:  # an async generator: close it now, not when collected
                await aclose()
    else:
        for line in urls:
            yield line


async def run(
    urls: Iterable[str] | AsyncIterable[str],
    settings: Settings | None = None,
    *,
    write: Callable[[dict[str, Any]], None] | None = None,
    progress: TextIO | None = None,
) -> Summary:
    """Fetch ``urls`` with ``settings``; see :class:`Scraper`."""
    return await Scraper(settings, write=write, progress=progress).run(urls)


# ======================================================================= the command


async def _stdin_lines() -> AsyncIterator[str]:
    """Lines of stdin without blocking the loop when it is a pipe or a terminal."""
    mode = os.fstat(sys.stdin.fileno()).st_mode
    if not (stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)):
        for line in sys.stdin:  # a regular file: reads do not wait
            yield line
        return
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    fd = sys.stdin.fileno()
    was_blocking = os.get_blocking(fd)
    # The transport closes the file it reads when it is closed: give it a copy of fd 0.
    pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
    try:
        while line := await reader.readline():
            yield line.decode()
    finally:
        transport.close()
        os.set_blocking(fd, was_blocking)  # the copy shared fd 0's non-blocking flag


async def _file_lines(path: str) -> AsyncIterator[str]:
    with open(path, encoding="utf-8") as f:  # noqa: ASYNC230 - a local file: reads do not wait
        for line in f:
            yield line


def _rate_arg(text: str) -> float | str | None:
    if text.strip().lower() in ("none", "0", "off"):
        return None
    try:
        poolkit.parse_rate(text, "--rate")
    except (TypeError, ValueError) as e:  # argparse shows only this kind's message
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _parser() -> argparse.ArgumentParser:
    d = Settings()
    p = argparse.ArgumentParser(
        prog="scraper.py",
        description=(__doc__ or "").split("\n\n")[0],
        epilog=(
            "Exit status: 0 all ok, 1 some failed, 2 bad arguments (or no Redis at --redis), "
            "3 leaked tasks, 130 SIGINT, 143 SIGTERM."
        ),
    )
    p.add_argument("urls", nargs="?", default="-", help="file of URLs, one a line ('-': stdin)")
    p.add_argument("-o", "--output", help="write the JSON lines here (default: stdout)")
    p.add_argument("--unfetched", help="after the run, write the URLs not fetched here")
    p.add_argument("--concurrency", type=int, default=d.concurrency, help="in flight, all hosts")
    p.add_argument(
        "--per-host",
        type=int,
        default=d.per_host,
        help="in flight per host (0: no cap); with --adaptive, the most it may grow to",
    )
    p.add_argument(
        "--rate", type=_rate_arg, default=d.rate, help="starts per host: '5/s', '300/min', 'none'"
    )
    p.add_argument("--burst", type=float, default=d.burst, help="starts at once per host")
    p.add_argument(
        "--adaptive",
        action="store_true",
        help=(
            f"use when you do not know each host's capacity: per-host concurrency starts at "
            f"{_ADAPTIVE_START} (or --per-host if lower) and follows the host's latency, "
            f"429/503 answers and timeouts, up to --per-host (0: up to --concurrency); a "
            f"Retry-After pauses the host (at most --max-retry-after); --rate still applies"
        ),
    )
    p.add_argument("--attempts", type=int, default=d.attempts, help="tries per URL in all")
    p.add_argument("--backoff", type=float, default=d.backoff, help="first retry wait, seconds")
    p.add_argument("--max-backoff", type=float, default=d.max_backoff)
    p.add_argument("--jitter", type=float, default=d.jitter, help="random extra wait, seconds")
    p.add_argument("--max-retry-after", type=float, default=d.max_retry_after)
    p.add_argument("--timeout", type=float, default=d.timeout, help="per request, seconds")
    p.add_argument("--grace", type=float, default=d.grace, help="after a stop signal, seconds")
    p.add_argument("--workers", type=int, default=d.workers)
    p.add_argument("--progress", choices=["auto", "live", "plain", "off"], default="auto")
    p.add_argument("--progress-interval", type=float, default=d.progress_interval)
    shared = p.add_argument_group(
        "limits shared by several scraper processes",
        "With --redis, --concurrency, --per-host, --rate and --burst hold for every process that "
        "names the same Redis and prefix, together (pip install 'poolkit[redis]'). The first "
        "process to make a limit in Redis sets its size: give them all the same values. Give "
        "each process its own part of the URLs. With --adaptive too, --per-host is the ceiling "
        "they share, and each process adapts its own limit per host under it.",
    )
    shared.add_argument(
        "--redis",
        metavar="URL",
        default=d.redis,
        help="keep the limits in this Redis, e.g. redis://127.0.0.1:6379/0 (default: per process)",
    )
    shared.add_argument(
        "--redis-prefix",
        metavar="PREFIX",
        default=d.redis_prefix,
        help=f"first part of the limits' Redis keys (default: {d.redis_prefix})",
    )
    return p


def _settings(args: argparse.Namespace) -> Settings:
    """The settings the command line asks for: every field of Settings has an option of the
    same name (``--per-host 0`` means no cap of its own)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)}
    if values["per_host"] == 0:
        values["per_host"] = None
    return Settings(**values)


def _check_redis(url: str) -> None:
    """Fail early, before any URL is read, when ``--redis`` cannot work: redis-py is missing
    (``ImportError``), the URL is malformed or no Redis answers there (``ValueError``)."""
    try:
        import redis
    except ImportError:
        raise ImportError(
            "--redis needs redis-py, an optional extra: pip install 'poolkit[redis]'"
        ) from None
    try:
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    except ValueError as exc:
        raise ValueError(
            f"--redis must be a Redis URL such as redis://127.0.0.1:6379/0, got {url!r}: {exc}"
        ) from None
    try:
        client.ping()
    except redis.RedisError as exc:
        where = client.connection_pool.connection_kwargs  # no password: it is not shown
        at = where.get("path") or f"{where.get('host', 'localhost')}:{where.get('port', 6379)}"
        raise ValueError(f"--redis: no Redis answers at {at} ({_describe(exc)})") from None
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not _HAVE_AIOHTTP:
        parser.error("aiohttp is not installed: pip install 'poolkit[scraper]'")
    try:
        settings = _settings(args)
    except (TypeError, ValueError) as exc:
        parser.error(str(exc))
    if args.urls != "-" and not os.path.isfile(args.urls):
        parser.error(f"no such file: {args.urls}")
    if settings.redis is not None:
        try:
            _check_redis(settings.redis)
        except (ValueError, ImportError) as exc:
            parser.error(str(exc))
    live = args.progress == "live" or (args.progress == "auto" and sys.stderr.isatty())
    progress = None if args.progress == "off" else sys.stderr
    with contextlib.ExitStack() as stack:
        out: TextIO = (
            stack.enter_context(open(args.output, "w", encoding="utf-8"))
            if args.output
            else sys.stdout
        )

        def write(record: dict[str, Any]) -> None:
            out.write(json.dumps(record) + "\n")

        scraper = Scraper(settings, write=write, progress=progress, live=live)
        source = _stdin_lines() if args.urls == "-" else _file_lines(args.urls)
        summary, leak = asyncio.run(_supervised(scraper, source))
        with contextlib.suppress(OSError):  # a closed pipe: what was written is all there is
            out.flush()
    if args.unfetched:
        with open(args.unfetched, "w", encoding="utf-8") as f:
            f.writelines(url + "\n" for url in summary.unfetched)
    _print_summary(summary, args.unfetched)
    if leak is not None:
        print(f"scraper: tasks or threads were left behind:\n{leak}", file=sys.stderr)
        return EXIT_LEAKED
    return summary.exit_code


async def _supervised(
    scraper: Scraper, source: AsyncIterator[str]
) -> tuple[Summary, poolkit.LeakError | None]:
    """The run under signal handlers and a leak check.  A leak found after the run keeps its
    summary: the URLs not fetched must still be written for the next run."""
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:
        loop.add_signal_handler(sig, scraper.stop, sig.name)
    summary: Summary | None = None
    try:
        async with poolkit.no_leaks(timeout=1.0):
            summary = await scraper.run(source)
    except poolkit.LeakError as leak:
        if summary is None:  # pragma: no cover - no_leaks checks nothing when the run raises
            raise
        return summary, leak
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
    return summary, None


def _print_summary(summary: Summary, unfetched_path: str | None) -> None:
    err = sys.stderr
    how = (
        f"stopped by {summary.stopped_by}"
        if summary.stopped_by
        else ("finished" if summary.failed == 0 else "finished with failures")
    )
    print(f"scraper: {how} after {summary.seconds:.1f} s", file=err)
    print(
        f"  {summary.read} URLs read: {summary.ok} ok, {summary.failed} failed, "
        f"{len(summary.unfetched)} not fetched; {summary.retries} retries",
        file=err,
    )
    if not summary.input_complete:
        print("  the input was not read to its end: the rest is not listed", file=err)
    if summary.unfetched:
        if unfetched_path:
            print(
                f"  the {len(summary.unfetched)} URLs not fetched are in {unfetched_path}; "
                f"run again on that file to resume",
                file=err,
            )
        else:
            print("  (pass --unfetched PATH to keep the URLs not fetched)", file=err)
    print(f"  exit status {summary.exit_code}", file=err)


if __name__ == "__main__":
    sys.exit(main())
