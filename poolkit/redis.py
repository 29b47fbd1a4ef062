"""Limits shared by every process and machine, kept in Redis (``pip install 'poolkit[redis]'``).

The local :class:`~poolkit.TokenBucket` and :class:`~poolkit.CapacityLimiter` hold inside one
process.  When a program runs as several processes, on one machine or many, the same limits kept
in Redis hold for all of them together::

    from contextlib import aclosing
    from poolkit.redis import RedisCapacityLimiter, RedisTokenBucket

    URL = "redis://127.0.0.1:6379/0"
    async with (
        aclosing(RedisTokenBucket(URL, "api.example.com", rate="5/s")) as rate,
        aclosing(RedisCapacityLimiter(URL, "api.example.com", total=4)) as cap,
    ):
        async with cap:  # as a CapacityLimiter: holds 1 for the block
            await rate.acquire()
            ...  # at most 4 at a time and 5 a second, over every process naming these keys

As with the local limits, ``async with limit:`` takes 1 for the block (a bucket's token is spent);
``aclose()`` (or ``close()`` from a thread) lets go of the connections and the wake-up
subscription a limit shares with the others of its process.

* :class:`RedisTokenBucket` is GCRA in one Lua script, with Redis ``TIME`` as its only clock.  It
  queues waiters FIFO across processes and wakes them by pub/sub, so nobody polls.
* :class:`RedisCapacityLimiter` is weighted and FIFO across processes.  Each process holds one
  lease, renewed by a heartbeat.  A crashed holder's weight comes back when its lease expires.
  A holder that loses its lease is told: :class:`~poolkit.LeaseLost`.
* Both take part wherever the local limits do: as members of a :class:`~poolkit.Limits`, made
  per key by ``PerKey(factory, with_key=True)`` (the factory gets the key, to name the Redis
  key), and as a pool's ``limit=``.  See "Redis members" in
  :mod:`poolkit._primitives._composite`.
* Every Redis call has a timeout.  ``on_error`` chooses what an unreachable Redis means:
  ``"raise"`` (:class:`~poolkit.RedisUnavailable`), ``"allow"`` or ``"local"``.

How each works, and why, is in the docstrings of :mod:`poolkit._primitives._redis_bucket`,
:mod:`poolkit._primitives._redis_limiter` and :mod:`poolkit._primitives._redis_link`.  redis-py is
imported when a limit first talks to Redis; without it, that raises ``ImportError`` naming the
extra to install.
"""

from ._primitives._redis_bucket import RedisTokenBucket as RedisTokenBucket
from ._primitives._redis_bucket import RedisTokenBucketStatistics as RedisTokenBucketStatistics
from ._primitives._redis_limiter import RedisCapacityLimiter as RedisCapacityLimiter
from ._primitives._redis_limiter import (
    RedisCapacityLimiterStatistics as RedisCapacityLimiterStatistics,
)

__all__ = [
    "RedisCapacityLimiter",
    "RedisCapacityLimiterStatistics",
    "RedisTokenBucket",
    "RedisTokenBucketStatistics",
]
