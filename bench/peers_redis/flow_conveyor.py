"""Conveyor on Redis for the flow bench (bench/bench_flow.py, section "peers"): `limited` has
``rate_limit="100/s"`` (a token bucket in the store, shared by every worker; burst = 100),
`free` has none; both go to the default queue.

Worker: ``python -m conveyor worker bench.peers_redis.flow_conveyor:app -c 64 -p N``.
Enqueue: ``python -m bench.peers_redis.flow_conveyor LIMITED FREE MIX``.
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


async def enqueue(n_limited: int, n_free: int, mix: str) -> None:
    """In the order of `flow_probe.plan` (enqueue_many per run, up to 5,000 a call; runs of
    about 1,000 when mixed)."""
    tasks = {"limited": limited, "free": free}
    try:
        for kind, n in flow_probe.plan(n_limited, n_free, mix, chunk=1_000):
            for i in range(0, n, 5_000):
                await tasks[kind].enqueue_many([() for _ in range(min(5_000, n - i))])
    finally:
        await app.aclose()


if __name__ == "__main__":
    t0 = time.perf_counter()
    asyncio.run(enqueue(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]))
    print(f"{time.perf_counter() - t0:.3f}")
