"""AdaptiveLimiter: a CapacityLimiter whose ``total`` finds the other side's capacity by itself.

A scraper that must guess each host's limit guesses wrong both ways: too low and the crawl is
slow, too high and the host answers 429/503 or slows down for everyone.  An
:class:`AdaptiveLimiter` starts somewhere between ``min`` and ``max`` and moves its ``total``
from what the held sections report: how long each took (measured from the grant to the
release, automatically) and explicit overload signals (:meth:`AdaptiveLimiter.overloaded`, for a
429, a 503 or a timeout, with an optional Retry-After pause).  It *is* a
:class:`~poolkit.CapacityLimiter` (a subclass), so it goes wherever one goes: ``async with``,
``with`` from threads, a pool's ``limit=``, a :class:`~poolkit.Limits`, and one per host through
:class:`~poolkit.PerKey`.

Windows, not samples
--------------------
Sections are summed up in *windows* of at least one typical latency (the smoothed window
latency) and as many samples as the limit (between 3 and 20), and the limit moves once per
window, from the window's mean latency (each sample counted as at most 4 times the no-load
latency), the most sections it held at once, and whether any section reported an overload.
One update per window is what keeps ten requests that time out together from cutting the limit
ten times (``0.9 ** 10``); an overload reported by a section sent before the last cut is the
same overload, not a new one (as TCP cuts once per round trip).  The cap on each sample is what
keeps one request stuck for a minute from collapsing the limit.  (The mean, not the median: when
a quarter of the requests wait in the other side's queue, the median does not move.)

The no-load latency
-------------------
Both algorithms compare a window's latency with the *no-load latency*: what a section takes when
the other side is not queueing.  It is measured by *probes*: the limit is held at half its value
until enough sections that *started* after the probe began have finished (at least 10, until
their mean is known within 2 %, at most 100); sections started before it ran under the old
load, and counting them is the bug of envoy#11579, where the measured minimum climbed with every
window under sustained load.  The no-load latency is the mean of the last 4 probes (one probe's
noise would otherwise move every window's verdict), unless the newest differs from that by over
30 %: then the other side changed, and the newest alone counts.  The first probe comes five
latencies after the first window, the next ones 5, 10 and 20 s apart, then every
``probe_interval`` (30 s by default), each plus up to 15 % at random so that many clients do not
probe in step.  For three latencies after a probe the limit does not move (the probe let the
other side's queue drain; until it refills, latency says there is room when there is not).  A
probe costs half the concurrency for a few latencies every 30 s (the simulations' goodput counts
it).  With ``probe_interval=None`` there are no probes, and the no-load latency is the lowest
smoothed window latency seen, which noise biases low.

Algorithms
----------
:class:`Gradient` (the default, chosen by the simulations in ``benchmarks/adaptive_sim.py``; the
README's "Adaptive limits" table) after Netflix's Gradient2.  With ``ratio = latency /
no_load``: above the tolerance, the target is ``limit * max(0.5, tolerance / ratio)``; within
it, and when at least half the limit was used, the target is ``limit + max(4, sqrt(limit)) *
h**2``, where ``h`` is the headroom left (1 at the no-load latency, 0 at the tolerance); the
limit moves ``smoothing`` (0.2) of the way to the target per window.  Two changes from
Gradient2, for its reported failures: the queue allowance shrinks to nothing as the latency
nears the tolerance, and is never added under overload (Gradient2 adds it always, so at a
steady gradient of 0.8 its limit creeps up without end: concurrency-limits#134), and an overload
signal counts as the floor gradient 0.5 (Gradient2 ignores drops: concurrency-limits#176).  The
default tolerance, 1.03, was chosen on the simulations: against a server that queues past its
capacity ``c``, the limit settles near ``1.05 c`` to ``1.15 c``; 1.05 and more settled higher
than the issue's ±15 %, and 1.02 collapsed more often under noise.

:class:`AIMD`: additive increase (``+step`` per window in which the limit was reached) and
multiplicative decrease (``* backoff``) on an overload signal, or on a window whose latency is
beyond ``tolerance`` (2 by default) times the no-load latency, which stands for a timeout.  It
finds a capacity that is announced by 429/503, by going past it: it keeps the goodput, but about
one request in six draws a 503 in the simulations.

Overload and Retry-After
------------------------
``limiter.overloaded()`` inside a held section reports that this section met an overload (a
429, a 503, a timeout): its latency is not taken as a sample (a fast 503 says nothing about
how fast the server works), and the window ends with a decrease.  Called anywhere else, it
reports an overload for the limiter.  ``overloaded(retry_after=s)`` also *pauses* the limiter:
for ``s`` seconds (at most ``max_pause``) nothing more is granted (``acquire`` waits, with its
timeout counting; ``try_acquire`` returns False); sections already held go on.  Waiters that
meet a pause wait it out and then queue in the order their timers fire, which asyncio does not
promise to be their arrival order.

Time is the running event loop's clock (``loop.time()``), so the simulations run on
:class:`poolkit.testing.VirtualTimeLoop`; from a thread without a loop, ``time.monotonic()``.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics as _stats
import threading
import time
from asyncio import current_task, get_running_loop
from asyncio.events import _get_running_loop
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, fields
from threading import get_ident
from types import TracebackType
from typing import Final

from poolkit._core._checks import check_timeout

from ._limiter import _DONE, CapacityLimiter, CapacityLimiterStatistics, check_weight

__all__ = ["AIMD", "AdaptiveLimiter", "AdaptiveLimiterStatistics", "Gradient", "overloaded"]

_EWMA: Final = 0.2  # weight of a new window in the smoothed latency
_PROBE_JITTER: Final = 0.15
_MIN_SAMPLES: Final = 3  # a window holds at least this many samples, and ...
_MAX_SAMPLES: Final = 20  # ... the limit's worth of them, up to this many
_CAP: Final = 4.0  # a sample counts as at most this many times the no-load latency
_FIRST_PROBE: Final = 5  # the first probe, this many window latencies after the first window
# A probe ends once at least _PROBE_SAMPLES sections begun in it have finished and their mean is
# known within _PROBE_ERROR (its standard error), or _PROBE_MOST have, or after _PROBE_LONGEST
# smoothed latencies.  A low no-load estimate makes every window look overloaded, so the limit
# would fall to ``min``: the precision is what stands between noise and that collapse.
_PROBE_SAMPLES: Final = 10
_PROBE_ERROR: Final = 0.02
_PROBE_MOST: Final = 100
_PROBE_LONGEST: Final = 40
# The no-load latency is the mean of the last _PROBE_KEEP probes, unless the newest differs from
# it by more than _PROBE_CHANGE: then the other side changed, and the newest alone counts.
_PROBE_KEEP: Final = 4
_PROBE_CHANGE: Final = 0.3
# After a probe, windows ending within _SETTLE smoothed latencies change nothing: the probe let
# the other side's queue drain, and until it refills, latency says there is room when there is not.
_SETTLE: Final = 3.0
_EARLY_PROBES: Final = 5.0  # seconds to the second probe; doubled for each one after it


@dataclass(frozen=True, slots=True)
class Window:
    """What one window of sections reported, as an algorithm sees it."""

    latency: float
    """The mean latency of the sections that finished without an overload (seconds, each
    counted as at most 4 times the no-load latency); ``nan``
    when every section of the window was overloaded."""
    samples: int
    """Sections that finished without an overload."""
    overloads: int
    """Overload signals (:meth:`AdaptiveLimiter.overloaded`) in the window."""
    peak: int
    """The most weight held at once during the window."""


def _check_ratio(name: str, value: float, low: float, high: float, *, high_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    ok = low < value < high if high_open else low < value <= high
    if not ok:
        bracket = ")" if high_open else "]"
        raise ValueError(f"{name} must be in ({low}, {high}{bracket}, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class AIMD:
    """Additive increase, multiplicative decrease: ``+step`` per window in which the limit was
    reached with no overload, ``* backoff`` per window with an overload signal or a mean
    latency beyond ``tolerance`` times the no-load latency.

    Args:
        backoff: The factor of a decrease, in (0, 1).
        step: The increase per window, above 0.
        tolerance: A window slower than this many times the no-load latency counts as an
            overload (a stand-in for a timeout); above 1.

    Raises:
        TypeError: If an argument is not a number.
        ValueError: If an argument is out of its range.
    """

    backoff: float = 0.9
    step: float = 1.0
    tolerance: float = 2.0

    def __post_init__(self) -> None:
        _check_ratio("backoff", self.backoff, 0.0, 1.0, high_open=True)
        _check_ratio("step", self.step, 0.0, math.inf, high_open=True)
        _check_ratio("tolerance", self.tolerance, 1.0, math.inf, high_open=True)

    def update(self, limit: float, window: Window, no_load: float) -> float:
        """The next limit (before clamping to ``[min, max]``)."""
        if window.overloads or window.latency > self.tolerance * no_load:
            return limit * self.backoff
        if window.peak >= math.floor(limit):
            return limit + self.step
        return limit


@dataclass(frozen=True, slots=True)
class Gradient:
    """The latency gradient, after Netflix's Gradient2 (the module docstring has the rule and
    the two changes): above ``tolerance`` times the no-load latency the limit shrinks in
    proportion (at most by half; by half on an overload), below it the limit grows by a queue
    allowance that shrinks to nothing at the tolerance; it moves ``smoothing`` of the way to its
    target per window.

    Args:
        tolerance: How much slower than the no-load latency a window may be before the limit
            shrinks; above 1.  Lower settles closer to the capacity and reacts to noise more.
        smoothing: The share of the way to the target taken per window, in (0, 1].

    Raises:
        TypeError: If an argument is not a number.
        ValueError: If an argument is out of its range.
    """

    tolerance: float = 1.03
    smoothing: float = 0.2

    def __post_init__(self) -> None:
        _check_ratio("tolerance", self.tolerance, 1.0, math.inf, high_open=True)
        _check_ratio("smoothing", self.smoothing, 0.0, 1.0, high_open=False)

    def update(self, limit: float, window: Window, no_load: float) -> float:
        """The next limit (before clamping to ``[min, max]``)."""
        tolerance = self.tolerance
        if window.overloads:
            target = limit * 0.5
        else:
            ratio = window.latency / no_load
            if ratio <= tolerance:
                if 2 * window.peak < limit:
                    return limit  # the limit was not what held the work back: no evidence
                headroom = (tolerance - ratio) / (tolerance - 1.0)
                headroom = headroom if headroom < 1 else 1.0
                target = limit + max(4.0, math.sqrt(limit)) * headroom * headroom
            else:
                g = tolerance / ratio
                target = limit * (g if g > 0.5 else 0.5)
        return limit + self.smoothing * (target - limit)


Algorithm = AIMD | Gradient


@dataclass(frozen=True, slots=True)
class AdaptiveLimiterStatistics(CapacityLimiterStatistics):
    """A snapshot of an :class:`AdaptiveLimiter`: the capacity limiter's fields, and these."""

    limit: float
    """The limit the algorithm holds (``total`` is it rounded, within ``[min, max]``)."""
    min: int
    """The lowest ``total``."""
    max: int
    """The highest ``total``."""
    algorithm: str
    """``"gradient"`` or ``"aimd"``."""
    latency: float
    """The mean latency of the last window, in seconds (``nan`` before the first)."""
    smoothed_latency: float
    """The weighted average of the window latencies, in seconds (``nan`` before the first)."""
    no_load_latency: float
    """The no-load latency the algorithm compares with, in seconds (``nan`` before the first
    window)."""
    samples_total: int
    """Sections measured since the limiter was made."""
    overloads_total: int
    """Overload signals since the limiter was made."""
    increases_total: int
    """Windows after which ``total`` went up."""
    decreases_total: int
    """Windows after which ``total`` went down."""
    probes_total: int
    """No-load probes finished."""
    probing: bool
    """Whether a no-load probe holds ``total`` at half the limit now."""
    paused_for: float
    """Seconds left of a Retry-After pause (0 when not paused)."""


