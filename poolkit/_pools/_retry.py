"""RetryPolicy: when and how a pool retries a failed job, in tenacity's terms.

Pools run every attempt of a job through tenacity: ``tenacity.AsyncRetrying`` in a
``WorkerPool``, ``tenacity.Retrying`` in a ``ThreadPool``.  A policy is either a
:class:`RetryPolicy` (tenacity's ``stop``/``wait``/``retry`` strategies, with poolkit's defaults)
or a tenacity ``AsyncRetrying``/``Retrying`` object, which is copied for every job.

Each attempt is a fresh call of the job's function; between attempts the job sleeps (on the
event loop's clock in a ``WorkerPool``, so retries run on virtual time in tests).  The last
attempt's exception is what the job's future reports.  Cancellation is never retried.

``RetryPolicy(retry_after=60)`` honours a server's ``Retry-After`` (see ``_retry_after``): the
policy's wait becomes ``wait_retry_after(fallback=wait, max_delay=60)`` and its stop
``stop | stop_if_retry_after_exceeds(60)``, so a job retries when the server said, and fails
with the server's error when it asks for longer than that.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NoReturn

import tenacity

from ._retry_after import _backoff, stop_if_retry_after_exceeds, wait_retry_after

__all__ = ["RetryPolicy", "async_retrying", "keep_result", "show_as_first", "sync_retrying"]

Retrying = tenacity.Retrying | tenacity.AsyncRetrying


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry failed jobs: ``stop``, ``wait`` and ``retry`` are tenacity strategies.

    ``RetryPolicy()`` tries 3 times in all, waiting 0.1 s, 0.2 s, ... (doubling, at most 10 s,
    plus up to 0.1 s of random jitter) and retries on any ``Exception``.
    ``RetryPolicy.attempts(5, on=(ConnectionError,))`` is the usual shorthand; pass tenacity
    objects for anything else, e.g. ``RetryPolicy(wait=tenacity.wait_fixed(1))``.
    ``retry_after=60`` makes the policy wait as long as a failed attempt's ``Retry-After``
    asks (an error's ``retry_after`` attribute, or the header on its ``headers`` or
    ``response.headers``, as aiohttp's and httpx's errors have), up to 60 s.

    Args:
        stop: When to give up: a tenacity stop strategy such as
            ``tenacity.stop_after_attempt(3)`` (any callable of a ``tenacity.RetryCallState``).
        wait: How long to sleep before the next attempt: a tenacity wait strategy such as
            ``tenacity.wait_fixed(2)``.
        retry: Which outcomes to retry: a tenacity retry strategy such as
            ``tenacity.retry_if_exception_type(ConnectionError)``.
        before_sleep: Called with the ``tenacity.RetryCallState`` before each sleep, or ``None``.
        retry_after: ``None`` (the default) ignores ``Retry-After``.  A number of seconds M
            honours it: after an attempt that carries one (found by ``retry_after_of``), the
            job sleeps that long (plus 10 ms, so that it is never early) instead of ``wait``,
            and if the server asks for more than M seconds the job stops retrying and fails
            with that attempt's error.  In tenacity's terms, ``wait`` becomes
            ``wait_retry_after(fallback=wait, max_delay=M)`` and ``stop`` becomes
            ``stop | stop_if_retry_after_exceeds(M)``; the fields keep what was passed.

    Raises:
        TypeError: At construction, for an argument that is not what tenacity will call: a
            number (``stop=3``, ``wait=2``), an exception class (``retry=ConnectionError``) or a
            strategy class instead of an instance (``wait=tenacity.wait_none``).  Without this
            check the mistake would surface only at a job's first failure, as a ``TypeError``
            from inside tenacity that replaces the job's own error.  Also for a
            ``retry_after`` that is not ``None`` or a number.
        ValueError: If ``retry_after`` is negative or not finite.
    """

    stop: Any = field(default_factory=lambda: tenacity.stop_after_attempt(3))
    """When to give up (a ``tenacity.stop`` strategy)."""
    wait: Any = field(default_factory=lambda: _backoff(0.1, 10.0, 0.1))
    """How long to sleep before the next attempt (a ``tenacity.wait`` strategy)."""
    retry: Any = field(default_factory=lambda: tenacity.retry_if_exception_type(Exception))
    """Which outcomes to retry (a ``tenacity.retry`` strategy)."""
    before_sleep: Callable[[tenacity.RetryCallState], Any] | None = None
    """Called before each sleep, e.g. to log the failed attempt."""
    retry_after: float | None = None
    """The longest ``Retry-After`` honoured, in seconds (``None``: the header is ignored)."""

    @classmethod
    def attempts(
        cls,
        attempts: int,
        *,
        initial: float = 0.1,
        maximum: float = 10.0,
        jitter: float = 0.1,
        on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        retry_after: float | None = None,
    ) -> RetryPolicy:
        """``attempts`` tries in all, backing off from ``initial`` seconds (doubling, at most
        ``maximum``) plus up to ``jitter`` seconds at random, retrying the exceptions ``on``.

        Args:
            attempts: Tries in all, the first included; at least 1.
            initial: Seconds before the first retry; doubled before each next one.
            maximum: The longest wait between two tries, in seconds.
            jitter: Up to this many seconds more, at random, before each retry.
            on: The exception type or types to retry; others fail the job at once.
            retry_after: The longest ``Retry-After`` honoured, in seconds; ``None`` (the
                default) ignores it.  See the class's ``retry_after``.

        Returns:
            The policy, for a pool's ``retry=``.

        Raises:
            TypeError: If ``attempts`` is not an int, a delay (``retry_after`` included) not a
                number, or ``on`` not an exception type or a tuple of them.
            ValueError: If ``attempts`` is below 1, or a delay is negative or not finite.
        """
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int, got {attempts!r}")
        _check_exception_types(on)
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts!r}")
        for name, value in (("initial", initial), ("maximum", maximum), ("jitter", jitter)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {value!r}")
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        return cls(
            stop=tenacity.stop_after_attempt(attempts),
            wait=_backoff(initial, maximum, jitter),
            retry=tenacity.retry_if_exception_type(on),
            retry_after=retry_after,
        )

    def __post_init__(self) -> None:
        _check_strategy(
            "stop", self.stop, "a tenacity stop strategy", "tenacity.stop_after_attempt(3)"
        )
        _check_strategy("wait", self.wait, "a tenacity wait strategy", "tenacity.wait_fixed(2)")
        _check_strategy(
            "retry",
            self.retry,
            "a tenacity retry strategy",
            "tenacity.retry_if_exception_type(ConnectionError)",
        )
        if self.before_sleep is not None and not callable(self.before_sleep):
            raise TypeError(
                f"RetryPolicy before_sleep must be None or a function of a "
                f"tenacity.RetryCallState, got {self.before_sleep!r}"
            )
        value = self.retry_after
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"RetryPolicy retry_after must be None or the longest Retry-After to honour, "
                    f"in seconds, got {value!r}"
                )
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(
                    f"RetryPolicy retry_after must be a finite number of seconds >= 0, "
                    f"got {value!r}"
                )

    def _kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "stop": self.stop,
            "wait": self.wait,
            "retry": self.retry,
            "reraise": True,
        }
        if self.retry_after is not None:
            # Built per job (two small objects, on the retry path only): the fields keep what
            # was passed, so dataclasses.replace() never wraps a wrapped wait again.
            kwargs["wait"] = wait_retry_after(self.wait, max_delay=self.retry_after)
            # stop_any, not "|": the policy's stop may be a plain function.
            kwargs["stop"] = tenacity.stop_any(
                self.stop, stop_if_retry_after_exceeds(self.retry_after)
            )
        if self.before_sleep is not None:
            kwargs["before_sleep"] = self.before_sleep
        return kwargs


