"""Dramatiq 2.2 with its RedisBroker, default middleware.

Worker: ``dramatiq bench.peers_redis.dramatiq_app -p N`` (default: processes = CPU count,
8 threads each).
"""

from __future__ import annotations

import os
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.peers_redis import probe
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="noop")
def noop() -> None:
    probe.hit(time.time())


@dramatiq.actor(actor_name="stamp")
def stamp(sent: float) -> None:
    probe.latency(sent)


class Adapter(_Base):
    name = "dramatiq"
    app_module = __name__
    single_api = "noop.send()"
    bulk_api = "no bulk API: loop of broker.enqueue (what group().run() does)"
    defaults = (
        f"8 threads/process (default); -p 1 / -p 2 (default -p = CPU count = {os.cpu_count()})"
    )

    async def open(self) -> None:
        noop.send()

    async def enqueue_one(self) -> None:
        noop.send()

    async def enqueue_bulk(self, n: int) -> None:
        enqueue = broker.enqueue
        for _ in range(n):
            enqueue(noop.message())

    async def enqueue_stamp(self, sent: float) -> None:
        stamp.send(sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        return [[script("dramatiq"), __name__, "-p", str(processes)]]
