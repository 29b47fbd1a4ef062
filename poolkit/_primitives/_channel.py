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
sender runs, so a receiver meeting a blocked sender invites it and waits.  (Were the receiver to
take the item while the sender sleeps, a cancellation reaching the sender before it ran would
make its ``send`` raise ``CancelledError`` with the item delivered: asyncio cannot take back a
wake-up.)  ``receive_nowait()`` on an unbuffered channel therefore succeeds only if an item has
already been handed over.

Spinning once
-------------
A task that has to wait while a partner is already on its way to serve it does not park at once:
it yields to the event loop once, staying scheduled (as ``asyncio.sleep(0)`` does), and makes a
future and parks on it only if nobody has served it by the time it runs again.  On its way means
woken and not yet run: for a receiver, a sender invited to hand its item over; for a sender, a
receiver promised an item (it may well be back for more).  Both were woken before the spinning
task yielded, so they run first.  In a hand-off between two tasks each side is served this way,
and the pair exchange item after item with no future made, resolved or awaited: two task
switches per item, each doing less than those of ``asyncio.Queue(1)`` + ``join()`` (0.7 times
its time, against 1.3 times when both parked on futures: ``benchmarks/bench_channel.py``).
Waking a spinning task is a change of its state under the lock and nothing else, from any
thread: it is scheduled already.  One that nobody served costs one step more; nothing polls.

With no partner on its way, a task parks at once, as it always did: one blocked on a channel
that nothing else can reach is unreachable itself from its first step, which is what
:func:`poolkit.leaks.find_blocked` and the garbage collector go by.  And only a task that would be
first in its queue spins (a sender also needs no sender invited: one that is may yet queue again,
ahead of it).  A spinning task runs before any waiter woken after it began to spin, so spinning
behind waiters would let it overtake them.

Handles: several producers, several consumers
---------------------------------------------
``channel.send_handles(n)`` gives each of ``n`` producers a :class:`SendHandle` of its own; each
closes its own, and the channel closes when the last one does, as with trio's ``clone()``.  The
channel object itself is not a handle: its creator hands the handles out and has nothing of its
own to close.  In trio the creator keeps an open handle that it must close too, and forgetting
to is the classic way to leave the consumers waiting forever; here that mistake cannot be made.
The price is that a handle cannot be made once the count has fallen to zero (the channel is then
closed, and ``send_handle()`` raises rather than reopen it), so every handle must exist before the
first one can close: make them together with ``send_handles(n)``, or ``clone()`` one that is
still open.  A handle that is garbage-collected while open (its channel still open) warns with
``ResourceWarning`` and does not close itself: closing is the producer's statement that it is
done, and a producer that died without saying so should not end the stream as if it had.

:class:`ReceiveHandle` is the mirror image for consumers.  When the last receive handle is closed,
nothing sent from then on could ever be received, so the channel closes for senders with
:class:`~poolkit.ReceiversGone` (blocked senders wake with it; their items were not delivered),
and the items still in the buffer are handed back: the last ``close()`` returns them (they are also
kept in ``channel.handed_back``), as a pool's shutdown hands back the jobs it never started.  Items
already promised to a woken receiver stay its own; should that receiver withdraw instead (cancelled
before it ran), its item joins ``channel.handed_back``.  Nothing is dropped silently.

