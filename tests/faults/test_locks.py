"""`app.lock` across real processes: one holder at a time, a killed holder's lock passes on
within its ttl, a frozen holder is fenced. On SQLite and on Redis (`on_both_stores`)."""

from __future__ import annotations

import asyncio
import signal
import sys
import time

import pytest

import conveyor
from tests.faults.conftest import Cluster, Proc, on_both_stores, until, write_locked

LOCKER = [sys.executable, "-m", "tests.faults.apps.locker"]
NAME = "shared"


def _locker(cluster: Cluster, *args: str, name: str = "locker") -> Proc:
    return cluster.spawn(name, [*LOCKER, *args])


def _events(cluster: Cluster, event: str, pid: int | None = None) -> list[tuple[int, float]]:
    return [(n, t) for e, n, p, t in cluster.ledger() if e == event and pid in (None, p)]


async def _freeze(cluster: Cluster, proc: Proc) -> None:
    """SIGSTOP `proc`, on SQLite at a moment it holds no write lock (a process frozen inside
    a write transaction stalls every writer: SQLite's nature, not this test's subject)."""
    for _ in range(100):
        proc.send(signal.SIGSTOP)
        await asyncio.sleep(0.02)
        if cluster.store != "sqlite" or not write_locked(cluster.db):
            return
        proc.send(signal.SIGCONT)
        await asyncio.sleep(0.05)
    raise AssertionError("could not freeze the holder outside a write transaction")


PROCS = 4
EACH = 200


@pytest.mark.slow
@on_both_stores
@pytest.mark.timeout(60)
async def test_holders_never_overlap_and_tokens_grow(cluster: Cluster) -> None:
    procs = [_locker(cluster, "loop", str(EACH), "5", name=f"loop{i}") for i in range(PROCS)]
    for proc in procs:
        assert await asyncio.to_thread(cluster.wait_exit, proc, 45) == 0, cluster.logs()
    ledger = cluster.ledger()
    assert len(ledger) == 2 * PROCS * EACH, cluster.logs()
    # In file order (each line is one O_APPEND write: a holder writes "rel" before it
    # releases, the next writes "acq" after it acquired), holdings must strictly alternate.
    last = 0
    for (e1, t1, p1, at1), (e2, t2, p2, at2) in zip(ledger[::2], ledger[1::2], strict=True):
        assert (e1, e2) == ("acq", "rel"), (e1, e2, t1, t2)
        assert (t1, p1) == (t2, p2), "another holder's lines inside a holding"
        assert t1 > last, "fencing tokens must strictly increase"
        assert at2 >= at1
        last = t1
    holders = {p for _, _, p, _ in ledger}
    assert len(holders) == PROCS  # each process held it: the lock really was contended
    switches = sum(a[2] != b[2] for a, b in zip(ledger[::2], ledger[2::2], strict=False))
    assert switches >= 50  # and it changed hands often (788 of 800 times here)


@pytest.mark.slow
@on_both_stores
@pytest.mark.timeout(60)
async def test_a_killed_holders_lock_is_taken_within_ttl_plus_1s(
    cluster: Cluster, app: conveyor.App
) -> None:
    ttl = 2.0
    holder = _locker(cluster, "hold", str(ttl), name="holder")
    await until(lambda: _events(cluster, "acq", holder.pid), 20, "the holder to acquire")
    await asyncio.sleep(ttl)  # renewed at least once: the ttl is kept alive, not just young
    async with asyncio.TaskGroup() as tg:
        waiter = tg.create_task(app.lock(NAME, ttl=5, wait=ttl + 10).acquire())
        await asyncio.sleep(0.2)
        assert not waiter.done()  # the live holder keeps it
        killed_at = time.monotonic()
        cluster.kill(holder)
    took = time.monotonic() - killed_at
    assert took <= ttl + 1.0, took
    ((held, _),) = _events(cluster, "acq", holder.pid)
    assert waiter.result() > held


@pytest.mark.slow
@on_both_stores
@pytest.mark.timeout(60)
async def test_a_frozen_holder_is_fenced_after_its_ttl(cluster: Cluster, app: conveyor.App) -> None:
    ttl = 1.0
    stalled = _locker(cluster, "stall", str(ttl), name="stalled")
    await until(lambda: _events(cluster, "acq", stalled.pid), 20, "the holder to acquire")
    await _freeze(cluster, stalled)
    mine = app.lock(NAME, ttl=30, wait=ttl + 5)
    token = await mine.acquire()  # taken once the frozen holder's ttl passed
    ((theirs, _),) = _events(cluster, "acq", stalled.pid)
    assert token > theirs
    stalled.send(signal.SIGCONT)
    assert await asyncio.to_thread(cluster.wait_exit, stalled, 20) == 0, stalled.stderr()
    assert [n for n, _ in _events(cluster, "lost")] == [theirs]  # its renewal found it lost
    assert [n for n, _ in _events(cluster, "extend")] == [0]  # its extend is refused
    assert [n for n, _ in _events(cluster, "release")] == [0]  # and its release too
    assert mine.held and not mine.lost  # our holding stands
    locks = await app.backend.locks()  # type: ignore[attr-defined]
    assert [(x.owner, x.token) for x in locks] == [(mine.owner, token)]
    assert await mine.release() is True
