"""poolkit.http: limits inside aiohttp and httpx, against a small local HTTP/1.1 server.

The server answers on 127.0.0.1 (a free port), counts the requests it reads and how many it is
working on at once, and can be told to drop a kept-alive connection without answering (what
makes aiohttp re-send a request by itself), to answer 429/503 with a Retry-After, or to send
its body slowly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import httpx
import pytest

import poolkit
from poolkit import AdaptiveLimiter, CapacityLimiter, Limits, PerKey
from poolkit.http import LimitedTransport, aiohttp_middleware, host_of


@dataclass
class Server:
    port: int = 0
    requests: int = 0
    working: int = 0
    peak: int = 0
    drop_second_on_a_connection: bool = False
    statuses: list[int] = field(default_factory=list)  # answers to give first, then 200s
    retry_after: str | None = None
    body_delay: float = 0.0
    handle_delay: float = 0.0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _pause(self, seconds: float) -> None:
        """Sleep, or less if the server is stopping (its handlers are not cancelled: on 3.11
        asyncio's stream server reports a cancelled handler as an error)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        on_this_connection = 0
        me = asyncio.current_task()
        assert me is not None
        self.handlers.add(me)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                if not head:
                    return
                on_this_connection += 1
                if self.drop_second_on_a_connection and on_this_connection == 2:
                    return  # closed without an answer: the client may send it again
                self.requests += 1
                self.working += 1
                self.peak = max(self.peak, self.working)
                try:
                    await self._pause(self.handle_delay)
                    status = self.statuses.pop(0) if self.statuses else 200
                    extra = (
                        f"Retry-After: {self.retry_after}\r\n"
                        if status != 200 and self.retry_after is not None
                        else ""
                    )
                    writer.write(
                        f"HTTP/1.1 {status} X\r\nContent-Length: 4\r\n{extra}"
                        f"Connection: keep-alive\r\n\r\n".encode()
                    )
                    writer.write(b"ab")
                    await writer.drain()
                    await self._pause(self.body_delay)
                    writer.write(b"cd")
                    await writer.drain()
                finally:
                    self.working -= 1
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()
            self.handlers.discard(me)


@contextlib.asynccontextmanager
async def serving(server: Server) -> AsyncIterator[Server]:
    tcp = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.port = tcp.sockets[0].getsockname()[1]
    async with tcp:
        try:
            yield server
        finally:
            tcp.close()
            server.stop.set()  # a client that gave up may have left a handler working
            await asyncio.gather(*server.handlers, return_exceptions=True)


def test_host_of_names_the_port_only_when_it_is_not_the_default() -> None:
    assert host_of(httpx.URL("https://Example.com/x")) == "example.com"
    assert host_of(httpx.URL("http://example.com:8080/")) == "example.com:8080"
    import yarl

    assert host_of(yarl.URL("http://127.0.0.1:80/")) == "127.0.0.1"
    assert host_of(yarl.URL("https://a.b:444/")) == "a.b:444"


def test_bad_arguments_are_named() -> None:
    with pytest.raises(TypeError, match=r"limits must be a poolkit\.Limits"):
        aiohttp_middleware("10/s")
    with pytest.raises(TypeError, match="overload_statuses"):
        aiohttp_middleware(CapacityLimiter(1), overload_statuses=[429, 1000])
    with pytest.raises(TypeError, match="key must be a function"):
        LimitedTransport(CapacityLimiter(1), key="host")  # type: ignore[arg-type]


async def test_aiohttps_own_resend_holds_the_limit_too() -> None:
    """aiohttp re-sends a GET whose kept-alive connection the server closed: a limit taken
    around ``session.get`` counts one call; the middleware counts every request the server
    read."""
    limiter = CapacityLimiter(1)
    async with serving(Server(drop_second_on_a_connection=True)) as server:
        async with aiohttp.ClientSession(middlewares=[aiohttp_middleware(limiter)]) as session:
            for _ in range(3):
                async with session.get(server.url) as response:
                    assert response.status == 200
                    assert await response.read() == b"abcd"
        # Request 1 on connection 1; request 2 dropped there, re-sent on connection 2 (its
        # first); request 3 dropped there, re-sent on connection 3.  Drops are not read.
        assert server.requests == 3
        assert limiter.statistics().acquired_total == 5  # 3 calls + 2 silent re-sends


async def test_a_per_host_adaptive_limit_hears_429_and_retry_after() -> None:
    made: list[AdaptiveLimiter] = []

    def factory() -> AdaptiveLimiter:
        made.append(AdaptiveLimiter(initial=4, max=8, probe_interval=None))
        return made[-1]

    per_host = PerKey(factory)
    limits = Limits(CapacityLimiter(16), per_host)
    async with (
        serving(Server(statuses=[429], retry_after="1")) as busy,
        serving(Server()) as calm,
        aiohttp.ClientSession(middlewares=[aiohttp_middleware(limits)]) as session,
    ):
        async with session.get(busy.url) as response:
            assert response.status == 429
        paused = per_host.statistics_for(host_of(httpx.URL(busy.url)))
        assert isinstance(paused, poolkit.AdaptiveLimiterStatistics)  # kept: it is paused
        assert paused.overloads_total == 1 and paused.paused_for == pytest.approx(1, abs=0.1)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        async with session.get(calm.url) as response:  # another host: not paused
            assert response.status == 200
        assert made[1].statistics().paused_for == 0
        async with session.get(busy.url) as response:  # the same host: waits out 1 s
            assert response.status == 200
        assert loop.time() - t0 >= 0.99
    assert len(made) == 2  # one per host, the busy one kept while it was paused
    busy_stats, calm_stats = (m.statistics() for m in made)
    assert busy_stats.overloads_total == 1 and busy_stats.samples_total == 1
    assert calm_stats.overloads_total == 0 and calm_stats.samples_total == 1


async def test_aiohttp_holds_the_limit_while_the_body_is_read() -> None:
    limiter = CapacityLimiter(2)
    async with (
        serving(Server(body_delay=0.05)) as server,
        aiohttp.ClientSession(middlewares=[aiohttp_middleware(limiter)]) as session,
    ):

        async def fetch() -> bytes:
            async with session.get(server.url) as response:
                return await response.read()

        bodies = await asyncio.gather(*(fetch() for _ in range(8)))
    assert bodies == [b"abcd"] * 8
    assert server.peak == 2  # bodies included: never more than the limit at the server


async def test_httpx_holds_the_limit_until_the_response_is_closed() -> None:
    limiter = AdaptiveLimiter(initial=2, max=2, probe_interval=None)
    async with (
        serving(Server(body_delay=0.05, statuses=[503, 200], retry_after="0")) as server,
        httpx.AsyncClient(transport=LimitedTransport(limiter)) as client,
    ):

        async def fetch() -> int:
            response = await client.get(server.url)
            assert response.content == b"abcd"
            return response.status_code

        statuses = await asyncio.gather(*(fetch() for _ in range(8)))
        async with client.stream("GET", server.url):
            assert limiter.borrowed == 1  # streaming: held until closed
        assert limiter.borrowed == 0
    assert sorted(statuses) == [200] * 7 + [503]
    assert server.peak == 2
    s = limiter.statistics()
    assert s.overloads_total == 1 and s.samples_total == 8  # 9 requests, one overloaded
    assert s.acquired_total == 9 and s.borrowed == 0


async def test_a_timeout_is_an_overload() -> None:
    limiter = AdaptiveLimiter(initial=2, max=2, probe_interval=None)
    async with serving(Server(handle_delay=1.0)) as server:
        async with httpx.AsyncClient(
            transport=LimitedTransport(limiter), timeout=httpx.Timeout(0.05)
        ) as client:
            with pytest.raises(httpx.TimeoutException):
                await client.get(server.url)
        async with aiohttp.ClientSession(
            middlewares=[aiohttp_middleware(limiter)],
            timeout=aiohttp.ClientTimeout(total=0.05),
        ) as session:
            with pytest.raises(TimeoutError):
                await session.get(server.url)
    s = limiter.statistics()
    assert s.overloads_total == 2 and s.samples_total == 0 and s.borrowed == 0
