"""TokenBucket: how many per unit of time (Go's ``x/time/rate``), for tasks and threads.

The bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; it starts
full.  An acquisition of ``cost`` takes ``cost`` tokens.  So over any window of ``w`` seconds at
most ``rate * w + burst`` tokens are granted.

Waiters form one FIFO queue per bucket, whatever their cost: a waiter for 8 tokens at the head is
served before the waiters for 1 token behind it.  Only the first in line waits for time; it
computes when it will have enough tokens, sleeps until then (or until something changes: a rate
change, the waiter ahead leaving) and takes its tokens when it runs.  Tokens are taken only by a
running task or thread, so a cancelled or timed-out waiter has consumed nothing, and the next in
line recomputes at once, so it is not delayed by the one that left.  A timeout that cannot be met
(the tokens owed to the waiters ahead, plus ``cost``, cannot be refilled in time) raises
:class:`TimeoutError` at once.

Why not aiolimiter's engine
---------------------------
poolkit's first plan was to compose around ``aiolimiter.AsyncLimiter`` (1.3).  Measured, with
its public API only, it cannot give the guarantees above:

* FIFO across costs: its waiters are a heap ordered by cost, so ``acquire(80)`` on a 100/s limiter
  with 5 tasks looping on ``acquire(1)`` waited 3.85 s, until the small ones stopped (a FIFO bucket:
  0.8 s).  A gate in front could fix this one.
* Changing the rate at run time: it computes its drip rate once, in ``__init__``; after setting
  ``max_rate`` from 100 to 1000 the drip stayed at 100/s (only the bucket grew).
* Tokens available now, and failing a timeout that cannot be met at once, need the bucket level,
  which it keeps private.
* Threads: it is asyncio-only and bound to one event loop, so one budget cannot be shared by
  threads and tasks (or tasks on two loops).
* Virtual time: it re-arms a timer at ``last_check + needed / rate`` where float error can leave
  ``needed`` a hair above zero; on a loop whose clock moves only when idle that re-arms forever
  (measured: 100 % CPU, no progress), so its timing cannot be tested exactly.

So the bucket keeps its own level (the arithmetic is a few lines), under one lock shared by every
bucket so that a combined limit (``poolkit.Limits``) can take from several buckets in one step.

Clock
-----
``clock=None`` (the default) reads the running event loop's ``loop.time()`` from tasks and
``time.monotonic()`` from threads: the same clock on the default loop, close on uvloop (never
allowed to run backwards), and virtual on :class:`poolkit.testing.VirtualTimeLoop`, so rate tests
run on virtual time with no set-up.  Any callable returning seconds can be passed instead.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import final

from ._checks import check_timeout
from ._registry import register
from ._wait import Sleeper, discard, monotonic, refuse_in_loop

__all__ = [
    "LOCK",
    "TokenBucket",
    "TokenBucketStatistics",
    "enqueue",
    "parse_rate",
    "try_take",
    "wait_async",
    "wait_thread",
]

Clock = Callable[[], float]

# One lock for every token bucket: a combined acquisition must see, and take from, several
# buckets at once.  Bucket operations are a few arithmetic steps, so sharing it costs little.
LOCK = _LOCK = threading.Lock()

_WAITING = 0
_DONE = 1
_GONE = 2  # cancelled or timed out
_TOO_BIG = 3  # burst lowered below its cost while it waited

# A waiter whose timer fires at the computed instant may find float error leaving it a hair short;
# counting that as enough (1e-9 of a token per token of burst) avoids re-arming a zero-length timer.
_SLACK = 1e-9
# The shortest sleep after a look at a clock that had not moved since the previous look.
_MIN_SLEEP = 0.001

_UNITS = {
    "s": 1.0,
    "sec": 1.0,
    "second": 1.0,
    "seconds": 1.0,
    "m": 60.0,
    "min": 60.0,
    "minute": 60.0,
    "minutes": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
    "hour": 3600.0,
    "hours": 3600.0,
    "d": 86400.0,
    "day": 86400.0,
    "days": 86400.0,
}
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*(\d+(?:\.\d*)?|\.\d+)?\s*([a-zA-Z]+)\s*$")


def parse_rate(rate: float | str, name: str = "rate") -> float:
    """Tokens per second from a number or a string such as ``"10/s"``, ``"600/min"``, ``"5000/h"``.

    Strings are ``<count>/<unit>`` or ``<count>/<n><unit>`` (``"3/5s"``); units are s, sec,
    second(s), m, min, minute(s), h, hr, hour(s), d, day(s).  The rate must be positive and
    finite (``ValueError``); anything else is a ``TypeError``.
    """
    if isinstance(rate, str):
        m = _RATE_RE.match(rate)
        unit = m and _UNITS.get(m.group(3).lower())
        if not m or unit is None:
            raise ValueError(f"{name} must look like '10/s', '600/min' or '5000/h', got {rate!r}")
        per = float(m.group(2)) if m.group(2) else 1.0
        value = float(m.group(1)) / (per * unit) if per > 0 else math.nan
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} must be a number of tokens per second or a string, got {rate!r}")
    else:
        value = float(rate)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(
            f"{name} must be a positive, finite number of tokens per second, got {rate!r}"
        )
    return value


def _check_burst(burst: float) -> float:
    if isinstance(burst, bool) or not isinstance(burst, (int, float)):
        raise TypeError(f"burst must be a number of tokens, got {burst!r}")
    if not (burst >= 1 and math.isfinite(burst)):
        raise ValueError(f"burst must be a finite number >= 1, got {burst!r}")
    return float(burst)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


class _Waiter(Sleeper):
    """One acquisition waiting in one or more buckets (several for a combined limit)."""

    __slots__ = ("parts", "state")

    def __init__(
        self,
        parts: tuple[tuple[TokenBucket, float], ...],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        Sleeper.__init__(self, loop)
        self.parts = parts
        self.state = _WAITING


@dataclass(frozen=True, slots=True)
class TokenBucketStatistics:
    """A snapshot of a :class:`TokenBucket`, from :meth:`TokenBucket.statistics`."""

    name: str | None
    """The name given to the bucket, if any."""
    rate: float
    """Tokens added per second."""
    burst: float
    """The bucket's size: the most tokens it holds, and so the largest single cost."""
    tokens: float
    """Tokens available right now (before the waiters, if any, take theirs)."""
    waiting: int
    """Tasks and threads queued in ``acquire``."""
    granted_total: int
    """Successful acquisitions since the bucket was created."""
    cost_granted_total: float
    """Tokens handed out since the bucket was created."""


