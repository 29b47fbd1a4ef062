"""Retry-After (poolkit/_pools/_retry_after.py): the parser, finding the delay on errors and
responses, the tenacity wait and stop, and ``RetryPolicy(retry_after=...)`` in a pool.

The pool tests run on virtual time with the module's wall clock tied to the loop's, so that an
HTTP date names an exact virtual moment and each attempt's time can be asserted exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
import tenacity

from poolkit import RetryPolicy, WorkerPool
from poolkit._pools import _retry_after
from poolkit._pools._retry import first_attempt_is_free, sync_retrying
from poolkit._pools._retry_after import (
    parse_retry_after,
    retry_after_of,
    stop_if_retry_after_exceeds,
    wait_retry_after,
)

from .pool_checks import check_books

# Sun, 06 Nov 1994 08:49:37 GMT: RFC 9110's example date.
RFC_DATE = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC).timestamp()
MARGIN = 0.01  # wait_retry_after's default


def ts(year: int, month: int, day: int, hour: int, minute: int, second: int) -> float:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()


# ---------------------------------------------------------------- fakes of HTTP clients' errors


class Headers(Mapping[str, str]):
    """Case-insensitive, as aiohttp's CIMultiDict and httpx's Headers are."""

    def __init__(self, items: dict[str, str]) -> None:
        self._items = {k.lower(): v for k, v in items.items()}

    def __getitem__(self, key: str) -> str:
        return self._items[key.lower()]

    def __iter__(self) -> Any:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class AiohttpLikeError(Exception):
    """Like aiohttp.ClientResponseError: ``.status`` and ``.headers`` (which may be None)."""

    def __init__(self, status: int, headers: Mapping[str, str] | None) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.headers = headers


class HttpxLikeResponse:
    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        self.status_code = status
        self.headers = headers


class HttpxLikeError(Exception):
    """Like httpx.HTTPStatusError: the headers are on ``.response``; ``.request`` raises when
    unset, as httpx's does."""

    def __init__(self, status: int, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.response = HttpxLikeResponse(status, headers)

    @property
    def request(self) -> Any:
        raise RuntimeError("the .request property has not been set")


class Throttled(Exception):
    """An error of one's own, carrying the delay as an attribute."""

    def __init__(self, retry_after: object) -> None:
        super().__init__("busy")
        self.retry_after = retry_after


# ---------------------------------------------------------------- parse_retry_after


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("0", 0.0), ("5", 5.0), ("120", 120.0), ("007", 7.0), (" \t30\r\n ", 30.0)],
)
def test_delay_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value) == seconds


@pytest.mark.parametrize(
    "value",
    # "\u0661\u0662" and "\uff11\uff12": 12 in Arabic-Indic and in fullwidth digits
    [
        *("+12", "-3", "1.5", " 2.5 ", "1_0", "1e3", "0x10", "12 s", "nan", "inf", ""),
        *("\u0661\u0662", "\uff11\uff12"),
    ],
)
def test_not_delay_seconds_though_python_would_read_a_number(value: str) -> None:
    """float() or int() accept most of these; RFC 9110's delay-seconds is 1*DIGIT (ASCII)."""
    assert parse_retry_after(value, now=0.0) is None


def test_the_lenient_traps_are_real() -> None:
    # What the test above rejects is what Python's own conversions accept, so a parser built on
    # int() or float() would fail it.
    assert int("+12") == 12 and int("1_0") == 10
    assert int("\u0661\u0662") == 12 and int("\uff11\uff12") == 12
    assert float(" 2.5 ") == 2.5 and math.isnan(float("nan"))


@pytest.mark.parametrize(
    "date",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate, the preferred form
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete rfc850-date
        "Sun Nov  6 08:49:37 1994",  # obsolete asctime (no zone: GMT)
        "Sun, 06 Nov 1994 08:49:37 -0000",  # a zone the email module reads as "unknown": GMT
        "Sun, 06 Nov 1994 10:49:37 +0200",  # a zone of its own, honoured
        "  Sun, 06 Nov 1994 08:49:37 GMT\t",
    ],
)
def test_http_dates_in_every_form(date: str) -> None:
    assert parse_retry_after(date, now=RFC_DATE - 30) == 30.0


