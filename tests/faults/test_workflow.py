"""Workflows under SIGKILL: a chord and a random DAG complete while workers are killed.

Runs on SQLite and on Redis (`on_both_stores`). The ledger (outside the store) shows every
member ran, the chord's callback ran once, after every member had finished, and no DAG node
started before each of its parents had finished.
"""

from __future__ import annotations

import asyncio
import collections
import random
import signal
import time

import pytest

import conveyor
from tests.faults.conftest import Cluster, Proc, on_both_stores, ready

LEASE = 2.0
MEMBERS = 2_000
NODES = 500
KILL_EVERY = 2.0
KILLS = 5
SLEEP = "0.05"  # (MEMBERS + NODES) x SLEEP / (2 workers x 8) ≈ 8 s: the kills land mid-run


@on_both_stores
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_chord_and_a_dag_complete_under_a_sigkill_storm(
    cluster: Cluster, app: conveyor.App
) -> None:
    record, summarize = app.registry.get("record"), app.registry.get("summarize")
    # The DAG: node i waits for up to 3 random earlier nodes; ids 10,000 + i in the ledger.
    rng = random.Random(7)
    parents_of: dict[int, list[int]] = {}
    handles: list[conveyor.JobHandle[object]] = []
    for i in range(NODES):
        parents = sorted(rng.sample(range(i), min(i, rng.randint(0, 3))))
        parents_of[10_000 + i] = [10_000 + p for p in parents]
        handles.append(
            await record.options(after=[handles[p] for p in parents]).enqueue(10_000 + i)
        )
    done = await conveyor.chord([record.s(n) for n in range(MEMBERS)], summarize.s()).enqueue()

    def start(slot: int) -> Proc:
        return cluster.worker(
            "-c", "8", "--lease", str(LEASE), "--grace", "5", name=f"w{slot}",
            env={"FAULT_TASK_SLEEP": SLEEP},
        )  # fmt: skip

    workers = [start(0), start(1)]
    await ready(workers[0])
    await ready(workers[1])
    began = time.monotonic()
    for k in range(KILLS):
        await asyncio.sleep(max(0.0, began + (k + 1) * KILL_EVERY - time.monotonic()))
        cluster.kill(workers[k % 2])
        workers[k % 2] = start(k % 2)

    assert await done.result(timeout=60) == MEMBERS
    deadline = time.monotonic() + 30
    while True:
        (stats,) = await app.inspector.stats()
        if stats.completed == MEMBERS + NODES + 1 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.2)
    for w in workers:
        await ready(w)
        w.send(signal.SIGTERM)
    for w in workers:
        assert cluster.wait_exit(w, 15) == 0, w.stderr()

    events = cluster.ledger()
    first_start: dict[int, float] = {}
    first_done: dict[int, float] = {}
    starts: collections.Counter[int] = collections.Counter()
    for ev, n, _, at in events:
        if ev == "start":
            starts[n] += 1
            first_start.setdefault(n, at)
        elif ev == "done":
            first_done.setdefault(n, at)
    reran = sum(starts.values()) - len(starts)
    print(f"workflow storm on {cluster.store}: {KILLS} kills, {reran} re-runs")
    # Every member and node finished at least once; the store agrees; nothing is left waiting.
    assert set(first_done) == set(range(MEMBERS)) | set(parents_of)
    assert (stats.completed, stats.failed, stats.cancelled, stats.waiting) == (
        MEMBERS + NODES + 1, 0, 0, 0,
    ), stats  # fmt: skip
    # The callback ran once, after every member had finished.
    callbacks = [(n, at) for ev, n, _, at in events if ev == "callback"]
    assert [n for n, _ in callbacks] == [MEMBERS], callbacks
    assert callbacks[0][1] > max(first_done[n] for n in range(MEMBERS))
    # No node started before each of its parents had finished.
    early = [
        (child, p) for child, ps in parents_of.items() for p in ps
        if first_start[child] < first_done[p]
    ]  # fmt: skip
    assert early == [], early[:10]
    assert reran >= 1  # the kills interrupted running jobs (else this proves nothing)


FANOUT = 300


@on_both_stores
@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_batch_whose_members_add_members_completes_under_a_sigkill_storm(
    cluster: Cluster, app: conveyor.App
) -> None:
    fanout, batch_done = app.registry.get("fanout"), app.registry.get("batch_done")
    async with app.batch(on_success=batch_done.s(1), on_complete=batch_done.s(0)) as batch:
        assert batch.id is not None
        for n in range(FANOUT):
            await fanout.enqueue(n, batch.id)
    added = {100_000 + 10 * n + i for n in range(FANOUT) for i in range(3)}

    def start(slot: int) -> Proc:
        return cluster.worker(
            "-c", "8", "--lease", str(LEASE), "--grace", "5", name=f"w{slot}",
            env={"FAULT_TASK_SLEEP": "0.1"},
        )  # fmt: skip

    workers = [start(0), start(1)]
    await ready(workers[0])
    await ready(workers[1])
    began = time.monotonic()
    for k in range(4):
        await asyncio.sleep(max(0.0, began + (k + 1) * KILL_EVERY - time.monotonic()))
        cluster.kill(workers[k % 2])
        workers[k % 2] = start(k % 2)
    for name in ("on_success", "on_complete"):
        await batch.callbacks[name].result(timeout=60)
    for w in workers:
        await ready(w)
        w.send(signal.SIGTERM)
    for w in workers:
        assert cluster.wait_exit(w, 15) == 0, w.stderr()

    events = cluster.ledger()
    first_done: dict[int, float] = {}
    for ev, n, _, at in events:
        if ev == "done":
            first_done.setdefault(n, at)
    assert set(first_done) == set(range(FANOUT)) | added
    callbacks = sorted((n, at) for ev, n, _, at in events if ev == "callback")
    assert [n for n, _ in callbacks] == [0, 1], callbacks  # each once
    last = max(first_done.values())
    assert all(at > last for _, at in callbacks), (callbacks, last)
    status = await batch.status()
    assert (status.total, status.completed, status.pending) == (4 * FANOUT, 4 * FANOUT, 0)
    (stats,) = await app.inspector.stats()
    assert (stats.waiting, stats.failed, stats.cancelled) == (0, 0, 0), stats
