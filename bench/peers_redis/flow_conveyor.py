"""Conveyor on Redis for the flow bench (bench/bench_flow.py, section "peers"): `limited` has
``rate_limit="100/s"`` (a token bucket in the store, shared by every worker; burst = 100),
`free` has none; both go to the default queue.

Worker: ``python -m conveyor worker bench.peers_redis.flow_conveyor:app -c 64 -p N``.
Enqueue: ``python -m bench.peers_redis.flow_conveyor LIMITED FREE``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import conveyor
from bench.peers_redis import flow_probe

RATE = int(os.environ.get("BENCH_FLOW_RATE", "100"))

app = conveyor.App(os.environ["BENCH_REDIS_URL"])


@app.task(rate_limit=f"{RATE}/s")
async def limited() -> None:
    flow_probe.limited_start()


@app.task
async def free() -> None:
    flow_probe.free_hit(time.time())


async def enqueue(n_limited: int, n_free: int) -> None:
    """The limited backlog first, then the unlimited jobs behind it (enqueue_many, 5,000 a
    call)."""
    try:
        for task, n in ((limited, n_limited), (free, n_free)):
            for i in range(0, n, 5_000):
                await task.enqueue_many([() for _ in range(min(5_000, n - i))])
    finally:
        await app.aclose()


if __name__ == "__main__":
    t0 = time.perf_counter()
    asyncio.run(enqueue(int(sys.argv[1]), int(sys.argv[2])))
    print(f"{time.perf_counter() - t0:.3f}")
