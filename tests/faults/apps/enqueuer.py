"""A producer process for the contention test.

    python -m tests.faults.apps.enqueuer <index> <seconds> <out-file>

Enqueues `record` jobs for `seconds`, mixing single enqueues (coalesced inside
``async with app``), ``enqueue_many`` batches and ``enqueue_sync`` from a thread; job
arguments are ``index * 10_000_000 + k``. Writes every argument it enqueued to `out-file`
(one per line) and exits 0; any error is a traceback and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import os
import random
import sys
import time

from tests.faults.apps.ledger import build


async def main(index: int, seconds: float) -> list[int]:
    app = build(os.environ["FAULT_DB_URL"])
    record = app.registry.get("record")
    rng = random.Random(index)
    done: list[int] = []
    k = index * 10_000_000
    async with app:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            roll = rng.random()
            if roll < 0.4:
                # A burst of concurrent single enqueues: the producer coalesces them.
                ns = list(range(k, k + rng.randint(1, 8)))
                await asyncio.gather(*(record.enqueue(n) for n in ns))
            elif roll < 0.8:
                ns = list(range(k, k + rng.randint(2, 40)))
                await record.enqueue_many([(n,) for n in ns])
            else:
                ns = [k]
                await asyncio.to_thread(record.enqueue_sync, k)
            k += len(ns)
            done.extend(ns)
            await asyncio.sleep(rng.uniform(0.01, 0.05))
    return done


def run(index: int, seconds: float, out: str) -> None:
    done = asyncio.run(main(index, seconds))
    with open(out, "w", encoding="ascii") as f:
        f.write("".join(f"{n}\n" for n in done))
    print(f"enqueued {len(done)}")


if __name__ == "__main__":
    run(int(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
