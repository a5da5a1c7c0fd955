"""streaQ 7.2 (Redis streams, coredis).

Worker: ``streaq run bench.peers_redis.streaq_app:worker [--workers N]`` (defaults: 1
process, concurrency 16).
"""

from __future__ import annotations

import os
import time

from streaq import Worker

from bench.peers_redis import probe
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

worker = Worker(redis_url=os.environ["BENCH_REDIS_URL"])


@worker.task()
async def noop() -> None:
    probe.hit(time.time())


@worker.task()
async def stamp(sent: float) -> None:
    probe.latency(sent)


class Adapter(_Base):
    name = "streaq"
    app_module = f"{__name__}:worker"
    single_api = "await noop.enqueue()"
    bulk_api = "worker.enqueue_many (one pipeline)"
    defaults = "concurrency 16 (default); 1 process (default), 2p: --workers 2"

    async def open(self) -> None:
        self._ctx = worker
        await worker.__aenter__()
        await noop.enqueue()

    async def close(self) -> None:
        await worker.__aexit__(None, None, None)

    async def enqueue_one(self) -> None:
        await noop.enqueue()

    async def enqueue_bulk(self, n: int) -> None:
        await worker.enqueue_many([noop.enqueue() for _ in range(n)])

    async def enqueue_stamp(self, sent: float) -> None:
        await stamp.enqueue(sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        argv = [script("streaq"), "run", self.app_module]
        return [argv + (["--workers", str(processes)] if processes > 1 else [])]
