"""Metrics of every live poolkit object: Prometheus text, a JSON dump, families for collectors.

Each collection walks the weak registry (:mod:`poolkit._core._registry`) and reads every live
object's ``statistics()`` once; nothing is kept between collections and no poolkit object is
touched on its hot path, so a process that never scrapes pays nothing.

Series
------
Every object is identified by one label named after what it is (``pool``, ``channel``, ``limiter``,
``bucket``, ``limits``, ``per_key``, ``redis_bucket``, ``redis_limiter``) whose value is the
object's name, or ``<kind>-<seq>`` if it has none (``channel-12``). Two live objects of one kind
with the same name would make duplicate series, which Prometheus drops, so the older keeps the name
and each later one gets ``<name>#<seq>``. The pool classes share the ``poolkit_pool_*`` families,
told apart by ``kind="asyncio"`` (``WorkerPool``), ``kind="thread"`` (``ThreadPool``) or
``kind="process"`` (``ProcessPool``): summing over ``kind`` gives every pool.  Process pools
also have worker processes, which end and are replaced: ``poolkit_pool_worker_replacements``
counts them by ``reason`` and ``poolkit_pool_worker_process_info`` names the live ones by
``pid`` (a worker replaced is a new series, so these churn as fast as the pool replaces its
workers). A ``Limits`` has no counters of its own (its members are reported as themselves);
``poolkit_limits_member_info`` links it to their labels, for joins.

A counter family is named without ``_total`` and its samples with it, as in OpenMetrics and
``prometheus_client``; the text format writes ``# HELP``/``# TYPE`` with the ``_total`` name, as
``prometheus_client.generate_latest`` does, so both parse to the same families.

From another thread
-------------------
Collecting is meant to run in a thread of its own (a debug server's, a scrape handler's).
``Channel``, ``CapacityLimiter``, ``TokenBucket``, ``PerKey``, ``ThreadPool`` and ``ProcessPool``
take their lock for a consistent snapshot.  Two caveats, both in the objects' ``statistics()``:

* ``WorkerPool.statistics()`` takes no lock (a pool lives on one event loop).  Read from another
  thread, each counter is a value it really had, but ``queued``, ``running``, ``busy`` and
  ``idle`` are differences of counters read one after the other, and can be off for one scrape
  (even below zero) while the loop is mid-update.
* ``TokenBucket.statistics()`` computes the level as of "now" without changing the bucket, and
  for a bucket without a ``clock`` "now" in a thread with no event loop is
  ``time.monotonic()``: the loop's clock on asyncio's default loop, close to it on uvloop, but
  not on a loop with a clock of its own (such as ``poolkit.testing.VirtualTimeLoop``), where a
  scrape from another thread may show a level that the loop's tasks do not see.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any, Final

from poolkit._core._registry import KINDS, label_of, live

__all__ = ["Family", "collect", "describe", "exposition", "objects_json"]

GAUGE: Final = "gauge"
COUNTER: Final = "counter"

Labels = dict[str, str]


class Family:
    """One metric family: what ``# HELP``/``# TYPE`` describe and the samples under them.

    ``samples`` holds ``(labels, value)`` pairs; several samples may share one ``labels`` dict
    (an object's identifying labels), so treat them as read-only.
    """

    __slots__ = ("help", "labels", "name", "samples", "type")

    def __init__(self, name: str, type: str, help: str, labels: tuple[str, ...]) -> None:
        self.name = name
        """The family's name; for a counter, without ``_total``."""
        self.type = type
        """``"gauge"`` or ``"counter"``."""
        self.help = help
        self.labels = labels
        """The label names every sample has, in order."""
        self.samples: list[tuple[Labels, float]] = []

    @property
    def sample_name(self) -> str:
        """The name the samples are exposed under (a counter's ends in ``_total``)."""
        return self.name + "_total" if self.type == COUNTER else self.name

    def __repr__(self) -> str:
        return f"<Family {self.name!r} {self.type} samples={len(self.samples)}>"


def _labelled(kind: str) -> list[tuple[int, str, Any]]:
    """``(seq, label, object)`` for the live objects of ``kind``, oldest first, labels unique."""
    out: list[tuple[int, str, Any]] = []
    used: set[str] = set()
    for seq, obj in live(kind):
        label = label_of(kind, seq, obj)
        if label in used:
            label = f"{label}#{seq}"
        used.add(label)
        out.append((seq, label, obj))
    return out


# ----------------------------------------------------------------------- families, by kind
#
# Each builder takes the objects to report (empty for describe()) and returns its families.

Objects = list[tuple[int, str, Any]]

_POOL_KINDS = (("pool", "asyncio"), ("thread_pool", "thread"), ("process_pool", "process"))

# Why a process pool's worker process ended: (label value, field of ProcessPoolStatistics).
_REPLACEMENTS = (("crashed", "crashed"), ("killed", "killed"), ("recycled", "recycled"))


def _pools(objects: list[tuple[str, str, Any]]) -> list[Family]:
    def fam(name: str, type: str, help: str, *extra: str) -> Family:
        return Family(name, type, help, ("pool", "kind", *extra))

    workers = fam(
        "poolkit_pool_workers",
        GAUGE,
        "Workers alive, by state: busy (running a call, or in a ThreadPool still stuck in one "
        "that timed out) or idle (waiting for a job).",
        "state",
    )
    target = fam(
        "poolkit_pool_target_workers",
        GAUGE,
        "Workers the pool keeps (its maximum, for an elastic pool).",
    )
    queued = fam("poolkit_pool_queued", GAUGE, "Jobs accepted and waiting for a worker.")
    running = fam("poolkit_pool_running", GAUGE, "Jobs being run.")
    closed = fam("poolkit_pool_closed", GAUGE, "1 once the pool has stopped accepting jobs.")
    submitted = fam("poolkit_pool_submitted", COUNTER, "Jobs accepted.")
    started = fam(
        "poolkit_pool_started", COUNTER, "Jobs a worker has begun (a retry does not count again)."
    )
    jobs = fam(
        "poolkit_pool_jobs",
        COUNTER,
        "Jobs finished, by outcome: succeeded, failed (raised, after any retries), cancelled "
        "(queued or running), timed_out (ran past the pool's timeout), handed_back (never "
        "started; handed back by a cancelling shutdown).",
        "outcome",
    )
    rejected = fam(
        "poolkit_pool_rejected", COUNTER, "submit_nowait calls refused because the queue was full."
    )
    retries = fam("poolkit_pool_retries", COUNTER, "Attempts beyond each job's first.")
    wait = fam(
        "poolkit_pool_queue_wait_seconds",
        COUNTER,
        "Seconds jobs spent queued, summed (divide by started for the mean).",
    )
    run = fam("poolkit_pool_run_seconds", COUNTER, "Seconds jobs spent running, summed.")
    replaced = fam(
        "poolkit_pool_worker_replacements",
        COUNTER,
        "Worker processes of a process pool that ended, by reason: crashed (died by itself: a "
        "segfault, os._exit, a signal from outside such as the OOM killer), killed (stopped by "
        "the pool: a job ran past its timeout, or a running job was cancelled) or recycled "
        "(retired by max_jobs_per_worker or max_memory). An open pool replaces each at once.",
        "reason",
    )
    processes = fam(
        "poolkit_pool_worker_process_info",
        GAUGE,
        "1 for each worker process of a process pool alive now: its process id, and how the "
        "pool starts processes (forkserver, spawn or fork).",
        "pid",
        "start_method",
    )
    for flavour, label, pool in objects:
        s = pool.statistics()
        ids = {"pool": label, "kind": flavour}
        workers.samples += [
            ({"pool": label, "kind": flavour, "state": "busy"}, s.busy),
            ({"pool": label, "kind": flavour, "state": "idle"}, s.idle),
        ]
        target.samples.append((ids, s.target_workers))
        queued.samples.append((ids, s.queued))
        running.samples.append((ids, s.running))
        closed.samples.append((ids, int(s.closed)))
        submitted.samples.append((ids, s.submitted))
        started.samples.append((ids, s.started))
        jobs.samples += [
            ({"pool": label, "kind": flavour, "outcome": "succeeded"}, s.succeeded),
            ({"pool": label, "kind": flavour, "outcome": "failed"}, s.failed),
            ({"pool": label, "kind": flavour, "outcome": "cancelled"}, s.cancelled),
            ({"pool": label, "kind": flavour, "outcome": "timed_out"}, s.timed_out),
            ({"pool": label, "kind": flavour, "outcome": "handed_back"}, s.handed_back),
        ]
        rejected.samples.append((ids, s.rejected))
        retries.samples.append((ids, s.retried))
        wait.samples.append((ids, s.queue_wait_total))
        run.samples.append((ids, s.run_time_total))
        pids = getattr(s, "worker_pids", None)
        if pids is not None:  # a ProcessPool
            replaced.samples += [
                ({"pool": label, "kind": flavour, "reason": reason}, getattr(s, field))
                for reason, field in _REPLACEMENTS
            ]
            method = str(s.start_method)
            processes.samples += [
                ({"pool": label, "kind": flavour, "pid": str(pid), "start_method": method}, 1)
                for pid in pids
            ]
    return [
        workers,
        target,
        queued,
        running,
        closed,
        submitted,
        started,
        jobs,
        rejected,
        retries,
        wait,
        run,
        replaced,
        processes,
    ]


def _channels(objects: Objects) -> list[Family]:
    def fam(name: str, type: str, help: str, *extra: str) -> Family:
        return Family(name, type, help, ("channel", *extra))

    buffered = fam(
        "poolkit_channel_buffered", GAUGE, "Items in the buffer that no receiver has taken yet."
    )
    peak = fam("poolkit_channel_peak_buffered", GAUGE, "The most items the buffer has held.")
    capacity = fam(
        "poolkit_channel_capacity",
        GAUGE,
        "Items the buffer holds before send blocks (0: unbuffered; +Inf: unbounded).",
    )
    waiting = fam(
        "poolkit_channel_waiting",
        GAUGE,
        "Tasks and threads blocked on the channel, by operation (send: no room; receive: "
        "nothing to receive).",
        "op",
    )
    closed = fam("poolkit_channel_closed", GAUGE, "1 once the channel has been closed.")
    items = fam(
        "poolkit_channel_items",
        COUNTER,
        "Items that went through the channel, by direction (sent: accepted; received: taken).",
        "direction",
    )
    for _, label, channel in objects:
        s = channel.statistics()
        ids = {"channel": label}
        buffered.samples.append((ids, s.buffered))
        peak.samples.append((ids, s.peak_buffered))
        capacity.samples.append((ids, s.capacity))
        waiting.samples += [
            ({"channel": label, "op": "send"}, s.senders_waiting),
            ({"channel": label, "op": "receive"}, s.receivers_waiting),
        ]
        closed.samples.append((ids, int(s.closed)))
        items.samples += [
            ({"channel": label, "direction": "sent"}, s.items_sent),
            ({"channel": label, "direction": "received"}, s.items_received),
        ]
    return [buffered, peak, capacity, waiting, closed, items]


# Kinds whose families have one label (the object's) and one sample per object, each read from
# one field of its statistics: (family name, type, help, field).
_SIMPLE: dict[str, tuple[tuple[str, str, str, str], ...]] = {
    "limiter": (
        (
            "poolkit_limiter_total_tokens",
            GAUGE,
            "The capacity: the most weight borrowed at once.",
            "total",
        ),
        (
            "poolkit_limiter_borrowed_tokens",
            GAUGE,
            "Weight held now (above total for a while after total was lowered).",
            "borrowed",
        ),
        (
            "poolkit_limiter_peak_borrowed_tokens",
            GAUGE,
            "The most weight held at once.",
            "peak_borrowed",
        ),
        ("poolkit_limiter_waiting", GAUGE, "Tasks and threads queued in acquire.", "waiting"),
        ("poolkit_limiter_acquired", COUNTER, "Successful acquisitions.", "acquired_total"),
    ),
    "bucket": (
        ("poolkit_bucket_rate_tokens_per_second", GAUGE, "Tokens added per second.", "rate"),
        (
            "poolkit_bucket_burst_tokens",
            GAUGE,
            "The bucket's size: the most tokens it holds, and the largest single cost.",
            "burst",
        ),
        (
            "poolkit_bucket_tokens",
            GAUGE,
            "Tokens available now (before the waiters take theirs).",
            "tokens",
        ),
        ("poolkit_bucket_waiting", GAUGE, "Tasks and threads queued in acquire.", "waiting"),
        ("poolkit_bucket_granted", COUNTER, "Successful acquisitions.", "granted_total"),
        ("poolkit_bucket_granted_tokens", COUNTER, "Tokens handed out.", "cost_granted_total"),
    ),
    "per_key": (
        ("poolkit_per_key_keys", GAUGE, "Keys whose limit is alive now.", "keys"),
        (
            "poolkit_per_key_created",
            COUNTER,
            "Per-key limits made (a key forgotten and used again counts twice).",
            "created_total",
        ),
        (
            "poolkit_per_key_forgotten",
            COUNTER,
            "Idle per-key limits forgotten.",
            "forgotten_total",
        ),
        (
            "poolkit_per_key_acquired",
            COUNTER,
            "Successful acquisitions, over all keys.",
            "acquired_total",
        ),
    ),
    # Limits kept in Redis (poolkit.redis): what this process's object has seen and done; the
    # state shared by every process is in Redis, which a scrape does not ask.
    "redis_bucket": (
        (
            "poolkit_redis_bucket_rate_tokens_per_second",
            GAUGE,
            "Tokens added per second, as Redis last reported it (shared by every process).",
            "rate",
        ),
        (
            "poolkit_redis_bucket_burst_tokens",
            GAUGE,
            "The bucket's size, as Redis last reported it.",
            "burst",
        ),
        (
            "poolkit_redis_bucket_waiting",
            GAUGE,
            "Tasks and threads of this process waiting in acquire on this object.",
            "waiting",
        ),
        (
            "poolkit_redis_bucket_granted",
            COUNTER,
            "Acquisitions Redis granted to this object.",
            "granted_total",
        ),
        (
            "poolkit_redis_bucket_granted_tokens",
            COUNTER,
            "Tokens Redis granted to this object.",
            "cost_granted_total",
        ),
        (
            "poolkit_redis_bucket_errors",
            COUNTER,
            "Operations that found Redis unavailable.",
            "errors_total",
        ),
        (
            "poolkit_redis_bucket_fallbacks",
            COUNTER,
            'Acquisitions on_error="allow" or "local" served without Redis.',
            "fallbacks_total",
        ),
    ),
    "redis_limiter": (
        (
            "poolkit_redis_limiter_total_tokens",
            GAUGE,
            "The capacity shared by every process, as Redis last reported it.",
            "total",
        ),
        (
            "poolkit_redis_limiter_held_tokens",
            GAUGE,
            "Weight this object holds in Redis under its lease.",
            "held",
        ),
        (
            "poolkit_redis_limiter_waiting",
            GAUGE,
            "Tasks and threads of this process waiting in acquire on this object.",
            "waiting",
        ),
        (
            "poolkit_redis_limiter_lease_lost",
            GAUGE,
            "1 if a lease of this object was ever lost (LeaseLost was raised), else 0.",
            "lease_lost",
        ),
        (
            "poolkit_redis_limiter_acquired",
            COUNTER,
            "Acquisitions through Redis.",
            "acquired_total",
        ),
        (
            "poolkit_redis_limiter_errors",
            COUNTER,
            "Operations that found Redis unavailable.",
            "errors_total",
        ),
        (
            "poolkit_redis_limiter_fallbacks",
            COUNTER,
            'Acquisitions on_error="allow" or "local" served without Redis.',
            "fallbacks_total",
        ),
    ),
}


def _simple(kind: str, objects: Objects) -> list[Family]:
    """The families of a kind in ``_SIMPLE``, one sample per object in each."""
    families = [
        (Family(name, type, help, (kind,)), field) for name, type, help, field in _SIMPLE[kind]
    ]
    for _, label, obj in objects:
        s = obj.statistics()
        ids = {kind: label}
        for family, field in families:
            value = getattr(s, field)
            family.samples.append((ids, int(value) if isinstance(value, bool) else value))
    return [family for family, _ in families]


# The adaptive limiter's own figures, beside its capacity limiter families (same label).
_ADAPTIVE: tuple[tuple[str, str, str, str], ...] = (
    (
        "poolkit_adaptive_limit",
        GAUGE,
        "The limit the algorithm holds (total is it rounded).",
        "limit",
    ),
    (
        "poolkit_adaptive_latency_seconds",
        GAUGE,
        "Mean latency of the sections in the last window.",
        "latency",
    ),
    (
        "poolkit_adaptive_no_load_latency_seconds",
        GAUGE,
        "The no-load latency the algorithm compares windows with.",
        "no_load_latency",
    ),
    (
        "poolkit_adaptive_overloads",
        COUNTER,
        "Overload signals (429, 503, timeouts).",
        "overloads_total",
    ),
    ("poolkit_adaptive_probes", COUNTER, "No-load probes finished.", "probes_total"),
)


def _adaptive(objects: Objects) -> list[Family]:
    families = [(Family(n, t, h, ("limiter",)), f) for n, t, h, f in _ADAPTIVE]
    for _, label, obj in objects:
        s = obj.statistics()
        if not hasattr(s, "no_load_latency"):
            continue  # a plain CapacityLimiter
        ids = {"limiter": label}
        for family, field in families:
            family.samples.append((ids, getattr(s, field)))
    return [family for family, _ in families]


def _limits(objects: Objects, members_of: dict[int, tuple[str, str]]) -> list[Family]:
    info = Family(
        "poolkit_limits_member_info",
        GAUGE,
        "1 for each member of a Limits: its kind (limiter, bucket, per_key, redis_bucket, "
        "redis_limiter) and its label in that kind's metrics.",
        ("limits", "member_kind", "member"),
    )
    # Members are read from the Limits, not from its statistics(), which would read every
    # member's statistics a second time; they are reported under their own labels already.
    for _, label, limits in objects:
        for member in limits.members:
            found = members_of.get(id(member))
            if found is not None:  # a member made where nothing registers is not exported
                info.samples.append(
                    ({"limits": label, "member_kind": found[0], "member": found[1]}, 1)
                )
    return [info]


def describe() -> list[Family]:
    """Every family :func:`collect` returns, without samples; reads no object."""
    return [
        *_pools([]),
        *_channels([]),
        *_simple("limiter", []),
        *_adaptive([]),
        *_simple("bucket", []),
        *_limits([], {}),
        *_simple("per_key", []),
        *_simple("redis_bucket", []),
        *_simple("redis_limiter", []),
    ]


def collect() -> list[Family]:
    """The families of every live object, each object's ``statistics()`` read once.

    Every family is returned, also those with no samples, so the set of names never changes.
    """
    pools = [
        (flavour, label, obj) for kind, flavour in _POOL_KINDS for _, label, obj in _labelled(kind)
    ]
    limiters, buckets, per_keys = _labelled("limiter"), _labelled("bucket"), _labelled("per_key")
    redis_buckets, redis_limiters = _labelled("redis_bucket"), _labelled("redis_limiter")
    members_of = {
        id(obj): (kind, label)
        for kind, objects in (
            ("limiter", limiters),
            ("bucket", buckets),
            ("per_key", per_keys),
            ("redis_bucket", redis_buckets),
            ("redis_limiter", redis_limiters),
        )
        for _, label, obj in objects
    }
    return [
        *_pools(pools),
        *_channels(_labelled("channel")),
        *_simple("limiter", limiters),
        *_adaptive(limiters),
        *_simple("bucket", buckets),
        *_limits(_labelled("limits"), members_of),
        *_simple("per_key", per_keys),
        *_simple("redis_bucket", redis_buckets),
        *_simple("redis_limiter", redis_limiters),
    ]


# ----------------------------------------------------------------------- text format


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:
        return "NaN"
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    return repr(value)


def exposition(families: list[Family] | None = None) -> str:
    """``families`` (by default, :func:`collect`) in the Prometheus text format, version 0.0.4.

    Served with ``Content-Type: text/plain; version=0.0.4; charset=utf-8``.
    """
    if families is None:
        families = collect()
    lines: list[str] = []
    add = lines.append
    # An object's labels dict is shared by most of its samples, and each label value recurs in
    # every family: format each once.  (Keying by id() is sound: families keeps every dict
    # alive until we return, so no id is reused meanwhile.)
    formatted: dict[int, str] = {}
    escaped: dict[str, str] = {}
    for family in families:
        name = family.sample_name
        add(f"# HELP {name} {_escape_help(family.help)}")
        add(f"# TYPE {name} {family.type}")
        for labels, value in family.samples:
            inner = formatted.get(id(labels))
            if inner is None:
                parts = []
                for k, v in labels.items():
                    e = escaped.get(v)
                    if e is None:
                        e = escaped[v] = _escape_label(v)
                    parts.append(f'{k}="{e}"')
                inner = formatted[id(labels)] = ",".join(parts)
            number = str(value) if type(value) is int else _number(value)
            add(f"{name}{{{inner}}} {number}")
    lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------- JSON

_SECTIONS = {
    "pool": "pools",
    "thread_pool": "pools",
    "process_pool": "pools",
    "channel": "channels",
    "limiter": "limiters",
    "bucket": "buckets",
    "limits": "limits",
    "per_key": "per_keys",
    "redis_bucket": "redis_buckets",
    "redis_limiter": "redis_limiters",
}


_field_names: dict[type, tuple[str, ...]] = {}


def _jsonable(value: Any) -> Any:
    """``value`` as plain JSON data, with no NaN or infinity (``"nan"``, ``"inf"``, ``"-inf"``)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if value != value else "inf" if value > 0 else "-inf"
    names = _field_names.get(type(value))
    if names is None and is_dataclass(value) and not isinstance(value, type):
        names = _field_names[type(value)] = tuple(f.name for f in fields(value))
    if names is not None:
        return {name: _jsonable(getattr(value, name)) for name in names}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def objects_json() -> dict[str, Any]:
    """Every live object with its statistics, grouped by section, for ``/debug/pools``.

    ``{"pools": [{"kind": "pool", "name": "fetch", "seq": 3, "statistics": {...}}, ...], "channels":
    [...], "limiters": [...], "buckets": [...], "limits": [...], "per_keys": [...], "redis_buckets":
    [...], "redis_limiters": [...]}``: ``kind`` is the registry's (``pool``, ``thread_pool``,
    ``process_pool``, ``channel``...), ``name`` the label the metrics use, ``seq`` the
    registration number (creation order). A ``limits`` entry also lists its ``members`` as
    ``{"kind", "name"}``; a ``process_pool``'s statistics include ``worker_pids``, ``crashed``,
    ``killed``, ``recycled`` and ``start_method``. The result passes ``json.dumps(...,
    allow_nan=False)``: infinities and NaN are strings, and anything else that JSON cannot hold is
    its ``str()``.
    """
    labelled = {kind: _labelled(kind) for kind in KINDS}
    names = {id(obj): (kind, label) for kind in KINDS for _, label, obj in labelled[kind]}
    result: dict[str, Any] = {section: [] for section in _SECTIONS.values()}
    for kind in KINDS:
        entries: list[dict[str, Any]] = result[_SECTIONS[kind]]
        for seq, label, obj in labelled[kind]:
            entry: dict[str, Any] = {
                "kind": kind,
                "name": label,
                "seq": seq,
                "statistics": _jsonable(obj.statistics()),
            }
            if kind == "limits":
                entry["members"] = [
                    {"kind": found[0], "name": found[1]}
                    for found in (names.get(id(m)) for m in obj.members)
                    if found is not None
                ]
            entries.append(entry)
    return result
