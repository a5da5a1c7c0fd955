"""The backend contract, unchanged, against a real Redis (twice: default and custom prefix)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.testing.contract import BackendContract


class TestRedisBackend(BackendContract):
    @pytest.fixture
    async def backend(self, clock: FakeClock, redis_url: str) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_url, clock=clock) as b:
            yield b


class TestRedisBackendWithPrefix(BackendContract):
    """Another app's jobs under the default prefix stay invisible to this one."""

    @pytest.fixture
    async def backend(self, clock: FakeClock, redis_url: str) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_url, clock=clock) as neighbour:
            from conveyor.testing.contract import make_job

            await neighbour.enqueue([make_job(clock), make_job(clock, queue="low", key="k1")])
            async with RedisBackend(f"{redis_url}?prefix=other-app", clock=clock) as b:
                yield b
            assert sum(sum(c.values()) for c in (await neighbour.counts()).values()) >= 2
