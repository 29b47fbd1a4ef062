"""Limits inside the HTTP client: every request on the wire passes them, the client's own
re-sends included.

A limit taken around ``session.get(...)`` in your code counts calls, not requests on the wire:
aiohttp (3.10 and newer) silently sends an idempotent request a second time, about a
millisecond later, when a kept-alive connection turns out to have been closed by the server, and
that second request passes no limit of yours (it was how a crawler reached 192 % of a host's
rate).  Taken *inside* the client, a limit sees each attempt:

* **aiohttp** (3.12 and newer): :func:`aiohttp_middleware` is a client middleware
  (``ClientSession(middlewares=[...])``).  aiohttp runs middlewares once per attempt, inside its
  retry loop, so its silent re-send and each redirect hop hold the limits like the first.
* **httpx**: :class:`LimitedTransport` wraps a transport (``AsyncClient(transport=...)``).
  httpx never re-sends a request it has written (its ``retries=`` only retries opening a
  connection), so every request it makes is one call of the transport.

Both take a :class:`~poolkit.Limits` (or anything a ``Limits`` takes: a
:class:`~poolkit.CapacityLimiter`, an :class:`~poolkit.AdaptiveLimiter`, a
:class:`~poolkit.TokenBucket`, a :class:`~poolkit.PerKey`, ...) and hold it for each request,
keyed by the request's host (``host`` or ``host:port`` for a port that is not the scheme's),
so ``Limits(CapacityLimiter(64), PerKey(lambda: AdaptiveLimiter(max=32)))`` is a global cap with
an adaptive limit per host.  A response whose status says the server is overloaded (429 or 503
by default) and a timeout are reported with :func:`poolkit.overloaded`, which reaches every
adaptive limiter the request holds, with the response's ``Retry-After`` as a pause (so every
request to that host waits, not only the one that is retried).  A retry policy reads the same
header: ``RetryPolicy(retry_after=60)``.

How long a request holds its limits, which is also the latency an adaptive limiter measures:

* with aiohttp, until the body is read: the middleware reads it (``read_body=True``, the
  default; ``resp.read()``, ``text()`` and ``json()`` then return it from memory).  aiohttp has
  no public hook for the moment a body is done, so with ``read_body=False`` (for a stream too
  large to hold in memory) the limits are held until the headers have arrived, and the body is
  read outside them;
* with httpx, until the response is closed (its body read, or ``aclose()``): the transport
  hands back a response whose stream gives the limits back when it closes.  A streamed
  response that is never closed holds them, as it holds its connection.

Neither client is imported by poolkit until these are used; install the extras
``poolkit[aiohttp]`` or ``poolkit[httpx]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from typing import TYPE_CHECKING, Any

from ._pools._retry_after import parse_retry_after
from ._primitives._adaptive import overloaded
from ._primitives._composite import Limits

if TYPE_CHECKING:
    import aiohttp
    import httpx

__all__ = ["LimitedTransport", "aiohttp_middleware", "host_of"]

OVERLOADED = frozenset({429, 503})


def host_of(url: Any) -> str:
    """The key a request is limited by: its host, with the port when it is not the scheme's
    default (``"example.com"``, ``"127.0.0.1:8080"``).  Takes a ``yarl.URL`` (aiohttp) or an
    ``httpx.URL``."""
    host = (url.host or "").lower()
    port = url.port
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(url.scheme)
    return host if port is None or port == default else f"{host}:{port}"


def _keyed(limits: Limits) -> bool:
    """Whether ``limits`` takes a key (it has a PerKey member, perhaps in a nested Limits)."""
    return bool(limits._keyed)


def _as_limits(limits: object) -> Limits:
    if isinstance(limits, Limits):
        return limits
    try:
        return Limits(limits)  # type: ignore[arg-type]
    except TypeError as exc:
        raise TypeError(
            f"limits must be a poolkit.Limits or something a Limits takes (a CapacityLimiter, "
            f"AdaptiveLimiter, TokenBucket, PerKey, ...), got {limits!r}"
        ) from exc


def _no_key(request: object) -> None:
    return None


def _check_statuses(statuses: Collection[int]) -> frozenset[int]:
    if isinstance(statuses, (str, bytes)) or not all(
        isinstance(s, int) and not isinstance(s, bool) and 100 <= s <= 599 for s in statuses
    ):
        raise TypeError(
            f"overload_statuses must be a collection of HTTP status codes, got {statuses!r}"
        )
    return frozenset(statuses)


def _report(status: int, headers: Any, statuses: frozenset[int]) -> None:
    if status in statuses:
        overloaded(retry_after=parse_retry_after(headers.get("Retry-After")))


# ----------------------------------------------------------------------- aiohttp

AiohttpHandler = Callable[["aiohttp.ClientRequest"], Awaitable["aiohttp.ClientResponse"]]


def aiohttp_middleware(
    limits: object,
    *,
    key: Callable[[aiohttp.ClientRequest], object] | None = None,
    overload_statuses: Collection[int] = OVERLOADED,
    read_body: bool = True,
) -> Callable[[aiohttp.ClientRequest, AiohttpHandler], Awaitable[aiohttp.ClientResponse]]:
    """An aiohttp client middleware that holds ``limits`` for every request on the wire.

    Use it as ``aiohttp.ClientSession(middlewares=[aiohttp_middleware(limits)])`` (aiohttp 3.12
    or newer, where middlewares run once per attempt: the session's own re-send of a request on
    a connection the server closed holds the limits too).

    Args:
        limits: A :class:`~poolkit.Limits`, or anything a ``Limits`` takes.
        key: The key of a request for the limits' ``PerKey`` members (default: :func:`host_of`
            its URL).
        overload_statuses: Statuses reported with :func:`poolkit.overloaded` (with the
            response's ``Retry-After``); a timeout is reported too.
        read_body: Read the body inside the limits (see the module docstring).

    Returns:
        The middleware.

    Raises:
        TypeError: If ``limits`` cannot be a ``Limits`` member, ``key`` is not callable, or a
            status is not an HTTP status code.
    """
    held = _as_limits(limits)
    statuses = _check_statuses(overload_statuses)
    if key is not None and not callable(key):
        raise TypeError(f"key must be a function of the request, got {key!r}")
    key_of: Callable[[Any], object] = key or (lambda request: host_of(request.url))
    if not _keyed(held):
        key_of = _no_key

    async def poolkit_limits(
        request: aiohttp.ClientRequest, handler: AiohttpHandler
    ) -> aiohttp.ClientResponse:
        async with held.hold(key=key_of(request)):
            try:
                response = await handler(request)
            except TimeoutError:  # aiohttp's timeouts are TimeoutErrors
                overloaded()
                raise
            _report(response.status, response.headers, statuses)
            if read_body:
                try:
                    await response.read()
                except TimeoutError:
                    overloaded()
                    raise
            return response

    return poolkit_limits


# ----------------------------------------------------------------------- httpx

_httpx_module: Any
try:
    import httpx as _httpx_module
except ImportError:  # pragma: no cover - the httpx extra is not installed
    _httpx_module = None

if TYPE_CHECKING:
    _TransportBase = httpx.AsyncBaseTransport
    _StreamBase = httpx.AsyncByteStream
elif _httpx_module is not None:
    _TransportBase = _httpx_module.AsyncBaseTransport
    _StreamBase = _httpx_module.AsyncByteStream
else:  # pragma: no cover - the httpx extra is not installed
    _TransportBase = _StreamBase = object


class LimitedTransport(_TransportBase):
    """An httpx transport that holds ``limits`` for every request, from sending it until its
    response is closed.

    ``httpx.AsyncClient(transport=LimitedTransport(limits))`` wraps a default
    ``httpx.AsyncHTTPTransport()``; pass ``transport=`` to wrap your own.

    Args:
        limits: A :class:`~poolkit.Limits`, or anything a ``Limits`` takes.
        transport: The transport that sends the requests (default ``httpx.AsyncHTTPTransport()``).
        key: The key of a request for the limits' ``PerKey`` members (default: :func:`host_of`
            its URL).
        overload_statuses: Statuses reported with :func:`poolkit.overloaded` (with the
            response's ``Retry-After``); a timeout is reported too.

    Raises:
        ImportError: If httpx is not installed.
        TypeError: As :func:`aiohttp_middleware`.
    """

    def __init__(
        self,
        limits: object,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        key: Callable[[httpx.Request], object] | None = None,
        overload_statuses: Collection[int] = OVERLOADED,
    ) -> None:
        if _httpx_module is None:  # pragma: no cover - the httpx extra is not installed
            raise ImportError(
                "poolkit.http.LimitedTransport needs httpx: pip install 'poolkit[httpx]'"
            )
        self._limits = _as_limits(limits)
        self._statuses = _check_statuses(overload_statuses)
        if key is not None and not callable(key):
            raise TypeError(f"key must be a function of the request, got {key!r}")
        self._key: Callable[[Any], object] = key or (lambda request: host_of(request.url))
        if not _keyed(self._limits):
            self._key = _no_key
        self._inner = _httpx_module.AsyncHTTPTransport() if transport is None else transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        assert _httpx_module is not None
        stack = contextlib.AsyncExitStack()
        await stack.enter_async_context(self._limits.hold(key=self._key(request)))
        try:
            try:
                response = await self._inner.handle_async_request(request)
            except _httpx_module.TimeoutException:
                overloaded()
                raise
            _report(response.status_code, response.headers, self._statuses)
        except BaseException:
            await stack.aclose()
            raise
        held: httpx.Response = _httpx_module.Response(
            status_code=response.status_code,
            headers=response.headers,
            stream=_HeldStream(response.stream, stack),
            extensions=response.extensions,
            request=request,
        )
        return held

    async def aclose(self) -> None:
        await self._inner.aclose()


class _HeldStream(_StreamBase):
    """A response body that gives its request's limits back when it is closed."""

    def __init__(self, inner: Any, stack: contextlib.AsyncExitStack) -> None:
        self._inner = inner
        self._stack: contextlib.AsyncExitStack | None = stack

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            stack, self._stack = self._stack, None
            if stack is not None:
                await stack.aclose()
