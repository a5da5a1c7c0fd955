"""Taskiq 0.13 with taskiq-redis 1.2's RedisStreamBroker (the README's example broker; no
result backend, since nothing reads results).

Worker: ``taskiq worker bench.peers_redis.taskiq_app:broker --workers N`` (defaults: 2
worker processes, max 100 async tasks each).
"""

from __future__ import annotations

import os
import time

from taskiq_redis import RedisStreamBroker

from bench.peers_redis import probe
from bench.peers_redis._gather import WIDTH, gather_n
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

broker = RedisStreamBroker(url=os.environ["BENCH_REDIS_URL"])


@broker.task(task_name="noop")
async def noop() -> None:
    probe.hit(time.time())


@broker.task(task_name="stamp")
async def stamp(sent: float) -> None:
    probe.latency(sent)


class Adapter(_Base):
    name = "taskiq"
    app_module = f"{__name__}:broker"
    single_api = "await noop.kiq()"
    bulk_api = f"no bulk API: gather of noop.kiq(), {WIDTH} at a time"
    defaults = "max-async-tasks 100 (default); --workers 1 / --workers 2 (default is 2)"

    async def open(self) -> None:
        await broker.startup()
        await noop.kiq()

    async def close(self) -> None:
        await broker.shutdown()

    async def reset(self) -> None:
        # The consumer group reads from "$" (new messages only): declare it again after a
        # flush, before the backlog is enqueued, as a client's broker.startup() would.
        await broker._declare_consumer_group()

    async def enqueue_one(self) -> None:
        await noop.kiq()

    async def enqueue_bulk(self, n: int) -> None:
        await gather_n(n, noop.kiq)

    async def enqueue_stamp(self, sent: float) -> None:
        await stamp.kiq(sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        return [[script("taskiq"), "worker", self.app_module, "--workers", str(processes)]]