# ----------------------------------------------------------------------- the engine (lock held)


def _first(q: deque[_Waiter]) -> _Waiter | None:
    while q and q[0].state != _WAITING:
        q.popleft()
    return q[0] if q else None


def _shortfall(w: _Waiter, now: float) -> float:
    """0.0 if ``w`` can take every part now; else seconds until it can, if it is first in line in
    every bucket; ``inf`` if someone is ahead of it somewhere (it waits to be nudged)."""
    wait = 0.0
    for b, cost in w.parts:
        head = _first(b._queue)
        while head is not w:
            assert head is not None
            loop = head.loop
            if loop is None or not loop.is_closed():
                return math.inf
            _leave(head, _GONE)  # stranded on a closed event loop: it will never run
            head = _first(b._queue)
        short = cost - b._refill(now)
        if short > _SLACK * b._burst:
            wait = max(wait, short / b._rate)
    if now + wait == now:
        return 0.0  # a wait too short for the clock to represent: as good as there
    return wait


def _nudge(b: TokenBucket) -> None:
    """Wake the first in line so that it recomputes (it may be able to go now)."""
    while True:
        w = _first(b._queue)
        if w is None or w.wake():
            return
        _leave(w, _GONE)  # its event loop is closed: it will never run, so it must not block


def _grant(w: _Waiter) -> None:
    w.state = _DONE
    for b, cost in w.parts:
        b._tokens -= cost
        b._queue.popleft()  # w is first: _shortfall() checked it
        b._queued_cost -= cost
        b._granted += 1
        b._cost_granted += cost
    for b, _ in w.parts:
        _nudge(b)


