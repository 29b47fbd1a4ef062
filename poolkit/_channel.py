"""Closable channels (buffered, unbuffered, unbounded) with select, for asyncio tasks and threads.

How a hand-off works
--------------------
A party that finds the channel ready (an item to take, room for an item, a receiver waiting)
completes at once, without yielding to the event loop.  A party that has to wait joins a FIFO
queue, and when its turn comes it is *promised* what it waited for rather than having its
operation done behind its back:

* a waiting receiver is promised an item: the item stays in the buffer, and the receiver takes the
  item at the head of the buffer when it runs (``_promised`` counts such receivers);
* a waiting sender is invited to try again, with room kept for it until it runs (``_invited``).

If a cancellation (or timeout) reaches the party before it runs, it withdraws: its promise passes
to the next waiting receiver (or lapses), its room to the next sender.  So a ``receive`` that
raises ``CancelledError`` has taken nothing and a ``send`` that raises ``CancelledError`` has
delivered nothing, always; the same holds for ``select`` and for timeouts.  This is asyncio's own
convention (``asyncio.Semaphore`` and ``asyncio.Queue`` undo a wake-up that arrives with a
cancellation) with FIFO fairness added: a newcomer sender never overtakes one that is queued or
invited, and receivers are woken in the order they arrived.

Because every receiver takes the head of the buffer at the moment it runs, items always leave in
the order they came in, even around cancellations.  (Handing a woken receiver a particular item
and taking it back when it is cancelled would let a later item overtake it.)  The cost is that a
receiver arriving while an earlier one is woken but has not run yet may take the earlier item;
each still gets exactly one.

One rule follows for unbuffered channels: a blocked sender's item changes hands only when the
sender runs, so a receiver meeting a blocked sender invites it and waits (the number of task
switches per item is the same as for a direct hand-off).  ``receive_nowait()`` on an unbuffered
channel therefore succeeds only if an item has already been handed over.

Threads
-------
Every method is thread-safe: state is guarded by one ``threading.Lock`` per channel that is never
held while waiting.  A select registration can be claimed through several channels at once, so its
claim goes through a small lock of its own, and a sender only counts on a waiting receiver after it
has claimed it.  A task waiting in one thread is woken from another with
``loop.call_soon_threadsafe``; a thread waits on a lock of its own, so nobody polls.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, TypeVar, final

from ._checks import check_timeout
from ._exceptions import ChannelClosed, EndOfChannel, WouldBlock
from ._registry import register
from ._wait import (
    Sleeper,
    discard,
    monotonic,
    refuse_in_loop,
    resolve,
    thread_deadline,
    thread_wait,
)

__all__ = [
    "Channel",
    "ChannelStatistics",
    "ReceiveCase",
    "SelectCase",
    "Selected",
    "SendCase",
    "select",
    "select_blocking",
    "select_nowait",
]

T = TypeVar("T")

# What became of a waiter.  It starts _PENDING; whoever moves it on first (a hand-off, close(),
# its timer, its own cancellation) "claims" it, and every later attempt sees that it lost.
_PENDING = 0
_GRANTED = 1  # receiver: an item is promised to it; sender: room is kept for it, try again
_CLOSED = 2  # receiver: end of channel; sender: the channel was closed
_TIMED_OUT = 3
_CANCELLED = 4
_DONE = 5  # the owner has completed or abandoned its operation: nothing left to undo

# Arrival numbers for senders, so a sender that has to queue again keeps its place (a select keeps
# one number across channels and restarts).  next() on itertools.count is atomic under the GIL.
_next_arrival = itertools.count().__next__


class _SelectClaim:
    """The registrations of one ``select`` call in several channels share this: first claim wins.

    Channels claim it while holding only their own lock, possibly from different threads, so the
    claim has a tiny mutex of its own; whoever loses can then read ``winner`` safely.
    """

    __slots__ = ("mutex", "taken", "winner")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.taken = False
        self.winner: _Waiter | None = None  # None once taken: the owner took it (timeout, cancel)

    def take(self) -> bool:
        """The select's owner claims it for itself; False if a case has already won."""
        with self.mutex:
            if self.taken:
                return False
            self.taken = True
            return True