def test_a_date_in_the_past_means_now() -> None:
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=RFC_DATE + 3600) == 0.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=RFC_DATE) == 0.0


def test_a_two_digit_year_is_never_more_than_50_years_ahead() -> None:
    """RFC 9110 §5.6.7; the email module alone maps 00-68 to 2000-2068 whatever the date."""
    in_2060 = ts(2060, 1, 1, 0, 0, 0)
    assert parse_retry_after("Thursday, 06-Nov-76 00:00:00 GMT", now=in_2060) == (
        ts(2076, 11, 6, 0, 0, 0) - in_2060
    )
    in_2030 = ts(2030, 1, 1, 0, 0, 0)
    assert parse_retry_after("Sunday, 06-Nov-94 08:49:37 GMT", now=in_2030) == 0.0  # 1994
    assert parse_retry_after("Wednesday, 06-Nov-85 00:00:00 GMT", now=in_2030) == 0.0  # 1985
    assert parse_retry_after("Monday, 06-Nov-79 00:00:00 GMT", now=in_2030 - 10 * 365 * 86400) == 0
    # a four-digit year is what it says, however far ahead
    assert parse_retry_after("Mon, 06 Nov 2090 00:00:00 GMT", now=in_2030) == (
        ts(2090, 11, 6, 0, 0, 0) - in_2030
    )


def test_bytes_are_latin_1() -> None:
    assert parse_retry_after(b"45") == 45.0
    assert parse_retry_after(b"Sun, 06 Nov 1994 08:49:37 GMT", now=RFC_DATE - 1) == 1.0
    assert parse_retry_after(b"\xe9\xff") is None  # not UTF-8, but no UnicodeDecodeError
    # Only HTTP's whitespace surrounds a value: not NBSP (Latin-1's 0xA0), which str.strip()
    # would remove.
    assert parse_retry_after(b" 5\xa0") is None
    assert parse_retry_after(" 5\xa0") is None


@pytest.mark.parametrize(
    "value",
    [
        None,
        "soon",
        "Sun, 06 Nov 1994",
        "Sun, 06 Nov 1994 25:49:37 GMT",
        "Mon, 01 Jan 2024 99999999999:00:00 GMT",  # OverflowError inside the email module
        "Sun, 06 Nov 99999 08:49:37 GMT",  # beyond datetime's years
    ],
)
def test_missing_or_unreadable_is_none(value: str | None) -> None:
    assert parse_retry_after(value, now=RFC_DATE) is None


def test_delay_seconds_too_large_count_as_2_to_the_31() -> None:
    assert parse_retry_after("2147483647") == 2**31 - 1
    assert parse_retry_after("2147483649") == 2**31
    assert parse_retry_after("9" * 5000) == 2**31  # longer than int() would even convert


def test_a_date_is_measured_from_the_wall_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry_after, "_wall_clock", lambda: RFC_DATE - 12.5)
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT") == 12.5
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=RFC_DATE - 2) == 2.0


