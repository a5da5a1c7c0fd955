"""Tests of the cache tiers: MemoryCache (TTL, LRU) and RedisCache against a real server."""

from __future__ import annotations

import asyncio

import msgspec
import pytest
import redis.asyncio as aioredis

from conveyor.clock import FakeClock
from conveyor.primitives import MemoryCache, RedisCache
from conveyor.primitives.cache import MISS, NOT_FOUND
from conveyor.testing.redis_server import RedisServer


async def test_memory_cache_expires_entries_by_ttl() -> None:
    clock = FakeClock(start=0.0)
    cache: MemoryCache[str, int] = MemoryCache(clock=clock)
    await cache.mset([("a", 1, 10.0), ("gone", NOT_FOUND, 2.0)])
    assert await cache.mget(["a", "gone", "never"]) == [1, NOT_FOUND, MISS]
    clock.advance(2)
    assert await cache.mget(["a", "gone"]) == [1, MISS]
    clock.advance(8)
    assert await cache.mget(["a"]) == [MISS]
    assert len(cache) == 0


async def test_memory_cache_evicts_least_recently_used() -> None:
    cache: MemoryCache[str, int] = MemoryCache(max_entries=2)
    await cache.mset([("a", 1, 60.0), ("b", 2, 60.0)])
    await cache.mget(["a"])  # "a" is now more recent than "b"
    await cache.mset([("c", 3, 60.0)])
    assert await cache.mget(["a", "b", "c"]) == [1, MISS, 3]
    await cache.delete(["a"])
    assert await cache.mget(["a"]) == [MISS]


def test_memory_cache_bound_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries must be >= 1"):
        MemoryCache(max_entries=0)


async def test_redis_cache_round_trips_values_and_negatives(
    redis_server: RedisServer, redis_client: aioredis.Redis
) -> None:
    cache: RedisCache[int, dict[str, int]] = RedisCache(redis_server.url, prefix="t:")
    try:
        await cache.mset([(1, {"v": 1}, 60.0), (2, NOT_FOUND, 60.0)])
        assert await cache.mget([1, 2, 3]) == [{"v": 1}, NOT_FOUND, MISS]
        assert await redis_client.get("t:1") == b'{"v":1}'
        assert 0 < await redis_client.pttl("t:2") <= 60_000
        await cache.delete([1])
        assert await cache.mget([1]) == [MISS]
        assert await cache.mget([]) == []
    finally:
        await cache.aclose()


async def test_redis_cache_ttl_expires(redis_client: aioredis.Redis) -> None:
    cache: RedisCache[str, str] = RedisCache(client=redis_client)
    await cache.mset([("k", "v", 0.001)])
    # The server expires the key on its own clock (1 ms): a FakeClock can't move it.
    for _ in range(200):
        if await cache.mget(["k"]) == [MISS]:
            break
        await asyncio.sleep(0.005)
    assert await cache.mget(["k"]) == [MISS]


async def test_redis_cache_custom_codec_and_key(redis_client: aioredis.Redis) -> None:
    cache: RedisCache[tuple[str, int], bytes] = RedisCache(
        client=redis_client,
        prefix="p/",
        key=lambda k: f"{k[0]}-{k[1]}",
        encode=lambda v: v[::-1],
        decode=lambda b: b[::-1],
    )
    await cache.mset([(("x", 1), b"abc", 60.0)])
    assert await redis_client.get("p/x-1") == b"cba"
    assert await cache.mget([("x", 1)]) == [b"abc"]


async def test_redis_cache_uses_one_round_trip_per_call(
    redis_client: aioredis.Redis, redis_server: RedisServer
) -> None:
    cache: RedisCache[int, int] = RedisCache(client=redis_client)
    before = await _commands(redis_client)
    await cache.mset([(i, i, 60.0) for i in range(50)])
    await cache.mget(list(range(60)))
    after = await _commands(redis_client)
    assert after["set"] - before["set"] == 50  # pipelined: one round trip, 50 commands
    assert after["mget"] - before["mget"] == 1
    assert msgspec.json.decode(await redis_client.get("conveyor:cache:7") or b"0") == 7


async def _commands(client: aioredis.Redis) -> dict[str, int]:
    stats = await client.info("commandstats")
    return {name: stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("set", "mget")}