class _Waiter(Sleeper):
    """A task or thread blocked in one channel (or one registration of a blocked ``select``)."""

    __slots__ = ("arrival", "expired", "index", "item", "sel", "state")

    def __init__(
        self,
        item: Any = None,
        loop: asyncio.AbstractEventLoop | None = None,
        sel: _SelectClaim | None = None,
        index: int = -1,
        arrival: int = -1,
    ) -> None:
        Sleeper.__init__(self, loop)
        self.item = item  # a sender's item
        self.arrival = _next_arrival() if arrival < 0 else arrival
        self.state = _PENDING
        self.sel = sel
        self.index = index
        self.expired = False  # its timer has fired (even if the timer lost the race to claim it)

    def claim(self, outcome: int) -> bool:
        """Move a pending waiter to ``outcome``; False if someone else got there first.

        A plain waiter is only ever claimed under its channel's lock.  A select registration can be
        claimed through several channels at once, so it goes through the select's own mutex.
        """
        sel = self.sel
        if sel is None:
            if self.state != _PENDING:
                return False
            self.state = outcome
            return True
        with sel.mutex:
            if sel.taken:
                return False
            sel.taken = True
            sel.winner = self
            self.state = outcome
        return True

    def live(self) -> bool:
        """Still waiting (a hint only, for a select: claim() is the one atomic test)."""
        return self.state == _PENDING and (self.sel is None or not self.sel.taken)


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    """A snapshot of a :class:`Channel`, from :meth:`Channel.statistics`."""

    name: str | None
    """The name given to the channel, if any."""
    capacity: float
    """Items the buffer holds before ``send`` blocks (0: unbuffered, ``math.inf``: unbounded)."""
    buffered: int
    """Items in the buffer that no receiver has been promised yet."""
    senders_waiting: int
    """Senders blocked in ``send``/``send_blocking``/``select`` because there is no room."""
    receivers_waiting: int
    """Receivers blocked because there is nothing to receive."""
    items_sent: int
    """Items accepted into the channel since it was created."""
    items_received: int
    """Items taken out of the channel since it was created."""
    closed: bool
    """Whether :meth:`Channel.close` has been called."""
    peak_buffered: int
    """The largest value ``buffered`` has had."""