def _leave(w: _Waiter, state: int) -> None:
    """``w`` stops waiting without taking anything; whoever is now first recomputes."""
    led = [b for b, _ in w.parts if _first(b._queue) is w]  # before w stops counting as live
    w.state = state
    for b, cost in w.parts:
        discard(b._queue, w)
        b._queued_cost -= cost
    for b in led:
        _nudge(b)


def _estimate(parts: tuple[tuple[TokenBucket, float], ...], now: float) -> float:
    """Seconds until ``parts`` could be granted after everyone queued ahead is served."""
    wait = 0.0
    for b, cost in parts:
        short = b._queued_cost + cost - b._refill(now)
        if short > 0:
            wait = max(wait, short / b._rate)
    return wait


def try_take(parts: tuple[tuple[TokenBucket, float], ...], now: float) -> bool:
    """With the lock held: take every part in one step, if nobody is queued in any of the buckets
    and every one has the tokens; otherwise take nothing."""
    for b, cost in parts:
        if _first(b._queue) is not None or b._refill(now) < cost:
            return False
    for b, cost in parts:
        b._take(cost)
    return True


def enqueue(
    parts: tuple[tuple[TokenBucket, float], ...],
    loop: asyncio.AbstractEventLoop | None,
    now: float,
    timeout: float | None,
    label: str,
) -> _Waiter:
    for b, cost in parts:  # checked again under the lock: another thread may have lowered burst
        if cost > b._burst:
            b._check_cost(cost)
    if timeout is not None and _estimate(parts, now) > timeout:
        raise TimeoutError(f"{label}: cannot get the tokens within {timeout} s")
    w = _Waiter(parts, loop)
    for b, cost in parts:
        b._queue.append(w)
        b._queued_cost += cost
    return w


def _too_big_error(w: _Waiter) -> ValueError:
    costs = ", ".join(f"{cost:g} > burst {b._burst:g}" for b, cost in w.parts if cost > b._burst)
    return ValueError(f"cost exceeds the bucket's burst (lowered while waiting): {costs}")


async def wait_async(
    w: _Waiter,
    loop: asyncio.AbstractEventLoop,
    clock: Clock | None,
    deadline: float | None,
    label: str,
) -> None:
    """Drive ``w`` until it has its tokens; it takes them itself, while running."""
    last = -math.inf
    try:
        while True:
            with _LOCK:
                if w.state == _TOO_BIG:
                    raise _too_big_error(w)
                now = clock() if clock is not None else loop.time()
                wait = _shortfall(w, now)
                if wait == 0.0:
                    _grant(w)
                    return
                if now <= last and wait < _MIN_SLEEP:
                    # The clock did not move since the last look (uvloop's moves in 1 ms steps
                    # and its timers round to whole ms): sleep a tick instead of spinning.
                    wait = _MIN_SLEEP
                last = now
                if deadline is not None:
                    if now >= deadline:
                        _leave(w, _GONE)
                        raise TimeoutError(f"{label}: no tokens within the timeout")
                    wait = min(wait, deadline - now)
                fut = w.fut = loop.create_future()
            timer = None if wait == math.inf else loop.call_later(wait, _wake_fut, fut)
            try:
                await fut
            finally:
                if timer is not None:
                    timer.cancel()
    except BaseException as exc:
        if isinstance(exc, GeneratorExit):
            if not _LOCK.acquire(True, 0.1):  # never deadlock when closed by the GC (see _channel)
                raise
        else:
            _LOCK.acquire()
        try:
            if w.state == _WAITING:
                _leave(w, _GONE)
        finally:
            _LOCK.release()
        raise


def wait_thread(w: _Waiter, clock: Clock | None, deadline: float | None, label: str) -> None:
    """Thread form of :func:`wait_async`: ``w`` was armed with ``arm_thread()``."""
    tlock = w.tlock
    assert tlock is not None
    try:
        while True:
            with _LOCK:
                if w.state == _TOO_BIG:
                    raise _too_big_error(w)
                now = clock() if clock is not None else monotonic()
                wait = _shortfall(w, now)
                if wait == 0.0:
                    _grant(w)
                    return
                if deadline is not None:
                    if now >= deadline:
                        _leave(w, _GONE)
                        raise TimeoutError(f"{label}: no tokens within the timeout")
                    wait = min(wait, deadline - now)
            # tlock is held; a nudge releases it, so this returns at once, holding it again.
            if wait > threading.TIMEOUT_MAX:
                tlock.acquire()
            else:
                tlock.acquire(True, wait)
    except BaseException:
        with _LOCK:
            if w.state == _WAITING:
                _leave(w, _GONE)
        raise


