"""Cache tiers for Loader: the Cache protocol, a bounded in-memory cache, and Redis.

A cache answers `mget` with the value, `NOT_FOUND` (a cached "the source has no such
key") or `MISS` (nothing cached), and stores entries with `mset`, each with its own TTL.
Both are one round trip per call.

Example:
    cache = RedisCache("redis://localhost:6379/0", prefix="user:")
    async with Loader(fetch_users, cache=cache, ttl=300, negative_ttl=30) as users:
        user = await users.load(7)
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Generic, Literal, Protocol, TypeAlias, TypeVar

from conveyor.clock import Clock, SystemClock
from conveyor.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["MISS", "NOT_FOUND", "Cache", "CacheMark", "MemoryCache", "RedisCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
K_contra = TypeVar("K_contra", bound=Hashable, contravariant=True)


class CacheMark(enum.Enum):
    """Markers a cache returns or stores in place of a value."""

    MISS = "miss"
    """Nothing is cached for the key (returned by `mget`, never stored)."""
    NOT_FOUND = "not_found"
    """The source has no value for the key (a cached negative answer)."""


MISS: Literal[CacheMark.MISS] = CacheMark.MISS
NOT_FOUND: Literal[CacheMark.NOT_FOUND] = CacheMark.NOT_FOUND

Stored: TypeAlias = "V | Literal[CacheMark.NOT_FOUND]"
"""What may be stored for a key: a value, or the negative answer `NOT_FOUND`."""

# Negative entries in Redis: no JSON document starts with a NUL byte.
_NOT_FOUND_BYTES = b"\x00conveyor:not-found"


class Cache(Protocol[K_contra, V]):
    """A cache tier in front of a Loader's source; one round trip per call.

    Example:
        class MyCache:
            async def mget(self, keys): ...   # -> [value | NOT_FOUND | MISS, ...]
            async def mset(self, entries): ...
            async def delete(self, keys): ...
    """

    async def mget(self, keys: Sequence[K_contra]) -> Sequence[V | CacheMark]:
        """Return, per key and in order, its value, `NOT_FOUND`, or `MISS`."""
        ...

    async def mset(self, entries: Sequence[tuple[K_contra, Stored[V], float]]) -> None:
        """Store `(key, value or NOT_FOUND, ttl_seconds)` entries."""
        ...

    async def delete(self, keys: Sequence[K_contra]) -> None:
        """Forget the given keys."""
        ...


class MemoryCache(Generic[K, V]):
    """An in-process cache with per-entry TTL, bounded by least-recently-used eviction.

    Args:
        max_entries: most entries kept (>= 1); the least recently used go first.
        clock: time source for expiry (inject `FakeClock` in tests).

    Example:
        cache: MemoryCache[int, User] = MemoryCache(max_entries=50_000)
    """

    def __init__(self, max_entries: int = 10_000, *, clock: Clock | None = None) -> None:
        if max_entries < 1:
            raise ConfigError(f"MemoryCache max_entries must be >= 1, got {max_entries}")
        self._max = max_entries
        self._clock: Clock = clock or SystemClock()
        self._data: OrderedDict[K, tuple[Stored[V], float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    async def mget(self, keys: Sequence[K]) -> list[V | CacheMark]:
        """Return, per key, its value, `NOT_FOUND`, or `MISS` (absent or expired)."""
        now = self._clock.monotonic()
        data = self._data
        out: list[V | CacheMark] = []
        for key in keys:
            entry = data.get(key)
            if entry is None:
                out.append(MISS)
            elif entry[1] <= now:
                del data[key]
                out.append(MISS)
            else:
                data.move_to_end(key)
                out.append(entry[0])
        return out

    async def mset(self, entries: Sequence[tuple[K, Stored[V], float]]) -> None:
        """Store entries, each for its TTL in seconds, evicting the least recently used."""
        now = self._clock.monotonic()
        data = self._data
        for key, value, ttl in entries:
            data[key] = (value, now + ttl)
            data.move_to_end(key)
        while len(data) > self._max:
            data.popitem(last=False)

    async def delete(self, keys: Sequence[K]) -> None:
        """Forget the given keys."""
        for key in keys:
            self._data.pop(key, None)


class RedisCache(Generic[K, V]):
    """A Redis cache tier: one MGET per read, one pipelined SET ... EX per write batch.

    Values are encoded with msgspec JSON unless `encode` / `decode` are given; negative
    entries are stored as a reserved NUL-prefixed marker that JSON never produces.

    Args:
        url: a redis:// URL, used when `client` is not given.
        client: an existing `redis.asyncio.Redis` client (not closed by `aclose`).
        prefix: prepended to every key.
        key: turns a loader key into the Redis key's suffix (default `str`).
        encode: value to bytes (default msgspec JSON).
        decode: bytes to value (default msgspec JSON).

    Raises:
        MissingDependency: the `redis` package is not installed.

    Example:
        cache: RedisCache[int, dict[str, str]] = RedisCache("redis://127.0.0.1:6379/0",
                                                             prefix="user:")
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        client: Redis | None = None,
        prefix: str = "conveyor:cache:",
        key: Callable[[K], str] = str,
        encode: Callable[[V], bytes] | None = None,
        decode: Callable[[bytes], V] | None = None,
    ) -> None:
        try:
            import msgspec
            import redis.asyncio as aioredis
        except ImportError as err:
            raise MissingDependency(
                "RedisCache needs the redis client: pip install 'conveyor[redis]'"
            ) from err
        self._owns_client = client is None
        self._client: Redis = client or aioredis.Redis.from_url(url)
        self._prefix = prefix
        self._key = key
        self._encode: Callable[[V], bytes] = encode or msgspec.json.encode
        self._decode: Callable[[bytes], V] = decode or msgspec.json.decode

    def _keys(self, keys: Iterable[K]) -> list[str]:
        return [self._prefix + self._key(k) for k in keys]

    async def mget(self, keys: Sequence[K]) -> list[V | CacheMark]:
        """Read every key with one MGET."""
        if not keys:
            return []
        raw = await self._client.mget(self._keys(keys))
        return [self._read(b) for b in raw]

    def _read(self, raw: bytes | str | None) -> V | CacheMark:
        if raw is None:
            return MISS
        if isinstance(raw, str):  # a client made with decode_responses=True
            raw = raw.encode()
        return NOT_FOUND if raw == _NOT_FOUND_BYTES else self._decode(raw)

    async def mset(self, entries: Sequence[tuple[K, Stored[V], float]]) -> None:
        """Write every entry with SET ... PX in one pipelined round trip."""
        if not entries:
            return
        pipe = self._client.pipeline(transaction=False)
        for key, value, ttl in entries:
            data = _NOT_FOUND_BYTES if value is NOT_FOUND else self._encode(value)
            pipe.set(self._prefix + self._key(key), data, px=max(1, round(ttl * 1000)))
        await pipe.execute()

    async def delete(self, keys: Sequence[K]) -> None:
        """Delete the keys with one DEL."""
        if keys:
            await self._client.delete(*self._keys(keys))

    async def aclose(self) -> None:
        """Close the client if this cache created it."""
        if self._owns_client:
            await self._client.aclose()
