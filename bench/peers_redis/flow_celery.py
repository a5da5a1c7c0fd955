"""Celery 5.7 for the flow bench (bench/bench_flow.py, section "peers"): `limited` has
``rate_limit="100/s"``, `free` has none; both go to the one default queue.

Celery's rate limit is a token bucket in each worker node's consumer (not shared between
nodes): 4 nodes of ``-c 1`` let through about 4 × 100/s; one node of ``-c 4`` holds 100/s.

Worker: ``celery -A bench.peers_redis.flow_celery worker -c N -n NAME@%h``.
Enqueue (the bench's client): ``python -m bench.peers_redis.flow_celery LIMITED FREE MIX``.
"""

from __future__ import annotations

import os
import sys
import time

from celery import Celery

from bench.peers_redis import flow_probe

RATE = int(os.environ.get("BENCH_FLOW_RATE", "100"))

app = Celery("bench_flow_celery", broker=os.environ["BENCH_REDIS_URL"])
app.conf.broker_connection_retry_on_startup = True


@app.task(name="flow.limited", rate_limit=f"{RATE}/s")
def limited() -> None:
    flow_probe.limited_start()


@app.task(name="flow.free")
def free() -> None:
    flow_probe.free_hit(time.time())


def enqueue(n_limited: int, n_free: int, mix: str) -> None:
    """In the order of `flow_probe.plan` (Celery has no bulk API: a loop of apply_async on
    one producer)."""
    tasks = {"limited": limited, "free": free}
    with app.producer_or_acquire() as producer:
        for kind, n in flow_probe.plan(n_limited, n_free, mix):
            task = tasks[kind]
            for _ in range(n):
                task.apply_async(producer=producer)


if __name__ == "__main__":
    t0 = time.perf_counter()
    enqueue(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    print(f"{time.perf_counter() - t0:.3f}")