def _wake_fut(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# ----------------------------------------------------------------------- the bucket


@final
class TokenBucket:
    """Up to ``rate`` tokens per second, in bursts of up to ``burst``; FIFO; tasks and threads.

    ``rate`` is a number of tokens per second or a string such as ``"10/s"``, ``"600/min"``,
    ``"5000/h"``.  ``burst`` is the bucket's size, so the most that is granted at once and the
    largest single cost; it defaults to one second's worth of tokens, at least 1
    (``max(1, ceil(rate))``).  The bucket starts full.

    ``await acquire(cost)`` waits for ``cost`` tokens, served first come, first served whatever
    the cost; ``try_acquire(cost)`` takes them only if they are there and nobody is queued;
    ``acquire_blocking(cost)`` is the thread form; ``async with bucket:`` / ``with bucket:`` take
    one token (nothing is given back on exit: tokens are spent).  A ``cost`` above ``burst``
    raises ``ValueError`` at once; a ``timeout`` that cannot be met raises :class:`TimeoutError`
    at once; either way, and when cancelled, nothing is consumed.

    ``rate`` and ``burst`` can be assigned at any time; waiters are rescheduled, and waiters whose
    cost no longer fits in the bucket get ``ValueError``.  See the module docstring for the clock.
    """

    __slots__ = (
        "__weakref__",
        "_burst",
        "_clock",
        "_cost_granted",
        "_granted",
        "_name",
        "_queue",
        "_queued_cost",
        "_rate",
        "_stamp",
        "_tokens",
    )

    def __init__(
        self,
        rate: float | str,
        burst: float | None = None,
        *,
        name: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._rate = parse_rate(rate)
        self._burst = float(max(1, math.ceil(self._rate))) if burst is None else _check_burst(burst)
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self._name = name
        self._clock = clock
        self._tokens = self._burst
        self._stamp = -math.inf  # no reading yet: the first one finds the bucket full
        self._queue: deque[_Waiter] = deque()
        self._queued_cost = 0.0
        self._granted = 0
        self._cost_granted = 0.0
        register(self, "bucket")

    # ----------------------------------------------------------------- time and tokens

    def _refill(self, now: float) -> float:
        # The first reading refills from -inf: an infinite refill, capped at burst (full).
        if now > self._stamp:
            tokens = self._tokens + (now - self._stamp) * self._rate
            self._tokens = tokens if tokens < self._burst else self._burst
            self._stamp = now
        return self._tokens

    def _peek(self, now: float) -> float:
        """The tokens there would be at ``now``, without refilling: reading statistics (perhaps
        from another thread, on another clock, as the debug endpoint does) changes nothing."""
        if now > self._stamp:
            return min(self._tokens + (now - self._stamp) * self._rate, self._burst)
        return self._tokens

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        loop = _running_loop()
        return loop.time() if loop is not None else monotonic()

    def _check_cost(self, cost: float) -> float:
        if isinstance(cost, bool) or not isinstance(cost, (int, float)):
            raise TypeError(f"cost must be a number of tokens, got {cost!r}")
        if not (cost >= 0 and math.isfinite(cost)):
            raise ValueError(f"cost must be a finite number >= 0, got {cost!r}")
        if cost > self._burst:
            raise ValueError(
                f"cost {cost:g} exceeds the bucket's burst {self._burst:g}; "
                f"it could never be granted"
            )
        return cost

    def _label(self) -> str:
        return "token bucket" if self._name is None else f"token bucket {self._name!r}"

    # ----------------------------------------------------------------- introspection

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def rate(self) -> float:
        """Tokens per second.  Assign a number or a string such as ``"5/s"`` to change it."""
        return self._rate

    @rate.setter
    def rate(self, value: float | str) -> None:
        rate = parse_rate(value)
        with _LOCK:
            self._refill(self._now())  # tokens so far accrue at the old rate
            self._rate = rate
            _nudge(self)

    @property
    def burst(self) -> float:
        """The bucket's size.  Assign to change it; waiters whose cost no longer fits get
        ``ValueError``, and the tokens held are capped at the new size."""
        return self._burst

    @burst.setter
    def burst(self, value: float) -> None:
        burst = _check_burst(value)
        with _LOCK:
            self._refill(self._now())
            self._burst = burst
            self._tokens = min(self._tokens, burst)
            for w in [w for w in self._queue if w.state == _WAITING]:
                if any(b is self and cost > burst for b, cost in w.parts):
                    _leave(w, _TOO_BIG)
                    w.wake()
            _nudge(self)

    def statistics(self) -> TokenBucketStatistics:
        with _LOCK:
            return TokenBucketStatistics(
                name=self._name,
                rate=self._rate,
                burst=self._burst,
                tokens=self._peek(self._now()),
                waiting=sum(1 for w in self._queue if w.state == _WAITING),
                granted_total=self._granted,
                cost_granted_total=self._cost_granted,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<TokenBucket{name} rate={s.rate:g}/s burst={s.burst:g} tokens={s.tokens:.2f} "
            f"waiting={s.waiting}>"
        )

    # ----------------------------------------------------------------- acquire

    def try_acquire(self, cost: float = 1) -> bool:
        """Take ``cost`` tokens if they are there and nobody is queued; never blocks."""
        self._check_cost(cost)
        with _LOCK:
            if _first(self._queue) is None and self._refill(self._now()) >= cost:
                self._take(cost)
                return True
            return False

    def _is_idle(self) -> bool:
        """Nobody waiting and the bucket full: forgetting it changes nothing (for PerKey)."""
        with _LOCK:
            return _first(self._queue) is None and self._refill(self._now()) >= self._burst

    def _take(self, cost: float) -> None:
        self._tokens -= cost
        self._granted += 1
        self._cost_granted += cost

    async def acquire(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Wait for ``cost`` tokens, first come first served, and take them.

        Raises ``ValueError`` if ``cost`` exceeds ``burst``, and :class:`TimeoutError` at once if
        the tokens owed to the waiters ahead plus ``cost`` cannot be refilled within ``timeout``
        seconds (or when the timeout passes).  Cancelled or timed out, it has taken nothing.
        """
        kind: object = cost.__class__  # (typed as object: mypy thinks a float is never an int)
        if not (kind is int and 0 <= cost <= self._burst):  # the usual case, checked quickly
            self._check_cost(cost)
        if timeout is not None:
            timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        clock = self._clock
        lock = _LOCK
        lock.acquire()
        try:
            now = clock() if clock is not None else loop.time()
            queue = self._queue
            if not queue or _first(queue) is None:
                # _refill() and _take() inlined: this is the hot path.
                tokens = self._tokens
                if now > self._stamp:
                    tokens += (now - self._stamp) * self._rate
                    if tokens > self._burst:
                        tokens = self._burst
                    self._stamp = now
                if tokens >= cost:
                    self._tokens = tokens - cost
                    self._granted += 1
                    self._cost_granted += cost
                    return
                self._tokens = tokens
            w = enqueue(((self, cost),), loop, now, timeout, self._label())
        finally:
            lock.release()
        await wait_async(w, loop, clock, None if timeout is None else now + timeout, self._label())

    def acquire_blocking(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until the tokens are taken.

        Raises ``RuntimeError`` if called in a thread whose event loop is running.
        """
        self._check_cost(cost)
        timeout = check_timeout(timeout)
        with _LOCK:
            now = self._now()
            if _first(self._queue) is None and self._refill(now) >= cost:
                self._take(cost)
                return
            refuse_in_loop("acquire_blocking")
            w = enqueue(((self, cost),), None, now, timeout, self._label())
            w.arm_thread()
        wait_thread(w, self._clock, None if timeout is None else now + timeout, self._label())

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __enter__(self) -> None:
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None