@final
class Channel(Generic[T]):
    """A closable FIFO channel between tasks and threads, like Go's ``chan T``.

    ``Channel(0)`` (the default) is unbuffered: ``await send(x)`` returns only once a receiver has
    been handed ``x``.  ``Channel(n)`` buffers up to ``n`` items; ``Channel(math.inf)`` never
    blocks a sender.  Items come out in the order they went in; blocked senders and receivers are
    served in the order they arrived.

    Closing is how a producer says "no more": after :meth:`close`, ``send`` raises
    :class:`~poolkit.ChannelClosed` (blocked senders too; their items were not delivered), while
    receivers first drain what is buffered and then get :class:`~poolkit.EndOfChannel`, which ends
    ``async for``/``for`` loops quietly.  Closing is optional, as in Go.

    Cancellation is atomic: a ``send`` or ``receive`` that raises ``CancelledError`` (or
    ``TimeoutError``) had no effect.  The awaiting forms never yield to the event loop when they can
    complete at once, like ``asyncio.Queue``; a producer that never blocks should yield on its own.

    Every method is thread-safe.  ``send``/``receive``/``async for`` are for tasks (on any event
    loop, in any thread); ``send_blocking``/``receive_blocking``/``for`` are for threads and refuse
    to run in a thread whose event loop is running; the ``_nowait`` forms never block and work
    anywhere.

    ``capacity`` must be a non-negative ``int`` or ``math.inf`` (``TypeError``/``ValueError``).
    """

    __slots__ = (
        "__weakref__",
        "_buf",
        "_capacity",
        "_closed",
        "_invited",
        "_lock",
        "_name",
        "_peak",
        "_promised",
        "_received",
        "_recvq",
        "_sendq",
        "_sent",
    )

    def __init__(self, capacity: int | float = 0, *, name: str | None = None) -> None:
        if isinstance(capacity, bool) or not (
            isinstance(capacity, int) or (isinstance(capacity, float) and capacity == math.inf)
        ):
            raise TypeError(f"capacity must be a non-negative int or math.inf, got {capacity!r}")
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {name!r}")
        self._capacity: float = capacity
        self._name = name
        self._lock = threading.Lock()
        self._buf: deque[T] = deque()
        self._recvq: deque[_Waiter] = deque()
        self._sendq: deque[_Waiter] = deque()
        self._promised = 0  # woken receivers that will each take an item from _buf
        self._invited = 0  # woken senders for whom room is kept
        self._closed = False
        self._sent = 0
        self._received = 0
        self._peak = 0
        register(self, "channel")

    # ----------------------------------------------------------------- introspection

    @property
    def capacity(self) -> float:
        """The buffer size given at construction (0, a positive int, or ``math.inf``)."""
        return self._capacity

    @property
    def name(self) -> str | None:
        """The name given at construction, shown in ``repr`` and statistics."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called (items may still be buffered)."""
        return self._closed

    def statistics(self) -> ChannelStatistics:
        """Return a consistent snapshot of the channel's counters."""
        with self._lock:
            return ChannelStatistics(
                name=self._name,
                capacity=self._capacity,
                buffered=len(self._buf) - self._promised,
                senders_waiting=sum(1 for w in self._sendq if w.live()),
                receivers_waiting=sum(1 for w in self._recvq if w.live()),
                items_sent=self._sent,
                items_received=self._received,
                closed=self._closed,
                peak_buffered=self._peak,
            )

    def __repr__(self) -> str:
        s = self.statistics()
        cap = "inf" if s.capacity == math.inf else str(s.capacity)
        name = f" {s.name!r}" if s.name is not None else ""
        return (
            f"<Channel{name} capacity={cap} buffered={s.buffered} "
            f"senders_waiting={s.senders_waiting} receivers_waiting={s.receivers_waiting} "
            f"sent={s.items_sent} received={s.items_received} closed={s.closed}>"
        )

    # ----------------------------------------------------------------- core (lock held)
    #
    # _buf holds every item in the channel; _promised of them are spoken for by woken receivers.
    # Invariants, true whenever the lock is free (the model test checks them):
    # * a live receiver waits only if every item is spoken for (len(_buf) == _promised);
    # * a live sender waits only if there is no room for it, capacity - unpromised - _invited <= 0,
    #   and every waiting receiver already has a sender invited for it;
    # * a newcomer sender goes ahead only if no sender is queued or invited (FIFO).

    def _live_sender(self) -> bool:
        q = self._sendq
        while q:
            if q[0].live():
                return True
            q.popleft()  # a select that was satisfied elsewhere
        return False

    def _claim_receiver(self) -> _Waiter | None:
        """Pop and claim the first receiver still waiting, or None.

        Only a successful claim counts: a select registration that looks live may be claimed
        through another channel, by another thread, at any moment until then.
        """
        q = self._recvq
        while q:
            w = q.popleft()
            if w.claim(_GRANTED):
                return w
        return None

    def _promise_receivers(self) -> None:
        """Wake waiting receivers while there are items nobody is promised; end them if over."""
        buf = self._buf
        while self._recvq and len(buf) > self._promised:
            w = self._claim_receiver()
            if w is None:
                break
            self._promised += 1
            if not w.wake():  # its loop is closed: it will never run
                w.state = _DONE
                self._promised -= 1
        if self._closed and not buf:
            self._end_receivers()

    def _place(self, item: T) -> bool:
        """Put ``item`` in: promised to a waiting receiver, else into the buffer if it has room."""
        buf = self._buf
        while self._recvq:
            w = self._claim_receiver()
            if w is None:
                break
            if w.wake():
                buf.append(item)
                self._sent += 1
                self._promised += 1
                return True
            w.state = _DONE  # its loop is closed: it will never run; try the next one
        if self._capacity - len(buf) + self._promised - self._invited > 0:
            buf.append(item)
            self._sent += 1
            n = len(buf) - self._promised
            if n > self._peak:
                self._peak = n
            return True
        return False

    def _offer(self, item: T) -> bool:
        """A newcomer sender: put ``item`` in unless it would have to wait."""
        if self._closed:
            raise self._closed_error()
        if self._invited or (self._sendq and self._live_sender()):
            return False  # senders ahead of us
        return self._place(item)

    def _take(self) -> Any:
        """A newcomer receiver: the next item, or ``_EMPTY``.  Raises at the end of the channel."""
        buf = self._buf
        if len(buf) > self._promised:
            item = buf.popleft()
            self._received += 1
            if self._sendq:
                self._invite_senders()
            return item
        if self._closed and not buf:
            raise self._end_error()
        return _EMPTY

    def _collect(self, w: _Waiter) -> T:
        """A woken receiver takes the item at the head of the buffer."""
        buf = self._buf
        item: T = buf.popleft()
        w.state = _DONE
        self._promised -= 1
        self._received += 1
        if self._closed and not buf and self._recvq:
            self._end_receivers()
        return item

    def _retry(self, w: _Waiter, requeue: bool) -> bool:
        """A woken sender tries again with the room kept for it.

        True if its item went in.  Otherwise it goes back to its place in the queue if ``requeue``
        (a select starts over instead, keeping its arrival number): either the receiver it was
        invited for went elsewhere, or a sender that arrived before it is queued again (after its
        own invitation fell through) and the room passes to that one, first come first served.
        """
        self._invited -= 1
        w.state = _DONE
        if self._closed:
            raise self._closed_error()
        earlier_queued = self._sendq and self._live_sender() and self._sendq[0].arrival < w.arrival
        if not earlier_queued and self._place(w.item):
            if self._sendq:
                self._invite_senders()  # its item went to a receiver: the kept room is free
            return True
        if requeue:
            w.state = _PENDING
            self._queue_sender(w)
        if self._sendq:
            self._invite_senders()
        return False

    def _queue_sender(self, w: _Waiter) -> None:
        """Queue a sender in arrival order (a plain append, unless it is queuing again)."""
        q = self._sendq
        if not q or q[-1].arrival < w.arrival:
            q.append(w)
            return
        i = 0
        while q[i].arrival < w.arrival:
            i += 1
        q.insert(i, w)

    def _invite_senders(self) -> None:
        """Invite queued senders while there is room, or a receiver with no sender invited."""
        q = self._sendq
        buf = self._buf
        while q:
            if (
                self._capacity - len(buf) + self._promised - self._invited <= 0
                and len(self._recvq) <= self._invited
            ):
                return
            w = q.popleft()
            if w.claim(_GRANTED):
                self._invited += 1
                if not w.wake():
                    w.state = _DONE
                    self._invited -= 1

    def _end_receivers(self) -> None:
        """Closed and empty: every waiting receiver gets EndOfChannel."""
        q = self._recvq
        while q:
            w = q.popleft()
            if w.claim(_CLOSED):
                w.wake()

    def _withdraw(self, w: _Waiter, sending: bool) -> None:
        """The owner of ``w`` gives up (cancelled, interrupted): undo whatever it was promised."""
        if w.claim(_CANCELLED):
            discard(self._sendq if sending else self._recvq, w)
        elif w.state == _GRANTED and (w.sel is None or w.sel.winner is w):
            w.state = _DONE
            if sending:
                self._invited -= 1
                if self._sendq:
                    self._invite_senders()
            else:
                self._promised -= 1
                self._promise_receivers()

    def _withdraw_locked(self, w: _Waiter, sending: bool, exc: BaseException) -> None:
        if not isinstance(exc, GeneratorExit):
            with self._lock:
                self._withdraw(w, sending)
        # GeneratorExit: the coroutine is being closed, perhaps by the garbage collector, which may
        # run in this very thread while it holds the lock.  Give up rather than deadlock; a task
        # whose waiter is still queued is reachable, so this only skips waiters already settled.
        elif self._lock.acquire(True, 0.1):
            try:
                self._withdraw(w, sending)
            finally:
                self._lock.release()

    def _expire(self, w: _Waiter, sending: bool) -> None:
        with self._lock:
            w.expired = True
            if w.claim(_TIMED_OUT):
                discard(self._sendq if sending else self._recvq, w)
                w.wake()

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(f"send on {self._label()}, which was closed")

    def _end_error(self) -> EndOfChannel:
        return EndOfChannel(f"{self._label()} is closed and drained")

    def _timeout_error(self, sending: bool) -> TimeoutError:
        return TimeoutError(f"{self._label()}: {'send' if sending else 'receive'} timed out")

    def _label(self) -> str:
        return "channel" if self._name is None else f"channel {self._name!r}"

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the channel.  Idempotent; never blocks; callable from any thread.

        Blocked senders wake with :class:`~poolkit.ChannelClosed`.  Buffered items stay receivable;
        once they are gone, receivers get :class:`~poolkit.EndOfChannel`.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            q = self._sendq
            while q:
                w = q.popleft()
                if w.claim(_CLOSED):
                    w.wake()
            if not self._buf:
                self._end_receivers()

    def __enter__(self) -> Channel[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Channel[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- non-blocking

    def _try_send(self, item: T) -> bool:
        """``send_nowait`` without the exception: False when it would block (for the pools).

        Raises :class:`~poolkit.ChannelClosed` on a closed channel.
        """
        lock = self._lock
        lock.acquire()
        try:
            buf = self._buf
            if (  # the common case of _offer(), inlined as in send()
                not (self._recvq or self._sendq or self._invited or self._closed)
                and self._capacity - len(buf) + self._promised > 0
            ):
                buf.append(item)
                self._sent += 1
                n = len(buf) - self._promised
                if n > self._peak:
                    self._peak = n
                return True
            return self._offer(item)
        finally:
            lock.release()

    def _try_receive(self) -> Any:
        """``receive_nowait`` without the exception: ``_EMPTY`` when it would block (for the
        pools).  Raises :class:`~poolkit.EndOfChannel` at the end."""
        lock = self._lock
        lock.acquire()
        try:
            return self._take()
        finally:
            lock.release()

    def send_nowait(self, item: T) -> None:
        """Send ``item`` if that needs no waiting; otherwise raise :class:`~poolkit.WouldBlock`.

        Raises :class:`~poolkit.ChannelClosed` if the channel is closed.
        """
        lock = self._lock
        lock.acquire()
        try:
            if self._offer(item):
                return
        finally:
            lock.release()
        raise WouldBlock(f"{self._label()} has no room and no waiting receiver")

    def receive_nowait(self) -> T:
        """Receive an item if one is ready; otherwise raise :class:`~poolkit.WouldBlock`.

        Raises :class:`~poolkit.EndOfChannel` once the channel is closed and drained.
        """
        lock = self._lock
        lock.acquire()
        try:
            item = self._take()
        finally:
            lock.release()
        if item is _EMPTY:
            raise WouldBlock(f"{self._label()} has no item ready")
        return item  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- asyncio

    async def send(self, item: T, *, timeout: float | None = None) -> None:
        """Send ``item``, waiting for room (or, unbuffered, for a receiver to take it).

        Raises :class:`~poolkit.ChannelClosed` if the channel is or becomes closed before the item
        went in, and :class:`TimeoutError` after ``timeout`` seconds.  If cancelled (or timed out)
        the item was not delivered.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        # Hot path: explicit acquire/release is ~80 ns cheaper than "with" on CPython 3.11, and
        # the common case of _offer() is inlined (about 10 % of a hand-off).
        lock = self._lock
        lock.acquire()
        try:
            if self._closed:
                raise self._closed_error()
            buf = self._buf
            if (
                not (self._recvq or self._sendq or self._invited)
                and self._capacity - len(buf) + self._promised > 0
            ):
                buf.append(item)
                self._sent += 1
                n = len(buf) - self._promised
                if n > self._peak:
                    self._peak = n
                return
            if self._offer(item):
                return
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: send would block")
            w = _Waiter(item, asyncio.get_running_loop())
            self._enqueue_sender(w)
        finally:
            lock.release()
        await self._await(w, True, timeout)

    async def receive(self, *, timeout: float | None = None) -> T:
        """Receive the next item, waiting for one.

        Raises :class:`~poolkit.EndOfChannel` once the channel is closed and drained, and
        :class:`TimeoutError` after ``timeout`` seconds.  If cancelled (or timed out) nothing was
        taken: the item stays for the next receiver.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        lock = self._lock
        lock.acquire()
        try:
            item = self._take()
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: receive would block")
            w = self._enqueue_receiver()
        finally:
            lock.release()
        return await self._await(w, False, timeout)  # type: ignore[no-any-return]

    def _enqueue_sender(self, w: _Waiter) -> None:
        self._queue_sender(w)
        if self._invited:
            # It queued behind invited senders; if there is room or a receiver to spare beyond
            # theirs, it is invited at once rather than left waiting beside it.
            self._invite_senders()

    def _enqueue_receiver(self) -> _Waiter:
        w = _Waiter(None, asyncio.get_running_loop())
        self._recvq.append(w)
        if self._sendq:
            self._invite_senders()  # a blocked sender can now hand its item over
        return w

    async def _await(self, w: _Waiter, sending: bool, timeout: float | None) -> Any:
        loop = w.loop
        assert w.fut is not None
        assert loop is not None
        timer = None if timeout is None else loop.call_later(timeout, self._expire, w, sending)
        try:
            while True:
                try:
                    await w.fut
                except BaseException as exc:
                    self._withdraw_locked(w, sending, exc)
                    raise
                lock = self._lock
                lock.acquire()
                try:
                    state = w.state
                    if state == _GRANTED:
                        if not sending:
                            return self._collect(w)
                        # If the timer has fired (and lost the race to the wake-up), stop here:
                        # re-reading loop.time() is not enough, uvloop fires timers early.
                        requeue = not w.expired
                        if self._retry(w, requeue):
                            return None
                        if requeue:
                            w.fut = loop.create_future()
                            continue
                        state = _TIMED_OUT
                finally:
                    lock.release()
                if state == _CLOSED:
                    raise self._closed_error() if sending else self._end_error()
                raise self._timeout_error(sending)
        finally:
            if timer is not None:
                timer.cancel()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        # receive() without its timeout, and one coroutine frame fewer on every wake-up.
        lock = self._lock
        lock.acquire()
        try:
            try:
                item = self._take()
            except EndOfChannel:
                raise StopAsyncIteration from None
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            w = self._enqueue_receiver()
        finally:
            lock.release()
        try:
            return await self._await(w, False, None)  # type: ignore[no-any-return]
        except EndOfChannel:
            raise StopAsyncIteration from None

    # ----------------------------------------------------------------- threads

    def send_blocking(self, item: T, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`send`: block this thread until ``item`` went in.

        Raises ``RuntimeError`` if called in a thread whose event loop is running (it would freeze
        the loop); otherwise as :meth:`send`.
        """
        timeout = check_timeout(timeout)
        with self._lock:
            if self._offer(item):
                return
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: send would block")
            refuse_in_loop("send_blocking")
            w = _Waiter(item)
            w.arm_thread()
            self._enqueue_sender(w)
        self._block(w, True, timeout)

    def receive_blocking(self, *, timeout: float | None = None) -> T:
        """Thread form of :meth:`receive`: block this thread until an item arrives.

        Raises ``RuntimeError`` if called in a thread whose event loop is running; otherwise as
        :meth:`receive`.
        """
        timeout = check_timeout(timeout)
        with self._lock:
            item = self._take()
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: receive would block")
            refuse_in_loop("receive_blocking")
            w = _Waiter()
            w.arm_thread()
            self._recvq.append(w)
            if self._sendq:
                self._invite_senders()
        return self._block(w, False, timeout)  # type: ignore[no-any-return]

    def _block(self, w: _Waiter, sending: bool, timeout: float | None) -> Any:
        tlock = w.tlock
        assert tlock is not None
        deadline = thread_deadline(timeout)
        try:
            while True:
                woke = thread_wait(tlock, deadline)
                with self._lock:
                    # Wake-ups happen under this lock, so a timed-out acquire either lost a race
                    # that is already over (the lock is free now: take it back) or nobody has
                    # claimed us yet.
                    if not woke and not tlock.acquire(False) and w.claim(_TIMED_OUT):
                        discard(self._sendq if sending else self._recvq, w)
                    state = w.state
                    if state == _GRANTED:
                        if not sending:
                            return self._collect(w)
                        if self._retry(w, True):
                            return None
                        continue  # queued again; tlock is held, since we acquired it
                break
        except BaseException:  # KeyboardInterrupt in the main thread, say: undo any promise
            with self._lock:
                self._withdraw(w, sending)
            raise
        if state == _CLOSED:
            raise self._closed_error() if sending else self._end_error()
        raise self._timeout_error(sending)

    def __iter__(self) -> Iterator[T]:
        """Receive items in this thread (blocking) until the channel is closed and drained."""
        while True:
            try:
                yield self.receive_blocking()
            except EndOfChannel:
                return

    # ----------------------------------------------------------------- select cases

    def receive_case(self) -> ReceiveCase[T]:
        """A receive from this channel, to pass to :func:`select`."""
        return ReceiveCase(self)

    def send_case(self, item: T) -> SendCase[T]:
        """A send of ``item`` on this channel, to pass to :func:`select`."""
        return SendCase(self, item)


_EMPTY: Any = object()


@final
class ReceiveCase(Generic[T]):
    """``select`` case: receive from ``channel``.  Made by :meth:`Channel.receive_case`."""

    __slots__ = ("channel",)

    def __init__(self, channel: Channel[T]) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"channel must be a poolkit.Channel, got {channel!r}")
        self.channel = channel

    def __repr__(self) -> str:
        return f"<ReceiveCase {self.channel._label()}>"


@final
class SendCase(Generic[T]):
    """``select`` case: send ``item`` on ``channel``.  Made by :meth:`Channel.send_case`."""

    __slots__ = ("channel", "item")

    def __init__(self, channel: Channel[T], item: T) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"channel must be a poolkit.Channel, got {channel!r}")
        self.channel = channel
        self.item = item

    def __repr__(self) -> str:
        return f"<SendCase {self.channel._label()} item={self.item!r}>"


SelectCase = ReceiveCase[Any] | SendCase[Any]


@dataclass(frozen=True, slots=True)
class Selected:
    """What :func:`select` did: exactly one of its cases."""

    index: int
    """Position of the case that ran, in the order the cases were passed."""
    case: SelectCase
    """The case object itself, so ``if sel.case is jobs_case:`` works."""
    value: Any
    """The received item (``None`` for a send, or for a receive that found the channel ended)."""
    closed: bool
    """True if the case was a receive from a closed, drained channel (Go's ``ok == false``)."""


def _select_plan(cases: tuple[SelectCase, ...]) -> list[Channel[Any]]:
    if not cases:
        raise ValueError("select() needs at least one case")
    sending: dict[int, bool] = {}
    for case in cases:
        if not isinstance(case, (ReceiveCase, SendCase)):
            raise TypeError(
                f"select() cases must come from channel.receive_case() or channel.send_case(), "
                f"got {case!r}"
            )
        is_send = isinstance(case, SendCase)
        if sending.setdefault(id(case.channel), is_send) != is_send:
            raise ValueError(
                f"select() cannot both send on and receive from {case.channel._label()}"
            )
    channels = {id(c.channel): c.channel for c in cases}
    return [channels[k] for k in sorted(channels)]  # one global lock order: no deadlock


def _select_ready(cases: tuple[SelectCase, ...]) -> Selected | None:
    """With every lock held: run one ready case, chosen uniformly at random, or return None."""
    ready: list[int] = []
    for i, case in enumerate(cases):
        ch = case.channel
        if isinstance(case, ReceiveCase):
            if len(ch._buf) > ch._promised or (ch._closed and not ch._buf):
                ready.append(i)
        elif ch._closed or (
            not ch._invited
            and not (ch._sendq and ch._live_sender())
            and (ch._recvq or ch._capacity - len(ch._buf) + ch._promised > 0)
        ):
            ready.append(i)
    while ready:
        k = 0 if len(ready) == 1 else random.randrange(len(ready))
        i = ready[k]
        case = cases[i]
        ch = case.channel
        if isinstance(case, ReceiveCase):
            try:
                return Selected(i, case, ch._take(), False)
            except EndOfChannel:
                return Selected(i, case, None, True)
        if ch._closed:
            raise ch._closed_error()  # as Go panics
        if ch._place(case.item):
            return Selected(i, case, None, False)
        del ready[k]  # its only receiver was a select that another channel claimed meanwhile
    return None


class _Locks:
    __slots__ = ("channels",)

    def __init__(self, channels: list[Channel[Any]]) -> None:
        self.channels = channels

    def __enter__(self) -> None:
        for ch in self.channels:
            ch._lock.acquire()

    def __exit__(self, *exc: object) -> None:
        for ch in reversed(self.channels):
            ch._lock.release()


def _select_register(cases: tuple[SelectCase, ...], template: _Waiter) -> _SelectClaim:
    """With every lock held: queue one registration per case, sharing ``template``'s wake-up."""
    sel = _SelectClaim()
    order = list(range(len(cases)))
    random.shuffle(order)  # so that hand-offs racing to wake us are not biased to the first case
    for i in order:
        case = cases[i]
        item = case.item if isinstance(case, SendCase) else None
        w = _Waiter(item, None, sel, i, template.arrival)
        w.fut, w.loop, w.thread, w.tlock = (
            template.fut,
            template.loop,
            template.thread,
            template.tlock,
        )
        ch = case.channel
        if isinstance(case, SendCase):
            ch._enqueue_sender(w)
        else:
            ch._recvq.append(w)
            if ch._sendq:
                ch._invite_senders()
    return sel


def _select_unregister(cases: tuple[SelectCase, ...], sel: _SelectClaim) -> None:
    """Remove the registrations that did not win (one channel lock at a time)."""
    for case in cases:
        ch = case.channel
        q = ch._sendq if isinstance(case, SendCase) else ch._recvq
        with ch._lock:
            for w in [w for w in q if w.sel is sel]:
                q.remove(w)


def _select_finish(cases: tuple[SelectCase, ...], sel: _SelectClaim) -> Selected | None:
    """After waking: complete the winning case.  None: start over (see ``Channel._retry``)."""
    w = sel.winner
    if w is None:
        raise TimeoutError("select timed out")
    case = cases[w.index]
    ch = case.channel
    if w.state == _CLOSED:
        if isinstance(case, SendCase):
            raise ch._closed_error()
        return Selected(w.index, case, None, True)
    with ch._lock:
        if isinstance(case, ReceiveCase):
            return Selected(w.index, case, ch._collect(w), False)
        if ch._retry(w, False):
            return Selected(w.index, case, None, False)
    return None


def _select_withdraw(cases: tuple[SelectCase, ...], sel: _SelectClaim) -> None:
    """The select is abandoned: claim it ourselves, or undo the promise that was made to it."""
    if sel.take():
        return  # nothing had won; the registrations are removed by the caller
    w = sel.winner
    if w is not None and w.state == _GRANTED:
        case = cases[w.index]
        with case.channel._lock:
            case.channel._withdraw(w, isinstance(case, SendCase))


def select_nowait(*cases: SelectCase) -> Selected:
    """Perform one ready case at once, or raise :class:`~poolkit.WouldBlock` (Go's ``default:``).

    Cases come from ``channel.receive_case()`` and ``channel.send_case(item)``.  If several are
    ready, one is chosen uniformly at random.  A receive from a closed, drained channel is ready and
    reported with ``closed=True``; a send on a closed channel raises
    :class:`~poolkit.ChannelClosed`.  Thread-safe; never blocks.
    """
    with _Locks(_select_plan(cases)):
        done = _select_ready(cases)
    if done is None:
        raise WouldBlock("select: no case is ready")
    return done


async def select(*cases: SelectCase, timeout: float | None = None) -> Selected:
    """Wait until one of ``cases`` can run, run exactly that one, and report it.

    The others have no effect.  If several are ready at once, one is chosen uniformly at random (as
    in Go).  A receive from a closed, drained channel is a ready case reported with ``closed=True``;
    a send on a closed channel raises :class:`~poolkit.ChannelClosed`.  ``timeout`` raises
    :class:`TimeoutError`.  If cancelled (or timed out), no case ran.  The same channel may not be
    both sent on and received from in one call (``ValueError``).
    """
    timeout = check_timeout(timeout)
    channels = _select_plan(cases)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    arrival = _next_arrival()  # kept across restarts, so a send case keeps its place in queues
    while True:
        with _Locks(channels):
            done = _select_ready(cases)
            if done is not None:
                return done
            if deadline is not None and loop.time() >= deadline:
                raise TimeoutError("select timed out")
            template = _Waiter(None, loop, None, -1, arrival)
            sel = _select_register(cases, template)
        fut = template.fut
        assert fut is not None
        timer = None if deadline is None else loop.call_at(deadline, _select_expire, sel, fut)
        try:
            await fut
        except GeneratorExit:
            # Being closed, perhaps by the garbage collector in a thread that holds one of the
            # channel locks: make the registrations stale without taking any lock.
            sel.take()
            raise
        except BaseException:
            _select_withdraw(cases, sel)
            _select_unregister(cases, sel)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        _select_unregister(cases, sel)
        done = _select_finish(cases, sel)
        if done is not None:
            return done


def _select_expire(sel: _SelectClaim, fut: asyncio.Future[None]) -> None:
    if sel.take():
        resolve(fut)


def select_blocking(*cases: SelectCase, timeout: float | None = None) -> Selected:
    """Thread form of :func:`select`: block this thread until one case has run.

    Raises ``RuntimeError`` if called in a thread whose event loop is running.
    """
    timeout = check_timeout(timeout)
    channels = _select_plan(cases)
    deadline = thread_deadline(timeout)
    arrival = _next_arrival()
    while True:
        with _Locks(channels):
            done = _select_ready(cases)
            if done is not None:
                return done
            if deadline is not None and monotonic() >= deadline:
                raise TimeoutError("select timed out")
            refuse_in_loop("select_blocking")
            template = _Waiter(None, None, None, -1, arrival)
            template.arm_thread()
            sel = _select_register(cases, template)
        tlock = template.tlock
        assert tlock is not None
        try:
            if not thread_wait(tlock, deadline):
                sel.take()  # claim it for the timeout, unless a case won just now
        except BaseException:
            _select_withdraw(cases, sel)
            _select_unregister(cases, sel)
            raise
        _select_unregister(cases, sel)
        done = _select_finish(cases, sel)
        if done is not None:
            return done
