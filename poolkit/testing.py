"""Test helpers: an asyncio event loop that runs on virtual time.

poolkit measures time with the event loop's clock (``loop.time()``, ``loop.call_at``), so timeout
and rate tests can run on :class:`VirtualTimeLoop` instead of sleeping.  Whenever every task is
blocked and the next thing to happen is a timer, the loop jumps its clock straight to that timer,
like trio's ``MockClock(autojump_threshold=0)``: ``await asyncio.sleep(3600)`` returns at once, and
``loop.time()`` has advanced by exactly 3600.

Use it as the loop factory::

    import asyncio
    from poolkit.testing import VirtualTimeLoop

    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        runner.run(main())

Sockets and wake-ups from other threads still work: the loop first polls its real selector
without waiting, and only jumps when nothing is ready.  It never jumps while I/O is ready, but it
*will* jump while another thread is still computing something it is about to send; a test that
waits on a thread should give ``autojump_threshold`` a few real milliseconds of grace, or use a
real loop.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from typing import Any

__all__ = ["VirtualTimeLoop"]


class _JumpingSelector(selectors.BaseSelector):
    """Delegates to a real selector; turns "sleep until the next timer" into a clock jump."""

    def __init__(self, loop: VirtualTimeLoop, real: selectors.BaseSelector) -> None:
        self._loop = loop
        self._real = real

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is not None and timeout <= 0:
            return self._real.select(0)
        grace = self._loop.autojump_threshold
        ready = self._real.select(grace if timeout is None else min(grace, timeout))
        if ready:
            return ready
        if timeout is None:
            # No timer at all: only I/O or another thread can wake us, so wait for real.
            return self._real.select(None)
        # Nothing came within the grace (real time): the next timer is due, in virtual time.
        self._loop.advance(timeout)
        return []

    def close(self) -> None:
        self._real.close()

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.get_key(fileobj)

    def get_map(self) -> Any:
        return self._real.get_map()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A ``SelectorEventLoop`` whose clock only moves when told to or when it would sleep.

    :meth:`advance` moves the clock by hand.

    Args:
        start: The initial value of ``loop.time()``, a finite number.
        autojump_threshold: How many *real* seconds the loop waits for I/O or other threads
            before jumping to its next timer (default 0: jump at once).

    Raises:
        ValueError: If ``start`` is not finite, or ``autojump_threshold`` is negative or NaN.
        TypeError: If either is not a number.
    """

    def __new__(cls, *, start: float = 0.0, autojump_threshold: float = 0.0) -> VirtualTimeLoop:
        # Checked before the loop exists: a half-built loop's __del__ would complain.
        if not math.isfinite(start):
            raise ValueError(f"start must be a finite number, got {start!r}")
        if not autojump_threshold >= 0:
            raise ValueError(f"autojump_threshold must be >= 0, got {autojump_threshold!r}")
        return super().__new__(cls)

    def __init__(self, *, start: float = 0.0, autojump_threshold: float = 0.0) -> None:
        self._now = float(start)
        self._clock_resolution: float
        self.autojump_threshold = float(autojump_threshold)
        super().__init__(selector=_JumpingSelector(self, selectors.DefaultSelector()))

    def time(self) -> float:
        """The virtual clock: ``start``, plus every jump and :meth:`advance` so far."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``; timers that come due run on the next iteration.

        Args:
            seconds: How far to move it, ``>= 0``.

        Raises:
            ValueError: If ``seconds`` is negative or NaN.
            TypeError: If ``seconds`` is not a number.
        """
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        now = self._now + seconds
        if seconds and now + self._clock_resolution == now:
            # Far from zero a float cannot hold now + the clock resolution, so asyncio would
            # never see a timer at ``now`` as due: step one representable value past it.
            now = math.nextafter(now, math.inf)
        self._now = now
