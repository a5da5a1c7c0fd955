"""RQ 2.12: ``Queue("default")`` on redis-py.

Worker: ``rq worker -u URL default`` (the default Worker forks a work horse per job);
two processes = two ``rq worker`` commands.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from redis import Redis
from rq import Queue

from bench.peers_redis import probe
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script


def noop() -> None:
    probe.hit(time.time())


def stamp(sent: float) -> None:
    probe.latency(sent)


connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
queue = Queue("default", connection=connection)


class Adapter(_Base):
    name = "rq"
    app_module = __name__
    single_api = "queue.enqueue(noop)"
    bulk_api = "Queue.enqueue_many (one pipeline)"
    defaults = "Worker (fork per job, default); 2p: two `rq worker` processes"
    drain_jobs = 500
    env: ClassVar[dict[str, str]] = {"BENCH_PROBE_DIRECT": "1"}  # the horse exits per job
    # A fork per job caps RQ near 30-60 jobs/s: probes 20 ms apart would queue behind each
    # other and measure backlog, not idle latency. 100 ms apart the worker is idle again.
    latency_gap = 0.1

    async def open(self) -> None:
        queue.enqueue(noop)

    async def close(self) -> None:
        connection.close()

    async def enqueue_one(self) -> None:
        queue.enqueue(noop)

    async def enqueue_bulk(self, n: int) -> None:
        queue.enqueue_many([Queue.prepare_data(noop) for _ in range(n)])

    async def enqueue_stamp(self, sent: float) -> None:
        queue.enqueue(stamp, sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        argv = [script("rq"), "worker", "-u", self.url, "default"]
        return [argv] * processes
