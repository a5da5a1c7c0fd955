"""Conveyor on Redis for bench/bench_peers.py.

Worker: ``python -m conveyor worker bench.peers_redis.conveyor_app:app -c 64 [-p 2]``.
"""

from __future__ import annotations

import os
import sys
import time

import conveyor
from bench.peers_redis import probe
from bench.peers_redis.base import Adapter as _Base

app = conveyor.App(os.environ["BENCH_REDIS_URL"])


@app.task
async def noop() -> None:
    probe.hit(time.time())


@app.task
async def stamp(sent: float) -> None:
    probe.latency(sent)


class Adapter(_Base):
    name = "conveyor"
    app_module = "bench.peers_redis.conveyor_app:app"
    single_api = "await noop.enqueue()"
    bulk_api = "noop.enqueue_many"
    defaults = "-c 64 (64 jobs at once per process); 2p: -p 2"

    async def open(self) -> None:
        await noop.enqueue()  # opens the store; the bench flushes it after

    async def close(self) -> None:
        await app.aclose()

    async def enqueue_one(self) -> None:
        await noop.enqueue()

    async def enqueue_bulk(self, n: int) -> None:
        await noop.enqueue_many([() for _ in range(n)])

    async def enqueue_stamp(self, sent: float) -> None:
        await stamp.enqueue(sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        argv = [sys.executable, "-m", "conveyor", "worker", self.app_module, "-c", "64"]
        return [argv + (["-p", str(processes)] if processes > 1 else [])]