Locks and foreign code
----------------------
Nothing that can block or run foreign code happens under a channel's lock; waiting, waking and
taking the lock go through :mod:`poolkit._core._wait`, as for every primitive.  A waiter whose
event loop is closed can never run; it is skipped, and the reference to it is dropped only once
the lock is released (:func:`~poolkit._core._wait.bury`), because dropping it destroys its task,
whose clean-up (``GeneratorExit``) wants the very same lock.  That clean-up never waits for the
lock either (the garbage collector may run it in a thread that holds it): it withdraws through
:func:`~poolkit._core._wait.give_up`, so a promise made to a task that will never run is passed on.
The same collection may close a task stranded inside ``async with send_handle:``: ``close()``
called so, with the lock held by the thread the collection interrupted, is done as soon as the
lock is free, rather than waiting for it for ever; a ``_nowait`` form answers ``WouldBlock``, and
the forms that would wait raise :class:`~poolkit.Busy`, a ``RuntimeError`` (see "Locks and the
garbage collector" in :mod:`poolkit._core._wait`).

A handle cannot be copied or pickled (``TypeError``): the channel counts its handles, and a copy
would be one it does not know of.  ``clone()`` makes another.

Threads
-------
Every method is thread-safe: state is guarded by one ``threading.Lock`` per channel that is never
held while waiting.  A select registration can be claimed through several channels at once, so its
claim goes through a small lock of its own, and a sender only counts on a waiting receiver after it
has claimed it.  A task parked in one thread is woken from another with
``loop.call_soon_threadsafe`` (a spinning one needs no waking); a thread waits on a lock of its
own, so nobody polls.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import threading
import warnings
from collections import deque
from collections.abc import AsyncIterator, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType, coroutine
from typing import Any, Generic, TypeVar, final

from poolkit._core._checks import check_timeout
from poolkit._core._exceptions import ChannelClosed, EndOfChannel, ReceiversGone, WouldBlock
from poolkit._core._registry import register
from poolkit._core._wait import (
    GC_PHASE,
    Busy,
    Sleeper,
    bury,
    busy_error,
    discard,
    enter,
    give_up,
    graveyard,
    lay_to_rest,
    monotonic,
    refuse_in_loop,
    resolve,
    take,
    take_or_defer,
    thread_deadline,
    thread_wait,
)

__all__ = [
    "Channel",
    "ChannelStatistics",
    "ReceiveCase",
    "ReceiveHandle",
    "SelectCase",
    "Selected",
    "SendCase",
    "SendHandle",
    "select",
    "select_blocking",
    "select_nowait",
]

T = TypeVar("T")

get_ident = threading.get_ident
get_running_loop = asyncio.get_running_loop
_get_running_loop = asyncio.events._get_running_loop  # the loop running in this thread, or None

# What became of a waiter.  It starts _PENDING; whoever moves it on first (a hand-off, close(),
# its timer, its own cancellation) "claims" it, and every later attempt sees that it lost.
_PENDING = 0
_GRANTED = 1  # receiver: an item is promised to it; sender: room is kept for it, try again
_CLOSED = 2  # receiver: end of channel; sender: the channel was closed
_TIMED_OUT = 3
_CANCELLED = 4
_DONE = 5  # the owner has completed or abandoned its operation: nothing left to undo

# Whether the receiving side has gone (its last receive handle was closed), and when.
_PRESENT = 0
_GONE_AFTER_CLOSE = 1  # the channel was already closed: senders were told ChannelClosed
_GONE = 2  # the channel closed because of it: senders are told ReceiversGone

# Arrival numbers for senders, so a sender that has to queue again keeps its place (a select keeps
# one number across channels and restarts).  next() on itertools.count is atomic under the GIL.
_arrivals = itertools.count()
_next_arrival = _arrivals.__next__
_random = random.random  # int(_random() * n) is uniform enough, and a tenth of randrange(n)

# `"a" not in GC_PHASE`: no garbage collection runs now (see poolkit._core._wait).


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


_new = object.__new__


def _wake(w: _Waiter) -> bool:
    """Wake ``w``, holding its channel's lock; False if its owner can never run again.

    ``w.wake()``, quicker for a task of the event loop running in this thread (which is
    therefore not closed).  A task that is spinning (it has no future: see "Spinning once" in
    the module docstring) is scheduled already, and finds its new state when it runs.
    """
    loop = w.loop
    if loop is not None:
        fut = w.fut
        if loop is _get_running_loop():
            if fut is not None and not fut.done():
                fut.set_result(None)
            return True
        if fut is None:
            return not loop.is_closed()
    return w.wake()


def _park(w: _Waiter) -> None:
    """Give a spinning task waiter its future, to wait on (holding the channel's lock)."""
    loop = w.loop
    assert loop is not None
    w.fut = loop.create_future()


@coroutine
def _spin() -> Generator[None, None, None]:
    """Yield to the event loop once, staying scheduled (as ``asyncio.sleep(0)`` does)."""
    yield


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
    """Whether the channel is closed: :meth:`Channel.close` was called, or its last send handle
    was closed, or its last receive handle was."""
    peak_buffered: int
    """The largest value ``buffered`` has had."""
    send_handles_open: int
    """Send handles made and not yet closed; the channel closes when the last one is closed."""
    receive_handles_open: int
    """Receive handles made and not yet closed; when the last one is closed, the receivers have
    gone (``receivers_gone``)."""
    receivers_gone: bool
    """Whether the last receive handle was closed: senders get :class:`~poolkit.ReceiversGone`
    (or :class:`~poolkit.ChannelClosed` if the channel had been closed before)."""
    items_handed_back: int
    """Items that were in the buffer when the receivers went away, handed back to the caller of
    the last receive handle's ``close()`` (and kept in ``Channel.handed_back``).  Always
    ``items_sent == items_received + items_handed_back + items still in the channel``."""


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

    Several producers each close their own :class:`SendHandle` (:meth:`send_handles`), and the
    channel closes when the last one does; consumers that hold receive handles
    (:meth:`receive_handles`) tell blocked and later senders that they have gone
    (:class:`~poolkit.ReceiversGone`) by closing the last one.  See the module docstring.

    Args:
        capacity: The buffer size: 0 (unbuffered, the default), a positive ``int``, or
            ``math.inf`` (unbounded).
        name: A label for ``repr``, statistics and metrics.

    Raises:
        TypeError: If ``capacity`` is neither an ``int`` nor ``math.inf`` (a float such as
            ``2.0`` is refused too), or ``name`` is not a ``str``.
        ValueError: If ``capacity`` is negative.
    """

    __slots__ = (
        "__weakref__",
        "_buf",
        "_capacity",
        "_closed",
        "_gone",
        "_handed",
        "_invited",
        "_lock",
        "_name",
        "_peak",
        "_promised",
        "_received",
        "_receivers",
        "_recvq",
        "_senders",
        "_sendq",
        "_sent",
        "_spare",
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
        self._senders = 0  # open send handles
        self._receivers = 0  # open receive handles
        self._gone = _PRESENT
        self._handed: list[T] = []  # handed back when the receivers went away
        self._spare: _Waiter | None = None
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
        """Whether the channel is closed (items may still be buffered): :meth:`close` was called,
        or its last :class:`SendHandle` was closed, or its last :class:`ReceiveHandle` was."""
        return self._closed

    @property
    def handed_back(self) -> list[T]:
        """The items that were buffered when the last receive handle was closed (a copy).

        They were never received; the last ``ReceiveHandle.close()`` returned them too.  An item
        promised to a receiver that was already woken, and that then withdraws (cancelled before
        it ran), is added here later: nobody else will receive it.  In the order they were sent;
        empty unless the receivers have gone.

        Raises:
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        take(self._lock, "Channel.handed_back")
        try:
            return list(self._handed)
        finally:
            self._lock.release()

    def statistics(self) -> ChannelStatistics:
        """Return a consistent snapshot of the channel's counters.

        Returns:
            A frozen :class:`ChannelStatistics`.

        Raises:
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        take(self._lock, "Channel.statistics()")
        try:
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
                send_handles_open=self._senders,
                receive_handles_open=self._receivers,
                receivers_gone=self._gone != _PRESENT,
                items_handed_back=len(self._handed),
            )
        finally:
            self._lock.release()

    def __repr__(self) -> str:
        s = self.statistics()
        cap = "inf" if s.capacity == math.inf else str(s.capacity)
        name = f" {s.name!r}" if s.name is not None else ""
        handles = ""
        if s.send_handles_open:
            handles += f" send_handles={s.send_handles_open}"
        if s.receive_handles_open:
            handles += f" receive_handles={s.receive_handles_open}"
        if s.receivers_gone:
            handles += f" receivers_gone=True handed_back={s.items_handed_back}"
        return (
            f"<Channel{name} capacity={cap} buffered={s.buffered} "
            f"senders_waiting={s.senders_waiting} receivers_waiting={s.receivers_waiting} "
            f"sent={s.items_sent} received={s.items_received} closed={s.closed}{handles}>"
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
            bury(q.popleft())  # a select that was satisfied elsewhere
        return False

    def _claim_receiver(self) -> _Waiter | None:
        """Pop and claim the first receiver still waiting, or None.

        Only a successful claim counts: a select registration that looks live may be claimed
        through another channel, by another thread, at any moment until then.
        """
        q = self._recvq
        while q:
            w = q.popleft()
            if w.sel is None:  # claim(), inlined for the plain waiter
                if w.state == _PENDING:
                    w.state = _GRANTED
                    return w
            elif w.claim(_GRANTED):
                return w
            bury(w)  # a stale select registration: its task may be gone too
        return None

    def _promise_receivers(self) -> None:
        """Wake waiting receivers while there are items nobody is promised; end them if over."""
        buf = self._buf
        while self._recvq and len(buf) > self._promised:
            w = self._claim_receiver()
            if w is None:
                break
            self._promised += 1
            if not _wake(w):  # its loop is closed: it will never run
                w.state = _DONE
                self._promised -= 1
                bury(w)  # maybe the last reference to its task: drop it after the lock
        if self._gone and len(buf) > self._promised:
            self._hand_back()  # a promised receiver withdrew after the receivers had gone
        if self._closed and not buf:
            self._end_receivers()

    def _place(self, item: T) -> bool:
        """Put ``item`` in: promised to a waiting receiver, else into the buffer if it has room."""
        buf = self._buf
        q = self._recvq
        while q:
            # _claim_receiver() and _wake(), inlined: this is half of every unbuffered hand-off.
            w = q.popleft()
            if w.sel is None:
                if w.state != _PENDING:
                    bury(w)
                    continue
                w.state = _GRANTED
            elif not w.claim(_GRANTED):
                bury(w)  # a stale select registration: its task may be gone too
                continue
            loop = w.loop
            if loop is not None and loop is _get_running_loop():  # running: not closed
                fut = w.fut
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif not _wake(w):
                w.state = _DONE  # its loop is closed: it will never run; try the next one
                bury(w)
                continue
            buf.append(item)
            self._sent += 1
            self._promised += 1
            return True
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
            if w.loop is not None:
                # A new future before it can be woken again (the invitations below may be for it).
                w.fut = w.loop.create_future()
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
            if w.sel is None:  # claim(), inlined for the plain waiter
                claimed = w.state == _PENDING
                if claimed:
                    w.state = _GRANTED
            else:
                claimed = w.claim(_GRANTED)
            if claimed:
                self._invited += 1
                loop = w.loop
                if loop is not None and loop is _get_running_loop():  # _wake(), inlined
                    fut = w.fut
                    if fut is not None and not fut.done():
                        fut.set_result(None)
                    continue
                if _wake(w):
                    continue
                w.state = _DONE
                self._invited -= 1
            bury(w)

    def _end_receivers(self) -> None:
        """Closed and empty: every waiting receiver gets EndOfChannel."""
        q = self._recvq
        while q:
            w = q.popleft()
            if not (w.claim(_CLOSED) and _wake(w)):
                bury(w)

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

    def _expire(self, w: _Waiter, sending: bool) -> None:
        with self._lock:
            w.expired = True
            if w.claim(_TIMED_OUT):
                discard(self._sendq if sending else self._recvq, w)
                _wake(w)

    def _closed_error(self) -> ChannelClosed | ReceiversGone:
        if self._gone == _GONE:
            return ReceiversGone(
                f"send on {self._label()}, whose receivers have all gone (its last receive handle "
                f"was closed): the item was not delivered"
            )
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
        once they are gone, receivers get :class:`~poolkit.EndOfChannel`.  It closes the channel
        at once for every :class:`SendHandle` too (their own ``close()`` is then a formality).
        Called during a garbage collection that interrupted this thread holding the channel's
        lock, it closes the channel as soon as the lock is free instead.
        """
        lock = self._lock
        if not take_or_defer(lock, self.close):
            return
        try:
            self._close_locked()
        finally:
            lock.release()
        if graveyard:
            lay_to_rest()

    def _close_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        q = self._sendq
        while q:
            w = q.popleft()
            if not (w.claim(_CLOSED) and _wake(w)):
                bury(w)
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
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            return False  # a garbage collection interrupted this thread holding the lock
        try:
            buf = self._buf
            if (  # the common case of _offer(), inlined as in send()
                not (self._recvq or self._sendq or self._invited or self._closed)
                and self._capacity - len(buf) + self._promised > 0
            ):
                buf.append(item)
                self._sent += 1
                if len(buf) > self._peak:  # (unpromised <= len(buf): test the cheap bound first)
                    n = len(buf) - self._promised
                    if n > self._peak:
                        self._peak = n
                return True  # nobody waits: nothing was buried
            sent = self._offer(item)
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        return sent

    def _try_receive(self) -> Any:
        """``receive_nowait`` without the exception: ``_EMPTY`` when it would block (for the
        pools).  Raises :class:`~poolkit.EndOfChannel` at the end."""
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            return _EMPTY  # a garbage collection interrupted this thread holding the lock
        try:
            buf = self._buf
            if len(buf) > self._promised and not self._sendq:  # _take()'s common case, inlined
                self._received += 1
                return buf.popleft()  # nobody waits to be invited: nothing was buried
            item = self._take()
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        return item

    def send_nowait(self, item: T) -> None:
        """Send ``item`` if that needs no waiting; otherwise raise :class:`~poolkit.WouldBlock`.

        Args:
            item: The item to send.

        Raises:
            WouldBlock: If there is no room and no waiting receiver (or senders are queued
                ahead), or the lock is taken during a garbage collection in this thread.
            ChannelClosed: If the channel is closed.
            ReceiversGone: If the channel closed because its last receive handle was closed.
        """
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise WouldBlock(f"{self._label()}: its lock is taken, during a garbage collection")
        try:
            buf = self._buf
            if (  # the common case of _offer(), inlined as in send()
                not (self._recvq or self._sendq or self._invited or self._closed)
                and self._capacity - len(buf) + self._promised > 0
            ):
                buf.append(item)
                self._sent += 1
                if len(buf) > self._peak:  # (unpromised <= len(buf): test the cheap bound first)
                    n = len(buf) - self._promised
                    if n > self._peak:
                        self._peak = n
                return  # nobody waits: nothing was buried
            sent = self._offer(item)
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        if not sent:
            raise WouldBlock(f"{self._label()} has no room and no waiting receiver")

    def receive_nowait(self) -> T:
        """Receive an item if one is ready; otherwise raise :class:`~poolkit.WouldBlock`.

        Returns:
            The item at the head of the channel.

        Raises:
            WouldBlock: If no item is ready (unbuffered: none has been handed over yet), or the
                lock is taken during a garbage collection in this thread.
            EndOfChannel: If the channel is closed and drained.
        """
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise WouldBlock(f"{self._label()}: its lock is taken, during a garbage collection")
        try:
            buf = self._buf
            if len(buf) > self._promised and not self._sendq:  # _take()'s common case, inlined
                self._received += 1
                return buf.popleft()  # nobody waits to be invited: nothing was buried
            item = self._take()
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        if item is _EMPTY:
            raise WouldBlock(f"{self._label()} has no item ready")
        return item  # type: ignore[no-any-return]

    # ----------------------------------------------------------------- asyncio

    async def send(self, item: T, *, timeout: float | None = None) -> None:
        """Send ``item``, waiting for room (or, unbuffered, for a receiver to take it).

        If it raises, or is cancelled, the item was not delivered.

        Args:
            item: The item to send.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            ChannelClosed: If the channel is closed, or closes before the item went in.
            ReceiversGone: If it closed because its last receive handle was closed.
            TimeoutError: If the item did not go in within ``timeout`` seconds.
            TypeError, ValueError: If ``timeout`` is not a number, or is negative or NaN.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        # The hot paths of send(), receive() and __anext__() are written out: explicit
        # acquire/release rather than "with" (~80 ns less on CPython 3.11), the common cases of
        # the helpers inlined, and the wait done here rather than in a helper coroutine (one
        # frame fewer to make and to pass through on each wake-up).  Each saves a few per cent
        # of an unbuffered hand-off; spinning (module docstring) saves a third.
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("Channel.send()")
        try:
            if self._sendq or self._invited or self._closed:
                sent = self._offer(item)
            elif self._recvq:
                sent = self._place(item)  # a receiver waits: it is promised the item
            else:
                buf = self._buf
                if self._capacity - len(buf) + self._promised <= 0:
                    sent = False
                else:
                    buf.append(item)
                    self._sent += 1
                    if len(buf) > self._peak:  # (unpromised <= len(buf): the cheap bound first)
                        n = len(buf) - self._promised
                        if n > self._peak:
                            self._peak = n
                    return  # nobody waits: nothing was buried
            if not sent and timeout != 0:
                q = self._sendq
                w = self._task_waiter(item, next(_arrivals))
                if q or self._invited or not self._promised:
                    # It spins only if a receiver promised an item has yet to run (it may be back
                    # for more) and no sender is queued or invited: see "Spinning once".
                    _park(w)
                # _enqueue_sender(), inlined: a new arrival number is the highest, so append.
                q.append(w)
                if self._invited:
                    self._invite_senders()
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        if sent:
            return
        if timeout is not None:
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: send would block")
            await self._await(w, True, timeout)
            return
        while True:
            try:
                fut = w.fut
                if fut is None:
                    await _spin()
                else:
                    await fut
            except BaseException as exc:
                give_up(exc, lock, self._withdraw, w, True)
                raise
            if self._sender_resumes(w):
                return

    async def receive(self, *, timeout: float | None = None) -> T:
        """Receive the next item, waiting for one.

        If cancelled (or timed out) nothing was taken: the item stays for the next receiver.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Returns:
            The item at the head of the channel.

        Raises:
            EndOfChannel: If the channel is closed and drained.
            TimeoutError: If no item came within ``timeout`` seconds.
            TypeError, ValueError: If ``timeout`` is not a number, or is negative or NaN.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        if timeout is not None:
            timeout = check_timeout(timeout)
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("Channel.receive()")
        try:
            buf = self._buf
            if len(buf) > self._promised:  # _take(), inlined
                item = buf.popleft()
                self._received += 1
                if not self._sendq:
                    return item  # nobody waits to be invited: nothing was buried
                self._invite_senders()
            elif self._closed and not buf:
                raise self._end_error()
            else:
                item = _EMPTY
                if timeout != 0:
                    w = self._enqueue_receiver()
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        if item is not _EMPTY:
            return item
        if timeout is not None:
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: receive would block")
            return await self._await(w, False, timeout)  # type: ignore[no-any-return]
        while True:
            try:
                fut = w.fut
                if fut is None:
                    await _spin()
                else:
                    await fut
            except BaseException as exc:
                give_up(exc, lock, self._withdraw, w, False)
                raise
            item = self._receiver_resumes(w)
            if item is not _EMPTY:
                if item is _ENDED:
                    raise self._end_error()
                return item

    def _task_waiter(self, item: Any, arrival: int) -> _Waiter:
        """``_Waiter(item, asyncio.get_running_loop(), arrival=arrival)`` (lock held), with no
        future yet: it spins, or the caller parks it.  Made cheaply: the channel's spare waiter
        if it has one, else a new one made without calling ``__init__`` (a test checks that
        every slot is set as the constructor sets it)."""
        loop = get_running_loop()
        w = self._spare
        if w is None:
            w = _new(_Waiter)
            w.tlock = None
            w.sel = None
            w.index = -1
            w.expired = False
        else:
            self._spare = None
        w.loop = loop
        w.fut = None
        w.thread = get_ident()
        w.item = item
        w.arrival = arrival
        w.state = _PENDING
        return w

    def _enqueue_receiver(self) -> _Waiter:
        """Queue a receiver task (lock held); a blocked sender is invited to hand its item over."""
        first = not self._recvq
        w = self._task_waiter(None, 0)  # (a receiver needs no arrival number)
        self._recvq.append(w)
        if self._sendq:
            self._invite_senders()
        if not (first and self._invited):
            # It spins only if a sender is invited (it will hand its item over) and no receiver
            # is queued ahead of it: see "Spinning once".
            _park(w)
        return w

    def _sender_resumes(self, w: _Waiter) -> bool:
        """A sender with no timer runs again: True if its item went in, False if it has to wait
        (again: on a new future).  Raises if the channel was closed."""
        lock = self._lock
        lock.acquire()
        try:
            state = w.state
            if state == _GRANTED:
                if self._retry(w, True):
                    w.item = None
                    self._spare = w  # nobody else refers to it now: the next waiter reuses it
                    return True
                return False  # queued again
            if state == _PENDING:
                _park(w)  # nobody came while it spun
                return False
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()
        raise self._closed_error()  # (_CLOSED: with no timer, the only other outcome)

    def _receiver_resumes(self, w: _Waiter) -> Any:
        """A receiver with no timer runs again: its item; ``_EMPTY`` if it has to wait (now on a
        future); ``_ENDED`` if the channel was closed and drained."""
        lock = self._lock
        lock.acquire()
        try:
            state = w.state
            if state == _GRANTED:
                buf = self._buf  # _collect(), inlined
                item = buf.popleft()
                w.state = _DONE
                self._promised -= 1
                self._received += 1
                if self._closed and not buf and self._recvq:
                    self._end_receivers()
                self._spare = w  # nobody else refers to it now: the next waiter reuses it
                return item
            if state == _PENDING:
                _park(w)  # nobody came while it spun
                return _EMPTY
            return _ENDED  # (_CLOSED: with no timer, the only other outcome)
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()

    def _enqueue_sender(self, w: _Waiter) -> None:
        self._queue_sender(w)
        if self._invited:
            # It queued behind invited senders; if there is room or a receiver to spare beyond
            # theirs, it is invited at once rather than left waiting beside it.
            self._invite_senders()

    async def _await(self, w: _Waiter, sending: bool, timeout: float) -> Any:
        """Wait for ``w`` to be woken, with a timer: send() and receive() given a timeout."""
        loop = w.loop
        assert loop is not None
        timer = loop.call_later(timeout, self._expire, w, sending)
        try:
            while True:
                try:
                    fut = w.fut
                    if fut is None:
                        await _spin()
                    else:
                        await fut
                except BaseException as exc:
                    give_up(exc, self._lock, self._withdraw, w, sending)
                    raise
                lock = self._lock
                lock.acquire()
                try:
                    state = w.state
                    if state == _PENDING:
                        _park(w)  # nobody came while it spun
                        continue
                    if state == _GRANTED:
                        if not sending:
                            return self._collect(w)
                        # If the timer has fired (and lost the race to the wake-up), stop here:
                        # re-reading loop.time() is not enough, uvloop fires timers early.
                        requeue = not w.expired
                        if self._retry(w, requeue):
                            return None
                        if requeue:
                            continue  # queued again, on a new future
                        state = _TIMED_OUT
                finally:
                    lock.release()
                    if graveyard:
                        lay_to_rest()
                if state == _CLOSED:
                    raise self._closed_error() if sending else self._end_error()
                raise self._timeout_error(sending)
        finally:
            timer.cancel()

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        # receive() without its timeout; its end raises StopAsyncIteration.
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("Channel.__anext__()")
        try:
            buf = self._buf
            if len(buf) > self._promised:  # _take(), inlined
                item = buf.popleft()
                self._received += 1
                if not self._sendq:
                    return item  # nobody waits to be invited: nothing was buried
                self._invite_senders()
            elif self._closed and not buf:
                raise StopAsyncIteration
            else:
                item = _EMPTY
                w = self._enqueue_receiver()
        finally:
            lock.release()
        if graveyard:  # waiters whose loop is closed, skipped above: let them go now
            lay_to_rest()
        if item is not _EMPTY:
            return item
        while True:
            try:
                fut = w.fut
                if fut is None:
                    await _spin()
                else:
                    await fut
            except BaseException as exc:
                give_up(exc, lock, self._withdraw, w, False)
                raise
            item = self._receiver_resumes(w)
            if item is not _EMPTY:
                if item is _ENDED:
                    raise StopAsyncIteration
                return item

    # ----------------------------------------------------------------- threads

    def send_blocking(self, item: T, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`send`: block this thread until ``item`` went in.

        If it raises, the item was not delivered.

        Args:
            item: The item to send.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            RuntimeError: If it would have to wait in a thread whose event loop is running
                (it would freeze the loop).
            ChannelClosed, ReceiversGone, TimeoutError, TypeError, ValueError, Busy: As
                :meth:`send`.
        """
        timeout = check_timeout(timeout)
        lock = self._lock
        if "a" not in GC_PHASE:
            lock.acquire()
        elif not enter(lock):
            raise busy_error("Channel.send_blocking()")
        try:
            if self._offer(item):
                return
            if timeout == 0:
                raise TimeoutError(f"{self._label()}: send would block")
            refuse_in_loop("send_blocking")
            w = _Waiter(item)
            w.arm_thread()
            self._enqueue_sender(w)
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()
        self._block(w, True, timeout)

    def receive_blocking(self, *, timeout: float | None = None) -> T:
        """Thread form of :meth:`receive`: block this thread until an item arrives.

        If it raises, nothing was taken.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Returns:
            The item at the head of the channel.

        Raises:
            RuntimeError: If it would have to wait in a thread whose event loop is running.
            EndOfChannel, TimeoutError, TypeError, ValueError, Busy: As :meth:`receive`.
        """
        timeout = check_timeout(timeout)
        lock = self._lock
        take(lock, "Channel.receive_blocking()")
        try:
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
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()
        return self._block(w, False, timeout)  # type: ignore[no-any-return]

    def _block(self, w: _Waiter, sending: bool, timeout: float | None) -> Any:
        try:
            return self._block_locked(w, sending, timeout)
        finally:
            if graveyard:
                lay_to_rest()

    def _block_locked(self, w: _Waiter, sending: bool, timeout: float | None) -> Any:
        """The body of :meth:`_block`, which lets buried waiters go once the lock is free."""
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
        except BaseException as exc:  # KeyboardInterrupt in the main thread: undo any promise
            give_up(exc, self._lock, self._withdraw, w, sending)
            raise
        if state == _CLOSED:
            raise self._closed_error() if sending else self._end_error()
        raise self._timeout_error(sending)

    def __iter__(self) -> Iterator[T]:
        """Receive items in this thread (blocking) until the channel is closed and drained.

        Each step is :meth:`receive_blocking` and raises as it does.
        """
        while True:
            try:
                yield self.receive_blocking()
            except EndOfChannel:
                return

    # ----------------------------------------------------------------- handles

    def send_handles(self, n: int) -> list[SendHandle[T]]:
        """Make ``n`` send handles at once, one for each of ``n`` producers.

        Each producer closes its own handle (``async with handle:``); the channel closes, as by
        :meth:`close`, when the last open send handle is closed.  The channel object itself does
        not count: whoever made the handles has nothing of its own to close.  Make every handle
        before any producer can close one (that is what this method is for): once the count of
        open handles has fallen to zero the channel is closed for good.  To add a producer later,
        :meth:`SendHandle.clone` a handle that is still open.

        Args:
            n: How many handles to make, at least 1.

        Returns:
            ``n`` open send handles of this channel (:class:`SendHandle`).

        Raises:
            TypeError: If ``n`` is not an ``int``.
            ValueError: If ``n`` is less than 1.
            ChannelClosed: If the channel is closed (by :meth:`close`, or because its last send
                handle was closed).
            ReceiversGone: If the channel closed because its receivers have gone (its last
                receive handle was closed).
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        _check_count(n)
        take(self._lock, "Channel.send_handles()")
        try:
            if self._closed:
                raise self._handle_refused(True)
            self._senders += n
        finally:
            self._lock.release()
        return [_new_handle(SendHandle, self) for _ in range(n)]

    def send_handle(self) -> SendHandle[T]:
        """Make one send handle: ``send_handles(1)[0]``; see :meth:`send_handles`.

        Returns:
            An open :class:`SendHandle` of this channel.

        Raises:
            ChannelClosed, ReceiversGone, Busy: As :meth:`send_handles`.
        """
        return self.send_handles(1)[0]

    def receive_handles(self, n: int) -> list[ReceiveHandle[T]]:
        """Make ``n`` receive handles at once, one for each of ``n`` consumers.

        Each consumer closes its own handle when it stops receiving.  When the last open receive
        handle is closed the receivers have gone: blocked and later senders get
        :class:`~poolkit.ReceiversGone` instead of waiting forever, and the items still buffered
        are handed back by that last ``close()``.  Plain receives on the channel object are
        still allowed but do not count as a receiver.  As with :meth:`send_handles`, make every
        handle before any consumer can close one, or :meth:`ReceiveHandle.clone` an open one.
        A channel closed by its senders still accepts new receive handles, to drain it.

        Args:
            n: How many handles to make, at least 1.

        Returns:
            ``n`` open receive handles of this channel (:class:`ReceiveHandle`).

        Raises:
            TypeError: If ``n`` is not an ``int``.
            ValueError: If ``n`` is less than 1.
            ChannelClosed: If the receivers have gone already (the last receive handle was
                closed).
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        _check_count(n)
        take(self._lock, "Channel.receive_handles()")
        try:
            if self._gone != _PRESENT:
                raise self._handle_refused(False)
            self._receivers += n
        finally:
            self._lock.release()
        return [_new_handle(ReceiveHandle, self) for _ in range(n)]

    def receive_handle(self) -> ReceiveHandle[T]:
        """Make one receive handle: ``receive_handles(1)[0]``; see :meth:`receive_handles`.

        Returns:
            An open :class:`ReceiveHandle` of this channel.

        Raises:
            ChannelClosed, Busy: As :meth:`receive_handles`.
        """
        return self.receive_handles(1)[0]

    def _handle_refused(self, sending: bool) -> ChannelClosed | ReceiversGone:
        label = self._label()
        if not sending:
            return ChannelClosed(
                f"cannot make a receive handle of {label}: its last receive handle was closed, "
                f"and its receivers have gone for good"
            )
        if self._gone == _GONE:
            return ReceiversGone(
                f"cannot make a send handle of {label}: its receivers have all gone (its last "
                f"receive handle was closed)"
            )
        return ChannelClosed(
            f"cannot make a send handle of {label}: it is closed (close() was called, or its "
            f"last send handle was closed, which closes it for good); make every handle before "
            f"the first can be closed, with send_handles(n), or clone() one that is still open"
        )

    def _receivers_leave(self) -> list[T]:
        """The last receive handle was closed (lock held): hand back what nobody was promised.

        Items already promised to woken receivers stay, for them to take; the rest are handed
        back in order.  Senders are refused from now on.
        """
        handed = self._hand_back()
        buf = self._buf
        if self._closed:
            self._gone = _GONE_AFTER_CLOSE
            if not buf and self._recvq:
                self._end_receivers()
        else:
            self._gone = _GONE
            self._close_locked()
        return handed

    def _hand_back(self) -> list[T]:
        """Take the items nobody is promised out of the buffer, into ``_handed`` (lock held).

        They go in front of any handed back before: an item freed later (its promised receiver
        withdrew) is the last of the promised ones, sent before every item handed back so far.
        So ``handed_back`` stays in the order the items were sent.
        """
        buf = self._buf
        handed: list[T] = []
        while len(buf) > self._promised:
            handed.append(buf.pop())
        handed.reverse()
        self._handed[:0] = handed
        return handed

    # ----------------------------------------------------------------- select cases

    def receive_case(self) -> ReceiveCase[T]:
        """A receive from this channel, to pass to :func:`select`."""
        return ReceiveCase(self)

    def send_case(self, item: T) -> SendCase[T]:
        """A send of ``item`` on this channel, to pass to :func:`select`."""
        return SendCase(self, item)


_EMPTY: Any = object()
_ENDED: Any = object()


def _check_count(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be a positive int, got {n!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n!r}")


H = TypeVar("H", "SendHandle[Any]", "ReceiveHandle[Any]")


def _new_handle(cls: type[H], channel: Channel[Any]) -> H:
    """A handle already counted in ``channel`` (its ``__init__`` refuses to be called)."""
    h = object.__new__(cls)
    h._channel = channel
    h._closed = False
    return h


def _warn_unclosed(handle: object, consequence: str) -> None:
    try:
        warnings.warn(
            f"{handle!r} was garbage-collected without being closed: {consequence}; close it "
            f"(async with / with) when done with it",
            ResourceWarning,
            source=handle,
            stacklevel=2,
        )
    except (AttributeError, TypeError):  # at interpreter shutdown, module globals may be None
        pass


_NO_INIT = "are made by Channel.{0}_handles(n), Channel.{0}_handle() or {1}.clone()"
# copy.copy(), copy.deepcopy() and pickle all go through __reduce_ex__.
_NO_COPY = (
    "a {0} cannot be copied or pickled: its channel counts its open handles, and would not count "
    "the copy (closing both would close the channel early); use handle.clone() for another {1}"
)


@final
class SendHandle(Generic[T]):
    """One producer's share of a :class:`Channel`: it sends, and it closes on its own.

    Made by :meth:`Channel.send_handles`, :meth:`Channel.send_handle` or :meth:`clone`.
    :meth:`close` closes this handle only, and is idempotent; the channel closes, exactly as by
    :meth:`Channel.close`, when its last open send handle is closed (receivers drain what is
    buffered, then get :class:`~poolkit.EndOfChannel`).  ``async with handle:`` and
    ``with handle:`` close it on the way out, whatever happens in the block.
    :meth:`Channel.close` still closes the channel at once for every handle.

    Sending through a closed handle raises :class:`~poolkit.ChannelClosed` saying so, even while
    other handles keep the channel open.  A send already under way when its handle is closed
    (from another task or thread) is not affected, unless that was the last handle: then the
    channel is closed and the blocked send raises ``ChannelClosed`` like any other.  Otherwise
    each method behaves as the channel's own (:meth:`Channel.send` and so on), thread-safe.

    A handle garbage-collected while it and its channel are open emits ``ResourceWarning``; it
    does not close itself (a producer that died without closing its handle has not said that it
    is done, and the stream should not end as if it had).
    """

    __slots__ = ("_channel", "_closed")

    _channel: Channel[T]
    _closed: bool

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("send handles " + _NO_INIT.format("send", "SendHandle"))

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(_NO_COPY.format("SendHandle", "producer"))

    @property
    def channel(self) -> Channel[T]:
        """The channel this handle sends on."""
        return self._channel

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed (the channel may still be open)."""
        return self._closed

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(
            f"send through a closed send handle of {self._channel._label()}: this handle was "
            f"closed (the channel stays open while other send handles are)"
        )

    async def send(self, item: T, *, timeout: float | None = None) -> None:
        """Send ``item`` through this handle: :meth:`Channel.send`.

        If it raises, or is cancelled, the item was not delivered.

        Args:
            item: The item to send.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            ChannelClosed: If this handle is closed, or the channel is.
            ReceiversGone, TimeoutError, TypeError, ValueError, Busy: As :meth:`Channel.send`.
        """
        if self._closed:
            raise self._closed_error()
        await self._channel.send(item, timeout=timeout)

    def send_nowait(self, item: T) -> None:
        """Send ``item`` if that needs no waiting: :meth:`Channel.send_nowait`.

        Args:
            item: The item to send.

        Raises:
            ChannelClosed: If this handle is closed, or the channel is.
            WouldBlock, ReceiversGone: As :meth:`Channel.send_nowait`.
        """
        if self._closed:
            raise self._closed_error()
        self._channel.send_nowait(item)

    def send_blocking(self, item: T, *, timeout: float | None = None) -> None:
        """Thread form of :meth:`send`: :meth:`Channel.send_blocking`.

        If it raises, the item was not delivered.

        Args:
            item: The item to send.
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Raises:
            ChannelClosed: If this handle is closed, or the channel is.
            RuntimeError: If it would have to wait in a thread whose event loop is running.
            ReceiversGone, TimeoutError, TypeError, ValueError, Busy: As
                :meth:`Channel.send_blocking`.
        """
        if self._closed:
            raise self._closed_error()
        self._channel.send_blocking(item, timeout=timeout)

    def send_case(self, item: T) -> SendCase[T]:
        """A send of ``item`` through this handle, to pass to :func:`select`.

        If the handle is closed when ``select`` is called, ``select`` raises
        :class:`~poolkit.ChannelClosed`.
        """
        case = SendCase(self._channel, item)
        case._handle = self
        return case

    def clone(self) -> SendHandle[T]:
        """Another send handle of the same channel, for one more producer.

        Race-free, unlike a later :meth:`Channel.send_handle`: this handle keeps the channel
        open while the new one is made.

        Returns:
            A new, open handle; the channel now closes when both (and every other) are closed.

        Raises:
            ChannelClosed: If this handle is closed, or the channel is.
            ReceiversGone: If the channel closed because its receivers have gone.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        ch = self._channel
        take(ch._lock, "SendHandle.clone()")
        try:
            if self._closed:
                raise ChannelClosed(f"clone() of a closed send handle of {ch._label()}")
            if ch._closed:
                raise ch._handle_refused(True)
            ch._senders += 1
        finally:
            ch._lock.release()
        return _new_handle(SendHandle, ch)

    def close(self) -> None:
        """Close this handle: no more sends through it.  Idempotent; never blocks; any thread.

        If it was the channel's last open send handle, the channel is closed as by
        :meth:`Channel.close`: blocked senders get :class:`~poolkit.ChannelClosed`, and receivers
        drain the buffer and then get :class:`~poolkit.EndOfChannel`.

        Called during a garbage collection that interrupted this thread holding the channel's
        lock (the exit of an ``async with handle:`` whose coroutine is being closed, say), it is
        done as soon as the lock is free instead.
        """
        ch = self._channel
        lock = ch._lock
        if not take_or_defer(lock, self.close):
            return
        try:
            if self._closed:
                return
            self._closed = True
            ch._senders -= 1
            if not ch._senders:
                ch._close_locked()
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()

    def __enter__(self) -> SendHandle[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> SendHandle[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ch = self._channel
        state = "closed" if self._closed else "open"
        return f"<SendHandle {state} of {ch._label()} ({ch._senders} send handles open)>"

    def __del__(self) -> None:
        try:
            forgotten = not self._closed and not self._channel._closed
        except AttributeError:  # never initialised
            return
        if forgotten:
            _warn_unclosed(
                self, "the channel stays open, and its receivers wait, until it is closed"
            )


@final
class ReceiveHandle(Generic[T]):
    """One consumer's share of a :class:`Channel`: it receives, and it closes on its own.

    Made by :meth:`Channel.receive_handles`, :meth:`Channel.receive_handle` or :meth:`clone`.
    :meth:`close` closes this handle only, and is idempotent.  When the channel's last open
    receive handle is closed, its receivers have gone: senders blocked at that moment, and every
    later sender, get :class:`~poolkit.ReceiversGone` (their items were not delivered) instead of
    waiting forever; the items still in the buffer are handed back, returned by that last
    ``close()`` and kept in :attr:`Channel.handed_back`, so nothing is dropped silently.  Items
    already promised to a woken receiver stay with it (should it withdraw instead, cancelled
    before it ran, its item joins ``channel.handed_back``).  ``async with handle:`` and
    ``with handle:`` close it on the way out (the items handed back are then in
    ``channel.handed_back``).

    Receiving through a closed handle raises :class:`~poolkit.ChannelClosed`.  A receive already
    under way when its handle is closed is not affected, unless that was the last handle: then the
    channel is closed, and a receiver still waiting gets :class:`~poolkit.EndOfChannel` (its
    ``async for`` ends).  Otherwise each method behaves as the channel's own
    (:meth:`Channel.receive` and so on), thread-safe.

    A handle garbage-collected while open, with items still to come, emits ``ResourceWarning``;
    it does not close itself.
    """

    __slots__ = ("_channel", "_closed")

    _channel: Channel[T]
    _closed: bool

    def __init__(self, *args: object, **kwargs: object) -> None:
        raise TypeError("receive handles " + _NO_INIT.format("receive", "ReceiveHandle"))

    def __reduce_ex__(self, protocol: object) -> Any:
        raise TypeError(_NO_COPY.format("ReceiveHandle", "consumer"))

    @property
    def channel(self) -> Channel[T]:
        """The channel this handle receives from."""
        return self._channel

    @property
    def closed(self) -> bool:
        """Whether this handle has been closed."""
        return self._closed

    def _closed_error(self) -> ChannelClosed:
        return ChannelClosed(
            f"receive through a closed receive handle of {self._channel._label()}: this handle "
            f"was closed"
        )

    async def receive(self, *, timeout: float | None = None) -> T:
        """Receive the next item through this handle: :meth:`Channel.receive`.

        If it raises, or is cancelled, nothing was taken.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Returns:
            The item at the head of the channel.

        Raises:
            ChannelClosed: If this handle is closed.
            EndOfChannel, TimeoutError, TypeError, ValueError, Busy: As :meth:`Channel.receive`.
        """
        if self._closed:
            raise self._closed_error()
        return await self._channel.receive(timeout=timeout)

    def receive_nowait(self) -> T:
        """Receive an item if one is ready: :meth:`Channel.receive_nowait`.

        Returns:
            The item at the head of the channel.

        Raises:
            ChannelClosed: If this handle is closed.
            WouldBlock, EndOfChannel: As :meth:`Channel.receive_nowait`.
        """
        if self._closed:
            raise self._closed_error()
        return self._channel.receive_nowait()

    def receive_blocking(self, *, timeout: float | None = None) -> T:
        """Thread form of :meth:`receive`: :meth:`Channel.receive_blocking`.

        If it raises, nothing was taken.

        Args:
            timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

        Returns:
            The item at the head of the channel.

        Raises:
            ChannelClosed: If this handle is closed.
            RuntimeError: If it would have to wait in a thread whose event loop is running.
            EndOfChannel, TimeoutError, TypeError, ValueError, Busy: As
                :meth:`Channel.receive_blocking`.
        """
        if self._closed:
            raise self._closed_error()
        return self._channel.receive_blocking(timeout=timeout)

    def receive_case(self) -> ReceiveCase[T]:
        """A receive through this handle, to pass to :func:`select`.

        If the handle is closed when ``select`` is called, ``select`` raises
        :class:`~poolkit.ChannelClosed`.
        """
        case = ReceiveCase(self._channel)
        case._handle = self
        return case

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """``async for``: items until the channel is closed and drained.

        Raises :class:`~poolkit.ChannelClosed` if the handle was closed before this step.
        """
        if self._closed:
            raise self._closed_error()
        return await self._channel.__anext__()

    def __iter__(self) -> Iterator[T]:
        """``for`` in a thread: items until the channel is closed and drained.

        Each step raises as :meth:`Channel.receive_blocking`, and
        :class:`~poolkit.ChannelClosed` if the handle was closed before it.
        """
        ch = self._channel
        while True:
            if self._closed:
                raise self._closed_error()
            try:
                yield ch.receive_blocking()
            except EndOfChannel:
                return

    def clone(self) -> ReceiveHandle[T]:
        """Another receive handle of the same channel, for one more consumer.

        Race-free, unlike a later :meth:`Channel.receive_handle`: this handle keeps the
        receivers present while the new one is made.

        Returns:
            A new, open handle.

        Raises:
            ChannelClosed: If this handle is closed.
            Busy: If called during a garbage collection in this thread while the lock is taken.
        """
        ch = self._channel
        take(ch._lock, "ReceiveHandle.clone()")
        try:
            if self._closed:
                raise ChannelClosed(f"clone() of a closed receive handle of {ch._label()}")
            ch._receivers += 1
        finally:
            ch._lock.release()
        return _new_handle(ReceiveHandle, ch)

    def close(self) -> list[T]:
        """Close this handle: no more receives through it.  Idempotent; never blocks; any thread.

        Returns:
            The items handed back: empty, unless this was the channel's last open receive
            handle.  Then the receivers have gone, and these are the items that were in the
            buffer, in order, that no receiver will now take (they are also appended to
            :attr:`Channel.handed_back`).  Senders blocked at this moment, and every later
            sender, get :class:`~poolkit.ReceiversGone` (or :class:`~poolkit.ChannelClosed` if the
            channel had been closed already).  Called during a garbage collection that
            interrupted this thread holding the channel's lock, it is done as soon as the lock
            is free instead, and returns ``[]``: the items are then in
            :attr:`Channel.handed_back`.
        """
        ch = self._channel
        lock = ch._lock
        if not take_or_defer(lock, self.close):
            return []
        try:
            if self._closed:
                return []
            self._closed = True
            ch._receivers -= 1
            if ch._receivers:
                return []
            return ch._receivers_leave()
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()

    def __enter__(self) -> ReceiveHandle[T]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> ReceiveHandle[T]:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ch = self._channel
        state = "closed" if self._closed else "open"
        return f"<ReceiveHandle {state} of {ch._label()} ({ch._receivers} receive handles open)>"

    def __del__(self) -> None:
        try:
            ch = self._channel
            forgotten = not self._closed and not (ch._closed and not ch._buf)
        except AttributeError:  # never initialised
            return
        if forgotten:
            _warn_unclosed(self, "its senders are never told that the receivers have gone")


@final
class ReceiveCase(Generic[T]):
    """``select`` case: receive from ``channel``.  Made by :meth:`Channel.receive_case`.

    Args:
        channel: The channel to receive from.

    Raises:
        TypeError: If ``channel`` is not a :class:`Channel`.
    """

    __slots__ = ("_handle", "channel")

    def __init__(self, channel: Channel[T]) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"channel must be a poolkit.Channel, got {channel!r}")
        self.channel = channel
        self._handle: ReceiveHandle[T] | None = None  # made by ReceiveHandle.receive_case()

    def __repr__(self) -> str:
        return f"<ReceiveCase {self.channel._label()}>"


@final
class SendCase(Generic[T]):
    """``select`` case: send ``item`` on ``channel``.  Made by :meth:`Channel.send_case`.

    Args:
        channel: The channel to send on.
        item: The item to send.

    Raises:
        TypeError: If ``channel`` is not a :class:`Channel`.
    """

    __slots__ = ("_handle", "channel", "item")

    def __init__(self, channel: Channel[T], item: T) -> None:
        if not isinstance(channel, Channel):
            raise TypeError(f"channel must be a poolkit.Channel, got {channel!r}")
        self.channel = channel
        self.item = item
        self._handle: SendHandle[T] | None = None  # made by SendHandle.send_case()

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


def _select_check(cases: tuple[SelectCase, ...]) -> None:
    """Raise if the cases cannot be selected from (see :func:`select_nowait`)."""
    if not cases:
        raise ValueError("select() needs at least one case")
    sending: dict[int, bool] = {}
    for case in cases:
        kind = type(case)  # both case classes are final
        if kind is SendCase:
            is_send = True
        elif kind is ReceiveCase:
            is_send = False
        else:
            raise TypeError(
                f"select() cases must come from channel.receive_case() or channel.send_case(), "
                f"got {case!r}"
            )
        handle = case._handle
        if handle is not None and handle._closed:
            raise handle._closed_error()
        ch = case.channel
        key = id(ch)
        if sending.setdefault(key, is_send) != is_send:
            raise ValueError(f"select() cannot both send on and receive from {ch._label()}")


def _lock_order(cases: tuple[SelectCase, ...]) -> list[Channel[Any]]:
    """The channels of the cases, each once, in the one global lock order: no deadlock."""
    channels = {id(case.channel): case.channel for case in cases}
    return [channels[k] for k in sorted(channels)]


def _select_quick(cases: tuple[SelectCase, ...]) -> Selected | None:
    """Run one ready case, chosen at random, taking only its own channel's lock; or None.

    Which cases are ready is read without the locks; the chosen one is checked again under its
    lock and run if it still is ready (if not, another is tried).  None means that no case
    looked ready, or that a send case's channel has senders queued (only under the locks can
    stale select registrations among them be told apart): then the caller takes every lock and
    looks again, with :func:`_select_ready`.  Taking one lock rather than one per channel makes
    a select that finds a case ready about a third cheaper (benchmarks/bench_channel).  With
    the channels used by one event loop only, the cases read as ready are exactly those that
    are; another thread can change that at any moment, with or without the locks.
    """
    ready: list[int] = []
    for i, case in enumerate(cases):
        ch = case.channel
        if type(case) is ReceiveCase:
            if len(ch._buf) > ch._promised or (ch._closed and not ch._buf):
                ready.append(i)
        elif ch._closed:
            ready.append(i)
        elif ch._sendq:
            return None  # senders queued ahead, unless all of them are stale: see _select_ready
        elif not ch._invited and (ch._recvq or ch._capacity - len(ch._buf) + ch._promised > 0):
            ready.append(i)
    while ready:
        k = 0 if len(ready) == 1 else int(_random() * len(ready))
        i = ready[k]
        case = cases[i]
        ch = case.channel
        lock = ch._lock
        take(lock, "select")
        try:
            if type(case) is ReceiveCase:
                buf = ch._buf
                if len(buf) > ch._promised:
                    return Selected(i, case, ch._take(), False)
                if ch._closed and not buf:
                    return Selected(i, case, None, True)
            elif ch._closed:
                raise ch._closed_error()  # as Go panics
            elif ch._offer(case.item):
                return Selected(i, case, None, False)
        finally:
            lock.release()
            if graveyard:
                lay_to_rest()
        del ready[k]  # not ready after all: another thread, or only stale select registrations
    return None


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
        k = 0 if len(ready) == 1 else int(_random() * len(ready))
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
    """Every channel's lock, in one global order.  During a garbage collection in this thread, a
    lock that is taken raises :class:`~poolkit._core._wait.Busy` (holding none of them)."""

    __slots__ = ("channels",)

    def __init__(self, channels: list[Channel[Any]]) -> None:
        self.channels = channels

    def __enter__(self) -> None:
        if "a" not in GC_PHASE:
            for ch in self.channels:
                ch._lock.acquire()
            return
        held: list[Channel[Any]] = []
        for ch in self.channels:
            if not enter(ch._lock):
                for h in reversed(held):
                    h._lock.release()
                raise busy_error("select")
            held.append(ch)

    def __exit__(self, *exc: object) -> None:
        for ch in reversed(self.channels):
            ch._lock.release()
        if graveyard:  # waiters skipped under the locks: let them go now that every one is free
            lay_to_rest()


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
    try:
        with ch._lock:
            if isinstance(case, ReceiveCase):
                return Selected(w.index, case, ch._collect(w), False)
            if ch._retry(w, False):
                return Selected(w.index, case, None, False)
    finally:
        if graveyard:
            lay_to_rest()
    return None


def _select_withdraw(cases: tuple[SelectCase, ...], sel: _SelectClaim, exc: BaseException) -> None:
    """The select is abandoned (``exc``): claim it ourselves, or undo the promise made to it.

    Claiming ``sel`` takes only its own mutex, which is never held across anything that could
    start a collection; a promise or invitation already made is undone through
    :func:`~poolkit._core._wait.give_up`, which never waits for the channel's lock if the select is
    being closed (``GeneratorExit``, perhaps by the garbage collector in a thread that holds it).
    """
    if sel.take():
        return  # nothing had won
    w = sel.winner
    if w is not None and w.state == _GRANTED:
        case = cases[w.index]
        ch = case.channel
        give_up(exc, ch._lock, ch._withdraw, w, isinstance(case, SendCase))


def select_nowait(*cases: SelectCase) -> Selected:
    """Perform one ready case at once, or raise :class:`~poolkit.WouldBlock` (Go's ``default:``).

    Cases come from ``channel.receive_case()`` and ``channel.send_case(item)``.  If several are
    ready, one is chosen uniformly at random.  A receive from a closed, drained channel is ready and
    reported with ``closed=True``; a send on a closed channel is ready too, and raises if it is
    the one chosen (as Go panics).  Thread-safe; never blocks.

    Args:
        cases: The cases to choose from, at least one.

    Returns:
        A :class:`Selected` saying which case ran, and what it received.

    Raises:
        WouldBlock: If no case is ready, or a channel's lock is taken during a garbage
            collection in this thread.
        ChannelClosed: If a case was made through a handle that is closed, or the chosen case
            sends on a closed channel.
        ReceiversGone: If the chosen case sends on a channel that closed because its receivers
            have gone.
        ValueError: If there is no case, or one channel is both sent on and received from.
        TypeError: If a case is not a :class:`ReceiveCase` or a :class:`SendCase`.
    """
    _select_check(cases)
    try:
        done = _select_quick(cases)
        if done is None:
            with _Locks(_lock_order(cases)):
                done = _select_ready(cases)
    except Busy:  # a garbage collection interrupted this thread holding one of the locks
        raise WouldBlock("select: a channel's lock is taken, during a garbage collection") from None
    if done is None:
        raise WouldBlock("select: no case is ready")
    return done


async def select(*cases: SelectCase, timeout: float | None = None) -> Selected:
    """Wait until one of ``cases`` can run, run exactly that one, and report it.

    The others have no effect.  If several are ready at once, one is chosen uniformly at random (as
    in Go).  A receive from a closed, drained channel is a ready case reported with ``closed=True``;
    a send on a closed channel is ready too, and raises if it is the one chosen, as does a send
    case whose channel closes while the select waits.  If it raises, is cancelled or times out,
    no case ran.

    Args:
        cases: The cases to choose from, at least one; see :func:`select_nowait`.
        timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

    Returns:
        A :class:`Selected` saying which case ran, and what it received.

    Raises:
        ChannelClosed: If a case was made through a handle that is closed, or the chosen case
            sends on a closed channel.
        ReceiversGone: If the chosen case sends on a channel that closed because its receivers
            have gone.
        TimeoutError: If no case could run within ``timeout`` seconds.
        ValueError: If there is no case, one channel is both sent on and received from, or
            ``timeout`` is negative or NaN.
        TypeError: If a case is not a :class:`ReceiveCase` or a :class:`SendCase`, or
            ``timeout`` is not a number.
        Busy: If called during a garbage collection in this thread while a channel's lock is
            taken.
    """
    timeout = check_timeout(timeout)
    _select_check(cases)
    done = _select_quick(cases)
    if done is not None:
        return done
    channels = _lock_order(cases)
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
        except BaseException as exc:
            _select_withdraw(cases, sel, exc)
            if not isinstance(exc, GeneratorExit):
                # (Being closed, it leaves them stale: whoever meets them drops them.)
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

    If it raises, no case ran.

    Args:
        cases: The cases to choose from, at least one; see :func:`select_nowait`.
        timeout: Seconds to wait at most (``None``: as long as it takes; 0: not at all).

    Returns:
        A :class:`Selected` saying which case ran, and what it received.

    Raises:
        RuntimeError: If it would have to wait in a thread whose event loop is running.
        ChannelClosed, ReceiversGone, TimeoutError, ValueError, TypeError, Busy: As
            :func:`select`.
    """
    timeout = check_timeout(timeout)
    _select_check(cases)
    done = _select_quick(cases)
    if done is not None:
        return done
    channels = _lock_order(cases)
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
        except BaseException as exc:
            _select_withdraw(cases, sel, exc)
            _select_unregister(cases, sel)
            raise
        _select_unregister(cases, sel)
        done = _select_finish(cases, sel)
        if done is not None:
            return done
