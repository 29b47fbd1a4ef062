"""TokenBucket: how many per unit of time (Go's ``x/time/rate``), for tasks and threads.

The bucket holds up to ``burst`` tokens and refills at ``rate`` tokens per second; it starts
full.  An acquisition of ``cost`` takes ``cost`` tokens.  So over any window of ``w`` seconds at
most ``rate * w + burst`` tokens are granted, reservations included (see "Tolerance" for the one
part in a million that float arithmetic is allowed).

Waiters form one FIFO queue per bucket, whatever their cost: a waiter for 8 tokens at the head is
served before the waiters for 1 token behind it.  Only the first in line waits for time; it
computes when it will have enough tokens, sleeps until then (or until something changes: a rate
change, the waiter ahead leaving) and takes its tokens when it runs.  Tokens are taken only by a
running task or thread, so a cancelled or timed-out waiter has consumed nothing, and the next in
line recomputes at once, so it is not delayed by the one that left.  A timeout that cannot be met
(the tokens owed to the waiters ahead, plus ``cost``, cannot be refilled in time) raises
:class:`TimeoutError` at once.

A waiter behind another is woken by it when it leaves.  One that can never leave -- a task whose
event loop was closed while it waited, *stranded* -- would hold up everyone behind it, so a
waiter behind another also looks again at its own turn (when the tokens of everyone ahead and
its own could have come), and then at intervals that double, up to a second, while the one ahead
stays (it may be slow to run, or waiting for another bucket of a ``Limits``).  A stranded waiter
at the head is abandoned by whoever meets it, taking nothing, and it counts for nobody: not in
``try_acquire``, not in ``statistics().waiting``, not in the idle check of ``PerKey``, and, met
anywhere in the queue, not in the estimate that fails a timeout at once or in a reservation's
time.

Tolerance
---------
Time is a float number of seconds, and far from zero a float cannot hold every instant: at a
monotonic clock of 123456.789 s (a day and a half of uptime) the step is 1.5e-11 s, so the second
0.1 s from ``t0``, ``(t0 + 0.2) - (t0 + 0.1)``, is 0.09999999999126885, and a bucket refilling at
10/s finds 0.9999999999 of a token where one is due.  Counting time in integer nanoseconds, as Go
does, fixes that case but not a rate such as 3/s, whose token takes 333333333.3 ns, nor a clock
read as a float; exact rationals would cost the hot path several times its price.  So every
decision -- ``try_acquire``, ``acquire`` (at once, with ``timeout=0``, and when a waiter's timer
fires), ``reserve`` (and its ``max_delay``) -- makes one test: ``available >= cost * (1 -
1e-6)``, where ``available`` is ``statistics().tokens``.  (The idle check of ``PerKey`` is the
exception, and exact: forgetting a bucket a hair short of full would forgive the hair again at
each forgetting, without bound.)  A grant that
falls short by that much leaves the bucket at exactly zero: the error is not carried into the
next grant (carried, it made ``try_acquire`` refuse tokens that were due, and grew).  So a grant
may come a millionth of its cost's refill time early (0.1 µs for one token at 10/s), and a window
may see at most ``(rate * w + burst) * (1 + 1e-6)``; in practice what is forgiven is float noise,
about 1e-16 of a token.  A cost of 0 takes nothing, so it never waits for tokens, only for its
turn.  The tolerance covers a clock's rounding while ``rate * ulp(clock) < 1e-6 * cost``: up to
68000 grants a second of one token after a day and a half of uptime, 2000 after 35 days.

Rates with no limit, and none at all
------------------------------------
``rate=math.inf`` (or ``"inf"``) switches the limit off: every acquisition is granted at once,
whatever its cost (``burst`` is ignored, as Go ignores it, and kept for when a finite rate is
assigned again), and ``statistics().tokens`` is ``inf``.  Assigning ``inf`` while tasks wait lets
them all go at once; assigning a finite rate again starts from a full bucket.

``rate=0`` is a fixed budget: ``burst`` tokens in all, never refilled.  Waiting for tokens that
can never come would hang silently, so an ``acquire`` that the tokens left (after the waiters
ahead and the reservations) cannot cover raises :class:`BudgetExhausted` at once, with or
without a timeout; ``try_acquire`` returns False and ``reserve`` returns a reservation that is
not ``ok``.  Waiters already queued when the rate is set to 0 are served in turn as far as the
tokens left go; the others get :class:`BudgetExhausted`.  A caller who wants to wait for the
rate to be raised again waits on that event itself, then acquires.

Reservations
------------
``reserve(cost)`` (Go's ``Reservation``) never waits: it books ``cost`` tokens at the earliest
instant the bucket can grant them *after every waiter already queued* (each taking its tokens as
soon as this bucket has them), and returns a :class:`Reservation` with that instant (``time``, on
the bucket's clock) and the ``delay`` until it.  The caller sleeps for ``delay`` and acts, or calls
``cancel()``.  The tokens are consumed at ``time``; until then the bucket keeps a *floor*: no later
``acquire``, ``try_acquire`` or reservation may take a token that a booked reservation will need,
so however the others come and go, every reservation finds its tokens at its time and the window
bound holds with reservations counted at their times.  A later ``acquire`` does not queue behind a
reservation: it may take tokens before the reservation's time if the reservation does not need
them (because a waiter ahead of it left, say), otherwise it waits for them.

``cancel()`` before the reservation's time gives back all of its tokens (they were never taken;
the other reservations keep their floor, so nothing they were promised is given away, and this is
more than Go gives back when later reservations exist); at or after its time it gives back nothing:
the caller may have acted.  A reservation keeps its time whatever happens next: if the rate or the
burst is lowered, or a waiter ahead of it is served late (its task did not run on time, or it was
also waiting for another bucket of a ``Limits``), the reservation still takes its tokens at its
time, before that waiter, and after a rate change the new rate may be exceeded by the
reservations made before it, as in Go.

Nothing under the lock
----------------------
Nothing that can block or run foreign code happens while the lock is held; waiting, waking and
the lock go through :mod:`poolkit._core._wait`, as for every primitive.  The clock (perhaps the
user's) is read before the lock is taken: a reading that is stale by then is earlier than one
already seen, which refills nothing and takes nothing back.  A stranded waiter is dropped only
after the lock is released (:func:`~poolkit._core._wait.bury`): dropping it destroys its task, and
the task's clean-up wants this very lock.  That clean-up (``GeneratorExit``, perhaps from the
garbage collector in a thread that holds the lock) never waits for the lock either: it withdraws
through :func:`~poolkit._core._wait.give_up`.  Assigning ``rate`` or ``burst``, or
``Reservation.cancel()``, during a collection that interrupted this thread holding the lock is done
as soon as it is free.

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
run on virtual time with no set-up.  Any callable returning seconds can be passed instead.  A
reading earlier than one already seen refills nothing (nor takes anything back): an interval is
never counted twice.  The clock is called without the lock held.
"""

