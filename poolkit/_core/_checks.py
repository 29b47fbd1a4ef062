"""Argument checks shared by every module, so that bad input is reported the same way everywhere."""

from __future__ import annotations

import math

__all__ = ["check_timeout"]


def check_timeout(timeout: float | None, name: str = "timeout") -> float | None:
    """Return ``timeout`` as seconds (``None`` or ``math.inf`` for "wait forever").

    Raises :class:`TypeError` for anything that is not a real number and :class:`ValueError` for a
    negative number or NaN.  Zero is allowed: it means "do not wait", and the blocking call raises
    :class:`TimeoutError` at once if it would have to wait.
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{name} must be >= 0 seconds or None, got {timeout!r}")
    if math.isinf(timeout):
        return None
    return float(timeout)
