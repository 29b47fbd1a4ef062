"""Retry-After: wait as long as the server asked, in tenacity's terms.

A server that answers 429 or 503 may say when to come back, in a ``Retry-After`` header
(RFC 9110 §10.2.3): a number of seconds or an HTTP date.  This module reads it and retries then:

* :func:`parse_retry_after` turns the header's value into seconds from now;
* :func:`retry_after_of` finds the delay an exception or a response carries (aiohttp's and
  httpx's errors and responses, urllib's ``HTTPError``, or an error of your own with a
  ``retry_after`` attribute), without importing any HTTP client;
* :class:`wait_retry_after` is a tenacity wait that sleeps that long, and otherwise backs off
  as it is told;
* :class:`stop_if_retry_after_exceeds` is a tenacity stop that gives up when the server asks
  for longer than the caller will wait, so that the caller fails with the server's answer
  instead of retrying early.

``RetryPolicy(retry_after=60)`` (or ``RetryPolicy.attempts(3, retry_after=60)``) puts the last
two in a pool's policy.

Dates are measured against this machine's wall clock (``time.time()``), so a clock that is
skewed from the server's skews them by as much; delays in seconds need no clock.
"""

from __future__ import annotations

import email.utils
import math
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import tenacity

__all__ = [
    "parse_retry_after",
    "retry_after_of",
    "stop_if_retry_after_exceeds",
    "wait_retry_after",
]

WaitStrategy = Callable[[tenacity.RetryCallState], float]

# Looked up at each call, so that a test can put the wall clock on virtual time:
# ``monkeypatch.setattr(_retry_after, "_wall_clock", ...)``.
_wall_clock = time.time

# RFC 9110's OWS is spaces and tabs; CR and LF too, for a value read from a raw header line.
# Not str.strip()'s Unicode whitespace: NBSP is no separator in HTTP.
_HTTP_WHITESPACE = " \t\r\n"
_DELAY_SECONDS = re.compile(r"[0-9]+")  # RFC 9110's 1*DIGIT: ASCII only, no sign, no point
# RFC 9111 §1.2.2: a delta-seconds too large to represent is taken as 2**31 (68 years); as
# long as anyone would wait, and finite, so that caps and comparisons keep working.
_LONGEST = 2**31
# rfc850-date writes the year in two digits ("Sunday, 06-Nov-94 08:49:37 GMT").
_TWO_DIGIT_YEAR = re.compile(r"\d{1,2}-[A-Za-z]{3}-\d{2}(?!\d)")
_FIFTY_YEARS = 50 * 365.2425 * 86400


