"""poolkit: bounded concurrency for asyncio and threads.

This module is the map of the library: every public name is imported here, and nowhere else
needs to be looked at to know what poolkit offers.  The layers, bottom up: a module imports only
from its own line or the lines above it, and no two modules import each other
(``tests/test_layers.py`` holds the code to this map)::

    _exceptions, _checks, _registry  errors; argument checks; the weak registry of live objects
    _wait                       (internal) how a task or thread waits in a primitive, and is woken
    _channel                    Channel, select, send and receive handles
    _limiter                    CapacityLimiter            how many at once
    _ratelimit                  TokenBucket                how many per unit of time
    _aiolimiter_support         AsyncLimiterStatistics     aiolimiter.AsyncLimiter objects as
                                                           members of Limits and PerKey (never
                                                           imports aiolimiter)
    _composite                  Limits, PerKey             several limits as one; a limit per key
    _retry                      RetryPolicy                retries, with tenacity
    _jobs                       UnstartedJob, Outcome, PoolStatistics (both pools)
    _pool_core                  (internal) what every pool shares: options, counters, messages
    _map                        (internal) both pools' map(): a bounded window over the input
    _bridge                     (internal) submit_blocking(): other threads into a WorkerPool
    _pool                       WorkerPool, Job            asyncio workers
    _thread_pool                ThreadPool, ThreadJob      worker threads
    _introspect                 (internal) what each task and thread is doing: stacks, states
    _blocked                    find_blocked               tasks that nothing alive can wake
    _snapshot                   snapshot                   every task and thread, blocked marked
    _noleaks, _watchdog         no_leaks, LeakError; the growth watchdog
    _metrics                    (internal) every live object's statistics as metric families
    __init__                    this map, and every public name
    leaks, testing, pytest_plugin  public modules: leak hunting; virtual time; the pytest plugin
    debug, prometheus           the debug HTTP endpoint; the Prometheus collector
    _demo, _cli, __main__       the ``poolkit`` command and its demo

Everything works from asyncio tasks (on any event loop) and from threads.

Public modules beside this one: ``poolkit.leaks`` (snapshots, dumps, blocked tasks, no_leaks,
the watchdog), ``poolkit.debug`` (the debug HTTP endpoint), ``poolkit.prometheus`` (a
prometheus_client collector; optional extra), ``poolkit.pytest_plugin`` (registered with pytest
by entry point) and ``poolkit.testing`` (the virtual-time event loop used by the tests).
"""

from ._aiolimiter_support import AsyncLimiterStatistics as AsyncLimiterStatistics
from ._channel import Channel as Channel
from ._channel import ChannelStatistics as ChannelStatistics
from ._channel import ReceiveCase as ReceiveCase
from ._channel import ReceiveHandle as ReceiveHandle
from ._channel import SelectCase as SelectCase
from ._channel import Selected as Selected
from ._channel import SendCase as SendCase
from ._channel import SendHandle as SendHandle
from ._channel import select as select
from ._channel import select_blocking as select_blocking
from ._channel import select_nowait as select_nowait
from ._composite import Limits as Limits
from ._composite import LimitsStatistics as LimitsStatistics
from ._composite import PerKey as PerKey
from ._composite import PerKeyStatistics as PerKeyStatistics
from ._exceptions import BudgetExhausted as BudgetExhausted
from ._exceptions import Busy as Busy
from ._exceptions import ChannelClosed as ChannelClosed
from ._exceptions import EndOfChannel as EndOfChannel
from ._exceptions import HeapAnalysisUnavailable as HeapAnalysisUnavailable
from ._exceptions import JobHandedBack as JobHandedBack
from ._exceptions import LeakError as LeakError
from ._exceptions import NotAcquired as NotAcquired
from ._exceptions import PoolClosed as PoolClosed
from ._exceptions import PoolkitError as PoolkitError
from ._exceptions import QueueFull as QueueFull
from ._exceptions import ReceiversGone as ReceiversGone
from ._exceptions import WouldBlock as WouldBlock
from ._jobs import Outcome as Outcome
from ._jobs import PoolStatistics as PoolStatistics
from ._jobs import UnstartedJob as UnstartedJob
from ._limiter import CapacityLimiter as CapacityLimiter
from ._limiter import CapacityLimiterStatistics as CapacityLimiterStatistics
from ._noleaks import no_leaks as no_leaks
from ._pool import Job as Job
from ._pool import WorkerPool as WorkerPool
from ._ratelimit import Reservation as Reservation
from ._ratelimit import TokenBucket as TokenBucket
from ._ratelimit import TokenBucketStatistics as TokenBucketStatistics
from ._ratelimit import parse_rate as parse_rate
from ._retry import RetryPolicy as RetryPolicy
from ._thread_pool import ThreadJob as ThreadJob
from ._thread_pool import ThreadPool as ThreadPool

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncLimiterStatistics",
    "BudgetExhausted",
    "Busy",
    "CapacityLimiter",
    "CapacityLimiterStatistics",
    "Channel",
    "ChannelClosed",
    "ChannelStatistics",
    "EndOfChannel",
    "HeapAnalysisUnavailable",
    "Job",
    "JobHandedBack",
    "LeakError",
    "Limits",
    "LimitsStatistics",
    "NotAcquired",
    "Outcome",
    "PerKey",
    "PerKeyStatistics",
    "PoolClosed",
    "PoolStatistics",
    "PoolkitError",
    "QueueFull",
    "ReceiveCase",
    "ReceiveHandle",
    "ReceiversGone",
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
    "WorkerPool",
    "WouldBlock",
    "no_leaks",
    "parse_rate",
    "select",
    "select_blocking",
    "select_nowait",
]