# The sections held now, by task (or thread): so that a release finds its own section's start,
# and overloaded() reaches the adaptive limiters a request went through, inside a Limits or a
# PerKey, without naming them.  One lock for these and every adaptive limiter's window: the
# critical sections are a few dict and list operations.
class _Section:
    __slots__ = ("began", "limiter", "over")

    def __init__(self, limiter: AdaptiveLimiter, began: float) -> None:
        self.limiter = limiter
        self.began = began
        self.over = False  # it met an overload: its latency is no sample


_SECTIONS: dict[object, list[_Section]] = {}
_LOCK = threading.Lock()


def overloaded(*, retry_after: float | None = None) -> int:
    """Report an overload to every :class:`AdaptiveLimiter` the calling task (or thread) holds a
    section of, as :meth:`AdaptiveLimiter.overloaded` does for one.

    Call it where a 429, a 503 or a timeout is seen: the limiters the request went through
    (inside a :class:`~poolkit.Limits`, one per host through a :class:`~poolkit.PerKey`, or a
    pool's ``limit=``) are found without being named.

    Args:
        retry_after: Seconds each of them pauses for, or ``None``.

    Returns:
        How many adaptive limiters were told (0 when the caller holds none).

    Raises:
        TypeError: If ``retry_after`` is not a number or None.
        ValueError: If ``retry_after`` is negative or NaN.
    """
    holder = _holder()
    with _LOCK:
        held = list(dict.fromkeys(section.limiter for section in _SECTIONS.get(holder, ())))
    for limiter in held:
        limiter.overloaded(retry_after=retry_after)
    if not held and retry_after is not None:
        _check_retry_after(retry_after)
    return len(held)


