"""poolkit._observe._metrics and poolkit.prometheus: live objects as Prometheus metrics and JSON.

Every check scrapes twice over, through ``_metrics.exposition()`` and through
``PoolkitCollector`` in a ``prometheus_client`` registry, parses the text back with
``prometheus_client``'s parser and compares the samples with the objects' own ``statistics()``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import importlib
import json
import math
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip(
    "prometheus_client", reason="poolkit.prometheus needs prometheus_client (the 'test' extra)"
)

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from poolkit import (
    CapacityLimiter,
    CapacityLimiterStatistics,
    Channel,
    ChannelStatistics,
    Limits,
    PerKey,
    PerKeyStatistics,
    PoolStatistics,
    ThreadPool,
    TokenBucket,
    TokenBucketStatistics,
    WorkerPool,
)
from poolkit._core._registry import KINDS, label_of, live
from poolkit._observe import _metrics
from poolkit.prometheus import PoolkitCollector

Key = tuple[str, frozenset[tuple[str, str]]]
Series = dict[Key, float]


def key(name: str, **labels: str) -> Key:
    return name, frozenset(labels.items())


def parse(text: str) -> Series:
    series: Series = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            k = key(sample.name, **sample.labels)
            assert k not in series, f"duplicate series {k}"
            series[k] = sample.value
    return series


def collector_text() -> str:
    registry = CollectorRegistry()
    registry.register(PoolkitCollector())
    return generate_latest(registry).decode()


SOURCES: dict[str, Callable[[], str]] = {
    "exposition": _metrics.exposition,
    "collector": collector_text,
}


@pytest.fixture(params=sorted(SOURCES))
def scrape(request: pytest.FixtureRequest) -> Callable[[], Series]:
    text = SOURCES[request.param]
    return lambda: parse(text())


def of(series: Series, label: str, value: str) -> Series:
    """The series of one object: those whose ``label`` is ``value``."""
    return {k: v for k, v in series.items() if (label, value) in k[1]}


def of_name(series: Series, name: str) -> Series:
    return {k: v for k, v in series.items() if k[0] == name}


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def wait_until(predicate: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def seq_of(kind: str, obj: object) -> int:
    return next(seq for seq, o in live(kind) if o is obj)


def label(kind: str, obj: object) -> str:
    return label_of(kind, seq_of(kind, obj), obj)


# ----------------------------------------------------------------------- what each object shows
#
# Written from the statistics dataclasses, field by field, apart from _metrics' own tables.

OUTCOMES = ("succeeded", "failed", "cancelled", "timed_out", "handed_back")


def pool_series(label: str, kind: str, s: PoolStatistics) -> Series:
    ids = {"pool": label, "kind": kind}
    return {
        key("poolkit_pool_workers", **ids, state="busy"): s.busy,
        key("poolkit_pool_workers", **ids, state="idle"): s.idle,
        key("poolkit_pool_target_workers", **ids): s.target_workers,
        key("poolkit_pool_queued", **ids): s.queued,
        key("poolkit_pool_running", **ids): s.running,
        key("poolkit_pool_closed", **ids): s.closed,
        key("poolkit_pool_submitted_total", **ids): s.submitted,
        key("poolkit_pool_started_total", **ids): s.started,
        **{key("poolkit_pool_jobs_total", **ids, outcome=o): getattr(s, o) for o in OUTCOMES},
        key("poolkit_pool_rejected_total", **ids): s.rejected,
        key("poolkit_pool_retries_total", **ids): s.retried,
        key("poolkit_pool_queue_wait_seconds_total", **ids): s.queue_wait_total,
        key("poolkit_pool_run_seconds_total", **ids): s.run_time_total,
    }


def channel_series(label: str, s: ChannelStatistics) -> Series:
    return {
        key("poolkit_channel_buffered", channel=label): s.buffered,
        key("poolkit_channel_peak_buffered", channel=label): s.peak_buffered,
        key("poolkit_channel_capacity", channel=label): s.capacity,
        key("poolkit_channel_waiting", channel=label, op="send"): s.senders_waiting,
        key("poolkit_channel_waiting", channel=label, op="receive"): s.receivers_waiting,
        key("poolkit_channel_closed", channel=label): s.closed,
        key("poolkit_channel_items_total", channel=label, direction="sent"): s.items_sent,
        key("poolkit_channel_items_total", channel=label, direction="received"): s.items_received,
    }


def limiter_series(label: str, s: CapacityLimiterStatistics) -> Series:
    return {
        key("poolkit_limiter_total_tokens", limiter=label): s.total,
        key("poolkit_limiter_borrowed_tokens", limiter=label): s.borrowed,
        key("poolkit_limiter_peak_borrowed_tokens", limiter=label): s.peak_borrowed,
        key("poolkit_limiter_waiting", limiter=label): s.waiting,
        key("poolkit_limiter_acquired_total", limiter=label): s.acquired_total,
    }


def bucket_series(label: str, s: TokenBucketStatistics) -> Series:
    return {
        key("poolkit_bucket_rate_tokens_per_second", bucket=label): s.rate,
        key("poolkit_bucket_burst_tokens", bucket=label): s.burst,
        key("poolkit_bucket_tokens", bucket=label): s.tokens,
        key("poolkit_bucket_waiting", bucket=label): s.waiting,
        key("poolkit_bucket_granted_total", bucket=label): s.granted_total,
        key("poolkit_bucket_granted_tokens_total", bucket=label): s.cost_granted_total,
    }


def per_key_series(label: str, s: PerKeyStatistics) -> Series:
    return {
        key("poolkit_per_key_keys", per_key=label): s.keys,
        key("poolkit_per_key_created_total", per_key=label): s.created_total,
        key("poolkit_per_key_forgotten_total", per_key=label): s.forgotten_total,
        key("poolkit_per_key_acquired_total", per_key=label): s.acquired_total,
    }


# ----------------------------------------------------------------------- each kind


async def test_worker_pool(scrape: Callable[[], Series]) -> None:
    gate = asyncio.Event()

    def fail() -> None:
        raise ValueError("boom")

    async with WorkerPool(workers=2, queue_size=4, name="metrics-workers") as pool:
        with pytest.raises(ValueError, match="boom"):
            await (await pool.submit(fail))
        assert await (await pool.submit(int, "3")) == 3
        jobs = [await pool.submit(gate.wait) for _ in range(4)]
        await settle()
        series = scrape()
        s = pool.statistics()
        assert of(series, "pool", "metrics-workers") == pool_series("metrics-workers", "asyncio", s)
        ids = {"pool": "metrics-workers", "kind": "asyncio"}
        assert series[key("poolkit_pool_workers", **ids, state="busy")] == 2
        assert series[key("poolkit_pool_queued", **ids)] == 2
        assert series[key("poolkit_pool_submitted_total", **ids)] == 6
        assert series[key("poolkit_pool_jobs_total", **ids, outcome="failed")] == 1
        assert series[key("poolkit_pool_jobs_total", **ids, outcome="succeeded")] == 1
        gate.set()
        await asyncio.gather(*jobs)
    series = scrape()
    assert series[key("poolkit_pool_closed", **ids)] == 1
    assert series[key("poolkit_pool_jobs_total", **ids, outcome="succeeded")] == 5


def test_thread_pool(scrape: Callable[[], Series]) -> None:
    gate = threading.Event()
    with ThreadPool(workers=2, queue_size=2, name="metrics-threads") as pool:
        assert pool.submit(int, "3").result() == 3
        jobs = [pool.submit(gate.wait) for _ in range(3)]
        wait_until(lambda: pool.statistics().busy == 2)
        series = scrape()
        s = pool.statistics()
        assert of(series, "pool", "metrics-threads") == pool_series("metrics-threads", "thread", s)
        ids = {"pool": "metrics-threads", "kind": "thread"}
        assert series[key("poolkit_pool_workers", **ids, state="busy")] == 2
        assert series[key("poolkit_pool_workers", **ids, state="idle")] == 0
        assert series[key("poolkit_pool_queued", **ids)] == 1
        assert series[key("poolkit_pool_target_workers", **ids)] == 2
        assert series[key("poolkit_pool_run_seconds_total", **ids)] > 0
        gate.set()
        for job in jobs:
            assert job.result() is True


async def test_channels(scrape: Callable[[], Series]) -> None:
    buffered = Channel[int](4, name="metrics-buffered")
    for i in range(3):
        buffered.send_nowait(i)
    assert buffered.receive_nowait() == 0
    unbounded = Channel[int](math.inf, name="metrics-unbounded")
    closed = Channel[int](name="metrics-closed")
    closed.close()
    no_receiver = Channel[int](name="metrics-no-receiver")
    no_sender = Channel[int](name="metrics-no-sender")
    sender = asyncio.create_task(no_receiver.send(1))
    receiver = asyncio.create_task(no_sender.receive())
    try:
        await settle()
        series = scrape()
        for channel in (buffered, unbounded, closed, no_receiver, no_sender):
            s = channel.statistics()
            assert s.name is not None
            assert of(series, "channel", s.name) == channel_series(s.name, s)

        assert series[key("poolkit_channel_buffered", channel="metrics-buffered")] == 2
        assert series[key("poolkit_channel_peak_buffered", channel="metrics-buffered")] == 3
        items = "poolkit_channel_items_total"
        assert series[key(items, channel="metrics-buffered", direction="sent")] == 3
        assert series[key(items, channel="metrics-buffered", direction="received")] == 1
        assert series[key("poolkit_channel_capacity", channel="metrics-unbounded")] == math.inf
        assert series[key("poolkit_channel_capacity", channel="metrics-closed")] == 0
        assert series[key("poolkit_channel_closed", channel="metrics-closed")] == 1
        waiting = "poolkit_channel_waiting"
        assert series[key(waiting, channel="metrics-no-receiver", op="send")] == 1
        assert series[key(waiting, channel="metrics-no-receiver", op="receive")] == 0
        assert series[key(waiting, channel="metrics-no-sender", op="receive")] == 1
    finally:
        sender.cancel()
        receiver.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)


async def test_limiter(scrape: Callable[[], Series]) -> None:
    limiter = CapacityLimiter(3, name="metrics-limiter")
    assert limiter.try_acquire(2)
    waiter = asyncio.create_task(limiter.acquire(2))
    try:
        await settle()
        series = scrape()
        expected = limiter_series("metrics-limiter", limiter.statistics())
        assert of(series, "limiter", "metrics-limiter") == expected
        assert series[key("poolkit_limiter_borrowed_tokens", limiter="metrics-limiter")] == 2
        assert series[key("poolkit_limiter_waiting", limiter="metrics-limiter")] == 1
        assert series[key("poolkit_limiter_total_tokens", limiter="metrics-limiter")] == 3
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
    limiter.release(2)
    series = scrape()
    assert series[key("poolkit_limiter_borrowed_tokens", limiter="metrics-limiter")] == 0
    assert series[key("poolkit_limiter_acquired_total", limiter="metrics-limiter")] == 1


async def test_token_bucket(scrape: Callable[[], Series]) -> None:
    now = 100.0
    bucket = TokenBucket(10, 5, name="metrics-bucket", clock=lambda: now)
    assert bucket.try_acquire(3)
    waiter = asyncio.create_task(bucket.acquire(5))
    try:
        await settle()
        series = scrape()
        expected = bucket_series("metrics-bucket", bucket.statistics())
        assert of(series, "bucket", "metrics-bucket") == expected
        assert series[key("poolkit_bucket_tokens", bucket="metrics-bucket")] == 2
        assert series[key("poolkit_bucket_waiting", bucket="metrics-bucket")] == 1
        assert series[key("poolkit_bucket_rate_tokens_per_second", bucket="metrics-bucket")] == 10
        assert series[key("poolkit_bucket_granted_tokens_total", bucket="metrics-bucket")] == 3
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


async def test_limits_and_per_key(scrape: Callable[[], Series]) -> None:
    cap = CapacityLimiter(4, name="metrics-cap")
    rate = TokenBucket(100, name="metrics-rate")
    hosts: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), name="metrics-hosts")
    limits = Limits(cap, rate, hosts, name="metrics-limits")
    hosts_label = label("per_key", hosts)  # see test_a_named_per_key_is_labelled_by_its_name
    limiters_before = len(of_name(scrape(), "poolkit_limiter_total_tokens"))
    await limits.acquire(key="a")
    await limits.acquire(key="b")
    try:
        series = scrape()
        s = hosts.statistics()
        assert of(series, "per_key", hosts_label) == per_key_series(hosts_label, s)
        assert series[key("poolkit_per_key_keys", per_key=hosts_label)] == 2
        assert series[key("poolkit_per_key_acquired_total", per_key=hosts_label)] == 2
        assert series[key("poolkit_limiter_borrowed_tokens", limiter="metrics-cap")] == 2
        # The keys' limiters are reported through their PerKey only.
        assert len(of_name(series, "poolkit_limiter_total_tokens")) == limiters_before
        info = "poolkit_limits_member_info"
        assert of(series, "limits", "metrics-limits") == {
            key(info, limits="metrics-limits", member_kind="limiter", member="metrics-cap"): 1,
            key(info, limits="metrics-limits", member_kind="bucket", member="metrics-rate"): 1,
            key(info, limits="metrics-limits", member_kind="per_key", member=hosts_label): 1,
        }
    finally:
        limits.release(key="a")
        limits.release(key="b")
    assert scrape()[key("poolkit_per_key_keys", per_key=hosts_label)] == 0


def test_a_named_per_key_is_labelled_by_its_name(scrape: Callable[[], Series]) -> None:
    hosts: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), name="metrics-named")
    assert of(scrape(), "per_key", "metrics-named") == per_key_series(
        "metrics-named", hosts.statistics()
    )


# ----------------------------------------------------------------------- labels and lifetimes


def test_dead_objects_disappear(scrape: Callable[[], Series]) -> None:
    channel = Channel[int](name="metrics-ephemeral")
    limiter = CapacityLimiter(1, name="metrics-ephemeral")
    series = scrape()
    assert of(series, "channel", "metrics-ephemeral")
    assert of(series, "limiter", "metrics-ephemeral")
    del channel, limiter
    gc.collect()
    series = scrape()
    assert not of(series, "channel", "metrics-ephemeral")
    assert not of(series, "limiter", "metrics-ephemeral")


NASTY = ['say "hi"', "back\\slash", "two\nlines", 'all \\ " \n \\n of them', "ünïcödé ✓"]


@pytest.mark.parametrize("name", NASTY)
def test_label_values_survive_the_round_trip(scrape: Callable[[], Series], name: str) -> None:
    channel = Channel[int](2, name=name)
    channel.send_nowait(1)
    series = scrape()
    assert of(series, "channel", name) == channel_series(name, channel.statistics())
    assert series[key("poolkit_channel_buffered", channel=name)] == 1


def test_unnamed_objects_are_labelled_by_kind_and_seq(scrape: Callable[[], Series]) -> None:
    channel = Channel[int]()
    limiter = CapacityLimiter(2)
    pool = WorkerPool(workers=3)
    threads = ThreadPool(workers=1)
    series = scrape()
    label = f"channel-{seq_of('channel', channel)}"
    assert re.fullmatch(r"channel-\d+", label)
    assert of(series, "channel", label) == channel_series(label, channel.statistics())
    label = f"limiter-{seq_of('limiter', limiter)}"
    assert of(series, "limiter", label) == limiter_series(label, limiter.statistics())
    label = f"pool-{seq_of('pool', pool)}"
    assert of(series, "pool", label) == pool_series(label, "asyncio", pool.statistics())
    assert series[key("poolkit_pool_target_workers", pool=label, kind="asyncio")] == 3
    label = f"thread_pool-{seq_of('thread_pool', threads)}"
    assert of(series, "pool", label) == pool_series(label, "thread", threads.statistics())
    threads.shutdown()


def test_repeated_names_stay_distinct(scrape: Callable[[], Series]) -> None:
    first = Channel[int](1, name="metrics-twin")
    second = Channel[int](2, name="metrics-twin")
    series = scrape()  # parse() fails on a duplicate series
    assert series[key("poolkit_channel_capacity", channel="metrics-twin")] == 1
    label = f"metrics-twin#{seq_of('channel', second)}"
    assert series[key("poolkit_channel_capacity", channel=label)] == 2
    del first


# ----------------------------------------------------------------------- the formats


def test_both_outputs_describe_the_same_families() -> None:
    own = {
        (f.name, f.type, f.documentation)
        for f in text_string_to_metric_families(_metrics.exposition(_metrics.describe()))
    }
    theirs = {
        (f.name, f.type, f.documentation) for f in text_string_to_metric_families(collector_text())
    }
    assert own == theirs
    assert len(own) == len(_metrics.describe())
    assert {f.name for f in _metrics.collect()} == {f.name for f in _metrics.describe()}


def test_counters_are_written_as_prometheus_client_writes_them() -> None:
    text = _metrics.exposition()
    assert "# HELP poolkit_channel_items_total " in text
    assert "# TYPE poolkit_channel_items_total counter\n" in text
    assert "# TYPE poolkit_channel_buffered gauge\n" in text
    for family in _metrics.describe():
        assert not family.name.endswith("_total")
        assert family.sample_name.endswith("_total") == (family.type == "counter")
        assert re.fullmatch(r"poolkit_[a-z_]+", family.name)


def test_special_values() -> None:
    family = _metrics.Family("poolkit_test_values", "gauge", "Odd values.\nTwo lines \\", ("x",))
    values = {"inf": math.inf, "-inf": -math.inf, "int": 7, "float": 0.1, "big": 1e300}
    family.samples += [({"x": k}, v) for k, v in values.items()]
    family.samples.append(({"x": "nan"}, math.nan))
    text = _metrics.exposition([family])
    assert 'poolkit_test_values{x="inf"} +Inf\n' in text
    assert 'poolkit_test_values{x="int"} 7\n' in text
    (parsed,) = text_string_to_metric_families(text)
    assert parsed.documentation == "Odd values.\nTwo lines \\"
    got = {s.labels["x"]: s.value for s in parsed.samples}
    assert math.isnan(got.pop("nan"))
    assert got == values


def test_collector_registration() -> None:
    registry = CollectorRegistry(auto_describe=True)
    collector = PoolkitCollector()
    registry.register(collector)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PoolkitCollector())
    registry.unregister(collector)


def test_registering_reads_no_object(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> list[_metrics.Family]:
        raise AssertionError("collect() called at registration")

    monkeypatch.setattr(_metrics, "collect", refuse)
    CollectorRegistry(auto_describe=True).register(PoolkitCollector())


def test_a_helpful_error_without_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("prometheus_client", "prometheus_client.core", "prometheus_client.registry"):
        monkeypatch.setitem(sys.modules, name, None)  # makes "import name" fail
    monkeypatch.delitem(sys.modules, "poolkit.prometheus")
    with pytest.raises(ImportError, match=re.escape("pip install 'poolkit[prometheus]'")):
        importlib.import_module("poolkit.prometheus")


def test_restricted_registry_filters_by_name() -> None:
    channel = Channel[int](name="metrics-filtered")
    registry = CollectorRegistry()
    registry.register(PoolkitCollector())
    restricted = registry.restricted_registry(["poolkit_channel_capacity"])
    series = parse(generate_latest(restricted).decode())
    assert series[key("poolkit_channel_capacity", channel="metrics-filtered")] == 0
    assert {name for name, _ in series} == {"poolkit_channel_capacity"}
    del channel


async def test_collecting_from_another_thread() -> None:
    gate = asyncio.Event()
    async with WorkerPool(workers=2, name="metrics-cross-thread") as pool:
        jobs = [await pool.submit(gate.wait) for _ in range(2)]
        await settle()
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        texts: list[str] = []

        def scrape_in_thread() -> None:
            texts.append(_metrics.exposition())
            loop.call_soon_threadsafe(done.set)

        thread = threading.Thread(target=scrape_in_thread)
        thread.start()
        await done.wait()
        thread.join()
        (text,) = texts
        ids = {"pool": "metrics-cross-thread", "kind": "asyncio"}
        assert parse(text)[key("poolkit_pool_running", **ids)] == 2
        gate.set()
        await asyncio.gather(*jobs)


# ----------------------------------------------------------------------- JSON


def test_objects_json() -> None:
    unbounded = Channel[int](math.inf, name="metrics-json")
    unbounded.send_nowait(1)
    cap = CapacityLimiter(2)
    hosts: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket(1), name="metrics-json-hosts")
    limits = Limits(cap, hosts, name="metrics-json-limits")
    hosts_label = label("per_key", hosts)
    pool = ThreadPool(workers=1, name="metrics-json-pool")

    dump = _metrics.objects_json()
    decoded = json.loads(json.dumps(dump, allow_nan=False))
    assert decoded == dump
    assert set(dump) == {
        "pools",
        "channels",
        "limiters",
        "buckets",
        "limits",
        "per_keys",
        "redis_buckets",
        "redis_limiters",
    }

    (entry,) = [e for e in dump["channels"] if e["name"] == "metrics-json"]
    assert entry["kind"] == "channel"
    assert entry["seq"] == seq_of("channel", unbounded)
    assert entry["statistics"]["capacity"] == "inf"
    assert entry["statistics"] == {
        **dataclasses.asdict(unbounded.statistics()),
        "capacity": "inf",
    }
    (entry,) = [e for e in dump["pools"] if e["name"] == "metrics-json-pool"]
    assert entry["kind"] == "thread_pool"
    assert entry["statistics"] == dataclasses.asdict(pool.statistics())
    (entry,) = [e for e in dump["limits"] if e["name"] == "metrics-json-limits"]
    assert entry["members"] == [
        {"kind": "limiter", "name": f"limiter-{seq_of('limiter', cap)}"},
        {"kind": "per_key", "name": hosts_label},
    ]
    assert [m["name"] for m in entry["statistics"]["members"]] == [None, "metrics-json-hosts"]
    assert limits.members[1] is hosts
    pool.shutdown()


def test_json_values() -> None:
    class Opaque:
        def __str__(self) -> str:
            return "opaque"

    value: Any = {1: (math.nan, -math.inf, math.inf, 1.5, True, None), "x": [Opaque()]}
    assert _metrics._jsonable(value) == {
        "1": ["nan", "-inf", "inf", 1.5, True, None],
        "x": ["opaque"],
    }
    assert set(_metrics._SECTIONS) == set(KINDS)


async def test_a_pools_own_wrapper_of_its_limit_is_not_listed() -> None:
    before = {seq for seq, _ in live("limits")}
    bucket = TokenBucket(100, name="only-the-users-limit")
    async with WorkerPool(workers=1, limit=bucket, name="limited") as pool:
        await (await pool.submit(asyncio.sleep, 0))
        assert {seq for seq, _ in live("limits")} == before
        assert any(obj is bucket for _, obj in live("bucket"))
