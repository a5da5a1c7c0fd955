"""Celery 5.7 with the Redis broker (kombu redis transport), no result backend.

Worker: ``celery -A bench.peers_redis.celery_app worker -c N`` (prefork pool, the default;
the default concurrency is the CPU count: one main process plus N pool children).
"""

from __future__ import annotations

import os
import time

from celery import Celery

from bench.peers_redis import probe
from bench.peers_redis.base import Adapter as _Base
from bench.peers_redis.base import script

app = Celery("bench_celery", broker=os.environ["BENCH_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True  # silences a startup deprecation warning


@app.task(name="bench.noop")
def noop() -> None:
    probe.hit(time.time())


@app.task(name="bench.stamp")
def stamp(sent: float) -> None:
    probe.latency(sent)


class Adapter(_Base):
    name = "celery"
    app_module = __name__
    single_api = "noop.delay()"
    # group(noop.s() × n).apply_async() measured ~15% slower here than a loop sharing one
    # producer (connection + channel), so the loop is Celery's best bulk path.
    bulk_api = "no bulk API: loop of apply_async on one producer (faster than group())"
    defaults = (
        "prefork pool (default), prefetch multiplier 4 (default); -c 1 for 1p, -c 2 for 2p "
        f"(default = CPU count = {os.cpu_count()})"
    )

    async def open(self) -> None:
        noop.delay()

    async def enqueue_one(self) -> None:
        noop.delay()

    async def enqueue_bulk(self, n: int) -> None:
        with app.producer_or_acquire() as producer:
            for _ in range(n):
                noop.apply_async(producer=producer)

    async def enqueue_stamp(self, sent: float) -> None:
        stamp.delay(sent)

    def worker_cmd(self, processes: int) -> list[list[str]]:
        return [[script("celery"), "-A", __name__, "worker", "-c", str(processes)]]
