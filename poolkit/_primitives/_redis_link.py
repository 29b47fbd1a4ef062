"""(internal) What every limit kept in Redis shares: clients, scripts, timeouts, errors, wake-ups.

redis-py is an optional extra (``pip install 'poolkit[redis]'``): it is imported here, lazily, the
first time a Redis limit is made, never by ``import poolkit``.

Clients
-------
A limit is given ``redis``: a URL (``"redis://127.0.0.1:6379/0"``), a ``redis.asyncio.Redis``
(for tasks) or a ``redis.Redis`` (for threads).  redis.asyncio connections are bound to the event
loop that opened them, so from a URL a :class:`RedisLink` makes one asyncio client *per event
loop* that uses it, when it first does, and one blocking client for every thread.  Those clients
have a ``socket_connect_timeout`` of ``op_timeout`` and retry a command once on a broken
connection (the connection that a restarted server dropped), never on a timeout: a paused server
costs ``op_timeout``, not several.  A broken connection is replaced on the next call (redis-py's
pool), so reconnection is automatic and needs nothing of ours.

Each asyncio call is bounded by ``op_timeout`` once, whole (connection, write, read), by one timer:
``asyncio.timeout`` in :meth:`~RedisLink.eval`, a plain ``call_at`` that cancels the call's own task
in :meth:`~RedisLink.eval_shielded`; the blocking client has ``socket_timeout=op_timeout`` (a socket
option: free).  The asyncio clients the link makes have *no* ``socket_timeout``: with one, redis-py
wraps each write in ``asyncio.wait_for`` (a task per call on Python 3.11) and each read in a timeout
of its own, three timers per call where one does.  A client passed in is used as it is, within the
same bound; a blocking client is trusted to have a ``socket_timeout`` (the caller's
choice, documented on the limits).

:meth:`RedisLink.eval_shielded` is :meth:`~RedisLink.eval` for calls that a cancellation must
not cut in half (a script that may grant or queue): the call runs in a task of its own, started
eagerly where Python has eager tasks (3.12+), which hands its reply straight to a future the
caller awaits -- one event-loop step more than a bare call, where ``ensure_future`` + ``shield``
took three.  Only when the caller is cancelled while the call is in flight does it wait for the
reply (``op_timeout`` at most) and hand it over, so that the caller can undo what the script did.

Every failure to reach Redis -- refused, reset, timed out, still loading its data set, read-only
replica -- becomes :class:`RedisUnavailable`, with redis-py's (or asyncio's) exception as its
``__cause__``; the limit then applies its ``on_error`` policy.

Scripts
-------
Each operation is one Lua script, sent with EVALSHA through redis-py's ``register_script`` (which
loads it again after NOSCRIPT: a restarted server, SCRIPT FLUSH).  Scripts use only commands of
Redis 6.2 (no FUNCTION, no sharded pub/sub), and every key of one limit carries one hash tag
(:func:`key_of`), so a script touches a single Cluster slot.

Wake-ups are pushed
-------------------
A waiter that is not at the head of a queue sends nothing while it waits: the script that changes
the head PUBLISHes to the channel of the process (strictly: of the link) whose ticket is the new
head.  Each link subscribes *one* connection per event loop (and one thread for blocking
waiters) to its own channel, ``{prefix}:wake:{token}``, ``token`` random, and dispatches each
message, ``"<ticket> <payload>"``, to the local waiter that registered ``ticket``.  Pub/sub does
not store messages, so one can be lost while the connection is down; whenever the subscription
is (re)confirmed after the first time, or the connection fails, every registered waiter is told
:data:`RECHECK` and looks at its ticket once.  Blocking reads of the subscription (no PING, no
health checks) send no commands at all.

Sharing
-------
Links are shared, with a count of users, by every limit of the process made from the same URL
(or the same client object), prefix and ``op_timeout``: a ``PerKey`` of a million buckets opens
one subscription per event loop, not a million.  The last user to close it closes the clients
it made; a client passed in is never closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import secrets
import sys
import threading
from collections.abc import Callable, Coroutine, Sequence
from types import ModuleType
from typing import Any, Literal, cast

from poolkit._core import _wait
from poolkit._core._exceptions import RedisUnavailable

__all__ = [
    "RECHECK",
    "EvalCancelled",
    "OnError",
    "RedisLink",
    "RedisUnavailable",
    "check_key",
    "check_local_share",
    "check_on_error",
    "check_op_timeout",
    "check_prefix",
    "import_redis",
    "key_of",
]

OnError = Literal["raise", "allow", "local"]
_ON_ERROR = ("raise", "allow", "local")

RECHECK = "!recheck"
"""The payload a waiter's callback gets when a wake-up may have been lost: look at the ticket."""

