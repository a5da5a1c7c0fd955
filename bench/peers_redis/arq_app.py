"""arq 0.28 (installed with --no-deps: it pins redis<6, the project needs redis 8.1).

Worker: ``arq bench.peers_redis.arq_app.WorkerSettings`` (defaults: max_jobs=10,
poll_delay=0.5 s); two processes = two ``arq`` commands.
"""

from __future__ import annotations

import os
import time
from typing import Any, ClassVar

from arq import create_pool
from arq.connections import ArqRedis, RedisSettings

from bench.peers_redis import probe
from bench.peers_redis._gather import WIDTH, gather_n
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

REDIS = RedisSettings.from_dsn(os.environ["BENCH_REDIS_URL"])


async def noop(ctx: dict[str, Any]) -> None:
    probe.hit(time.time())


async def stamp(ctx: dict[str, Any], sent: float) -> None:
    probe.latency(sent)


class WorkerSettings:
    functions: ClassVar[list[Any]] = [noop, stamp]
    redis_settings = REDIS


class Adapter(_Base):
    name = "arq"
    app_module = f"{__name__}.WorkerSettings"
    single_api = "await pool.enqueue_job('noop')"
    bulk_api = f"no bulk API: gather of enqueue_job, {WIDTH} at a time"
    defaults = "max_jobs=10, poll_delay=0.5 s (defaults); 2p: two `arq` processes"
    pool: ArqRedis

    async def open(self) -> None:
        self.pool = await create_pool(REDIS)
        await self.pool.enqueue_job("noop")

    async def close(self) -> None:
        await self.pool.aclose()

    async def enqueue_one(self) -> None:
        await self.pool.enqueue_job("noop")

    async def enqueue_bulk(self, n: int) -> None:
        await gather_n(n, lambda: self.pool.enqueue_job("noop"))

    async def enqueue_stamp(self, sent: float) -> None:
        await self.pool.enqueue_job("stamp", sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        return [[script("arq"), self.app_module]] * processes