def _check_strategy(name: str, value: object, what: str, example: str) -> None:
    """A tenacity strategy is a callable of a ``RetryCallState``; tenacity itself checks nothing,
    so a number or a class would fail only at a job's first failure, hiding the job's error."""
    hint = ""
    if isinstance(value, type):
        if issubclass(value, BaseException):
            hint = (
                f"; to retry on {value.__name__}, pass "
                f"retry=tenacity.retry_if_exception_type({value.__name__}) or use "
                f"RetryPolicy.attempts(n, on={value.__name__})"
            )
        else:
            hint = (
                f"; pass an instance, {value.__module__}.{value.__qualname__}(...), not the class"
            )
    elif callable(value):
        return
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if name == "stop":
            hint = f"; for {value} attempts in all: stop=tenacity.stop_after_attempt({value})"
        elif name == "wait":
            hint = f"; for {value} s between attempts: wait=tenacity.wait_fixed({value})"
    raise TypeError(
        f"RetryPolicy {name} must be {what} such as {example} (a callable taking a "
        f"tenacity.RetryCallState), got {value!r}{hint}"
    )


def _check_exception_types(on: object) -> None:
    types = on if isinstance(on, tuple) else (on,)
    if not types or not all(isinstance(t, type) and issubclass(t, BaseException) for t in types):
        raise TypeError(
            f"on must be an exception class or a tuple of exception classes, got {on!r}"
        )