from __future__ import annotations

import asyncio
import bisect
import math
import re
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import final

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import BudgetExhausted
from poolkit._core._registry import register
from poolkit._core._wait import (
    GC_PHASE,
    Sleeper,
    bury,
    busy_error,
    discard,
    enter,
    give_up,
    graveyard,
    lay_to_rest,
    locked_soon,
    monotonic,
    refuse_in_loop,
    resolve,
    take,
    take_or_defer,
)

__all__ = [
    "LOCK",
    "BudgetExhausted",
    "Reservation",
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

# `"a" not in GC_PHASE`: no garbage collection runs now (see poolkit._core._wait).

_WAITING = 0
_DONE = 1
_GONE = 2  # cancelled, timed out, or stranded on a closed event loop
_TOO_BIG = 3  # burst lowered below its cost while it waited
_EXHAUSTED = 4  # rate 0, and the tokens left cannot cover it

_R_PENDING = 0  # booked: its tokens are taken at its time
_R_SETTLED = 1  # its time has come: its tokens are spent
_R_CANCELLED = 2
_R_REFUSED = 3  # not ok: nothing was booked

# The shared tolerance (see "Tolerance" in the module docstring): a grant may fall short of its
# cost by this fraction, and then leaves the bucket at exactly zero.
_REL = 1e-6
# A floor this small a fraction of its reservation's need is float noise: it is 0 (the instant the
# floor starts to rise, computed two ways).
_NOISE = 1e-9
# The shortest sleep after a look at a clock that had not moved since the previous look.
_MIN_SLEEP = 0.001
# _shortfall(): the waiter can never be served (rate 0, not enough tokens left).
_NEVER = -1.0
# _shortfall(): someone is ahead of the waiter in one of its buckets.
_BEHIND = math.inf
# The longest a waiter behind another sleeps before it looks again whether that one can run.
_MAX_BACKOFF = 1.0
# The first reading refills from here, finding the bucket full; finite, so that even a rate of 0
# multiplies it to 0 (from -inf it would be NaN).
_BEFORE_TIME = -1.7976931348623157e308

_UNITS = {
    "ms": 0.001,
    "msec": 0.001,
    "millisecond": 0.001,
    "milliseconds": 0.001,
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
_INF_RE = re.compile(r"^\s*(inf|infinity)\s*$", re.IGNORECASE)


def parse_rate(rate: float | str, name: str = "rate") -> float:
    """Tokens per second from a number or a string such as ``"10/s"``, ``"600/min"``, ``"1/100ms"``.

    Strings are ``<count>/<unit>`` or ``<count>/<n><unit>`` (``"3/5s"``, ``"1/100ms"``); units are
    ms, msec, millisecond(s), s, sec, second(s), m, min, minute(s), h, hr, hour(s), d, day(s).
    ``"inf"`` (or ``"infinity"``) and ``math.inf`` mean no limit; 0 (or ``"0/s"``) means no
    refill at all, a fixed budget.

    Args:
        rate: A number of tokens per second, or a string as above.
        name: The argument's name, for the error message.

    Returns:
        The rate in tokens per second: a float ``>= 0``, possibly ``math.inf``.

    Raises:
        ValueError: If ``rate`` is a negative or NaN number, or a string of another form, with a
            unit not listed, or with a period of zero (``"1/0s"``).
        TypeError: If ``rate`` is neither a number nor a string.
    """
    if isinstance(rate, str):
        if _INF_RE.match(rate):
            return math.inf
        m = _RATE_RE.match(rate)
        unit = m and _UNITS.get(m.group(3).lower())
        if not m or unit is None:
            raise ValueError(
                f"{name} must look like '10/s', '600/min', '1/100ms' or 'inf' (units: ms, s, "
                f"m or min, h or hr, d or day), got {rate!r}"
            )
        per = float(m.group(2)) if m.group(2) else 1.0
        value = float(m.group(1)) / (per * unit) if per > 0 else math.nan
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)):
        raise TypeError(f"{name} must be a number of tokens per second or a string, got {rate!r}")
    else:
        value = float(rate)
    if not value >= 0:
        raise ValueError(
            f"{name} must be a number of tokens per second >= 0 (math.inf or 'inf' for no "
            f"limit), got {rate!r}"
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

    __slots__ = ("backoff", "parts", "state")

    def __init__(
        self,
        parts: tuple[tuple[TokenBucket, float], ...],
        loop: asyncio.AbstractEventLoop | None,
    ) -> None:
        Sleeper.__init__(self, loop)
        self.parts = parts
        self.state = _WAITING
        # While it is behind someone: the least it sleeps before looking again (see _step()).
        self.backoff = _MIN_SLEEP


@dataclass(frozen=True, slots=True)
class TokenBucketStatistics:
    """A snapshot of a :class:`TokenBucket`, from :meth:`TokenBucket.statistics`."""

    name: str | None
    """The name given to the bucket, if any."""
    rate: float
    """Tokens added per second (``inf``: no limit; 0: a fixed budget, never refilled)."""
    burst: float
    """The bucket's size: the most tokens it holds, and so the largest single cost (ignored
    while the rate is ``inf``)."""
    tokens: float
    """Tokens that could be taken right now, before the waiters (if any) take theirs: the level
    less what booked reservations still need (``inf`` while the rate is ``inf``; below zero only
    after the rate or burst was lowered under reservations already made)."""
    waiting: int
    """Tasks and threads queued in ``acquire``."""
    granted_total: int
    """Successful acquisitions since the bucket was created, reservations counted once their
    time has come."""
    cost_granted_total: float
    """Tokens handed out since the bucket was created (reservations likewise)."""
    reserved: float
    """Tokens booked by reservations whose time has not come yet."""


# ----------------------------------------------------------------------- reservations


@final
class Reservation:
    """Tokens booked by :meth:`TokenBucket.reserve` for a later instant (Go's ``Reservation``).

    ``ok`` says whether the tokens were booked at all; if so, sleep for ``delay`` seconds (or until
    ``time`` on the bucket's clock) and act, or call :meth:`cancel` to give the tokens back.  See
    "Reservations" in the module docstring for how it shares the bucket with ``acquire``.  Made
    only by :meth:`TokenBucket.reserve`, never directly.
    """

    __slots__ = ("_bucket", "_cost", "_delay", "_need", "_state", "_time")

    def __init__(
        self, bucket: TokenBucket, cost: float, time: float, delay: float, state: int
    ) -> None:
        self._bucket = bucket
        self._cost = cost
        self._time = time
        self._delay = delay
        self._state = state
        self._need = cost  # the level needed just before its time: set by _recompute_needs()

    @property
    def ok(self) -> bool:
        """True if the tokens were booked; False if they could not be (``delay`` is ``inf``)."""
        return self._state != _R_REFUSED

    @property
    def cost(self) -> float:
        """The tokens asked for."""
        return self._cost

    @property
    def time(self) -> float:
        """The instant, on the bucket's clock, at which the tokens are the caller's (``inf`` if
        not ``ok``)."""
        return self._time

    @property
    def delay(self) -> float:
        """Seconds from the reservation to :attr:`time`: how long to wait before acting (0.0: at
        once; ``inf`` if not ``ok``)."""
        return self._delay

    @property
    def cancelled(self) -> bool:
        """True once :meth:`cancel` gave the tokens back."""
        return self._state == _R_CANCELLED

    def cancel(self) -> float:
        """Give the tokens back, if the reservation's time has not come yet.

        Before :attr:`time` every token comes back (none was taken), and the first waiter
        recomputes at once.  At or after it, or for a reservation that is not ``ok`` or was
        already cancelled, nothing happens.  Calling it again is harmless.

        Returns:
            The tokens given back: :attr:`cost`, or 0.0.
        """
        now = self._bucket._now()  # read before the lock: the clock may be anybody's code
        lock = _LOCK
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            # A garbage collection interrupted this thread holding the lock: cancel it as of
            # now as soon as the lock is free, and say what that will give back.
            locked_soon(lock, self._cancel, now)
            return self._cost if self._state == _R_PENDING and self._time > now else 0.0
        try:
            return self._cancel(now)
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()

    def _cancel(self, now: float) -> float:
        if self._state != _R_PENDING:
            return 0.0
        b = self._bucket
        b._refill(now)  # settles it if its time has come
        if self._state != _R_PENDING:
            return 0.0
        b._pending.remove(self)
        _recompute_needs(b)
        self._state = _R_CANCELLED
        _nudge(b)
        return self._cost

    def __repr__(self) -> str:
        if self._state == _R_REFUSED:
            return f"<Reservation cost={self._cost:g} ok=False>"
        state = ("pending", "settled", "cancelled")[self._state]
        return (
            f"<Reservation cost={self._cost:g} time={self._time:.6f} delay={self._delay:.6f} "
            f"{state}>"
        )


def _recompute_needs(b: TokenBucket) -> None:
    """With the lock held: for each booked reservation, the level the bucket must hold just before
    its time so that it and every later one get their tokens (refilling in between, up to the
    cap).  The floor at ``t`` is ``need - rate * (time - t)`` of the first one, if positive."""
    rate = b._rate
    need = 0.0
    after: float | None = None
    for r in reversed(b._pending):
        if after is not None and after > r._time:
            need -= rate * (after - r._time)  # -inf for an infinite rate: floored to 0
            if need < 0.0:
                need = 0.0
        need += r._cost
        r._need = need
        after = r._time


# ----------------------------------------------------------------------- the engine (lock held)


def _fits(avail: float, cost: float) -> bool:
    """The one test of "Tolerance": ``avail`` covers ``cost`` but for a millionth of it.  A cost
    of 0 takes nothing, so it always fits (it waits only for its turn)."""
    return avail >= cost - cost * _REL or cost == 0.0


def _floor(r: Reservation, rate: float, t: float) -> float:
    """What the bucket must keep at ``t`` for ``r``, the first reservation, and those after it."""
    floor = r._need - rate * (r._time - t)
    return floor if floor > r._need * _NOISE else 0.0


def _head(q: deque[_Waiter]) -> _Waiter | None:
    """The first waiter in ``q`` still waiting (those that left are dropped), stranded or not."""
    while q and q[0].state != _WAITING:
        q.popleft()
    return q[0] if q else None


def _first(q: deque[_Waiter]) -> _Waiter | None:
    """The first waiter in ``q`` that can still run: a waiter stranded on a closed event loop in
    front of it is abandoned (:func:`_abandon`), so it holds up nobody."""
    while True:
        w = _head(q)
        if w is None or not w.stranded():
            return w
        _abandon(w)


def _abandon(w: _Waiter) -> None:
    """``w`` is stranded on a closed event loop: it will never run.  It leaves every queue,
    taking nothing, and is buried; where it was first, the next in line is woken to recompute,
    or, stranded too, abandoned in turn (a loop rather than recursion: they may be thousands)."""
    stack = [w]
    while stack:
        w = stack.pop()
        if w.state != _WAITING:
            continue
        led = [b for b, _ in w.parts if _head(b._queue) is w]
        w.state = _GONE
        bury(w)  # maybe the last reference to its task: dropped after the lock
        for b, cost in w.parts:
            discard(b._queue, w)
            b._queued_cost = b._queued_cost - cost if b._queue else 0.0
        for b in led:
            nxt = _head(b._queue)
            if nxt is not None and not nxt.wake():
                stack.append(nxt)


def _purge(b: TokenBucket) -> None:
    """Abandon the waiters stranded anywhere in ``b``'s queue: what they asked for must count
    neither in an estimate that can fail an acquire at once, nor in a reservation's time.  (Only
    there: elsewhere the head is all that matters, and :func:`_first` looks at it.)"""
    dead = []
    open_loop = None  # waiters mostly share one loop: ask it once
    for w in b._queue:
        loop = w.loop
        if loop is None or loop is open_loop or w.state != _WAITING:
            continue
        if loop.is_closed():
            dead.append(w)
        else:
            open_loop = loop
    for w in dead:
        _abandon(w)


def _queued_costs(b: TokenBucket) -> list[float]:
    """The costs, in ``b``, of the waiters queued in ``b``, in order."""
    return [cost for w in b._queue if w.state == _WAITING for bb, cost in w.parts if bb is b]


def _when(b: TokenBucket, demands: Iterable[float]) -> float:
    """Just after ``b._refill()``: seconds from ``b._stamp`` until the last of ``demands`` can be
    granted, each in turn as soon as this bucket has it, around the booked reservations; 0.0 if
    at once, ``inf`` if never (rate 0).

    Between two reservations the level rises at ``rate`` up to the cap while the floor is 0, then
    the floor rises as fast as the level (what comes in is the reservation's), so what is
    available only grows until the floor starts rising; at a reservation's time it is continuous.
    """
    rate = b._rate
    if rate == math.inf:
        return 0.0
    size = b._size
    pending = b._pending
    n = len(pending)
    t0 = t = b._stamp
    level = b._tokens
    i = 0
    for d in demands:
        while True:
            floor = _floor(pending[i], rate, t) if i < n else 0.0
            avail = level - floor
            if _fits(avail, d):
                level -= d if avail >= d else max(avail, 0.0)  # as _take() does
                break
            if rate > 0.0 and floor == 0.0:
                at = t + (d - avail) / rate
                # Up to when the floor starts rising, give or take the tolerance (in time).
                if i >= n or at <= pending[i]._time - (pending[i]._need - d * _REL) / rate:
                    t = at
                    level = 0.0  # it had exactly d at ``at``
                    break
            if i >= n:
                return math.inf  # rate 0: nothing more will come
            r = pending[i]
            level = min(size, level + rate * (r._time - t)) - r._cost
            t = r._time
            i += 1
    return t - t0


def _wait_for(b: TokenBucket, now: float, cost: float) -> float:
    """Seconds until ``b`` can grant ``cost`` (from ``now``, or from a later reading already
    seen); 0.0 if at once, ``inf`` if never."""
    avail = b._avail(now)
    if _fits(avail, cost):
        return 0.0
    if b._pending:
        return _when(b, (cost,))
    rate = b._rate
    return math.inf if rate == 0.0 else (cost - avail) / rate


def _shortfall(w: _Waiter, now: float) -> float:
    """0.0 if ``w`` can take every part now; else seconds until it can, if it is first in line in
    every bucket; ``_BEHIND`` if someone is ahead of it somewhere (who nudges it on leaving);
    ``_NEVER`` if a bucket with rate 0 cannot cover it."""
    wait = 0.0
    for b, cost in w.parts:
        if _first(b._queue) is not w:  # (waiters stranded ahead of it are abandoned)
            return _BEHIND
        part = _wait_for(b, now, cost)
        if part == math.inf:
            return _NEVER
        if part > wait:
            wait = part
    return wait


def _turn(w: _Waiter, now: float) -> float:
    """Seconds from ``now`` until everyone ahead of ``w`` and ``w`` itself could be served, in
    the slowest of its buckets, each as soon as the bucket has its tokens (``inf``: never)."""
    wait = 0.0
    for b, cost in w.parts:
        b._refill(now)
        demands: list[float] = []
        for x in b._queue:
            if x is w:
                break
            if x.state == _WAITING:
                demands.extend(c for bb, c in x.parts if bb is b)
        demands.append(cost)
        part = _when(b, demands) + (b._stamp - now)  # (_when counts from the stamp, >= now)
        if part > wait:
            wait = part
    return wait


def _nudge(b: TokenBucket) -> None:
    """Wake the first in line so that it recomputes (it may be able to go now)."""
    while True:
        w = _first(b._queue)
        if w is None or w.wake():
            return
        _abandon(w)  # its event loop closed just now: it will never run, so it must not block


def _grant(w: _Waiter, now: float) -> None:
    w.state = _DONE
    for b, cost in w.parts:
        b._take(cost, b._avail(now))
        b._queue.popleft()  # w is first: _shortfall() checked it
        b._queued_cost = b._queued_cost - cost if b._queue else 0.0
    for b, _ in w.parts:
        _nudge(b)


def _leave(w: _Waiter, state: int) -> None:
    """``w`` stops waiting without taking anything; whoever is now first recomputes."""
    led = [b for b, _ in w.parts if _head(b._queue) is w]  # before w stops counting as live
    w.state = state
    for b, cost in w.parts:
        discard(b._queue, w)
        b._queued_cost = b._queued_cost - cost if b._queue else 0.0
    for b in led:
        _nudge(b)


def _fail_too_big(b: TokenBucket) -> None:
    """Waiters whose cost no longer fits in ``b`` leave with ValueError."""
    size = b._size
    for w in [w for w in b._queue if w.state == _WAITING]:
        if any(bb is b and cost > size for bb, cost in w.parts):
            _leave(w, _TOO_BIG)
            if not w.wake():
                bury(w)


def _estimate(parts: tuple[tuple[TokenBucket, float], ...], now: float) -> float:
    """Seconds until ``parts`` could be granted after everyone queued ahead is served, each as
    soon as the bucket has its tokens (``inf``: never, a bucket with rate 0 cannot)."""
    wait = 0.0
    for b, cost in parts:
        avail = b._avail(now)
        if b._pending:
            part = _when(b, [*_queued_costs(b), cost])
        else:
            if _fits(avail - b._queued_cost, cost):
                continue
            rate = b._rate
            part = math.inf if rate == 0.0 else (b._queued_cost + cost - avail) / rate
        if part > wait:
            wait = part
    return wait


def try_take(parts: tuple[tuple[TokenBucket, float], ...], now: float) -> bool:
    """With the lock held: take every part in one step, if nobody is queued in any of the buckets
    and every one has the tokens; otherwise take nothing."""
    for b, cost in parts:
        if _first(b._queue) is not None or not _fits(b._avail(now), cost):
            return False
    for b, cost in parts:
        b._take(cost, b._avail(now))
    return True


def enqueue(
    parts: tuple[tuple[TokenBucket, float], ...],
    loop: asyncio.AbstractEventLoop | None,
    now: float,
    timeout: float | None,
    label: str,
) -> _Waiter:
    for b, cost in parts:  # checked again under the lock: another thread may have lowered burst
        if cost > b._size:
            b._check_cost(cost)
        if b._queue and (timeout is not None or b._rate == 0.0):
            _purge(b)  # a stranded waiter's cost must not fail this one at once
    wait = _estimate(parts, now)
    if wait == math.inf:
        raise _exhausted_error(parts, label, True)
    if timeout is not None and wait > timeout:
        raise TimeoutError(f"{label}: cannot get the tokens within {timeout} s")
    w = _Waiter(parts, loop)
    for b, cost in parts:
        b._queue.append(w)
        b._queued_cost += cost
    return w


def _too_big_error(w: _Waiter) -> ValueError:
    costs = ", ".join(f"{cost:g} > burst {b._burst:g}" for b, cost in w.parts if cost > b._size)
    return ValueError(f"cost exceeds the bucket's burst (lowered while waiting): {costs}")


def _exhausted_error(
    parts: tuple[tuple[TokenBucket, float], ...], label: str, queued: bool
) -> BudgetExhausted:
    """``queued``: everyone queued is ahead of the caller (it is not queued yet)."""
    spent = ", ".join(
        f"cost {cost:g} with {max(b._avail(b._stamp), 0.0):g} tokens left"
        + (f" and {b._queued_cost:g} owed to the waiters ahead" if queued and b._queue else "")
        for b, cost in parts
        if b._rate == 0.0
    )
    return BudgetExhausted(
        f"{label}: rate 0 (a fixed budget), {spent}: the tokens would never come; assign a "
        f"rate to refill it"
    )


def _withdraw(w: _Waiter) -> None:
    if w.state == _WAITING:
        _leave(w, _GONE)


def _step(w: _Waiter, now: float, deadline: float | None, label: str) -> float:
    """With the lock held: grant ``w`` (0.0), raise why it cannot wait, or return how long to
    sleep before looking again."""
    if w.state == _TOO_BIG:
        raise _too_big_error(w)
    wait = _shortfall(w, now)
    if wait == 0.0:
        _grant(w, now)
        return 0.0
    if wait == _NEVER:  # w is first in line everywhere: nobody is ahead of it
        _leave(w, _EXHAUSTED)
        raise _exhausted_error(w.parts, label, False)
    if wait == _BEHIND:
        # Whoever is ahead nudges it on leaving; but one whose event loop closes while it
        # sleeps never will.  So look again at its turn, and no sooner than an interval that
        # doubles while it stays behind (the one ahead may be slow to run, or be waiting for
        # another bucket of a Limits), up to _MAX_BACKOFF.
        backoff = w.backoff
        w.backoff = min(backoff * 2.0, _MAX_BACKOFF)
        turn = _turn(w, now)
        wait = turn if backoff < turn < math.inf else backoff
    if deadline is not None:
        if now >= deadline:
            _leave(w, _GONE)
            raise TimeoutError(f"{label}: no tokens within the timeout")
        if deadline - now < wait:
            wait = deadline - now
    return wait


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
            now = clock() if clock is not None else loop.time()  # the user's code: not locked
            try:
                with _LOCK:
                    wait = _step(w, now, deadline, label)
                    if wait == 0.0:
                        return
                    fut = w.fut = loop.create_future()
            finally:
                if graveyard:
                    lay_to_rest()
            if now <= last and wait < _MIN_SLEEP:
                # The clock did not move since the last look (uvloop's moves in 1 ms steps and
                # its timers round to whole ms): sleep a tick instead of spinning.
                wait = _MIN_SLEEP
            last = now
            if clock is None:
                # Far from zero, now + wait may round back to now: aim one step of the clock on.
                when = now + wait
                timer = loop.call_at(
                    when if when > now else math.nextafter(now, math.inf), resolve, fut
                )
            else:
                timer = loop.call_later(wait, resolve, fut)
            try:
                await fut
            finally:
                timer.cancel()
    except BaseException as exc:
        give_up(exc, _LOCK, _withdraw, w)
        raise


def wait_thread(w: _Waiter, clock: Clock | None, deadline: float | None, label: str) -> None:
    """Thread form of :func:`wait_async`: ``w`` was armed with ``arm_thread()``."""
    tlock = w.tlock
    assert tlock is not None
    try:
        while True:
            now = clock() if clock is not None else monotonic()  # the user's code: not locked
            try:
                with _LOCK:
                    wait = _step(w, now, deadline, label)
                    if wait == 0.0:
                        return
            finally:
                if graveyard:
                    lay_to_rest()
            # tlock is held; a nudge releases it, so this returns at once, holding it again.
            if wait > threading.TIMEOUT_MAX:
                tlock.acquire()
            else:
                tlock.acquire(True, wait)
    except BaseException as exc:
        give_up(exc, _LOCK, _withdraw, w)
        raise


# ----------------------------------------------------------------------- the bucket


@final
class TokenBucket:
    """Up to ``rate`` tokens per second, in bursts of up to ``burst``; FIFO; tasks and threads.

    ``await acquire(cost)`` waits for ``cost`` tokens, served first come, first served whatever
    the cost; ``try_acquire(cost)`` takes them only if they are there and nobody is queued;
    ``acquire_blocking(cost)`` is the thread form; ``reserve(cost)`` books them for a later
    instant without waiting; ``async with bucket:`` / ``with bucket:`` take one token (nothing is
    given back on exit: tokens are spent).  A ``cost`` above ``burst`` raises ``ValueError`` at
    once; a ``timeout`` that cannot be met raises :class:`TimeoutError` at once; either way, and
    when cancelled, nothing is consumed.

    ``rate`` and ``burst`` can be assigned at any time; waiters are rescheduled, and waiters whose
    cost no longer fits in the bucket get ``ValueError``.  See the module docstring for the
    tolerance, infinite and zero rates, reservations and the clock.

    Args:
        rate: Tokens per second, a number or a string such as ``"10/s"``, ``"600/min"``,
            ``"1/100ms"``; ``math.inf`` or ``"inf"`` for no limit, 0 for a fixed budget of
            ``burst`` tokens that never refills.
        burst: The bucket's size, so the most granted at once and the largest single cost;
            default one second's worth of tokens, at least 1 (``max(1, ceil(rate))``), and 1 for
            an infinite rate (it matters only once a finite rate is assigned).  It starts full.
        name: A label for ``repr``, dumps and metrics.
        clock: A callable returning seconds; default the running loop's clock in tasks and
            ``time.monotonic`` in threads.

    Raises:
        ValueError: If ``rate`` is negative, NaN or a malformed string (see :func:`parse_rate`),
            or ``burst`` is below 1, NaN or infinite.
        TypeError: If ``rate`` is neither a number nor a string, ``burst`` is not a number,
            ``name`` is not a ``str``, or ``clock`` is not callable.
    """

    __slots__ = (
        "__weakref__",
        "_burst",
        "_clock",
        "_cost_granted",
        "_granted",
        "_name",
        "_pending",
        "_queue",
        "_queued_cost",
        "_rate",
        "_size",
        "_stamp",
        "_tokens",
        "_tuned",
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
        if burst is not None:
            self._burst = _check_burst(burst)
        else:
            self._burst = 1.0 if self._rate == math.inf else float(max(1, math.ceil(self._rate)))
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        if clock is not None and not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, got {clock!r}")
        self._name = name
        self._clock = clock
        # The cap on the level: burst, or inf while the rate is inf (every cost fits, at once).
        self._size = math.inf if self._rate == math.inf else self._burst
        self._tokens = self._size
        self._stamp = _BEFORE_TIME  # no reading yet: the first one finds the bucket full
        self._queue: deque[_Waiter] = deque()
        self._queued_cost = 0.0
        self._pending: list[Reservation] = []  # booked, in order of time, all after _stamp
        self._granted = 0
        self._cost_granted = 0.0
        self._tuned = False  # rate or burst assigned after construction
        register(self, "bucket")

    # ----------------------------------------------------------------- time and tokens

    def _refill(self, now: float) -> None:
        """With the lock held: bring the level to ``now``, settling the reservations due by then
        at their own times.  A reading before the last one changes nothing."""
        if now > self._stamp:
            if self._pending and self._pending[0]._time <= now:
                self._settle(now)
            tokens = self._tokens + (now - self._stamp) * self._rate
            self._tokens = tokens if tokens < self._size else self._size
            self._stamp = now

    def _settle(self, now: float) -> None:
        pending = self._pending
        rate = self._rate
        size = self._size
        while pending and pending[0]._time <= now:
            r = pending.pop(0)
            tokens = self._tokens + (r._time - self._stamp) * rate  # r._time > _stamp
            if tokens > size:
                tokens = size
            tokens -= r._cost
            if 0.0 > tokens >= -r._cost * _REL:
                tokens = 0.0
            self._tokens = tokens
            self._stamp = r._time
            self._granted += 1
            self._cost_granted += r._cost
            r._state = _R_SETTLED

    def _avail(self, now: float) -> float:
        """With the lock held: refill to ``now``; the tokens that may be taken, above the floor
        that booked reservations need."""
        self._refill(now)
        if not self._pending:
            return self._tokens
        return self._tokens - _floor(self._pending[0], self._rate, self._stamp)

    def _take(self, cost: float, avail: float) -> None:
        """Take ``cost``, given ``avail`` from :meth:`_avail` and ``_fits(avail, cost)``; a
        shortfall within the tolerance leaves the bucket at exactly its floor, not below it."""
        self._tokens -= cost if avail >= cost else max(avail, 0.0)
        self._granted += 1
        self._cost_granted += cost

    def _peek(self, now: float) -> tuple[float, int, float]:
        """What :meth:`_avail` would return at ``now``, and the count and cost of the reservations
        due by then, without changing anything: reading statistics (perhaps from another thread,
        on another clock, as the debug endpoint does) changes nothing."""
        rate = self._rate
        size = self._size
        level = self._tokens
        t = self._stamp
        pending = self._pending
        i = 0
        due = 0.0
        if now > t:
            while i < len(pending) and pending[i]._time <= now:
                r = pending[i]
                level = min(size, level + (r._time - t) * rate) - r._cost
                due += r._cost
                t = r._time
                i += 1
            level = min(size, level + (now - t) * rate)
            t = now
        if i < len(pending):
            level -= _floor(pending[i], rate, t)
        return level, i, due

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
        if cost > self._size:
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
        """The name given when it was made, if any."""
        return self._name

    @property
    def rate(self) -> float:
        """Tokens per second.  Assign a number or a string such as ``"5/s"`` to change it.

        The tokens accrued so far count at the old rate.  Waiters are rescheduled: assigning
        ``inf`` lets them all go at once, assigning 0 fails those the tokens left cannot serve
        (:class:`BudgetExhausted`), and a finite rate after ``inf`` starts from a full bucket and
        fails waiters whose cost is above ``burst`` (``ValueError``).  Reservations keep their
        times.  A bucket whose rate or burst was assigned is never forgotten by a ``PerKey`` (its
        factory would not make it so again).

        Raises:
            TypeError, ValueError: If the value assigned is not a rate, as :func:`parse_rate`.
        """
        return self._rate

    @rate.setter
    def rate(self, value: float | str) -> None:
        rate = parse_rate(value)
        now = self._now()  # read before the lock: the clock may be anybody's code
        if not take_or_defer(_LOCK, setattr, self, "rate", rate):
            return  # in a garbage collection that holds the lock: done as soon as it is free
        try:
            self._refill(now)  # tokens so far accrue at the old rate
            self._rate = rate
            self._tuned = True
            if rate == math.inf:
                self._size = self._tokens = math.inf
            elif self._size != self._burst:  # from inf: a full bucket, and burst counts again
                self._size = self._tokens = self._burst
                _fail_too_big(self)
            _recompute_needs(self)
            _nudge(self)
        finally:
            _LOCK.release()
        if graveyard:
            lay_to_rest()

    @property
    def burst(self) -> float:
        """The bucket's size.  Assign to change it; waiters whose cost no longer fits get
        ``ValueError``, and the tokens held are capped at the new size (while the rate is
        ``inf`` it is only remembered).

        Raises:
            TypeError: If the value assigned is not a number.
            ValueError: If the value assigned is below 1, NaN or infinite.
        """
        return self._burst

    @burst.setter
    def burst(self, value: float) -> None:
        burst = _check_burst(value)
        now = self._now()
        if not take_or_defer(_LOCK, setattr, self, "burst", burst):
            return
        try:
            self._refill(now)
            self._burst = burst
            self._tuned = True
            if self._rate != math.inf:
                self._size = burst
                self._tokens = min(self._tokens, burst)
                _fail_too_big(self)
            _recompute_needs(self)
            _nudge(self)
        finally:
            _LOCK.release()
        if graveyard:
            lay_to_rest()

    def statistics(self) -> TokenBucketStatistics:
        """A snapshot: rate, burst, tokens available now, waiters, totals, tokens reserved.

        Returns:
            A frozen :class:`TokenBucketStatistics`.  Reading it changes nothing.

        Raises:
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        now = self._now()
        take(_LOCK, "TokenBucket.statistics()")
        try:
            tokens, due, due_cost = self._peek(now)
            return TokenBucketStatistics(
                name=self._name,
                rate=self._rate,
                burst=self._burst,
                tokens=tokens,
                waiting=sum(1 for w in self._queue if w.state == _WAITING and not w.stranded()),
                granted_total=self._granted + due,
                cost_granted_total=self._cost_granted + due_cost,
                reserved=sum(r._cost for r in self._pending[due:]),
            )
        finally:
            _LOCK.release()

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        reserved = f" reserved={s.reserved:g}" if s.reserved else ""
        return (
            f"<TokenBucket{name} rate={s.rate:g}/s burst={s.burst:g} tokens={s.tokens:.2f} "
            f"waiting={s.waiting}{reserved}>"
        )

    # ----------------------------------------------------------------- acquire

    def try_acquire(self, cost: float = 1) -> bool:
        """Take ``cost`` tokens if they are there and nobody is queued; never blocks.

        Args:
            cost: Tokens to take, ``0 <= cost <= burst`` (any finite cost while the rate is
                ``inf``).

        Returns:
            True if they were taken, False if not (nothing is taken then; also when the lock is
            taken during a garbage collection in this thread).

        Raises:
            ValueError: If ``cost`` is negative, not finite, or above ``burst``.
            TypeError: If ``cost`` is not a number.
        """
        kind: object = cost.__class__
        if not (kind is int and 0 <= cost <= self._size):  # the usual case, checked quickly
            self._check_cost(cost)
        now = self._now()  # read before the lock: the clock may be anybody's code
        lock = _LOCK
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            return False  # a garbage collection interrupted this thread holding the lock
        try:
            if not self._queue and not self._pending:
                # _refill() and _take() inlined, as in acquire().
                tokens = self._tokens
                if now > self._stamp:
                    tokens += (now - self._stamp) * self._rate
                    if tokens > self._size:
                        tokens = self._size
                    self._stamp = now
                if tokens >= cost:
                    self._tokens = tokens - cost
                    self._granted += 1
                    self._cost_granted += cost
                    return True
                self._tokens = tokens
                if _fits(tokens, cost):
                    self._take(cost, tokens)
                    return True
                return False
            ok = _first(self._queue) is None  # (waiters stranded on a closed loop are abandoned)
            if ok:
                avail = self._avail(now)
                ok = _fits(avail, cost)
                if ok:
                    self._take(cost, avail)
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()
        return ok

    def _is_idle(self) -> bool:
        """Nobody waiting, nothing booked, the bucket full, and rate and burst as made:
        forgetting it changes nothing (for PerKey).  A bucket with rate 0 that was drawn from is
        never full again, so it is never forgotten: a new one would hold its whole budget again.

        "Full" is exact, not the tolerance test of every other decision: forgiving the shortfall
        at each forgetting would forgive it again and again (a key used for a millionth of its
        burst at a time, then released, would get a full new bucket every time).  A bucket
        refills to exactly ``burst`` (the level is capped there), so an idle one is forgotten.
        PerKey calls it holding its own lock: it lays the waiters buried here to rest once it
        lets go of it."""
        now = self._now()
        if "a" not in GC_PHASE:
            _LOCK.acquire()
        elif not enter(_LOCK):
            return False  # cannot tell: keep it
        try:
            full = self._avail(now) >= self._burst  # (settles what is due first)
            # (_first() abandons the waiters stranded at the head: they wait for nothing)
            return full and not self._pending and not self._tuned and _first(self._queue) is None
        finally:
            _LOCK.release()

    async def acquire(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Wait for ``cost`` tokens, first come first served, and take them.

        Cancelled or timed out, it has taken nothing.

        Args:
            cost: Tokens to take, ``0 <= cost <= burst`` (any finite cost while the rate is
                ``inf``).
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            ValueError: If ``cost`` is negative, not finite, or above ``burst`` (also when
                ``burst`` is lowered below it while waiting), or ``timeout`` is negative or NaN.
            TypeError: If ``cost`` or ``timeout`` is not a number.
            TimeoutError: At once if the tokens owed to the waiters ahead plus ``cost`` cannot be
                refilled within ``timeout``, else when it passes.
            BudgetExhausted: If the rate is 0 and the tokens left cannot cover ``cost`` after the
                waiters ahead (at once, or when the rate is assigned 0 while waiting).
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        kind: object = cost.__class__  # (typed as object: mypy thinks a float is never an int)
        if not (kind is int and 0 <= cost <= self._size):  # the usual case, checked quickly
            self._check_cost(cost)
        if timeout is not None:
            timeout = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        clock = self._clock
        now = clock() if clock is not None else loop.time()  # the user's code: before the lock
        lock = _LOCK
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("TokenBucket.acquire()")
        try:
            if not self._queue and not self._pending:
                # _refill() and _take() inlined: this is the hot path.
                tokens = self._tokens
                if now > self._stamp:
                    tokens += (now - self._stamp) * self._rate
                    if tokens > self._size:
                        tokens = self._size
                    self._stamp = now
                if tokens >= cost:
                    self._tokens = tokens - cost
                    self._granted += 1
                    self._cost_granted += cost
                    return
                self._tokens = tokens
                if _fits(tokens, cost):
                    self._take(cost, tokens)
                    return
                w: _Waiter | None = enqueue(((self, cost),), loop, now, timeout, self._label())
            else:
                w = self._take_or_enqueue(cost, loop, now, timeout)
        finally:
            lock.release()
        if graveyard:  # waiters stranded on a closed loop, abandoned above: let them go now
            lay_to_rest()
        if w is not None:
            deadline = None if timeout is None else now + timeout
            await wait_async(w, loop, clock, deadline, self._label())

    def _take_or_enqueue(
        self,
        cost: float,
        loop: asyncio.AbstractEventLoop | None,
        now: float,
        timeout: float | None,
    ) -> _Waiter | None:
        """With the lock held: take ``cost`` if nobody who can still run is queued and the
        tokens are there (None), else queue a waiter (armed for this thread if ``loop`` is
        None)."""
        if _first(self._queue) is None:
            avail = self._avail(now)
            if _fits(avail, cost):
                self._take(cost, avail)
                return None
        if loop is None:
            refuse_in_loop("acquire_blocking")
        w = enqueue(((self, cost),), loop, now, timeout, self._label())
        if loop is None:
            w.arm_thread()
        return w

    def acquire_blocking(self, cost: float = 1, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`acquire`: block this thread until the tokens are taken.

        If it raises, nothing was taken.

        Args:
            cost: Tokens to take, ``0 <= cost <= burst`` (any finite cost while the rate is
                ``inf``).
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            RuntimeError: If it cannot take the tokens at once in a thread whose event loop is
                running (waiting would freeze the loop), even with ``timeout=0``.
            ValueError, TypeError, TimeoutError, BudgetExhausted, Busy: As :meth:`acquire`.
        """
        self._check_cost(cost)
        timeout = check_timeout(timeout)
        now = self._now()
        take(_LOCK, "TokenBucket.acquire_blocking()")
        try:
            w = self._take_or_enqueue(cost, None, now, timeout)
        finally:
            _LOCK.release()
            if graveyard:
                lay_to_rest()
        if w is not None:
            deadline = None if timeout is None else now + timeout
            wait_thread(w, self._clock, deadline, self._label())

    def reserve(self, cost: float = 1, *, max_delay: float | None = None) -> Reservation:
        """Book ``cost`` tokens for the earliest instant the bucket can grant them after the
        waiters already queued; never waits.

        The reservation's tokens are taken at its ``time``; until then no other acquisition or
        reservation may take a token it needs.  See "Reservations" in the module docstring.

        Args:
            cost: Tokens to book, ``0 <= cost <= burst`` (any finite cost while the rate is
                ``inf``).
            max_delay: Book only if the tokens are the caller's within this many seconds;
                ``None`` for any delay.

        Returns:
            A :class:`Reservation`; ``ok`` is False (and nothing is booked) if the delay would
            exceed ``max_delay``, or if the rate is 0 and the tokens left cannot cover it.

        Raises:
            ValueError: If ``cost`` is negative, not finite or above ``burst``, or ``max_delay``
                is negative or NaN.
            TypeError: If ``cost`` or ``max_delay`` is not a number.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        self._check_cost(cost)
        max_delay = check_timeout(max_delay, "max_delay")
        now = self._now()
        take(_LOCK, "TokenBucket.reserve()")
        try:
            return self._reserve(cost, max_delay, now)
        finally:
            _LOCK.release()
            if graveyard:
                lay_to_rest()

    def _reserve(self, cost: float, max_delay: float | None, now: float) -> Reservation:
        if cost > self._size:  # burst lowered meanwhile by another thread
            self._check_cost(cost)
        if self._queue:
            _purge(self)  # a stranded waiter is not served first: nothing is booked behind it
        avail = self._avail(now)
        if _first(self._queue) is None and _fits(avail, cost):
            self._take(cost, avail)
            return Reservation(self, cost, now, 0.0, _R_SETTLED)
        wait = _when(self, [*_queued_costs(self), cost])
        when = self._stamp + wait
        delay = max(when - now, 0.0)
        if wait == math.inf or (
            max_delay is not None
            and delay > max_delay
            # (the tolerance again, in time: the tokens due by then may be a hair short; at
            # rate 0 nothing comes in time, so there is no such hair)
            and (self._rate == 0.0 or delay - max_delay > cost * _REL / self._rate)
        ):
            return Reservation(self, cost, math.inf, math.inf, _R_REFUSED)
        if when <= self._stamp:
            # Everyone ahead could go right now (they wait for another bucket): this too.
            self._take(cost, avail)
            return Reservation(self, cost, now, 0.0, _R_SETTLED)
        r = Reservation(self, cost, when, delay, _R_PENDING)
        bisect.insort(self._pending, r, key=_time_of)
        _recompute_needs(self)
        return r

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


def _time_of(r: Reservation) -> float:
    return r._time