# Longest pause between attempts to read a failed subscription again (it reconnects by itself).
_MAX_BACKOFF = 1.0
# Closing a loop's clients waits no longer than this (a paused server answers nothing).
_CLOSE_TIMEOUT = 1.0


class EvalCancelled(Exception):
    """Raised by :meth:`RedisLink.eval_shielded` when its caller was cancelled while the script
    was in flight, once the script has finished: ``reply`` is its reply (None if it failed).
    The caller undoes what the script did, then raises ``CancelledError``."""

    def __init__(self, reply: Any) -> None:
        super().__init__()
        self.reply = reply


# RedisUnavailable lives with every other poolkit exception (poolkit._core._exceptions).
def import_redis() -> ModuleType:
    """The ``redis`` package, or ImportError saying which extra to install."""
    try:
        import redis
        import redis.asyncio
        import redis.asyncio.retry
        import redis.backoff
        import redis.exceptions
        import redis.retry
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "poolkit's Redis limits need redis-py: pip install 'poolkit[redis]' "
            f"(or 'redis>=5'); importing it failed: {e}"
        ) from e
    return redis


# ----------------------------------------------------------------------- argument checks


def check_on_error(on_error: object) -> OnError:
    if on_error not in _ON_ERROR:
        raise ValueError(f"on_error must be 'raise', 'allow' or 'local', got {on_error!r}")
    return cast(OnError, on_error)


def check_local_share(local_share: object, on_error: OnError) -> float | None:
    """``local_share`` is required with ``on_error="local"`` and refused otherwise."""
    if on_error != "local":
        if local_share is not None:
            raise ValueError(
                f"local_share applies only with on_error='local' (on_error is {on_error!r}), "
                f"got {local_share!r}"
            )
        return None
    if local_share is None:
        raise ValueError(
            "on_error='local' needs local_share: the fraction of the shared limit this process "
            "may use on its own while Redis is unavailable (e.g. 1/8 for eight processes)"
        )
    if isinstance(local_share, bool) or not isinstance(local_share, (int, float)):
        raise TypeError(f"local_share must be a number in (0, 1], got {local_share!r}")
    if not 0 < local_share <= 1:
        raise ValueError(f"local_share must be a number in (0, 1], got {local_share!r}")
    return float(local_share)


def check_op_timeout(op_timeout: object) -> float:
    if isinstance(op_timeout, bool) or not isinstance(op_timeout, (int, float)):
        raise TypeError(f"op_timeout must be a number of seconds, got {op_timeout!r}")
    if not (op_timeout > 0 and math.isfinite(op_timeout)):
        raise ValueError(f"op_timeout must be a finite number of seconds > 0, got {op_timeout!r}")
    return float(op_timeout)


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, got {prefix!r}")
    if not prefix or "{" in prefix or "}" in prefix:
        raise ValueError(f"prefix must be a non-empty str without braces, got {prefix!r}")
    return prefix


def check_key(key: object, name: str = "key") -> str:
    if not isinstance(key, str):
        raise TypeError(f"{name} must be a str, got {key!r}")
    if not key or "{" in key or "}" in key:
        # A brace would move the Cluster hash tag (the first {...} of the name).
        raise ValueError(f"{name} must be a non-empty str without braces, got {key!r}")
    return key


def key_of(prefix: str, key: str, part: str) -> str:
    """The Redis key of one part of a limit: every part shares the hash tag ``{key}``."""
    return f"{prefix}:{{{key}}}:{part}"


# ----------------------------------------------------------------------- errors


