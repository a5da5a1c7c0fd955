"""A lock-holding process for the lock fault tests, writing to the ledger (see `ledger.note`).

    python -m tests.faults.apps.locker loop <count> <ttl>   # take "shared" <count> times
    python -m tests.faults.apps.locker hold <ttl>           # take it and hold it forever
    python -m tests.faults.apps.locker stall <ttl>          # hold it until lost, then report

Ledger events (``<event> <n> <pid> <time>``): ``acq <token>`` right after each acquisition,
``rel <token>`` right before its release (so, in file order, one holding's lines come
before the next holder's); ``stall`` also writes ``lost <token>`` once a renewal found the
lock gone, then ``extend <0|1>`` and ``release <0|1>`` for its own extend and release.
"""

from __future__ import annotations

import asyncio
import os
import sys

import conveyor
from conveyor.capabilities import Locks
from tests.faults.apps.ledger import note

NAME = "shared"


async def loop(app: conveyor.App, count: int, ttl: float) -> None:
    for _ in range(count):
        async with app.lock(NAME, ttl=ttl, wait=60) as lock:
            assert lock.token is not None
            note("acq", lock.token)
            await asyncio.sleep(0)
            note("rel", lock.token)
        await asyncio.sleep(0.001)  # give a waiter its turn now and then


async def hold(app: conveyor.App, ttl: float) -> None:
    async with app.lock(NAME, ttl=ttl, wait=60) as lock:
        assert lock.token is not None
        note("acq", lock.token)
        await asyncio.sleep(3600)


async def stall(app: conveyor.App, ttl: float) -> None:
    lock = app.lock(NAME, ttl=ttl, wait=60, on_lost="ignore")
    token = await lock.acquire()
    note("acq", token)
    while not lock.lost:  # the test SIGSTOPs us past the ttl here, then SIGCONTs
        await asyncio.sleep(0.01)
    note("lost", token)
    store = app.backend
    assert isinstance(store, Locks)
    note("extend", int(await store.extend_lock(NAME, token, ttl)))
    note("release", int(await lock.release()))


async def main(argv: list[str]) -> None:
    app = conveyor.App(os.environ["FAULT_DB_URL"])
    try:
        if argv[0] == "loop":
            await loop(app, int(argv[1]), float(argv[2]))
        elif argv[0] == "hold":
            await hold(app, float(argv[1]))
        else:
            await stall(app, float(argv[1]))
    finally:
        await app.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