def parse_retry_after(value: str | bytes | None, *, now: float | None = None) -> float | None:
    """Seconds to wait, from the value of a ``Retry-After`` header (RFC 9110 §10.2.3).

    The value is either delay-seconds, ASCII digits only (``"120"``; surrounding spaces and
    tabs are ignored, and ``"+12"``, ``"-3"``, ``"1.5"``, ``"1_0"`` or non-ASCII digits are not
    delay-seconds), or an HTTP date in any of its three forms: IMF-fixdate
    (``"Sun, 06 Nov 1994 08:49:37 GMT"``), rfc850-date (``"Sunday, 06-Nov-94 08:49:37 GMT"``)
    or asctime (``"Sun Nov  6 08:49:37 1994"``).  A date without a zone is GMT, as HTTP dates
    are; a two-digit year is the latest year with those digits not more than 50 years ahead
    (RFC 9110 §5.6.7).  delay-seconds too large to represent count as 2**31 (RFC 9111 §1.2.2).

    Args:
        value: The header's value; bytes are decoded as Latin-1 (HTTP's historical charset).
        now: The wall-clock time (``time.time()``) a date is measured from; default now.

    Returns:
        The delay in seconds, never negative (a date in the past means "now": 0.0), or ``None``
        when there is no value or it is neither delay-seconds nor a date.

    Raises:
        TypeError: If ``value`` is not a str, bytes or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    elif not isinstance(value, str):
        raise TypeError(
            f"value must be the Retry-After header's value (str, bytes or None), got {value!r}"
        )
    value = value.strip(_HTTP_WHITESPACE)
    if _DELAY_SECONDS.fullmatch(value):
        return float(_LONGEST if len(value) > 10 else min(int(value), _LONGEST))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None  # not a date, or one out of datetime's range
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = _wall_clock() if now is None else now
    if _TWO_DIGIT_YEAR.search(value):
        when = _century(when, reference)
    return max(0.0, when.timestamp() - reference)


def _century(when: datetime, reference: float) -> datetime:
    """RFC 9110 §5.6.7: a two-digit year is the latest year with those digits that is not more
    than 50 years after ``reference`` (the email module's fixed 1969-2068 window is not)."""
    try:
        while when.timestamp() - reference > _FIFTY_YEARS:
            when = when.replace(year=when.year - 100)
        while True:
            later = when.replace(year=when.year + 100)
            if later.timestamp() - reference > _FIFTY_YEARS:
                return when
            when = later
    except (ValueError, OverflowError):  # past datetime's years, or no 29 February then
        return when


def retry_after_of(obj: object, *, now: float | None = None) -> float | None:
    """The Retry-After delay, in seconds, that an exception or a response carries.

    Looked for, duck-typed and in this order, on ``obj``:

    1. a ``retry_after`` attribute that is a number of seconds (finite, >= 0) or a str or bytes
       header value (an error of your own: ``raise Throttled(retry_after=5)``);
    2. a ``Retry-After`` header in ``obj.headers`` (aiohttp's ``ClientResponseError`` and
       ``ClientResponse``, urllib's ``HTTPError``, an httpx or requests response);
    3. a ``Retry-After`` header in ``obj.response.headers`` (httpx's ``HTTPStatusError``,
       requests' ``HTTPError``).

    Headers are read with ``.get("Retry-After")``, then ``.get("retry-after")`` for a plain
    dict.  If ``obj`` is an exception that carries nothing, its ``__cause__`` is searched the
    same way (one level: ``raise MyError(...) from response_error``).

    Nothing here raises: an attribute that raises when read, or headers that are not a mapping,
    count as carrying nothing, so that a retry policy never replaces a job's own error with one
    of its own.

    Args:
        obj: An exception, a response, or anything else (which then carries nothing).
        now: The wall-clock time (``time.time()``) a date is measured from; default now.

    Returns:
        The delay in seconds (see :func:`parse_retry_after`), or ``None``.
    """
    found = _carried(obj, now)
    if found is None and isinstance(obj, BaseException) and obj.__cause__ is not None:
        found = _carried(obj.__cause__, now)
    return found


def _carried(obj: object, now: float | None) -> float | None:
    found = _seconds(_attribute(obj, "retry_after"), now)
    if found is not None:
        return found
    found = _from_headers(_attribute(obj, "headers"), now)
    if found is not None:
        return found
    response = _attribute(obj, "response")
    return None if response is None else _from_headers(_attribute(response, "headers"), now)


def _attribute(obj: object, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # a property that raises (httpx's .request when it is unset, ...)
        return None


def _seconds(value: object, now: float | None) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 and math.isfinite(value) else None
    if isinstance(value, (str, bytes)):
        return parse_retry_after(value, now=now)
    return None


def _from_headers(headers: object, now: float | None) -> float | None:
    get = _attribute(headers, "get")
    if headers is None or not callable(get):
        return None
    try:
        value = get("Retry-After")
        if value is None:
            value = get("retry-after")
    except Exception:
        return None
    return parse_retry_after(value, now=now) if isinstance(value, (str, bytes)) else None


def _outcome_delay(retry_state: tenacity.RetryCallState) -> float | None:
    """The Retry-After of the attempt just made: carried by its exception or, when a policy
    retries on results (``retry_if_result``), by its result (a 429 response)."""
    outcome = retry_state.outcome
    if outcome is None:
        return None
    return retry_after_of(outcome.exception() if outcome.failed else outcome.result())


def _backoff(initial: float, maximum: float, jitter: float) -> Any:
    """initial, 2*initial, 4*initial, ... at most ``maximum``, plus up to ``jitter`` at random."""
    wait = tenacity.wait_exponential(multiplier=initial, max=maximum)
    return wait + tenacity.wait_random(0, jitter) if jitter else wait


def _check_seconds(name: str, value: object, of: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{of} {name} must be a number of seconds, got {value!r}")
    if not (value >= 0 and math.isfinite(value)):
        raise ValueError(f"{of} {name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


# Lower-case class names, as tenacity's own strategies are named (wait_fixed, stop_any, ...).
class wait_retry_after(tenacity.wait.wait_base):
    """A tenacity wait: the server's Retry-After if the last attempt carries one, else
    ``fallback``.

    The delay is found by :func:`retry_after_of` on the last attempt's exception, or on its
    result when the policy retries on results.  At most ``max_delay`` of it is waited, plus
    ``margin``; to fail rather than retry before the server's moment when it asks for more,
    add :class:`stop_if_retry_after_exceeds` with the same ``max_delay`` to the stop (as
    ``RetryPolicy(retry_after=...)`` does).  A subclass of tenacity's ``wait_base``, so ``+``
    composes it: ``wait_retry_after() + tenacity.wait_random(0, 1)`` adds jitter to either.

    Args:
        fallback: The wait when the attempt carries no Retry-After: a tenacity wait strategy.
            ``None`` (the default) is ``RetryPolicy()``'s backoff: 0.1 s, 0.2 s, ...
            (doubling, at most 10 s) plus up to 0.1 s at random.
        max_delay: The longest Retry-After waited for, in seconds.
        margin: Seconds added to every Retry-After.  Timers fire a little early: uvloop's by
            up to 1 ms (whole milliseconds, from a clock read at the start of the loop's
            iteration), asyncio's by up to the clock's resolution (it runs every timer due
            within it).  The server must not see the retry before the moment it named, so
            the wait errs late; 10 ms covers both with room.

    Raises:
        TypeError: If ``fallback`` is not a wait strategy (a callable of a
            ``tenacity.RetryCallState``; a class is refused), or a delay is not a number.
        ValueError: If ``max_delay`` or ``margin`` is negative or not finite.
    """

    def __init__(
        self,
        fallback: WaitStrategy | None = None,
        *,
        max_delay: float = 300.0,
        margin: float = 0.01,
    ) -> None:
        if fallback is None:
            fallback = _backoff(0.1, 10.0, 0.1)
        elif isinstance(fallback, type) or not callable(fallback):
            raise TypeError(
                f"wait_retry_after fallback must be a tenacity wait strategy such as "
                f"tenacity.wait_exponential() (a callable taking a tenacity.RetryCallState), "
                f"got {fallback!r}"
            )
        self.fallback: WaitStrategy = fallback
        """The wait when the attempt carries no Retry-After."""
        self.max_delay = _check_seconds("max_delay", max_delay, "wait_retry_after")
        """The longest Retry-After waited for, in seconds."""
        self.margin = _check_seconds("margin", margin, "wait_retry_after")
        """Seconds added to every Retry-After, so that the retry is never early."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        delay = _outcome_delay(retry_state)
        if delay is None:
            return self.fallback(retry_state)
        return min(delay, self.max_delay) + self.margin

    def __repr__(self) -> str:
        return (
            f"wait_retry_after(fallback={self.fallback!r}, max_delay={self.max_delay!r}, "
            f"margin={self.margin!r})"
        )


class stop_if_retry_after_exceeds(tenacity.stop.stop_base):
    """A tenacity stop: give up when the last attempt's Retry-After is longer than
    ``max_delay``.

    Combine it with the policy's own stop (``stop_after_attempt(5) |
    stop_if_retry_after_exceeds(60)``): the job then fails with the attempt's error (with
    ``reraise``, as in a pool) instead of retrying before the moment the server named.  The
    delay is found as :class:`wait_retry_after` finds it; an attempt that carries none never
    stops here.

    Args:
        max_delay: The longest Retry-After worth waiting for, in seconds.

    Raises:
        TypeError: If ``max_delay`` is not a number.
        ValueError: If ``max_delay`` is negative or not finite.
    """

    def __init__(self, max_delay: float) -> None:
        self.max_delay = _check_seconds("max_delay", max_delay, "stop_if_retry_after_exceeds")
        """The longest Retry-After worth waiting for, in seconds."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        delay = _outcome_delay(retry_state)
        return delay is not None and delay > self.max_delay

    def __repr__(self) -> str:
        return f"stop_if_retry_after_exceeds({self.max_delay!r})"