def _is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "Redis could not be reached in time" (else it is a bug to raise)."""
    redis = import_redis()
    errors = redis.exceptions
    if isinstance(exc, (errors.ConnectionError, errors.TimeoutError, TimeoutError, OSError)):
        return True
    if isinstance(exc, errors.ResponseError):
        text = str(exc)
        return text.startswith(("LOADING", "READONLY", "MASTERDOWN", "BUSY", "TRYAGAIN"))
    return False


# ----------------------------------------------------------------------- wake-ups

Callback = Callable[[str], None]


class _Waker:
    """Dispatches the messages of one subscription to the registered tickets' callbacks."""

    def __init__(self) -> None:
        self.callbacks: dict[str, Callback] = {}
        self.confirmed = 0  # subscribe confirmations seen (more than one: it reconnected)

    def dispatch(self, message: Any) -> None:
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if kind in ("subscribe", b"subscribe"):
            self.confirmed += 1
            if self.confirmed > 1:
                self.recheck_all()
            return
        if kind not in ("message", b"message"):
            return
        data = message.get("data")
        if isinstance(data, bytes):
            data = data.decode()
        if not isinstance(data, str):
            return
        ticket, _, payload = data.partition(" ")
        callback = self.callbacks.get(ticket)
        if callback is not None:
            callback(payload)

    def recheck_all(self) -> None:
        for callback in list(self.callbacks.values()):
            callback(RECHECK)