def test_a_value_of_another_type_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"Retry-After header's value .* got 5"):
        parse_retry_after(5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- retry_after_of


def test_an_attribute_of_ones_own() -> None:
    assert retry_after_of(Throttled(5)) == 5.0
    assert retry_after_of(Throttled(2.5)) == 2.5  # a number is taken as it is: no header syntax
    assert retry_after_of(Throttled("7")) == 7.0
    assert retry_after_of(Throttled(b"8")) == 8.0
    assert retry_after_of(Throttled("Sun, 06 Nov 1994 08:49:37 GMT"), now=RFC_DATE - 3) == 3.0
    for unusable in (None, -1, math.nan, math.inf, True, "soon", object()):
        assert retry_after_of(Throttled(unusable)) is None, unusable


def test_an_unusable_attribute_falls_back_to_the_headers() -> None:
    error = Throttled(None)
    error.headers = {"Retry-After": "9"}  # type: ignore[attr-defined]
    assert retry_after_of(error) == 9.0


def test_aiohttp_like_errors_and_responses() -> None:
    assert retry_after_of(AiohttpLikeError(429, Headers({"retry-AFTER": "5"}))) == 5.0
    assert retry_after_of(AiohttpLikeError(503, None)) is None  # aiohttp's default headers
    assert retry_after_of(AiohttpLikeError(503, Headers({"Content-Type": "text/plain"}))) is None
    response = HttpxLikeResponse(429, Headers({"Retry-After": "11"}))  # a response, not an error
    assert retry_after_of(response) == 11.0


def test_httpx_like_errors() -> None:
    date = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert (
        retry_after_of(HttpxLikeError(503, Headers({"Retry-After": date})), now=RFC_DATE - 4) == 4
    )
    assert retry_after_of(HttpxLikeError(503, Headers({}))) is None


@pytest.mark.parametrize("name", ["Retry-After", "retry-after"])
def test_plain_dict_headers_in_either_spelling(name: str) -> None:
    assert retry_after_of(AiohttpLikeError(429, {name: "6"})) == 6.0
    assert retry_after_of(HttpxLikeError(429, {name: "6"})) == 6.0


def test_the_cause_is_followed_once() -> None:
    try:
        try:
            raise AiohttpLikeError(429, {"Retry-After": "3"})
        except AiohttpLikeError as inner:
            raise ConnectionError("rate limited") from inner
    except ConnectionError as outer:
        caught = outer
    assert retry_after_of(caught) == 3.0
    wrapped = RuntimeError("twice removed")
    wrapped.__cause__ = caught
    assert retry_after_of(wrapped) is None
    # its own value comes first
    own = Throttled(1)
    own.__cause__ = AiohttpLikeError(429, {"Retry-After": "3"})
    assert retry_after_of(own) == 1.0
    # __context__ (an error raised while handling another) is not a cause
    context = RuntimeError("while handling")
    context.__context__ = AiohttpLikeError(429, {"Retry-After": "3"})
    assert retry_after_of(context) is None


def test_nothing_raises_out_of_it() -> None:
    class Raising:
        @property
        def retry_after(self) -> Any:
            raise RuntimeError("boom")

        @property
        def headers(self) -> Any:
            raise KeyError("boom")

    class BadGet:
        def get(self, key: str) -> Any:
            raise ValueError("not a mapping")

    class ListValued:
        def get(self, key: str) -> Any:
            return ["5"]

    assert retry_after_of(Raising()) is None
    assert retry_after_of(AiohttpLikeError(429, BadGet())) is None  # type: ignore[arg-type]
    assert retry_after_of(AiohttpLikeError(429, ListValued())) is None  # type: ignore[arg-type]
    assert retry_after_of(AiohttpLikeError(429, "Retry-After: 5")) is None  # type: ignore[arg-type]
    assert retry_after_of(HttpxLikeError(429, {})) is None  # .request raises; never read
    for nothing in (None, 5, "5", {"Retry-After": "5"}, ValueError("x")):
        assert retry_after_of(nothing) is None, nothing


def test_a_real_aiohttp_client_response_error() -> None:
    aiohttp = pytest.importorskip("aiohttp")
    multidict = pytest.importorskip("multidict")
    yarl = pytest.importorskip("yarl")
    url = yarl.URL("http://a.example/")
    info = aiohttp.RequestInfo(url, "GET", multidict.CIMultiDictProxy(multidict.CIMultiDict()), url)
    error = aiohttp.ClientResponseError(
        info,
        (),
        status=429,
        message="Too Many Requests",
        headers=multidict.CIMultiDict({"retry-after": "17"}),
    )
    assert retry_after_of(error) == 17.0
    assert retry_after_of(aiohttp.ClientResponseError(info, (), status=503)) is None


# ---------------------------------------------------------------- the wait and the stop


def state_after(
    outcome: BaseException | object, *, attempt: int = 1, failed: bool | None = None
) -> tenacity.RetryCallState:
    """A real RetryCallState just after attempt ``attempt`` ended in ``outcome``."""
    state = tenacity.RetryCallState(retry_object=tenacity.Retrying(), fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    if isinstance(outcome, BaseException) if failed is None else failed:
        assert isinstance(outcome, BaseException)
        state.set_exception((type(outcome), outcome, None))
    else:
        state.set_result(outcome)
    return state


def test_the_wait_is_the_servers_plus_the_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    wait = wait_retry_after(tenacity.wait_fixed(99))
    assert wait(state_after(AiohttpLikeError(429, {"Retry-After": "5"}))) == 5 + MARGIN
    monkeypatch.setattr(_retry_after, "_wall_clock", lambda: RFC_DATE - 20)
    dated = HttpxLikeError(503, {"Retry-After": "Sun, 06 Nov 1994 08:49:37 GMT"})
    assert wait(state_after(dated)) == 20 + MARGIN
    assert wait(state_after(Throttled(0))) == MARGIN  # "now" still errs late
    assert wait_retry_after(margin=0)(state_after(Throttled(4))) == 4.0


def test_without_a_retry_after_the_fallback_waits() -> None:
    calls: list[int] = []

    def fallback(state: tenacity.RetryCallState) -> float:
        calls.append(state.attempt_number)
        return 7.0

    wait = wait_retry_after(fallback)
    assert wait(state_after(ConnectionError("reset"), attempt=3)) == 7.0
    assert wait(state_after(AiohttpLikeError(503, None), attempt=4)) == 7.0
    assert calls == [3, 4]
    assert wait(state_after(Throttled(2))) == 2 + MARGIN
    assert calls == [3, 4]  # not asked when the server said


def test_the_default_fallback_is_the_policys_default_backoff() -> None:
    wait = wait_retry_after()
    first = [wait(state_after(ConnectionError(), attempt=1)) for _ in range(50)]
    third = [wait(state_after(ConnectionError(), attempt=3)) for _ in range(50)]
    assert all(0.1 <= w <= 0.2 for w in first) and len(set(first)) > 1  # 0.1 s + jitter
    assert all(0.4 <= w <= 0.5 for w in third)  # doubled twice
    assert max(wait(state_after(ConnectionError(), attempt=20)) for _ in range(5)) <= 10.1


def test_the_servers_delay_is_capped() -> None:
    wait = wait_retry_after(tenacity.wait_fixed(1), max_delay=60)
    assert wait(state_after(Throttled(3600))) == 60 + MARGIN
    assert wait(state_after(Throttled(60))) == 60 + MARGIN  # at the cap: still never early
    assert wait(state_after(Throttled("2147483649"))) == 60 + MARGIN


def test_a_retried_result_is_read_too() -> None:
    """With ``retry_if_result``, the outcome is a response, e.g. a 429 returned, not raised."""
    wait = wait_retry_after(tenacity.wait_fixed(1))
    assert wait(state_after(HttpxLikeResponse(429, Headers({"Retry-After": "8"})))) == 8 + MARGIN
    assert wait(state_after(HttpxLikeResponse(200, Headers({})))) == 1.0
    # a result that happens to be an exception object is a result, and read the same way
    assert wait(state_after(Throttled(4), failed=False)) == 4 + MARGIN


def test_the_wait_composes_with_plus() -> None:
    wait = wait_retry_after(tenacity.wait_fixed(2)) + tenacity.wait_fixed(1)
    assert isinstance(wait, tenacity.wait.wait_combine)
    assert wait(state_after(Throttled(5))) == 5 + MARGIN + 1
    assert wait(state_after(ValueError())) == 3.0
    assert isinstance(wait_retry_after(), tenacity.wait.wait_base)


def test_the_stop_gives_up_only_beyond_the_limit() -> None:
    stop = stop_if_retry_after_exceeds(60)
    assert stop(state_after(Throttled(61)))
    assert stop(state_after(AiohttpLikeError(429, {"Retry-After": "3600"})))
    assert not stop(state_after(Throttled(60)))  # exactly the limit is waited for
    assert not stop(state_after(Throttled(0)))
    assert not stop(state_after(ConnectionError()))  # no Retry-After: not this stop's business
    combined = tenacity.stop_after_attempt(3) | stop
    assert isinstance(combined, tenacity.stop.stop_any)
    assert combined(state_after(Throttled(61), attempt=1))
    assert combined(state_after(ConnectionError(), attempt=3))
    assert not combined(state_after(Throttled(5), attempt=1))


# Untyped aliases, so that the bad arguments below need no "type: ignore" each.
WAIT: Any = wait_retry_after
STOP: Any = stop_if_retry_after_exceeds


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: WAIT(3), TypeError, r"fallback must be a tenacity wait .* got 3"),
        (lambda: WAIT(tenacity.wait_fixed), TypeError, r"fallback .* got <class 'tenacity"),
        (lambda: WAIT(max_delay="60"), TypeError, r"max_delay must be a number .* got '60'"),
        (lambda: WAIT(max_delay=True), TypeError, r"max_delay must be a number .* got True"),
        (lambda: WAIT(max_delay=-1), ValueError, r"max_delay must be a finite .* got -1"),
        (lambda: WAIT(max_delay=math.inf), ValueError, r"max_delay .* got inf"),
        (lambda: WAIT(margin=math.nan), ValueError, r"margin .* got nan"),
        (lambda: WAIT(margin=None), TypeError, r"margin must be a number .* got None"),
        (lambda: STOP(-0.5), ValueError, r"stop_if_retry_after_exceeds max_delay .* got -0.5"),
        (lambda: STOP("1"), TypeError, r"stop_if_retry_after_exceeds max_delay .* got '1'"),
    ],
)
def test_bad_arguments_are_named(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_reprs_say_what_they_do() -> None:
    assert repr(stop_if_retry_after_exceeds(60)) == "stop_if_retry_after_exceeds(60.0)"
    text = repr(wait_retry_after(tenacity.wait_none(), max_delay=30, margin=0))
    assert text.startswith("wait_retry_after(fallback=<tenacity.wait.wait_none")
    assert text.endswith("max_delay=30.0, margin=0.0)")


# ---------------------------------------------------------------- RetryPolicy(retry_after=...)


def test_the_option_is_off_by_default_and_the_fields_keep_what_was_passed() -> None:
    off = RetryPolicy.attempts(3)
    assert off.retry_after is None
    assert off._kwargs()["wait"] is off.wait and off._kwargs()["stop"] is off.stop
    on = RetryPolicy.attempts(3, retry_after=60)
    assert on.retry_after == 60
    kwargs = on._kwargs()
    assert isinstance(kwargs["wait"], wait_retry_after)
    assert kwargs["wait"].fallback is on.wait and kwargs["wait"].max_delay == 60
    assert isinstance(kwargs["stop"], tenacity.stop.stop_any)
    assert on.wait is not kwargs["wait"]  # the field is what was passed
    # frozen, replaceable, and replace() does not wrap a wrapped wait
    with pytest.raises(dataclasses.FrozenInstanceError):
        on.retry_after = 5  # type: ignore[misc]
    again = dataclasses.replace(on, retry_after=30)
    assert again._kwargs()["wait"].fallback is on.wait
    assert dataclasses.replace(on, retry_after=None)._kwargs()["wait"] is on.wait
    assert RetryPolicy(retry_after=0).retry_after == 0


def test_the_first_attempt_stays_free() -> None:
    assert first_attempt_is_free(RetryPolicy.attempts(3, retry_after=60))
    assert first_attempt_is_free(RetryPolicy(retry_after=5))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("60", TypeError, r"RetryPolicy retry_after must be None or .* got '60'"),
        (True, TypeError, r"retry_after .* got True"),
        (-1, ValueError, r"RetryPolicy retry_after must be a finite number .* got -1"),
        (math.nan, ValueError, r"retry_after .* got nan"),
        (math.inf, ValueError, r"retry_after .* got inf"),
    ],
)
def test_the_option_is_checked(value: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        RetryPolicy(retry_after=value)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        RetryPolicy.attempts(3, retry_after=value)  # type: ignore[arg-type]


def test_a_plain_function_as_the_policys_stop_still_combines() -> None:
    policy = RetryPolicy(stop=lambda state: state.attempt_number >= 4, retry_after=10)
    stop = policy._kwargs()["stop"]
    assert stop(state_after(Throttled(11), attempt=1))
    assert stop(state_after(ValueError(), attempt=4))
    assert not stop(state_after(Throttled(9), attempt=1))


def test_thread_and_process_pools_retrying_honours_it() -> None:
    """ThreadPool and ProcessPool run attempts through sync_retrying(policy)."""
    errors = [Throttled(5), AiohttpLikeError(429, {"Retry-After": "2"}), ConnectionError()]
    sleeps: list[float] = []

    def flaky() -> str:
        if errors:
            raise errors.pop(0)
        return "ok"

    policy = RetryPolicy.attempts(4, initial=1, jitter=0, retry_after=60)
    retrying = sync_retrying(policy).copy(sleep=sleeps.append)
    assert retrying(flaky) == "ok"
    assert sleeps == [5 + MARGIN, 2 + MARGIN, 4.0]  # the third: backoff, 1 s doubled twice


# ---------------------------------------------------------------- in a WorkerPool, on virtual time

# Wed, 21 Oct 2015 07:27:50 GMT is virtual time 0: the module's wall clock follows the loop.
EPOCH = ts(2015, 10, 21, 7, 27, 50)


def wall_follows_the_loop(monkeypatch: pytest.MonkeyPatch) -> asyncio.AbstractEventLoop:
    loop = asyncio.get_running_loop()
    monkeypatch.setattr(_retry_after, "_wall_clock", lambda: EPOCH + loop.time())
    return loop


@pytest.mark.virtual_time
async def test_a_pool_retries_exactly_when_the_server_said(monkeypatch: pytest.MonkeyPatch) -> None:
    loop = wall_follows_the_loop(monkeypatch)
    at: list[float] = []
    named = "Wed, 21 Oct 2015 07:28:00 GMT"  # virtual time 10

    async def fetch() -> str:
        at.append(loop.time())
        if len(at) == 1:
            raise AiohttpLikeError(429, Headers({"Retry-After": "5"}))
        if len(at) == 2:
            raise HttpxLikeError(503, Headers({"Retry-After": named}))
        return "ok"

    # Without the server's word the policy would retry after 1 s, then 2 s.
    policy = RetryPolicy.attempts(3, initial=1, jitter=0, retry_after=60)
    async with WorkerPool(workers=1, retry=policy) as pool:
        assert await (await pool.submit(fetch)) == "ok"
    assert at[0] == 0.0
    assert at[1] == 5 + MARGIN
    # 07:28:00 GMT, and the margin; the date's delay is a difference of wall-clock times near
    # 1.4e9 s, whose floats are 2.4e-7 s apart.
    assert at[2] == pytest.approx(10 + MARGIN, abs=1e-6)
    assert EPOCH + at[2] > email.utils.parsedate_to_datetime(named).timestamp()
    s = check_books(pool)
    assert (s.retried, s.succeeded, s.failed) == (2, 1, 0)


@pytest.mark.virtual_time
async def test_without_the_option_the_server_is_not_heard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = wall_follows_the_loop(monkeypatch)
    at: list[float] = []

    async def fetch() -> str:
        at.append(loop.time())
        if len(at) == 1:
            raise AiohttpLikeError(429, Headers({"Retry-After": "5"}))
        return "ok"

    async with WorkerPool(workers=1, retry=RetryPolicy.attempts(3, initial=1, jitter=0)) as pool:
        assert await (await pool.submit(fetch)) == "ok"
    assert at == [0.0, 1.0]  # the backoff: a second too early, as far as the server goes


@pytest.mark.virtual_time
@pytest.mark.parametrize(
    "retry_after",
    ["3600", "Wed, 21 Oct 2015 07:29:00 GMT"],  # 61 s after the moment it is sent
    ids=["seconds", "date"],
)
async def test_a_retry_after_beyond_the_cap_fails_the_job_at_once(
    retry_after: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = wall_follows_the_loop(monkeypatch)
    at: list[float] = []
    errors: list[Exception] = []

    async def fetch() -> str:
        at.append(loop.time())
        errors.append(AiohttpLikeError(429, Headers({"Retry-After": retry_after})))
        raise errors[-1]

    policy = RetryPolicy.attempts(3, initial=1, jitter=0, retry_after=60)
    async with WorkerPool(workers=1, retry=policy) as pool:
        job = await pool.submit(fetch)
        with pytest.raises(AiohttpLikeError) as caught:
            await job
        assert loop.time() == 0.0  # no sleep: the server's moment is not waited for
    assert caught.value is errors[0]  # the server's own error, from the one attempt
    assert at == [0.0]
    s = check_books(pool)
    assert (s.retried, s.failed) == (0, 1)
