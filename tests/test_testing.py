"""poolkit.testing: the virtual-time loop's own contract."""

from __future__ import annotations

import asyncio
import gc
import math

import pytest

from poolkit.testing import VirtualTimeLoop


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": math.nan}, "start must be a finite number, got nan"),
        ({"start": math.inf}, "start must be a finite number, got inf"),
        ({"autojump_threshold": -1.0}, "autojump_threshold must be >= 0, got -1.0"),
        ({"autojump_threshold": math.nan}, "autojump_threshold must be >= 0, got nan"),
    ],
)
def test_bad_arguments_are_refused_before_a_loop_exists(
    kwargs: dict[str, float], message: str
) -> None:
    # Regression: the checks ran in __init__, after the loop object existed, and its __del__
    # then reported "Exception ignored ... no attribute '_closed'" (an unraisable exception,
    # which this suite's warnings-as-errors turns into a failure).
    with pytest.raises(ValueError, match=message):
        VirtualTimeLoop(**kwargs)
    gc.collect()


def test_time_starts_where_asked_and_jumps_to_the_next_timer() -> None:
    loop = VirtualTimeLoop(start=100.0)
    try:
        assert loop.time() == 100.0
        loop.run_until_complete(asyncio.sleep(3600))
        assert loop.time() == 3700.0
    finally:
        loop.close()


@pytest.mark.parametrize("threshold", [0.005, 0.5])
def test_a_grace_still_jumps_all_the_way_to_the_timer(threshold: float) -> None:
    # Regression: after waiting the grace (real seconds) the clock advanced by the timeout
    # *less* the grace, so a timer within the grace was never reached and the loop spun for
    # ever: any sleep hung once autojump_threshold was above 0.
    loop = VirtualTimeLoop(autojump_threshold=threshold)
    try:
        loop.run_until_complete(asyncio.wait_for(asyncio.sleep(1.0), 10.0))
        assert loop.time() == 1.0
        loop.run_until_complete(asyncio.sleep(0.001))  # a timer closer than the grace
        assert loop.time() == 1.001
    finally:
        loop.close()
