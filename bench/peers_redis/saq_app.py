"""SAQ 0.26 with its Redis queue.

Worker: ``saq bench.peers_redis.saq_app.settings [--workers N]`` (defaults: 1 worker
process, concurrency 10).
"""

from __future__ import annotations

import os
import time
from typing import Any

from saq import Queue

from bench.peers_redis import probe
from bench.peers_redis._gather import WIDTH, gather_n
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

queue = Queue.from_url(os.environ["BENCH_REDIS_URL"])


async def noop(ctx: dict[str, Any]) -> None:
    probe.hit(time.time())


async def stamp(ctx: dict[str, Any], *, sent: float) -> None:
    probe.latency(sent)


settings = {"queue": queue, "functions": [noop, stamp]}


class Adapter(_Base):
    name = "saq"
    app_module = f"{__name__}.settings"
    single_api = "await queue.enqueue('noop')"
    bulk_api = f"no bulk API: gather of queue.enqueue, {WIDTH} at a time"
    defaults = "concurrency 10 (default); 1 process (default), 2p: --workers 2"

    async def open(self) -> None:
        await queue.connect()
        await queue.enqueue("noop")

    async def close(self) -> None:
        await queue.disconnect()

    async def enqueue_one(self) -> None:
        await queue.enqueue("noop")

    async def enqueue_bulk(self, n: int) -> None:
        await gather_n(n, lambda: queue.enqueue("noop"))

    async def enqueue_stamp(self, sent: float) -> None:
        await queue.enqueue("stamp", sent=sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        argv = [script("saq"), self.app_module]
        return [argv + (["--workers", str(processes)] if processes > 1 else [])]
