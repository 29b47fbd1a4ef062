"""poolkit.PerKey: a limit per key, made on first use and forgotten when idle."""

from __future__ import annotations

import asyncio
import threading

import pytest

from poolkit import CapacityLimiter, Limits, NotAcquired, PerKey, TokenBucket


async def settle(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def now() -> float:
    return asyncio.get_running_loop().time()


def test_bad_arguments() -> None:
    with pytest.raises(TypeError, match="factory must be a callable"):
        PerKey(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sweep_per_use must be >= 1, got 0"):
        PerKey(lambda: CapacityLimiter(1), sweep_per_use=0)
    bad = PerKey(lambda: "not a limit")  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="must return a CapacityLimiter, TokenBucket or Limits"):
        bad.try_acquire("k")


@pytest.mark.virtual_time
async def test_each_key_is_paced_on_its_own() -> None:
    per_host: PerKey[str, TokenBucket] = PerKey(lambda: TokenBucket("2/s", 1))
    done: dict[str, list[float]] = {"a": [], "b": []}

    async def fetch(host: str) -> None:
        await per_host.acquire(host)
        done[host].append(now())

    await asyncio.gather(*(fetch(h) for h in "ababab"))
    assert done["a"] == pytest.approx([0.0, 0.5, 1.0])
    assert done["b"] == pytest.approx([0.0, 0.5, 1.0])
    assert sorted(per_host.keys()) == ["a", "b"]
    s = per_host.statistics()
    assert (s.keys, s.created_total, s.acquired_total) == (2, 2, 6)


async def test_cap_and_rate_per_key_with_hold() -> None:
    per_host = PerKey(lambda: Limits(CapacityLimiter(2), TokenBucket(1000, 100)))
    inside: dict[str, int] = {}
    peak: dict[str, int] = {}

    async def job(host: str) -> None:
        async with per_host.hold(host):
            inside[host] = inside.get(host, 0) + 1
            peak[host] = max(peak.get(host, 0), inside[host])
            await asyncio.sleep(0)
            inside[host] -= 1

    await asyncio.gather(*(job(h) for h in "xyzxyzxyzxyz"))
    assert peak == {"x": 2, "y": 2, "z": 2}


async def test_idle_limiters_are_forgotten_so_many_keys_stay_cheap() -> None:
    per_key: PerKey[int, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=2)
    for key in range(200_000):
        async with per_key.hold(key):
            pass
    s = per_key.statistics()
    assert s.created_total == 200_000
    assert s.keys <= 3, "idle limits are being kept"
    assert s.forgotten_total == s.created_total - s.keys


async def test_busy_keys_are_kept_and_rotated_not_forgotten() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=1)
    await per_key.acquire("busy")  # held for the whole test
    for key in range(1000):
        await per_key.acquire(f"k{key}")
        per_key.release(f"k{key}")
    assert "busy" in per_key
    assert len(per_key) <= 3
    s = per_key.statistics_for("busy")
    assert s is not None and getattr(s, "borrowed", None) == 1
    assert per_key.statistics_for("never used") is None
    per_key.release("busy")
    assert "busy" not in per_key  # idle on release: forgotten there and then
    assert per_key.sweep() == 0


@pytest.mark.virtual_time
async def test_token_buckets_are_forgotten_only_once_full_again() -> None:
    per_key: PerKey[int, TokenBucket] = PerKey(lambda: TokenBucket(1, 1))
    for key in range(50):
        await per_key.acquire(key)
    assert len(per_key) == 50, "a bucket that still owes tokens was forgotten"
    assert per_key.sweep() == 0
    await asyncio.sleep(1)  # every bucket is full again
    assert per_key.sweep() == 50
    assert len(per_key) == 0
    # A forgotten key starts over with a full bucket, exactly as if it had been kept.
    await per_key.acquire(7)
    assert now() == pytest.approx(1.0)


async def test_a_key_being_acquired_is_never_forgotten() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), sweep_per_use=8)
    await per_key.acquire("k")
    waiter = asyncio.create_task(per_key.acquire("k"))  # pinned while it waits
    await settle()
    per_key.release("k")  # "k" is handed straight to the waiter
    for other in range(20):
        await per_key.acquire(other)
        per_key.release(other)
    await waiter
    assert "k" in per_key
    limit = per_key.statistics_for("k")
    assert limit is not None and getattr(limit, "borrowed", None) == 1


def test_release_of_an_unknown_key_is_an_error() -> None:
    per_key: PerKey[str, CapacityLimiter] = PerKey(lambda: CapacityLimiter(1), name="hosts")
    with pytest.raises(NotAcquired, match="for key 'nope', which holds nothing"):
        per_key.release("nope")
    assert repr(per_key) == "<PerKey 'hosts' keys=0 created=0 forgotten=0 acquired=0>"


def test_threads_hold_blocking() -> None:
    per_key = PerKey(lambda: CapacityLimiter(1))
    inside: dict[int, int] = {}
    clash = []
    guard = threading.Lock()

    def worker(n: int) -> None:
        for i in range(300):
            key = (n + i) % 3
            with per_key.hold_blocking(key):
                with guard:
                    inside[key] = inside.get(key, 0) + 1
                    if inside[key] > 1:
                        clash.append(key)
                with guard:
                    inside[key] -= 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clash == []
    assert per_key.statistics().acquired_total == 1200
