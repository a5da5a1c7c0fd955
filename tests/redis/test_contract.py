"""The backend contract, unchanged, against a real Redis (twice: default and custom prefix)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from conveyor.backends.redis import RedisBackend
from conveyor.clock import FakeClock
from conveyor.testing.contract import BackendContract, Corrupt, PoisonContract


class TestRedisBackend(BackendContract, PoisonContract):
    @pytest.fixture
    async def backend(self, clock: FakeClock, redis_url: str) -> AsyncIterator[RedisBackend]:
        async with RedisBackend(redis_url, clock=clock) as b:
            yield b

    @pytest.fixture
    def corrupt(self, backend: RedisBackend) -> Corrupt:
        async def corrupt(job_id: str, field: str, raw: str) -> None:
            conn = await backend._conn()
            await conn.call("HSET", backend.keys.job("", job_id), field, raw)

        return corrupt


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
