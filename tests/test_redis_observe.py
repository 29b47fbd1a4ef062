"""Limits kept in Redis show in the metrics, the debug endpoint's JSON and ``poolkit top``.

Each object reports what this process has seen and done (its statistics never call Redis), under
the label of its kind (``redis_bucket``, ``redis_limiter``) and its name.
"""

from __future__ import annotations

import json

from poolkit import Limits
from poolkit._observe import _metrics
from poolkit._tools import _cli
from poolkit.redis import RedisCapacityLimiter, RedisTokenBucket
from tests.redis_support import redis_prefix, redis_url

__all__ = ["redis_prefix", "redis_url"]  # fixtures, used by name


def _samples(families: list[_metrics.Family], name: str, label: str) -> list[float]:
    family = next(f for f in families if f.name == name)
    return [value for labels, value in family.samples if label in labels.values()]


async def test_redis_limits_are_reported_by_name_with_what_they_did(
    redis_url: str, redis_prefix: str
) -> None:
    bucket = RedisTokenBucket(redis_url, "api", "50/s", 10, prefix=redis_prefix, name="api-rate")
    limiter = RedisCapacityLimiter(redis_url, "api", 4, prefix=redis_prefix, name="api-cap")
    try:
        await bucket.acquire(3)
        await bucket.acquire()
        async with limiter:
            families = _metrics.collect()
            assert _samples(families, "poolkit_redis_limiter_held_tokens", "api-cap") == [1]
        families = _metrics.collect()
        assert _samples(families, "poolkit_redis_bucket_granted", "api-rate") == [2]
        assert _samples(families, "poolkit_redis_bucket_granted_tokens", "api-rate") == [4]
        assert _samples(families, "poolkit_redis_bucket_rate_tokens_per_second", "api-rate") == [50]
        assert _samples(families, "poolkit_redis_limiter_held_tokens", "api-cap") == [0]
        assert _samples(families, "poolkit_redis_limiter_acquired", "api-cap") == [1]
        assert _samples(families, "poolkit_redis_limiter_lease_lost", "api-cap") == [0]
        assert _samples(families, "poolkit_redis_limiter_total_tokens", "api-cap") == [4]

        text = _metrics.exposition(families)
        assert 'poolkit_redis_bucket_granted_total{redis_bucket="api-rate"} 2' in text
        assert 'poolkit_redis_limiter_acquired_total{redis_limiter="api-cap"} 1' in text

        dump = json.loads(json.dumps(_metrics.objects_json(), allow_nan=False))
        (b,) = [e for e in dump["redis_buckets"] if e["name"] == "api-rate"]
        assert b["kind"] == "redis_bucket"
        assert b["statistics"]["key"] == "api"
        assert b["statistics"]["granted_total"] == 2
        (lim,) = [e for e in dump["redis_limiters"] if e["name"] == "api-cap"]
        assert lim["statistics"]["total"] == 4

        frame = _cli._Top("http://test", 1.0).frame(dump, 0.0)
        assert "REDIS BUCKETS" in frame and "REDIS LIMITERS" in frame
        assert "granted 2" in frame
    finally:
        await bucket.aclose()
        await limiter.aclose()


async def test_redis_members_of_a_limits_are_linked_to_it(
    redis_url: str, redis_prefix: str
) -> None:
    bucket = RedisTokenBucket(redis_url, "r", "50/s", prefix=redis_prefix, name="shared-rate")
    limiter = RedisCapacityLimiter(redis_url, "c", 4, prefix=redis_prefix, name="shared-cap")
    limits = Limits(limiter, bucket, name="shared-limits")
    try:
        info = next(f for f in _metrics.collect() if f.name == "poolkit_limits_member_info")
        mine = sorted(
            (labels["member_kind"], labels["member"])
            for labels, _ in info.samples
            if labels["limits"] == "shared-limits"
        )
        assert mine == [("redis_bucket", "shared-rate"), ("redis_limiter", "shared-cap")]
        dump = _metrics.objects_json()
        (entry,) = [e for e in dump["limits"] if e["name"] == "shared-limits"]
        assert sorted(m["kind"] for m in entry["members"]) == ["redis_bucket", "redis_limiter"]
        assert {id(m) for m in limits.members} == {id(limiter), id(bucket)}  # (kept alive)
    finally:
        await bucket.aclose()
        await limiter.aclose()


def test_every_redis_family_is_described_without_objects() -> None:
    described = {f.name: f.labels for f in _metrics.describe()}
    for kind in ("redis_bucket", "redis_limiter"):
        rows = _metrics._SIMPLE[kind]
        assert rows
        for name, *_ in rows:
            assert described[name] == (kind,)
