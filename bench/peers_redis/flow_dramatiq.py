"""Dramatiq 2.2 for the flow bench (bench/bench_flow.py, section "peers"): `limited` runs its
body inside a rate limiter shared through Redis, `free` has none; both on the default queue.

``BENCH_FLOW_LIMITER`` picks the limiter:

- ``window``: ``WindowRateLimiter(limit=100, window=1)``, 100 acquisitions per 1-s window;
- ``concurrent``: ``ConcurrentRateLimiter(limit=1)`` around a 10 ms body: a concurrency
  limiter caps how many run at once, not how many start per second, so the only way to say
  "100 starts/s" with it is 1 at a time × 10 ms.

Both raise ``RateLimitExceeded`` when the limit is reached (the default,
``raise_on_failure=True``); the Retries middleware then re-enqueues the message with its
default backoff (15 s minimum, exponential, jitter). That is the documented usage.

Worker: ``dramatiq bench.peers_redis.flow_dramatiq -p N`` (8 threads per process).
Enqueue: ``python -m bench.peers_redis.flow_dramatiq LIMITED FREE MIX``.
"""

from __future__ import annotations

import os
import sys
import time

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.rate_limits import ConcurrentRateLimiter, WindowRateLimiter
from dramatiq.rate_limits.backends import RedisBackend

from bench.peers_redis import flow_probe

RATE = int(os.environ.get("BENCH_FLOW_RATE", "100"))
KIND = os.environ.get("BENCH_FLOW_LIMITER", "window")

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)
_backend = RedisBackend(url=os.environ["BENCH_REDIS_URL"])
if KIND == "window":
    LIMITER: ConcurrentRateLimiter | WindowRateLimiter = WindowRateLimiter(
        _backend, "flow-limited", limit=RATE, window=1
    )
    BODY = 0.0
else:
    LIMITER = ConcurrentRateLimiter(_backend, "flow-limited", limit=1)
    BODY = 1.0 / RATE


@dramatiq.actor(actor_name="limited")
def limited() -> None:
    with LIMITER.acquire():
        flow_probe.limited_start()
        if BODY:
            time.sleep(BODY)


@dramatiq.actor(actor_name="free")
def free() -> None:
    flow_probe.free_hit(time.time())


def enqueue(n_limited: int, n_free: int, mix: str) -> None:
    """In the order of `flow_probe.plan` (a loop of broker.enqueue)."""
    put, actors = broker.enqueue, {"limited": limited, "free": free}
    for kind, n in flow_probe.plan(n_limited, n_free, mix):
        actor = actors[kind]
        for _ in range(n):
            put(actor.message())


if __name__ == "__main__":
    t0 = time.perf_counter()
    enqueue(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
    print(f"{time.perf_counter() - t0:.3f}")