def _check_retry_after(retry_after: object) -> None:
    if isinstance(retry_after, bool) or not isinstance(retry_after, (int, float)):
        raise TypeError(f"retry_after must be a number of seconds or None, got {retry_after!r}")
    if not retry_after >= 0:
        raise ValueError(f"retry_after must be >= 0, got {retry_after!r}")


def _take_section(limiter: AdaptiveLimiter, holder: object) -> _Section | None:
    """Remove and return ``limiter``'s latest section held by ``holder``; if it holds none (the
    release came from another task or thread), the limiter's oldest section anywhere (_LOCK
    held)."""
    held = _SECTIONS.get(holder)
    if held is not None:
        for i in range(len(held) - 1, -1, -1):
            if held[i].limiter is limiter:
                section = held.pop(i)
                if not held:
                    del _SECTIONS[holder]
                return section
    oldest: tuple[object, int] | None = None
    began = math.inf
    for other, sections in _SECTIONS.items():
        for i, section in enumerate(sections):
            if section.limiter is limiter and section.began < began:
                oldest, began = (other, i), section.began
    if oldest is None:
        return None
    sections = _SECTIONS[oldest[0]]
    section = sections.pop(oldest[1])
    if not sections:
        del _SECTIONS[oldest[0]]
    return section


def _precise(samples: list[float]) -> bool:
    """Whether the mean of ``samples`` (at least 2) is known within ``_PROBE_ERROR`` of itself
    (its standard error).  Plain float sums: ``statistics.stdev`` is exact and far slower, and
    this runs at every release during a probe."""
    n = len(samples)
    total = math.fsum(samples)
    mean = total / n
    spread = math.fsum((x - mean) ** 2 for x in samples) / (n - 1)
    return spread <= (_PROBE_ERROR * mean) ** 2 * n


