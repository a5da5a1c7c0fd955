"""SQLite under contention: 4 producer processes and 2 worker processes on one file, for
30 s (plus the drain), as the issue asks."""

from __future__ import annotations

import asyncio
import collections
import signal
import sys
import time

import pytest

import conveyor
from tests.faults.conftest import Cluster, ready

PRODUCERS = 4
SECONDS = 30.0


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_sqlite_contention_loses_nothing_and_never_double_claims(
    cluster: Cluster, app: conveyor.App
) -> None:
    await app.inspector.stats()  # create the file and schema once, up front
    workers = [
        cluster.worker("-c", "8", "--lease", "2", name=f"w{i}", env={"FAULT_TASK_SLEEP": "0.005"})
        for i in range(2)
    ]
    for w in workers:
        await ready(w)
    outs = [cluster.dir / f"enqueued-{i}.txt" for i in range(PRODUCERS)]
    producers = [
        cluster.spawn(
            f"producer{i}",
            [sys.executable, "-m", "tests.faults.apps.enqueuer", str(i), str(SECONDS), str(out)],
        )
        for i, out in enumerate(outs)
    ]
    for p in producers:
        code = cluster.wait_exit(p, SECONDS + 30)
        assert code == 0, (p, p.stderr())
        assert p.stderr() == "", p.stderr()  # no traceback, no "database is locked"
        assert p.stdout().startswith("enqueued "), p.stdout()
    enqueued = [int(n) for out in outs for n in out.read_text().split()]
    total = len(enqueued)
    assert total == len(set(enqueued))
    assert total > 1_000, total  # the producers really produced

    async def drained() -> bool:
        (stats,) = await app.inspector.stats()
        return stats.completed == total

    deadline = time.monotonic() + 40
    while not await drained():
        assert time.monotonic() < deadline, (await app.inspector.stats(), cluster.logs())
        await asyncio.sleep(0.25)
    for w in workers:
        w.send(signal.SIGTERM)
    for w in workers:
        assert cluster.wait_exit(w, 15) == 0, w.stderr()
        err = w.stderr()
        assert "locked" not in err and "Traceback" not in err and "ERROR" not in err, err
        assert "lease lost" not in err and "rescued" not in err, err

    (stats,) = await app.inspector.stats()
    assert (stats.total, stats.completed, stats.failed) == (total, total, 0), stats
    # No job claimed twice: with no kills, each ran exactly once (one start, one done, same
    # process, start before done), so no two runs of a job can overlap.
    events = cluster.ledger()
    runs: dict[int, list[tuple[str, int, float]]] = collections.defaultdict(list)
    for ev, n, pid, at in events:
        runs[n].append((ev, pid, at))
    assert set(runs) == set(enqueued), sorted(set(enqueued) ^ set(runs))[:20]
    twice = {n: r for n, r in runs.items() if [ev for ev, _, _ in r] != ["start", "done"]}
    assert twice == {}, list(twice.items())[:10]
    assert all(r[0][1] == r[1][1] and r[0][2] <= r[1][2] for r in runs.values())
    assert {pid for r in runs.values() for _, pid, _ in r} <= {w.pid for w in workers}
    # Every stored job ran exactly once in the store's view as well.
    async for job in app.inspector.iter(state=conveyor.JobState.COMPLETED):
        assert job.attempts == 1 and job.errors == (), job
    with cluster.sql() as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    print(f"contention: {total} jobs from {PRODUCERS} producers in {SECONDS} s")
