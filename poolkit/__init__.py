"""poolkit: bounded concurrency for asyncio and threads.

This module is the map of the library: every public name is imported here, and nowhere else
needs to be looked at to know what poolkit offers.  The private modules live in one sub-package
per layer, so the folder tree is the map too.  The layers, bottom up: a module imports only from
its own line or the lines above it, and no two modules import each other; each sub-package's
line (its ``__init__``) comes first in its layer, and a layer's lines are never interleaved with
another's (``tests/test_layers.py`` holds the code to this map)::

    _core                       the bottom layer; imports nothing of poolkit's from outside it
    _core._exceptions, _core._checks, _core._registry
                                errors; argument checks; the weak registry of live objects
    _core._wait                 (internal) how a task or thread waits in a primitive, and is woken
    _primitives                 channels and limits, on _core
    _primitives._channel        Channel, select, send and receive handles
    _primitives._limiter        CapacityLimiter            how many at once
    _primitives._adaptive       AdaptiveLimiter            how many at once, found by measuring
    _primitives._ratelimit      TokenBucket                how many per unit of time
    _primitives._aiolimiter_support
                                AsyncLimiterStatistics     aiolimiter.AsyncLimiter objects as
                                                           members of Limits and PerKey (never
                                                           imports aiolimiter)
    _primitives._redis_link     (internal) what every limit kept in Redis shares: clients per
                                event loop, scripts, timeouts, pushed wake-ups (imports
                                redis-py lazily: the extra poolkit[redis])
    _primitives._redis_bucket   RedisTokenBucket           a token bucket shared by processes
    _primitives._redis_limiter  RedisCapacityLimiter       a capacity limit shared by processes
    _primitives._composite      Limits, PerKey             several limits as one; a limit per key
    _pools                      the pools, on the primitives
    _pools._retry_after         wait_retry_after, ...      Retry-After: parse it, wait for it
    _pools._retry               RetryPolicy                retries, with tenacity
    _pools._jobs                UnstartedJob, Outcome, PoolStatistics (both pools)
    _pools._pool_core           (internal) what every pool shares: options, counters, messages
    _pools._map                 (internal) both pools' map(): a bounded window over the input
    _pools._bridge              (internal) submit_blocking(): other threads into a WorkerPool
    _pools._pool                WorkerPool, Job            asyncio workers
    _pools._thread_pool         ThreadPool, ThreadJob      worker threads
    _pools._process_child       (internal) what a ProcessPool's worker process runs
    _pools._process_pool        ProcessPool, ProcessJob    worker processes, for CPU-bound work
    _leaks                      leak hunting (names the waits below by string, imports _core)
    _leaks._introspect          (internal) what each task and thread is doing: stacks, states
    _leaks._blocked             find_blocked               tasks that nothing alive can wake
    _leaks._snapshot            snapshot                   every task and thread, blocked marked
    _leaks._noleaks, _leaks._watchdog
                                no_leaks, LeakError; the growth watchdog
    _observe                    metrics of live objects
    _observe._metrics           (internal) every live object's statistics as metric families
    __init__                    this map, and every public name
    leaks, testing, pytest_plugin, redis, http
                                public modules: leak hunting; virtual time; the pytest plugin;
                                limits shared over Redis; limits inside HTTP clients
    debug, prometheus           the debug HTTP endpoint; the Prometheus collector
    _tools                      the command line
    _tools._demo, _tools._cli   the ``poolkit`` command and its demo
    __main__                    ``python -m poolkit``

Everything works from asyncio tasks (on any event loop) and from threads.

Public modules beside this one: ``poolkit.leaks`` (snapshots, dumps, blocked tasks, no_leaks,
the watchdog), ``poolkit.debug`` (the debug HTTP endpoint), ``poolkit.prometheus`` (a
prometheus_client collector; optional extra), ``poolkit.pytest_plugin`` (registered with pytest
by entry point), ``poolkit.testing`` (the virtual-time event loop used by the tests) and
``poolkit.redis`` (token buckets and capacity limiters shared by processes through Redis;
optional extra).
"""

