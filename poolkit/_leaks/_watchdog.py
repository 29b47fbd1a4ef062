"""A watchdog that counts live tasks, threads, pool workers and child processes, and reports
steady growth.

A leak in a long-running program shows as a count that only goes up: one more task per request
that never finishes.  The watchdog samples the counts every ``interval`` seconds and keeps the
last ``window`` samples of each.  When a count has not gone down once across a full window and
has grown by at least ``min_growth`` from its first sample to its last, it reports: a WARNING on
the ``poolkit.leaks`` logger and a call of ``on_growth`` (if given) with a :class:`Growth`.  Then
that count's history starts over, so continued growth is reported once per window, not on every
sample.  A count that goes down at any point is not growing: a busy program that rises and falls
is left alone.

Child processes are this process's descendants (children, and theirs) that have not exited,
leaving out ``multiprocessing``'s fork server and resource tracker; they are read from Linux's
``/proc``, one small file per process of the machine (some 15 ms per sample on a machine running
a thousand processes), and are always 0 where there is no ``/proc`` (macOS, Windows).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from poolkit._core._checks import check_timeout
from poolkit._core._registry import live, record_origin

from ._introspect import running_loop
from ._noleaks import count_descendants

__all__ = ["Growth", "Sample", "Watchdog"]

logger = logging.getLogger("poolkit.leaks")

COUNTS = ("tasks", "threads", "workers", "processes")


@dataclass(frozen=True, slots=True)
class Sample:
    """The counts at one moment (``time``: the watchdog's clock, the loop's when it has one)."""

    time: float
    tasks: int
    """Unfinished tasks of the watched loop (0 without a loop)."""
    threads: int
    """Threads alive."""
    workers: int
    """Workers alive across every live ``WorkerPool``, ``ThreadPool`` and ``ProcessPool``."""
    processes: int = 0
    """Child processes alive (and their children), without ``multiprocessing``'s fork server
    and resource tracker; 0 where they cannot be read (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Growth:
    """A report: ``what`` (``"tasks"``, ``"threads"``, ``"workers"`` or ``"processes"``) grew
    from ``first`` to ``last`` over ``samples`` samples taken ``seconds`` apart in total, never
    going down."""

    what: str
    first: int
    last: int
    samples: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"live {self.what} grew from {self.first} to {self.last} over the last"
            f" {self.samples} samples ({self.seconds:.3g} s) without going down once"
        )


def count_workers() -> int:
    total = 0
    for kind in ("pool", "thread_pool", "process_pool"):
        for _, pool in live(kind):
            total += pool.statistics().workers
    return total