class _LoopSide:
    """A link's state on one event loop: its asyncio client, scripts and subscription."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: Any, owned: bool) -> None:
        self.loop = loop
        self.client = client
        self.owned = owned
        self.scripts: dict[str, Any] = {}
        self.waker = _Waker()
        self.subscribed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.pubsub: Any = None
        self.closing = False

    async def aclose(self) -> None:
        self.closing = True
        task, self.task = self.task, None
        if task is not None:
            # redis-py can swallow a cancellation that lands in the middle of its read (seen
            # with a server that was paused, then resumed): cancel again until the task ends.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            if not task.cancelled():
                task.exception()  # retrieved: nobody else will
        pubsub, self.pubsub = self.pubsub, None
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                if pubsub is not None:
                    await pubsub.aclose()
                if self.owned:
                    await self.client.aclose()


class RedisLink:
    """One Redis target (URL or client) as the limits use it; see the module docstring.

    Made through :meth:`shared`, released through :meth:`release` / :meth:`arelease`.
    """

    _registry: dict[tuple[object, ...], RedisLink] = {}  # noqa: RUF012 - shared on purpose
    _registry_lock = threading.Lock()

    def __init__(self, redis: object, *, prefix: str, op_timeout: float) -> None:
        module = import_redis()
        self.prefix = prefix
        self.op_timeout = op_timeout
        self.token = secrets.token_hex(8)
        # One count for every limit sharing this link: a ticket names one waiter in the waker's
        # table, so a bucket's and a limiter's waiters must never share a name.
        self._tickets = itertools.count(1)
        self.channel = f"{prefix}:wake:{self.token}"
        self._noscript: type[Exception] = module.exceptions.NoScriptError
        self._url: str | None = None
        self._async_client: Any = None
        self._sync_client: Any = None
        if isinstance(redis, str):
            try:
                module.connection.parse_url(redis)
            except ValueError as e:
                raise ValueError(
                    f"redis must be a Redis URL such as 'redis://127.0.0.1:6379/0', got "
                    f"{redis!r}: {e}"
                ) from None
            self._url = redis
            self.where = _safe_url(redis)
        elif isinstance(redis, module.asyncio.Redis):
            self._async_client = redis
            self.where = repr(redis)
        elif isinstance(redis, module.Redis):
            self._sync_client = redis
            self.where = repr(redis)
        else:
            raise TypeError(
                "redis must be a URL str, a redis.asyncio.Redis (for tasks) or a redis.Redis "
                f"(for threads), got {redis!r}"
            )
        self._owns_sync = False
        self._sides: dict[int, _LoopSide] = {}
        self._lock = threading.Lock()
        self._users = 0
        self._key: tuple[object, ...] | None = None
        self._thread: threading.Thread | None = None
        self._thread_waker = _Waker()
        self._thread_subscribed = threading.Event()
        self._thread_stop = threading.Event()
        self._sync_scripts: dict[str, Any] = {}
        self.closed = False

    # ------------------------------------------------------------------- sharing

    def new_ticket(self) -> str:
        """A name for one waiter, unique among the waiters of every process (``itertools.count``
        is safe across threads)."""
        return f"{self.token}:{next(self._tickets)}"

    @classmethod
    def shared(cls, redis: object, *, prefix: str, op_timeout: float) -> RedisLink:
        """The process's link for this target, prefix and timeout (made if needed), counted as
        used once more: call :meth:`release` or :meth:`arelease` once for each call."""
        target: object = redis if isinstance(redis, str) else id(redis)
        key = (target, prefix, op_timeout)
        with cls._registry_lock:
            link = cls._registry.get(key)
            if (
                link is None
                or link.closed
                or (
                    not isinstance(redis, str)
                    and redis is not link._async_client
                    and redis is not link._sync_client
                )
            ):
                link = cls(redis, prefix=prefix, op_timeout=op_timeout)
                link._key = key
                cls._registry[key] = link
            link._users += 1
            return link

    def _drop_user(self) -> bool:
        """One user fewer; True if it was the last (the caller then closes the link)."""
        with RedisLink._registry_lock:
            self._users -= 1
            if self._users > 0 or self.closed:
                return False
            self.closed = True
            if self._key is not None and RedisLink._registry.get(self._key) is self:
                del RedisLink._registry[self._key]
            return True

    def send_soon(
        self,
        start_task: Callable[[asyncio.AbstractEventLoop], object],
        blocking: Callable[[], object],
    ) -> bool:
        """Send a script from synchronous code without waiting for its answer: in a task of the
        running loop (``start_task(loop)`` makes it), in this very call from a thread without a
        loop (``blocking()``), or in poolkit's deferred-work thread when neither fits (a
        garbage collection in this thread, or a loop's thread and only a blocking client).
        False if this link has no client that can send it."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        collecting = _wait.collecting_here()
        if loop is not None and self.serves_tasks and not collecting:
            start_task(loop)
        elif not self.serves_threads:
            return False
        elif loop is None and not collecting:
            blocking()
        else:
            _wait.defer(blocking)
        return True

    @property
    def serves_tasks(self) -> bool:
        """Whether tasks can use it: made from a URL or a ``redis.asyncio.Redis``."""
        return self._url is not None or self._async_client is not None

    @property
    def serves_threads(self) -> bool:
        """Whether threads can use it: made from a URL or a ``redis.Redis``."""
        return self._url is not None or self._sync_client is not None

    def retain(self) -> None:
        """One user more, for a holder that is not a limit (a ``PerKey`` keeps the link of the
        limits its factory makes, so that forgetting the last of them does not close it only
        for the next key to open it again); let go with :meth:`release` or :meth:`arelease`.

        Raises:
            RuntimeError: If the link was closed.
        """
        with RedisLink._registry_lock:
            if self.closed:
                raise RuntimeError("this Redis link was closed")
            self._users += 1

    def release_soon(self) -> None:
        """:meth:`release` that never waits: the last user's closing of the blocking side is
        not joined, and each loop's clients are closed in a task of that loop."""
        if self._drop_user():
            self._close_sync(join=False)
            for side in self._take_sides():
                self._close_side_elsewhere(side)

    def release(self) -> None:
        """Blocking form of :meth:`arelease`: closes the blocking side (and forgets the loops'
        clients, closing those of closed loops) when the last user releases it."""
        if self._drop_user():
            self._close_sync()
            for side in self._take_sides():
                self._close_side_elsewhere(side)

    async def arelease(self) -> None:
        """One user fewer; the last one closes every client the link made (this loop's at once,
        other running loops' in their own loop)."""
        if not self._drop_user():
            return
        self._close_sync(join=False)
        here = asyncio.get_running_loop()
        for side in self._take_sides():
            if side.loop is here:
                await side.aclose()
            else:
                self._close_side_elsewhere(side)

    def _take_sides(self) -> list[_LoopSide]:
        with self._lock:
            sides = list(self._sides.values())
            self._sides.clear()
        return sides

    @staticmethod
    def _close_side_elsewhere(side: _LoopSide) -> None:
        if side.loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(side.aclose(), side.loop)

    def _close_sync(self, join: bool = True) -> None:
        self._thread_stop.set()
        thread = self._thread
        if thread is not None and join and thread is not threading.current_thread():
            thread.join(2.0)
        if self._owns_sync and self._sync_client is not None:
            with contextlib.suppress(Exception):
                self._sync_client.close()

    # ------------------------------------------------------------------- clients

    def _client_kwargs(self, asyncio_client: bool) -> dict[str, Any]:
        module = import_redis()
        retry = module.asyncio.retry.Retry if asyncio_client else module.retry.Retry
        return {
            # asyncio: each call is bounded whole by one asyncio.timeout (module docstring).
            "socket_timeout": None if asyncio_client else self.op_timeout,
            "socket_connect_timeout": self.op_timeout,
            # Once more on a dropped connection (a restarted server), never on a timeout.
            "retry": retry(module.backoff.NoBackoff(), 1, (module.exceptions.ConnectionError,)),
            "health_check_interval": 0,
        }

    def _side(self) -> _LoopSide:
        loop = asyncio.get_running_loop()
        side = self._sides.get(id(loop))  # the common case, without the lock
        if side is not None and side.loop is loop and not self.closed:
            return side
        with self._lock:
            if self.closed:
                raise RuntimeError("this Redis limit was closed (aclose()/close()); make a new one")
            side = self._sides.get(id(loop))
            if side is not None and side.loop is loop:
                return side
            for k in [k for k, s in self._sides.items() if s.loop.is_closed()]:
                del self._sides[k]
            if self._async_client is not None:
                side = _LoopSide(loop, self._async_client, owned=False)
            elif self._url is not None:
                module = import_redis()
                client = module.asyncio.Redis.from_url(self._url, **self._client_kwargs(True))
                side = _LoopSide(loop, client, owned=True)
            else:
                raise RuntimeError(
                    "this Redis limit was given a blocking redis.Redis client: use the blocking "
                    "methods (acquire_blocking...) from threads, or pass a URL or a "
                    "redis.asyncio.Redis for tasks"
                )
            self._sides[id(loop)] = side
            return side

    def _sync(self) -> Any:
        with self._lock:
            if self.closed:
                raise RuntimeError("this Redis limit was closed (aclose()/close()); make a new one")
            if self._sync_client is None:
                if self._url is None:
                    raise RuntimeError(
                        "this Redis limit was given a redis.asyncio.Redis client: use it from "
                        "tasks, or pass a URL or a redis.Redis for the blocking methods"
                    )
                module = import_redis()
                self._sync_client = module.Redis.from_url(self._url, **self._client_kwargs(False))
                self._owns_sync = True
            return self._sync_client

    # ------------------------------------------------------------------- calls

    def unavailable(self, exc: BaseException, what: str) -> RedisUnavailable:
        """The :class:`RedisUnavailable` for ``exc`` (raise it ``from exc``)."""
        return RedisUnavailable(
            f"{what}: Redis at {self.where} did not answer within op_timeout={self.op_timeout:g} s "
            f"({type(exc).__name__}: {exc})"
        )

    async def eval(self, lua: str, keys: Sequence[str], args: Sequence[object], what: str) -> Any:
        """Run script ``lua`` on this loop's client within ``op_timeout``.

        Raises:
            RedisUnavailable: If Redis cannot be reached in time (cause attached).
        """
        side = self._side()
        script = side.scripts.get(lua)
        if script is None:
            script = side.scripts[lua] = side.client.register_script(lua)
        try:
            async with asyncio.timeout(self.op_timeout):
                return await script(keys=list(keys), args=list(args))
        except Exception as e:
            if _is_unavailable(e):
                raise self.unavailable(e, what) from e
            raise

    async def eval_shielded(
        self, lua: str, keys: Sequence[str], args: Sequence[object], what: str
    ) -> Any:
        """:meth:`eval` that the caller's cancellation does not cut in half.

        The call runs in a task of its own (see the module docstring for its cost).  If the
        caller is cancelled while it is in flight, this waits for the call to end (at most
        ``op_timeout``; further cancellations are held back meanwhile) and raises
        :class:`EvalCancelled` carrying the reply, for the caller to undo what the script did.

        Raises:
            RedisUnavailable: If Redis cannot be reached in time (cause attached).
            EvalCancelled: If the caller was cancelled; it then raises ``CancelledError``.
        """
        side = self._side()
        script = side.scripts.get(lua)
        if script is None:
            script = side.scripts[lua] = side.client.register_script(lua)
        done: asyncio.Future[Any] = side.loop.create_future()
        # The caller's frame keeps the task (and the connection's reader, its I/O) alive.
        task = _start(side.loop, self._call(side.loop, script, keys, args, what, done))
        try:
            return await done
        except asyncio.CancelledError:
            if not done.cancelled() or task.cancelled():
                raise  # the call itself was cancelled (its loop is shutting down)
        # The caller was cancelled: the script may have run; its reply says what it did.
        while not task.done():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait((task,))
        raise EvalCancelled(None if task.cancelled() else task.result())

    async def _call(
        self,
        loop: asyncio.AbstractEventLoop,
        script: Any,
        keys: Sequence[str],
        args: Sequence[object],
        what: str,
        done: asyncio.Future[Any],
    ) -> Any:
        """One :meth:`eval_shielded` call: settle ``done`` (unless its caller has left) and
        return the reply (None on failure) for a caller that was cancelled."""
        # Nobody else cancels this task but its loop's shutdown, so a plain timer that cancels
        # it bounds the call, for less than asyncio.timeout() costs.
        expiry = _Expiry(asyncio.current_task())
        timer = loop.call_at(loop.time() + self.op_timeout, expiry.fire)
        try:
            try:  # EVALSHA itself, one layer under Script.__call__ (which reloads it if needed)
                reply = await script.registered_client.evalsha(script.sha, len(keys), *keys, *args)
            except self._noscript:
                reply = await script(keys=keys, args=args)
        except asyncio.CancelledError:
            if not expiry.fired:
                done.cancel()
                raise
            late = TimeoutError(f"no reply within op_timeout={self.op_timeout:g} s")
            if not done.done():
                error = self.unavailable(late, what)
                error.__cause__ = late
                done.set_exception(error)
            return None
        except Exception as e:
            if not done.done():
                if _is_unavailable(e):
                    error = self.unavailable(e, what)
                    error.__cause__ = e
                    done.set_exception(error)
                else:
                    done.set_exception(e)
            return None
        finally:
            timer.cancel()
        if not done.done():
            done.set_result(reply)
        return reply

    def eval_blocking(
        self, lua: str, keys: Sequence[str], args: Sequence[object], what: str
    ) -> Any:
        """Blocking form of :meth:`eval` (the client's socket timeout bounds it)."""
        client = self._sync()
        script = self._sync_scripts.get(lua)
        if script is None:
            script = self._sync_scripts[lua] = client.register_script(lua)
        try:
            return script(keys=list(keys), args=list(args))
        except Exception as e:
            if _is_unavailable(e):
                raise self.unavailable(e, what) from e
            raise

    # ------------------------------------------------------------------- wake-ups

    async def subscribe(self, ticket: str, callback: Callback) -> None:
        """Register ``callback`` for messages to ``ticket`` on this loop; return once this loop's
        subscription is confirmed, so that nothing published after this returns is missed.

        ``callback(payload)`` runs in the loop, synchronously: it must not block.  It also gets
        :data:`RECHECK` after a reconnection or a failed read.

        Raises:
            RedisUnavailable: If the subscription cannot be confirmed within ``op_timeout``.
        """
        side = self._side()
        side.waker.callbacks[ticket] = callback
        if side.subscribed.is_set():
            return
        if side.task is None or side.task.done():
            side.task = asyncio.get_running_loop().create_task(
                self._listen(side), name=f"poolkit redis wake-ups {self.channel}"
            )
        try:
            async with asyncio.timeout(self.op_timeout):
                await side.subscribed.wait()
        except TimeoutError as e:
            side.waker.callbacks.pop(ticket, None)
            raise self.unavailable(e, "subscribing to wake-ups") from e

    def register(self, ticket: str, callback: Callback) -> bool:
        """Register ``callback`` for ``ticket`` on this loop without waiting: True if this loop's
        subscription is confirmed (the common case), else False and the caller must await
        :meth:`subscribe` (with the same arguments) before relying on wake-ups."""
        side = self._side()
        side.waker.callbacks[ticket] = callback
        return side.subscribed.is_set()

    def unsubscribe(self, ticket: str) -> None:
        """Forget ``ticket``'s callback on this loop (or in threads, outside any loop)."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is None:
            self._thread_waker.callbacks.pop(ticket, None)
            return
        side = self._sides.get(id(loop))
        if side is not None:
            side.waker.callbacks.pop(ticket, None)

    async def _listen(self, side: _LoopSide) -> None:
        backoff = 0.05
        while not side.closing:
            try:
                if side.pubsub is None:
                    side.pubsub = side.client.pubsub()
                    await side.pubsub.subscribe(self.channel)
                message = await side.pubsub.get_message(timeout=None)
                if isinstance(message, dict) and message.get("type") in ("subscribe", b"subscribe"):
                    side.subscribed.set()
                    backoff = 0.05
                side.waker.dispatch(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The connection failed (or never opened): a wake-up may be lost.  Waiters look
                # at their tickets (and meet the failure themselves); the next read reconnects.
                side.waker.recheck_all()
                pubsub, side.pubsub = side.pubsub, None
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        async with asyncio.timeout(_CLOSE_TIMEOUT):
                            await pubsub.aclose()
                side.waker.confirmed = 0 if not side.subscribed.is_set() else 1
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _MAX_BACKOFF)

    def subscribe_blocking(self, ticket: str, callback: Callback) -> None:
        """Thread form of :meth:`subscribe`: ``callback`` runs in the link's listener thread."""
        self._sync()
        self._thread_waker.callbacks[ticket] = callback
        if self._thread_subscribed.is_set():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._listen_thread,
                    name=f"poolkit redis wake-ups {self.channel}",
                    daemon=True,
                )
                self._thread.start()
        if not self._thread_subscribed.wait(self.op_timeout):
            self._thread_waker.callbacks.pop(ticket, None)
            raise self.unavailable(TimeoutError("no subscribe confirmation"), "subscribing")

    def _listen_thread(self) -> None:
        waker = self._thread_waker
        pubsub: Any = None
        backoff = 0.05
        stop = self._thread_stop
        try:
            while not stop.is_set():
                try:
                    if pubsub is None:
                        pubsub = self._sync().pubsub()
                        pubsub.subscribe(self.channel)
                    # A bounded wait only so that close() is noticed: it reads, sends nothing.
                    message = pubsub.get_message(timeout=0.2)
                    if isinstance(message, dict) and message.get("type") in (
                        "subscribe",
                        b"subscribe",
                    ):
                        self._thread_subscribed.set()
                        backoff = 0.05
                    waker.dispatch(message)
                except Exception:
                    if stop.is_set():
                        break
                    waker.recheck_all()
                    if pubsub is not None:
                        with contextlib.suppress(Exception):
                            pubsub.close()
                    pubsub = None
                    waker.confirmed = 1 if self._thread_subscribed.is_set() else 0
                    stop.wait(backoff)
                    backoff = min(backoff * 2, _MAX_BACKOFF)
        finally:
            if pubsub is not None:
                with contextlib.suppress(Exception):
                    pubsub.close()

    def __repr__(self) -> str:
        return f"<RedisLink {self.where} prefix={self.prefix!r} users={self._users}>"


class _Expiry:
    """Cancels a task when its timer fires, remembering that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[Any] | None) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        if self.task is not None and not self.task.done():
            self.fired = True
            self.task.cancel()


if sys.version_info >= (3, 12):

    def _start(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        """A task that runs at once, up to its first wait: no event-loop step to start it."""
        return asyncio.Task(coro, loop=loop, eager_start=True)

else:  # pragma: no cover - Python 3.11

    def _start(
        loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]
    ) -> asyncio.Task[Any]:
        return loop.create_task(coro)


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    head, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rsplit("@", 1)[1]
    return head + sep + rest