def _now() -> float:
    loop = _get_running_loop()
    return loop.time() if loop is not None else time.monotonic()


def _holder() -> object:
    loop = _get_running_loop()
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return task
    return threading.get_ident()


class AdaptiveLimiter(CapacityLimiter):
    """A :class:`CapacityLimiter` whose ``total`` moves between ``min`` and ``max`` to match
    what the other side can take, from the latency of the held sections and overload signals.

    Use it as a capacity limiter (``async with limiter:``); call :meth:`overloaded` when a
    section meets a 429, a 503 or a timeout.  See the module docstring for the windows, the
    no-load latency and its probes, and the two algorithms.

    ``total`` cannot be assigned (the algorithm owns it).  A weight above ``min`` is refused,
    so that no waiter is stranded by a shrinking total.  In a :class:`~poolkit.PerKey`, a
    limiter that has moved its total, or is paused, is kept, not forgotten when idle, so what
    it learned about a host stays; one still at its initial total is forgotten as a capacity
    limiter is (it relearns the no-load latency from its first window).

    Args:
        initial: The starting total (default: ``min(max, max(min, 10))``).
        min: The lowest total, at least 1.
        max: The highest total.
        algorithm: A :class:`Gradient` (the default) or :class:`AIMD`.
        probe_interval: Seconds between no-load probes (plus up to 15 % at random); ``None``
            turns probing off.
        max_pause: The longest Retry-After pause, in seconds.
        name: A label for ``repr``, statistics and metrics.

    Raises:
        TypeError: If an argument has the wrong type.
        ValueError: If ``min > max``, ``initial`` is outside ``[min, max]``, or a number is out
            of range.
    """

    __slots__ = (
        "_algo",
        "_cut_at",
        "_decreases",
        "_hi",
        "_increases",
        "_latency",
        "_limit",
        "_lo",
        "_max_pause",
        "_no_load",
        "_overloads",
        "_pause_until",
        "_probe_every",
        "_probe_from",
        "_probe_history",
        "_probe_limit",
        "_probe_next",
        "_probe_samples",
        "_probes",
        "_rng",
        "_samples",
        "_settle_until",
        "_smooth",
        "_w_lat",
        "_w_over",
        "_w_peak",
        "_w_start",
    )

    def __init__(
        self,
        initial: int | None = None,
        *,
        min: int = 1,
        max: int = 100,
        algorithm: AIMD | Gradient | None = None,
        probe_interval: float | None = 30.0,
        max_pause: float = 300.0,
        name: str | None = None,
    ) -> None:
        lo = check_weight(min, "min")
        hi = check_weight(max, "max")
        if lo > hi:
            raise ValueError(f"min must be <= max, got min={lo!r} and max={hi!r}")
        if initial is None:
            start = hi if hi < 10 else (lo if lo > 10 else 10)
        else:
            start = check_weight(initial, "initial")
            if not lo <= start <= hi:
                raise ValueError(f"initial must be within [min, max] = [{lo}, {hi}], got {start!r}")
        if algorithm is None:
            algorithm = Gradient()
        elif not isinstance(algorithm, (AIMD, Gradient)):
            raise TypeError(
                f"algorithm must be a poolkit.Gradient or poolkit.AIMD, got {algorithm!r}"
            )
        if probe_interval is not None:
            check_timeout(probe_interval)
            if not (probe_interval > 0 and math.isfinite(probe_interval)):
                raise ValueError(
                    f"probe_interval must be a finite number of seconds above 0 or None, "
                    f"got {probe_interval!r}"
                )
        check_timeout(max_pause)
        if not math.isfinite(max_pause):
            raise ValueError(f"max_pause must be a finite number of seconds, got {max_pause!r}")
        super().__init__(start, name=name)
        self._lo, self._hi, self._limit = lo, hi, float(start)
        self._algo: Algorithm = algorithm
        self._w_start: float | None = None
        self._w_lat: list[float] = []
        self._w_over = 0
        self._w_peak = 0
        self._latency = math.nan
        self._smooth = math.nan
        self._no_load = math.nan
        self._samples = self._overloads = self._increases = self._decreases = self._probes = 0
        self._rng = random.Random()
        self._probe_every = probe_interval
        self._probe_next = math.inf  # set by the first window
        self._probe_from: float | None = None  # the probe's start, while one runs
        self._probe_limit = 0.0  # the limit to go back to after the probe
        self._probe_samples: list[float] = []
        self._probe_history: deque[float] = deque(maxlen=_PROBE_KEEP)
        self._pause_until = -math.inf
        self._cut_at = -math.inf  # when the last window with an overload ended
        self._settle_until = -math.inf  # no growth before this: a probe just ended
        self._max_pause = float(max_pause)

    # ----------------------------------------------------------------- introspection

    @property
    def total(self) -> int:
        """The capacity now, set by the algorithm; assigning it raises ``AttributeError``."""
        return self._total

    @total.setter
    def total(self, value: int) -> None:
        raise AttributeError("an AdaptiveLimiter sets its own total; give it min= and max= instead")

    @property
    def limit(self) -> float:
        """The algorithm's limit (``total`` is it rounded)."""
        return self._limit

    @property
    def min(self) -> int:
        """The lowest total."""
        return self._lo

    @property
    def max(self) -> int:
        """The highest total."""
        return self._hi

    def statistics(self) -> AdaptiveLimiterStatistics:
        """Return a snapshot of the limiter's counters and estimates.

        Returns:
            A frozen :class:`AdaptiveLimiterStatistics`.
        """
        base = super().statistics()
        now = _now()
        with _LOCK:
            return AdaptiveLimiterStatistics(
                **{f.name: getattr(base, f.name) for f in fields(CapacityLimiterStatistics)},
                limit=self._limit,
                min=self._lo,
                max=self._hi,
                algorithm="gradient" if isinstance(self._algo, Gradient) else "aimd",
                latency=self._latency,
                smoothed_latency=self._smooth,
                no_load_latency=self._no_load,
                samples_total=self._samples,
                overloads_total=self._overloads,
                increases_total=self._increases,
                decreases_total=self._decreases,
                probes_total=self._probes,
                probing=self._probe_from is not None,
                paused_for=self._pause_until - now if self._pause_until > now else 0.0,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<AdaptiveLimiter{name} {s.algorithm} borrowed={s.borrowed}/{s.total} "
            f"[{s.min}..{s.max}] waiting={s.waiting} latency={s.latency:.4g}s "
            f"no_load={s.no_load_latency:.4g}s overloads={s.overloads_total}>"
        )

    def _is_idle(self) -> bool:
        """As a capacity limiter's (a total it moved keeps it), and not while a Retry-After
        pause runs: a ``PerKey`` that forgot a paused host would let its requests through."""
        return self._pause_until <= _now() and super()._is_idle()

    # ----------------------------------------------------------------- acquire / release

    def _check(self, weight: int) -> None:
        check_weight(weight)
        if weight > self._lo:
            raise ValueError(
                f"weight {weight} exceeds the adaptive limiter's min {self._lo}; a weight above "
                f"min could be stranded when the total shrinks"
            )

    def try_acquire(self, weight: int = 1) -> bool:
        """Take ``weight`` if it fits now, nobody is queued and no pause runs; never blocks.

        See :meth:`CapacityLimiter.try_acquire`.
        """
        self._check(weight)
        if self._pause_until > _now():
            return False
        if not super().try_acquire(weight):
            return False
        self._started(_now(), _holder())
        return True

    async def _pause_over(self, timeout: float | None) -> float | None:
        """Wait out a Retry-After pause; the timeout left, or TimeoutError at once when the
        pause outlasts it."""
        now = _now()
        deadline = None if timeout is None else now + timeout
        while (until := self._pause_until) > now:
            if deadline is not None and until > deadline:
                raise TimeoutError(
                    f"the adaptive limiter is paused for {until - now:.3g} s more "
                    f"(Retry-After), past the timeout {timeout!r}"
                )
            await asyncio.sleep(until - now)
            now = _now()
        return None if deadline is None else (deadline - now if deadline > now else 0.0)

    async def acquire(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """Wait out a Retry-After pause, then for ``weight`` to fit (in arrival order); take it.

        The timeout covers both; a pause that outlasts it raises :class:`TimeoutError` at once.
        See :meth:`CapacityLimiter.acquire`.
        """
        self._check(weight)
        if timeout is not None:
            check_timeout(timeout)
        while True:
            if self._pause_until > _now():
                timeout = await self._pause_over(timeout)
            began = _now()
            await super().acquire(weight, timeout=timeout)
            now = _now()
            if self._pause_until <= now:
                break
            # Granted while a pause began (queued before it): give it back, wait the pause out.
            CapacityLimiter.release(self, weight)
            if timeout is not None:
                timeout = max(0.0, timeout - (now - began))
        self._started(now, _holder())

    def acquire_blocking(self, weight: int = 1, *, timeout: float | None = None) -> None:
        """The thread form of :meth:`acquire`."""
        self._check(weight)
        if timeout is not None:
            check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while (left := self._pause_until - _now()) > 0:
            if deadline is not None and time.monotonic() + left > deadline:
                raise TimeoutError(
                    f"the adaptive limiter is paused for {left:.3g} s (Retry-After), longer "
                    f"than the timeout {timeout!r}"
                )
            time.sleep(left)
        if deadline is not None:
            timeout = max(0.0, deadline - time.monotonic())
        super().acquire_blocking(weight, timeout=timeout)
        self._started(_now(), _holder())

    def release(self, weight: int = 1) -> None:
        """Give back ``weight`` and measure the section it ended.  See
        :meth:`CapacityLimiter.release`."""
        super().release(weight)
        self._finished(_now(), _holder())

    async def __aenter__(self) -> None:
        # The capacity limiter's inlined acquire(1), and the section's start: the hot path.
        loop = get_running_loop()
        while True:
            if self._pause_until > loop.time():
                await self._pause_over(None)
            await CapacityLimiter.__aenter__(self)
            if self._pause_until <= loop.time():
                break
            # Granted while a pause began (queued before it): give it back, wait the pause out.
            CapacityLimiter.release(self, 1)
        self._started(loop.time(), current_task(loop) or get_ident())

    def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> Awaitable[None]:
        CapacityLimiter.__aexit__(self, exc_type, exc, tb)
        loop = _get_running_loop()
        if loop is None:  # (closed by the garbage collector, outside any loop)
            self._finished(time.monotonic(), get_ident())
        else:
            self._finished(loop.time(), current_task(loop) or get_ident())
        return _DONE

    def __enter__(self) -> None:
        self.acquire_blocking()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # ----------------------------------------------------------------- signals

    def overloaded(self, *, retry_after: float | None = None) -> None:
        """Report an overload: a 429, a 503, a timeout.

        Inside a held section, that section's latency is not taken as a sample.  The window
        ends with a decrease.  With ``retry_after``, nothing more is granted for that many
        seconds (at most ``max_pause``); a longer pause already running is kept.

        Args:
            retry_after: Seconds to pause for (a number >= 0), e.g. from
                :func:`poolkit.parse_retry_after`; ``None`` for no pause.

        Raises:
            TypeError: If ``retry_after`` is not a number or None.
            ValueError: If ``retry_after`` is negative or NaN.
        """
        if retry_after is not None:
            _check_retry_after(retry_after)
        now = _now()
        holder = _holder()
        with _LOCK:
            self._overloads += 1
            section = None
            for held in reversed(_SECTIONS.get(holder, ())):
                if held.limiter is self:
                    section = held
                    break
            if section is not None:
                section.over = True
            # A section sent before the last cut met the load that cut answered: the same
            # overload, not a new one (so ten 503s at once are one decrease, as in TCP).
            if section is None or section.began >= self._cut_at:
                self._w_over += 1
            if retry_after is not None:
                until = now + (retry_after if retry_after < self._max_pause else self._max_pause)
                if until > self._pause_until:
                    self._pause_until = until
            new = self._maybe_update(now)
        if new is not None:
            self._set_total(new)

    # ----------------------------------------------------------------- measurement

    def _started(self, now: float, holder: object) -> None:
        section = _Section(self, now)
        with _LOCK:
            held = _SECTIONS.get(holder)
            if held is None:
                _SECTIONS[holder] = [section]
            else:
                held.append(section)
            if self._borrowed > self._w_peak:
                self._w_peak = self._borrowed
            if self._w_start is None:
                self._w_start = now

    def _finished(self, now: float, holder: object) -> None:
        with _LOCK:
            held = _SECTIONS.get(holder)
            if held is not None and held[-1].limiter is self:  # the usual case, at once
                section: _Section | None = held.pop()
                if not held:
                    del _SECTIONS[holder]
            else:
                section = _take_section(self, holder)
            if section is None:
                return  # (a release without an acquire: the capacity limiter raised already)
            if not section.over:
                latency = now - section.began
                self._samples += 1
                self._w_lat.append(latency)
                probe = self._probe_from
                if probe is not None and section.began >= probe:
                    self._probe_samples.append(latency)
            new = self._maybe_update(now)
        if new is not None:
            self._set_total(new)

    def _maybe_update(self, now: float) -> int | None:
        """End the window if it is due; the new total if it changed (_LOCK held)."""
        if self._probe_from is not None:
            return self._probe_step(now)
        start = self._w_start
        if start is None or now - start < self._smooth:
            return None  # (at most one update per typical latency; nan compares False)
        lat = self._w_lat
        need = int(self._limit)
        need = (
            _MIN_SAMPLES if need < _MIN_SAMPLES else (_MAX_SAMPLES if need > _MAX_SAMPLES else need)
        )
        if not self._w_over and len(lat) < need:
            return None
        window = Window(
            latency=self._mean(lat) if lat else math.nan,
            samples=len(lat),
            overloads=self._w_over,
            peak=self._w_peak,
        )
        self._w_lat = []
        self._w_over = 0
        self._w_peak = self._borrowed
        self._w_start = now
        if window.overloads:
            self._cut_at = now
        if window.samples:
            self._latency = window.latency
            if self._smooth != self._smooth:
                self._smooth = self._no_load = window.latency
                if self._probe_every is not None:  # soon: the first window may be loaded
                    self._probe_next = now + _FIRST_PROBE * window.latency
            else:
                self._smooth += _EWMA * (window.latency - self._smooth)
                if self._probe_every is None and self._smooth < self._no_load:
                    self._no_load = self._smooth
        if self._no_load != self._no_load:
            # Overloads before any latency was measured: back off, nothing to compare with.
            return self._set_limit(self._limit * 0.5) if window.overloads else None
        if window.samples == 0:
            window = Window(self._no_load, 0, window.overloads, window.peak)
        elif now < self._settle_until and not window.overloads:
            return None  # just after a probe: the other side's queue is still refilling
        new = self._set_limit(self._algo.update(self._limit, window, self._no_load))
        if now >= self._probe_next and not window.overloads:
            self._probe_from = now
            self._probe_limit = self._limit
            self._probe_samples = []
            half = math.floor(self._limit / 2)
            return half if half > self._lo else self._lo
        return new

    def _mean(self, latencies: list[float]) -> float:
        """The mean, each latency counted as at most ``_CAP`` times the no-load latency: one
        request stuck for a minute moves a window of ten by ``_CAP / 10`` of it, not six
        hundred times."""
        cap = _CAP * self._no_load
        if cap == cap:
            return sum(x if x < cap else cap for x in latencies) / len(latencies)
        return sum(latencies) / len(latencies)

    def _probe_delay(self) -> float:
        """Seconds to the next probe: 5, 10, 20, then ``probe_interval`` (each at most that),
        plus the jitter.  The first few come sooner so that the average of several, which
        noise moves less than any one, is there early."""
        every = self._probe_every
        assert every is not None
        early = _EARLY_PROBES * 2.0**self._probes
        base = early if early < every else every
        return base * (1 + _PROBE_JITTER * self._rng.random())

    def _probe_step(self, now: float) -> int | None:
        """While a probe runs: end it once enough sections that began after it have finished."""
        samples = self._probe_samples
        start = self._probe_from
        assert start is not None
        n = len(samples)
        if now - start < _PROBE_LONGEST * self._smooth and (
            n < _PROBE_SAMPLES or (n < _PROBE_MOST and not _precise(samples))
        ):
            return None
        if samples:
            measured = _stats.fmean(samples)
            history = self._probe_history
            if history:
                average = _stats.fmean(history)
                if abs(measured - average) > _PROBE_CHANGE * average:
                    history.clear()  # not noise: the other side changed; start again from here
            history.append(measured)
            self._no_load = _stats.fmean(history)
        self._probes += 1
        self._probe_from = None
        self._probe_samples = []
        self._probe_next = now + self._probe_delay()
        self._settle_until = now + _SETTLE * self._smooth
        self._w_lat = []
        self._w_over = 0
        self._w_peak = self._borrowed
        self._w_start = now
        total = round(self._probe_limit)
        return total if total != self._total else None

    def _set_limit(self, value: float) -> int | None:
        lo, hi = self._lo, self._hi
        value = lo if value < lo else (hi if value > hi else value)
        self._limit = value
        total = round(value)
        if total > self._total:
            self._increases += 1
        elif total < self._total:
            self._decreases += 1
        else:
            return None
        return total