def check_policy(policy: object, kind: type[tenacity.BaseRetrying]) -> None:
    if policy is None or isinstance(policy, RetryPolicy):
        return
    if not isinstance(policy, kind):
        hint = ""
        if isinstance(policy, int) and not isinstance(policy, bool) and policy >= 1:
            hint = f" (for {policy} attempts in all: retry=poolkit.RetryPolicy.attempts({policy}))"
        raise TypeError(
            f"retry must be a poolkit.RetryPolicy or a tenacity.{kind.__name__}, "
            f"got {policy!r}{hint}"
        )


_NEVER_TYPES = (asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit)


class _NotStopSignal(tenacity.retry_base):
    """Combined with the policy's own ``retry``: whatever it says, an attempt that ended in one
    of these is never retried (a cancelled job stays cancelled).  Results and other exceptions
    are left to the policy, so ``retry_if_result`` works."""

    def __call__(self, retry_state: tenacity.RetryCallState) -> bool:
        outcome = retry_state.outcome
        return not (
            outcome is not None and outcome.failed and isinstance(outcome.exception(), _NEVER_TYPES)
        )


_NEVER = _NotStopSignal()


def first_attempt_is_free(policy: RetryPolicy | tenacity.BaseRetrying | None) -> bool:
    """Whether a job's first attempt can run without tenacity's machinery: true when the policy
    only ever retries on exceptions and has no hook that runs before an attempt.  Then a job
    that succeeds at once never builds a ``Retrying`` (tens of microseconds), and one that
    fails hands its first exception to a ``Retrying`` started as if it had run it."""
    if isinstance(policy, RetryPolicy):
        return isinstance(policy.retry, tenacity.retry_if_exception)
    if isinstance(policy, tenacity.BaseRetrying):
        return (
            isinstance(policy.retry, tenacity.retry_if_exception)
            and policy.before is tenacity.before_nothing
        )
    return False


def async_retrying(policy: RetryPolicy | tenacity.AsyncRetrying) -> tenacity.AsyncRetrying:
    """A fresh ``AsyncRetrying`` for one job."""
    if isinstance(policy, RetryPolicy):
        kwargs = policy._kwargs()
        kwargs["retry"] = kwargs["retry"] & _NEVER
        return tenacity.AsyncRetrying(**kwargs)
    return policy.copy(retry=policy.retry & _NEVER, reraise=True)


def sync_retrying(policy: RetryPolicy | tenacity.Retrying) -> tenacity.Retrying:
    """A fresh ``Retrying`` for one job."""
    if isinstance(policy, RetryPolicy):
        kwargs = policy._kwargs()
        kwargs["retry"] = kwargs["retry"] & _NEVER
        return tenacity.Retrying(**kwargs)
    return policy.copy(retry=policy.retry & _NEVER, reraise=True)


# A pool that made a job's first attempt outside tenacity (see first_attempt_is_free) replays it
# inside: its error is raised in tenacity's first attempt, as if that attempt had made it.
def show_as_first(attempt: tenacity.AttemptManager, error: Exception, started: float) -> NoReturn:
    """Raise, inside ``with attempt:``, the error of a first attempt made outside tenacity;
    ``started`` is when that attempt began, so that tenacity's delays count from it."""
    attempt.retry_state.start_time = started
    raise error


def keep_result(attempt: tenacity.AttemptManager, result: Any) -> None:
    """After ``with attempt:``: give tenacity an attempt's result, so that a policy may retry on
    results (``retry_if_result``) as well as on exceptions."""
    outcome = attempt.retry_state.outcome
    if outcome is not None and not outcome.failed:
        attempt.retry_state.set_result(result)
