"""Loader: DataLoader-style key loading, coalesced into batches, single-flight, cache in front.

Example:
    async def fetch_users(ids: Sequence[int]) -> Mapping[int, User]:
        return {u.id: u for u in await db.users_by_id(ids)}

    async with Loader(fetch_users, cache=MemoryCache(), ttl=60) as users:
        alice, bob = await asyncio.gather(users.load(1), users.load(2))   # one fetch_users call
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Generic, Self, TypeAlias, TypeVar

from conveyor.errors import ClosedError, ConfigError, StateError
from conveyor.primitives.cache import MISS, NOT_FOUND, Cache, CacheMark, Stored
from conveyor.primitives.limiter import CapacityLimiter

__all__ = ["BatchFn", "Loader", "LoaderStats"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
X = TypeVar("X")

BatchFn: TypeAlias = Callable[[Sequence[K]], Awaitable[Mapping[K, V]]]
"""A source: the values found for some keys; keys left out are "not found"."""


@dataclass(frozen=True, slots=True)
class LoaderStats:
    """A snapshot of a loader's counters.

    Attributes:
        loads: `load` calls (each key of `load_many` counts once).
        coalesced: loads that joined a load of the same key already in flight.
        cache_hits: keys answered by the cache tier (negative entries included).
        cache_misses: keys the cache tier did not have.
        cache_reads: `mget` round trips.
        cache_writes: `mset` round trips.
        cache_errors: cache calls that failed or timed out (the source was used instead).
        source_batches: `batch_fn` calls.
        source_keys: keys sent to `batch_fn`.
        not_found: keys resolved as not found.
        errors: keys failed by a `batch_fn` exception.
        in_flight: distinct keys being loaded now.
    """

    loads: int
    coalesced: int
    cache_hits: int
    cache_misses: int
    cache_reads: int
    cache_writes: int
    cache_errors: int
    source_batches: int
    source_keys: int
    not_found: int
    errors: int
    in_flight: int


class Loader(Generic[K, V]):
    """Coalesces `load(key)` calls made in the same loop iteration into batched source calls.

    Duplicate keys share one load (single flight). Keys are dispatched in batches of at
    most `max_batch_size`. With a `cache`, each batch costs one `mget`: hits resolve at once,
    misses go to `batch_fn` in one call (at most `max_concurrency` calls run at a time),
    and the source's answers are written back in one `mset`: values for `ttl` seconds,
    "not found" for `negative_ttl`. A key the source leaves out is "not found": `load`
    returns None and `load_required` raises `KeyError`. A `batch_fn` exception fails only
    that batch's keys and is not cached. A failing or slow cache (over `cache_timeout`
    seconds) is skipped and counted in `stats().cache_errors`; it never blocks a load.
    Values are not memoized beyond the cache tier: without one, every new load reaches the
    source (a `MemoryCache` gives DataLoader-like memoization, bounded).

    Args:
        batch_fn: async source returning a mapping of the keys it found.
        max_batch_size: most keys per `batch_fn` call (>= 1).
        max_concurrency: most `batch_fn` calls, and most cache reads, running at once (>= 1).
        cache: optional cache tier in front of the source.
        ttl: seconds found values stay cached (> 0).
        negative_ttl: seconds "not found" stays cached (>= 0; 0 = don't cache it).
        cache_timeout: seconds before a cache call is given up (None = no limit).
        name: names the loader in errors.

    Example:
        async with Loader(fetch_users, max_batch_size=500) as users:
            user = await users.load_required(user_id)
    """

    def __init__(
        self,
        batch_fn: BatchFn[K, V],
        *,
        max_batch_size: int = 1000,
        max_concurrency: int = 8,
        cache: Cache[K, V] | None = None,
        ttl: float = 300.0,
        negative_ttl: float = 30.0,
        cache_timeout: float | None = 1.0,
        name: str = "loader",
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"Loader {name!r}: max_batch_size must be >= 1, got {max_batch_size}")
        if max_concurrency < 1:
            raise ConfigError(
                f"Loader {name!r}: max_concurrency must be >= 1, got {max_concurrency}"
            )
        if ttl <= 0 or negative_ttl < 0:
            raise ConfigError(f"Loader {name!r}: ttl must be > 0 and negative_ttl >= 0")
        self._batch_fn = batch_fn
        self._max_batch = max_batch_size
        self._slots = CapacityLimiter(max_concurrency)
        self._cache_slots = CapacityLimiter(max_concurrency)
        self._cache = cache
        self._ttl = ttl
        self._negative_ttl = negative_ttl
        self._cache_timeout = cache_timeout
        self._name = name
        # Single flight: every caller of a key in flight gets its own future (so one
        # caller's cancellation never reaches the others); the key is loaded once.
        self._waiting: dict[K, list[_Waiter[V]]] = {}
        self._queued: list[K] = []  # keys of this iteration, dispatched together
        self._tg: asyncio.TaskGroup | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._loads = self._coalesced = self._hits = self._misses = 0
        self._reads = self._writes = self._cache_errors = 0
        self._batches = self._source_keys = self._not_found = self._errors = 0

    async def __aenter__(self) -> Self:
        if self._tg is not None or self._closed:
            raise StateError(f"Loader {self._name!r} can be entered once")
        self._loop = asyncio.get_running_loop()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop accepting loads and wait for the ones in flight (cancelled on cancellation)."""
        assert self._tg is not None
        self._closed = True
        if self._queued:
            self._dispatch()
        tg, self._tg = self._tg, None
        if exc_type is not None and not issubclass(exc_type, Exception):
            await tg.__aexit__(exc_type, exc, tb)
        else:
            await tg.__aexit__(None, None, None)  # the body's own error propagates as is
        err = ClosedError(f"Loader {self._name!r} closed before this key was loaded")
        for waiters in self._waiting.values():
            for waiter in waiters:
                _fail(waiter, err)
        self._waiting.clear()

    def load(self, key: K) -> asyncio.Future[V | None]:
        """Start loading `key`; await the result: its value, or None if the source has none.

        A plain method returning a future (like aiodataloader), so `gather` over many
        loads creates no task per load. Cancelling the future affects only this caller.

        Raises:
            ClosedError: the loader is closed.
            StateError: the loader was never entered.

        The future raises the `batch_fn` error of the batch that held this key.
        """
        loop = self._running_loop()
        fut: asyncio.Future[V | None] = loop.create_future()
        self._enqueue(key, fut)
        return fut

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._tg is None:
            if self._closed:
                raise ClosedError(f"Loader {self._name!r} is closed")
            raise StateError(f"Loader {self._name!r} is not running: use `async with` first")
        assert self._loop is not None
        return self._loop

    def _enqueue(self, key: K, waiter: _Waiter[V]) -> None:
        self._loads += 1
        waiters = self._waiting.get(key)
        if waiters is not None:
            self._coalesced += 1
            waiters.append(waiter)
            return
        self._waiting[key] = [waiter]
        if not self._queued:
            # Everything loaded until the loop's next iteration joins this dispatch.
            self._running_loop().call_soon(self._dispatch)
        self._queued.append(key)

    async def load_required(self, key: K) -> V:
        """Like `load`, but raise `KeyError(key)` when the source has no value."""
        value = await self.load(key)
        if value is None:
            raise KeyError(key)
        return value

    async def load_many(self, keys: Iterable[K]) -> list[V | None]:
        """Load every key (in one batch where possible); values in order, None if not found.

        Raises:
            Exception: the first error among the keys' loads.
        """
        wanted = list(keys)
        if not wanted:
            return []
        # One future for the whole call, filled slot by slot: no future per key.
        group: _Group[V] = _Group(self._running_loop().create_future(), len(wanted))
        for i, key in enumerate(wanted):
            self._enqueue(key, (group, i))
        return await group.fut

    async def prime(self, key: K, value: V) -> None:
        """Put a known value in the cache tier (and answer a queued load of `key` with it).

        Raises:
            StateError: the loader has no cache tier to hold the value.
        """
        if self._cache is None:
            raise StateError(f"Loader {self._name!r}: prime() needs a cache tier")
        self._resolve(key, value)
        await self._cache_write([(key, value, self._ttl)])

    async def clear(self, key: K) -> None:
        """Forget `key` in the cache tier, so the next load reaches the source."""
        if self._cache is not None:
            try:
                await self._guard(self._cache.delete([key]))
            except Exception:
                self._cache_errors += 1

    def stats(self) -> LoaderStats:
        """Return a snapshot of the counters (see `LoaderStats`)."""
        return LoaderStats(
            loads=self._loads,
            coalesced=self._coalesced,
            cache_hits=self._hits,
            cache_misses=self._misses,
            cache_reads=self._reads,
            cache_writes=self._writes,
            cache_errors=self._cache_errors,
            source_batches=self._batches,
            source_keys=self._source_keys,
            not_found=self._not_found,
            errors=self._errors,
            in_flight=len(self._waiting),
        )

    # -- dispatching -------------------------------------------------------------------

    def _dispatch(self) -> None:
        keys, self._queued = self._queued, []
        if not keys or self._tg is None:
            return
        load = self._from_source if self._cache is None else self._through_cache
        for start in range(0, len(keys), self._max_batch):
            self._tg.create_task(load(keys[start : start + self._max_batch]))

    async def _guard(self, call: Awaitable[X]) -> X:
        if self._cache_timeout is None:
            return await call
        async with asyncio.timeout(self._cache_timeout):
            return await call

    async def _through_cache(self, keys: list[K]) -> None:
        """One mget for `keys`, one source batch for the misses, one mset to write back."""
        assert self._cache is not None
        misses: list[K] = []
        try:
            self._reads += 1
            async with self._cache_slots:  # bound cache reads like source calls
                found = await self._guard(self._cache.mget(keys))
            if len(found) != len(keys):
                raise ConfigError(f"cache returned {len(found)} values for {len(keys)} keys")
        except Exception:
            self._cache_errors += 1  # cache down or broken: every key goes to the source
            misses = keys
        else:
            for key, value in zip(keys, found, strict=True):
                if value is MISS:
                    misses.append(key)
                else:
                    self._hits += 1
                    self._resolve(key, value)
        self._misses += len(misses)
        if misses:
            await self._from_source(misses)

    async def _from_source(self, keys: list[K]) -> None:
        """Load `keys` from the source, resolve them, and write the answers back."""
        async with self._slots:
            self._batches += 1
            self._source_keys += len(keys)
            try:
                found = await self._batch_fn(keys)
            except Exception as exc:
                self._errors += len(keys)
                for key in keys:
                    self._fail(key, exc)  # not cached: the next load tries again
                return
        entries: list[tuple[K, Stored[V], float]] = []
        for key in keys:
            if key in found:
                value = found[key]
                self._resolve(key, value)
                entries.append((key, value, self._ttl))
            else:
                self._not_found += 1
                self._resolve(key, NOT_FOUND)
                if self._negative_ttl > 0:
                    entries.append((key, NOT_FOUND, self._negative_ttl))
        if self._cache is not None and entries:
            await self._cache_write(entries)

    async def _cache_write(self, entries: list[tuple[K, Stored[V], float]]) -> None:
        assert self._cache is not None
        self._writes += 1
        try:
            await self._guard(self._cache.mset(entries))
        except Exception:
            self._cache_errors += 1  # a failed write-back only costs a later miss

    def _resolve(self, key: K, value: V | CacheMark | None) -> None:
        waiters = self._waiting.pop(key, None)
        if waiters is None:
            return  # answered already (by prime)
        result = None if isinstance(value, CacheMark) else value
        for waiter in waiters:
            if isinstance(waiter, tuple):
                waiter[0].put(waiter[1], result)
            elif not waiter.done():  # skip callers who gave up
                waiter.set_result(result)

    def _fail(self, key: K, exc: BaseException) -> None:
        for waiter in self._waiting.pop(key, ()):
            _fail(waiter, exc)


class _Group(Generic[V]):
    """The result of one `load_many` call, filled as its keys resolve."""

    __slots__ = ("fut", "left", "values")

    def __init__(self, fut: asyncio.Future[list[V | None]], size: int) -> None:
        self.fut = fut
        self.values: list[V | None] = [None] * size
        self.left = size

    def put(self, index: int, value: V | None) -> None:
        self.values[index] = value
        self.left -= 1
        if self.left == 0 and not self.fut.done():
            self.fut.set_result(self.values)


# A caller waiting for a key: its own future, or a slot of a load_many call.
_Waiter: TypeAlias = "asyncio.Future[V | None] | tuple[_Group[V], int]"


def _fail(waiter: _Waiter[V], exc: BaseException) -> None:
    fut = waiter[0].fut if isinstance(waiter, tuple) else waiter
    if not fut.done():
        fut.set_exception(exc)