from ._core._exceptions import BudgetExhausted as BudgetExhausted
from ._core._exceptions import Busy as Busy
from ._core._exceptions import ChannelClosed as ChannelClosed
from ._core._exceptions import EndOfChannel as EndOfChannel
from ._core._exceptions import HeapAnalysisUnavailable as HeapAnalysisUnavailable
from ._core._exceptions import JobHandedBack as JobHandedBack
from ._core._exceptions import LeakError as LeakError
from ._core._exceptions import LeaseLost as LeaseLost
from ._core._exceptions import NotAcquired as NotAcquired
from ._core._exceptions import NotPicklable as NotPicklable
from ._core._exceptions import PoolClosed as PoolClosed
from ._core._exceptions import PoolkitError as PoolkitError
from ._core._exceptions import QueueFull as QueueFull
from ._core._exceptions import ReceiversGone as ReceiversGone
from ._core._exceptions import RedisUnavailable as RedisUnavailable
from ._core._exceptions import WorkerCrashed as WorkerCrashed
from ._core._exceptions import WouldBlock as WouldBlock
from ._leaks._noleaks import no_leaks as no_leaks
from ._pools._jobs import Outcome as Outcome
from ._pools._jobs import PoolStatistics as PoolStatistics
from ._pools._jobs import UnstartedJob as UnstartedJob
from ._pools._pool import Job as Job
from ._pools._pool import WorkerPool as WorkerPool
from ._pools._process_pool import ProcessJob as ProcessJob
from ._pools._process_pool import ProcessMap as ProcessMap
from ._pools._process_pool import ProcessPool as ProcessPool
from ._pools._process_pool import ProcessPoolStatistics as ProcessPoolStatistics
from ._pools._retry import RetryPolicy as RetryPolicy
from ._pools._retry_after import parse_retry_after as parse_retry_after
from ._pools._retry_after import retry_after_of as retry_after_of
from ._pools._retry_after import stop_if_retry_after_exceeds as stop_if_retry_after_exceeds
from ._pools._retry_after import wait_retry_after as wait_retry_after
from ._pools._thread_pool import ThreadJob as ThreadJob
from ._pools._thread_pool import ThreadPool as ThreadPool
from ._primitives._adaptive import AIMD as AIMD
from ._primitives._adaptive import AdaptiveLimiter as AdaptiveLimiter
from ._primitives._adaptive import AdaptiveLimiterStatistics as AdaptiveLimiterStatistics
from ._primitives._adaptive import Gradient as Gradient
from ._primitives._adaptive import overloaded as overloaded
from ._primitives._aiolimiter_support import AsyncLimiterStatistics as AsyncLimiterStatistics
from ._primitives._channel import Channel as Channel
from ._primitives._channel import ChannelStatistics as ChannelStatistics
from ._primitives._channel import ReceiveCase as ReceiveCase
from ._primitives._channel import ReceiveHandle as ReceiveHandle
from ._primitives._channel import SelectCase as SelectCase
from ._primitives._channel import Selected as Selected
from ._primitives._channel import SendCase as SendCase
from ._primitives._channel import SendHandle as SendHandle
from ._primitives._channel import select as select
from ._primitives._channel import select_blocking as select_blocking
from ._primitives._channel import select_nowait as select_nowait
from ._primitives._composite import Limits as Limits
from ._primitives._composite import LimitsStatistics as LimitsStatistics
from ._primitives._composite import PerKey as PerKey
from ._primitives._composite import PerKeyStatistics as PerKeyStatistics
from ._primitives._limiter import CapacityLimiter as CapacityLimiter
from ._primitives._limiter import CapacityLimiterStatistics as CapacityLimiterStatistics
from ._primitives._ratelimit import Reservation as Reservation
from ._primitives._ratelimit import TokenBucket as TokenBucket
from ._primitives._ratelimit import TokenBucketStatistics as TokenBucketStatistics
from ._primitives._ratelimit import parse_rate as parse_rate

__version__ = "0.1.0.dev0"

__all__ = [
    "AIMD",
    "AdaptiveLimiter",
    "AdaptiveLimiterStatistics",
    "AsyncLimiterStatistics",
    "BudgetExhausted",
    "Busy",
    "CapacityLimiter",
    "CapacityLimiterStatistics",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "EndOfChannel",
    "Gradient",
    "HeapAnalysisUnavailable",
    "Job",
    "JobHandedBack",
    "LeakError",
    "LeaseLost",
    "Limits",
    "LimitsStatistics",
    "NotAcquired",
    "NotPicklable",
    "Outcome",
    "PerKey",
    "PerKeyStatistics",
    "PoolClosed",
    "PoolStatistics",
    "PoolkitError",
    "ProcessJob",
    "ProcessMap",
    "ProcessPool",
    "ProcessPoolStatistics",
    "QueueFull",
    "ReceiveCase",
    "ReceiveHandle",
    "ReceiversGone",
    "RedisUnavailable",
    "Reservation",
    "RetryPolicy",
    "SelectCase",
    "Selected",
    "SendCase",
    "SendHandle",
    "ThreadJob",
    "ThreadPool",
    "TokenBucket",
    "TokenBucketStatistics",
    "UnstartedJob",
    "WorkerCrashed",
    "WorkerPool",
    "WouldBlock",
    "no_leaks",
    "overloaded",
    "parse_rate",
    "parse_retry_after",
    "retry_after_of",
    "select",
    "select_blocking",
    "select_nowait",
    "stop_if_retry_after_exceeds",
    "wait_retry_after",
]