class Watchdog:
    """Samples live counts every ``interval`` seconds; reports growth over ``window`` samples.

    ::

        async with poolkit.leaks.Watchdog(interval=30, window=10, on_growth=alert):
            await serve_forever()

    ``async with`` samples from a task on the running loop (and counts that loop's tasks);
    ``with`` samples from a daemon thread named ``poolkit-watchdog`` (and counts the tasks of
    ``loop`` if one is given).  Both stop, and wait for the sampler to end, when the block
    ends.  :meth:`sample` and :meth:`check` take one sample by hand, for programs that prefer
    to drive it themselves (and for tests).  ``on_growth`` is called, with a :class:`Growth`,
    by whoever takes the sample (the sampler task or thread, or the caller of :meth:`check`);
    an ``Exception`` it raises is logged, not propagated.

    Args:
        interval: Seconds between samples: positive, at most ``threading.TIMEOUT_MAX``.
        window: How many samples a count must grow across to be reported, at least 2.
        min_growth: The least growth from the first of those samples to the last, at least 1.
        on_growth: Called with each :class:`Growth` reported, or ``None``.
        loop: The loop whose tasks are counted; ``None``: the loop running where the sample is
            taken (none for the thread form).

    Raises:
        TypeError: If ``interval`` is not a number, ``window`` or ``min_growth`` is not an
            ``int``, ``on_growth`` is not callable, or ``loop`` is not an event loop.
        ValueError: If ``interval`` is not positive, is NaN, infinite or above
            ``threading.TIMEOUT_MAX``, ``window`` is below 2, or ``min_growth`` is below 1.
        RuntimeError: If it is entered (``async with`` or ``with``) while already running.
    """

    def __init__(
        self,
        interval: float = 10.0,
        window: int = 6,
        *,
        min_growth: int = 1,
        on_growth: Callable[[Growth], object] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        checked = check_timeout(interval, "interval")
        if checked is None or checked <= 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        if checked > threading.TIMEOUT_MAX:
            raise ValueError(
                f"interval must be at most threading.TIMEOUT_MAX seconds, got {interval!r}"
            )
        if isinstance(window, bool) or not isinstance(window, int):
            raise TypeError(f"window must be an int (a number of samples), got {window!r}")
        if window < 2:
            raise ValueError(f"window must be at least 2 samples, got {window!r}")
        if isinstance(min_growth, bool) or not isinstance(min_growth, int):
            raise TypeError(f"min_growth must be an int, got {min_growth!r}")
        if min_growth < 1:
            raise ValueError(f"min_growth must be at least 1, got {min_growth!r}")
        if on_growth is not None and not callable(on_growth):
            raise TypeError(f"on_growth must be callable or None, got {on_growth!r}")
        if loop is not None and not isinstance(loop, asyncio.AbstractEventLoop):
            raise TypeError(f"loop must be an event loop or None, got {loop!r}")
        self.interval = checked
        self.window = window
        self.min_growth = min_growth
        self.on_growth = on_growth
        self.loop = loop
        self.reports: list[Growth] = []
        """Every growth reported so far, oldest first."""
        self._history: dict[str, deque[Sample]] = {k: deque(maxlen=window) for k in COUNTS}
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return (
            f"<Watchdog interval={self.interval!r} window={self.window} "
            f"min_growth={self.min_growth} reports={len(self.reports)}>"
        )

    # ------------------------------------------------------------------- sampling

    def sample(self) -> Sample:
        """The counts now (does not record them; :meth:`check` does).

        Returns:
            A :class:`Sample` of the live tasks, threads, pool workers and child processes.
        """
        loop = self.loop
        if loop is None:
            loop = running_loop()
        if loop is None:
            tasks, now = 0, time.monotonic()
        else:
            tasks, now = len(asyncio.all_tasks(loop)), loop.time()
        return Sample(now, tasks, threading.active_count(), count_workers(), count_descendants())

    def check(self) -> list[Growth]:
        """Take a sample, record it, and report (and return) any growth it completes.

        Returns:
            The growths reported now, usually none; each was logged and passed to ``on_growth``.
        """
        current = self.sample()
        found = []
        for what in COUNTS:
            history = self._history[what]
            if history and getattr(current, what) < getattr(history[-1], what):
                history.clear()  # it went down: not a leak's steady climb
            history.append(current)
            if len(history) < self.window:
                continue
            first, last = getattr(history[0], what), getattr(current, what)
            if last - first >= self.min_growth:
                found.append(
                    Growth(what, first, last, len(history), current.time - history[0].time)
                )
                history.clear()
                history.append(current)
        for growth in found:
            self._report(growth)
        return found

    def _report(self, growth: Growth) -> None:
        self.reports.append(growth)
        logger.warning("poolkit watchdog: %s", growth)
        if self.on_growth is not None:
            try:
                self.on_growth(growth)
            except Exception:
                logger.exception("poolkit watchdog: on_growth(%r) raised", growth)

    # ------------------------------------------------------------------- running

    async def _run_task(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.check()

    def _run_thread(self) -> None:
        while not self._stop.wait(self.interval):
            self.check()

    async def __aenter__(self) -> Watchdog:
        self._claim()
        self._task = asyncio.get_running_loop().create_task(
            self._run_task(), name="poolkit-watchdog"
        )
        record_origin(self._task, "watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise

    def __enter__(self) -> Watchdog:
        self._claim()
        self._stop.clear()
        thread = threading.Thread(target=self._run_thread, name="poolkit-watchdog", daemon=True)
        record_origin(thread, "watchdog")
        self._thread = thread
        thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()

    def _claim(self) -> None:
        if self._task is not None or self._thread is not None:
            raise RuntimeError(f"{self!r} is already running")
