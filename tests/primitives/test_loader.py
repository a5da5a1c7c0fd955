"""Tests of Loader: coalescing, single flight, not-found, errors, the cache tier."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import pytest
import redis.asyncio as aioredis

from conveyor.clock import FakeClock
from conveyor.errors import ClosedError
from conveyor.primitives import Loader, MemoryCache, RedisCache
from conveyor.primitives.cache import MISS, NOT_FOUND, CacheMark, Stored

from .helpers import spin


class Source:
    """A batch function over a dict that records every call."""

    def __init__(self, data: Mapping[int, str], fail: set[int] | None = None) -> None:
        self.data = dict(data)
        self.fail = fail or set()
        self.calls: list[list[int]] = []
        self.running = 0
        self.peak = 0

    async def __call__(self, keys: Sequence[int]) -> Mapping[int, str]:
        self.calls.append(list(keys))
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(0)
        self.running -= 1
        if self.fail & set(keys):
            raise OSError(f"source failed for {sorted(self.fail & set(keys))}")
        return {k: self.data[k] for k in keys if k in self.data}


class DownCache:
    """A cache whose server is down: every call raises."""

    def __init__(self) -> None:
        self.calls = 0

    async def mget(self, keys: Sequence[int]) -> list[str | CacheMark]:
        self.calls += 1
        raise ConnectionError("cache down")

    async def mset(self, entries: Sequence[tuple[int, Stored[str], float]]) -> None:
        self.calls += 1
        raise ConnectionError("cache down")

    async def delete(self, keys: Sequence[int]) -> None:
        raise ConnectionError("cache down")


class HangingCache(DownCache):
    """A cache that never answers."""

    async def mget(self, keys: Sequence[int]) -> list[str | CacheMark]:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


DATA = {i: f"v{i}" for i in range(100)}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be >= 1"),
        ({"max_concurrency": 0}, "max_concurrency must be >= 1"),
        ({"ttl": 0}, "ttl must be > 0"),
        ({"negative_ttl": -1}, "negative_ttl >= 0"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Loader(Source(DATA), **kwargs)  # type: ignore[arg-type]


async def test_load_before_enter_and_after_close_are_clear_errors() -> None:
    loader = Loader(Source(DATA))
    with pytest.raises(RuntimeError, match="use `async with`"):
        await loader.load(1)
    async with loader:
        pass
    with pytest.raises(ClosedError):
        await loader.load(1)


async def test_loads_in_one_iteration_coalesce_and_duplicates_share_one_flight() -> None:
    source = Source(DATA)
    async with Loader(source) as loader:
        values = await asyncio.gather(*(loader.load(k) for k in [3, 1, 3, 2, 1]))
        stats = loader.stats()
    assert values == ["v3", "v1", "v3", "v2", "v1"]
    assert source.calls == [[3, 1, 2]]
    assert (stats.loads, stats.coalesced, stats.source_batches) == (5, 2, 1)


async def test_batches_respect_max_batch_size_and_max_concurrency() -> None:
    source = Source(DATA)
    async with Loader(source, max_batch_size=10, max_concurrency=2) as loader:
        assert await loader.load_many(range(45)) == [f"v{i}" for i in range(45)]
    assert [len(c) for c in source.calls] == [10, 10, 10, 10, 5]
    assert source.peak == 2


async def test_keys_the_source_omits_are_not_found_not_a_hang() -> None:
    async with Loader(Source(DATA)) as loader:
        assert await loader.load_many([1, 500, 2]) == ["v1", None, "v2"]
        assert await loader.load(501) is None
        with pytest.raises(KeyError, match="502"):
            await loader.load_required(502)
        assert await loader.load_required(5) == "v5"
        assert loader.stats().not_found == 3


async def test_source_error_fails_only_that_batchs_keys_and_is_not_cached() -> None:
    source = Source(DATA, fail={7})
    cache: MemoryCache[int, str] = MemoryCache()
    async with Loader(source, max_batch_size=2, cache=cache) as loader:
        out = await asyncio.gather(*(loader.load(k) for k in (7, 8, 9)), return_exceptions=True)
        assert isinstance(out[0], OSError)
        assert isinstance(out[1], OSError)  # same batch as 7
        assert out[2] == "v9"
        assert await cache.mget([7, 8, 9]) == [MISS, MISS, "v9"]
        source.fail.clear()
        assert await loader.load(7) == "v7"  # the error was not cached
        assert loader.stats().errors == 2


async def test_cancelled_caller_does_not_cancel_a_shared_load() -> None:
    source = Source(DATA)
    async with Loader(source) as loader:
        doomed = asyncio.ensure_future(loader.load(4))
        shared = asyncio.ensure_future(loader.load(4))
        await asyncio.sleep(0)
        doomed.cancel()
        assert await shared == "v4"
    assert doomed.cancelled()


async def test_cache_hits_resolve_at_once_and_misses_are_written_back() -> None:
    clock = FakeClock(start=0.0)
    source = Source(DATA)
    cache: MemoryCache[int, str] = MemoryCache(clock=clock)
    await cache.mset([(1, "cached-1", 60.0), (2, NOT_FOUND, 60.0)])
    async with Loader(source, cache=cache, ttl=100, negative_ttl=5) as loader:
        assert await loader.load_many([1, 2, 3, 500]) == ["cached-1", None, "v3", None]
        assert source.calls == [[3, 500]]
        assert await cache.mget([3, 500]) == ["v3", NOT_FOUND]
        clock.advance(5)  # the negative entry expires first
        assert await cache.mget([3, 500]) == ["v3", MISS]
        assert await loader.load_many([3, 500]) == ["v3", None]
        assert source.calls[-1] == [500]
        stats = loader.stats()
    assert (stats.cache_hits, stats.cache_misses) == (3, 3)
    assert (stats.cache_reads, stats.cache_writes) == (2, 2)


async def test_cache_down_falls_through_to_the_source() -> None:
    cache = DownCache()
    async with Loader(Source(DATA), cache=cache) as loader:
        assert await loader.load_many([1, 2]) == ["v1", "v2"]
        await loader.clear(1)
        stats = loader.stats()
    assert stats.cache_errors == 3  # mget, the write-back and the clear
    assert stats.source_keys == 2


async def test_hanging_cache_times_out_and_never_hangs_a_load() -> None:
    async with Loader(Source(DATA), cache=HangingCache(), cache_timeout=0.01) as loader:
        assert await asyncio.wait_for(loader.load(3), timeout=5) == "v3"
        assert loader.stats().cache_errors == 2


async def test_prime_and_clear_act_on_the_cache_tier() -> None:
    source = Source(DATA)
    cache: MemoryCache[int, str] = MemoryCache()
    async with Loader(source, cache=cache) as loader:
        await loader.prime(1, "primed")
        assert await loader.load(1) == "primed"
        await loader.clear(1)
        assert await loader.load(1) == "v1"
    assert source.calls == [[1]]
    async with Loader(source) as bare:
        with pytest.raises(RuntimeError, match="needs a cache tier"):
            await bare.prime(1, "x")


async def test_close_waits_for_loads_in_flight() -> None:
    source = Source(DATA)
    async with Loader(source) as loader:
        pending = asyncio.ensure_future(loader.load(9))
        await spin(1)
    assert await pending == "v9"


async def test_redis_tier_takes_one_round_trip_each_way_per_batch(
    redis_client: aioredis.Redis,
) -> None:
    source = Source(DATA)
    cache: RedisCache[int, str] = RedisCache(client=redis_client, prefix="users:")
    async with Loader(source, cache=cache, max_batch_size=50) as loader:
        assert await loader.load_many(range(20)) == [f"v{i}" for i in range(20)]
        await redis_client.config_resetstat()
        assert await loader.load_many(range(100)) == [f"v{i}" for i in range(100)]
        stats = loader.stats()
    info = await redis_client.info("commandstats")
    assert info["cmdstat_mget"]["calls"] == 2  # 100 keys, batches of 50: two MGETs
    assert info["cmdstat_set"]["calls"] == 80  # the misses, pipelined
    assert stats.cache_writes == 3  # 1 for the first load, then 2 batches with misses
    assert sorted(source.calls[1:]) == [list(range(20, 50)), list(range(50, 100))]


async def test_load_many_with_duplicates_and_a_failing_batch() -> None:
    source = Source(DATA, fail={500})
    async with Loader(source, max_batch_size=3) as loader:
        assert await loader.load_many([1, 2, 1, 3, 2]) == ["v1", "v2", "v1", "v3", "v2"]
        assert source.calls == [[1, 2, 3]]
        with pytest.raises(OSError, match="500"):
            await loader.load_many([4, 500, 5])
        assert await loader.load_many([]) == []
        assert loader.stats().in_flight == 0


async def test_cancelled_load_many_does_not_disturb_other_callers() -> None:
    async with Loader(Source(DATA)) as loader:
        doomed = asyncio.ensure_future(loader.load_many([1, 2]))
        other = loader.load(2)
        await asyncio.sleep(0)
        doomed.cancel()
        assert await other == "v2"
    assert doomed.cancelled()
