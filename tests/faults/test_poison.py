"""Invariant 5: garbage already in the store fails with a reason; nothing else is lost."""

from __future__ import annotations

import sys
import time

import msgspec
import pytest

import conveyor
from conveyor.backends.sqlite.ops import _INSERT_PLAIN, _insert_row
from conveyor.job import Job, new_job_id
from tests.faults.conftest import Cluster

pytestmark = pytest.mark.timeout(60)


async def test_poison_rows_fail_with_a_reason_and_good_jobs_complete(
    cluster: Cluster, app: conveyor.App
) -> None:
    record = app.registry.get("record")
    good = [h.id for h in await record.enqueue_many([(i,) for i in range(20)])]
    victims = [h.id for h in await record.enqueue_many([(100,), (101,), (102,), (103,)])]
    not_json, wrong_shape, wrong_type, renamed = victims
    unknown_direct = new_job_id(time.time())
    now = time.time()
    with cluster.sql() as conn:
        conn.execute("UPDATE jobs SET payload = ? WHERE id = ?", (b"\x00{not json", not_json))
        conn.execute("UPDATE jobs SET payload = ? WHERE id = ?", (b'{"m": 1}', wrong_shape))
        conn.execute("UPDATE jobs SET payload = ? WHERE id = ?", (b'{"n": "x"}', wrong_type))
        conn.execute("UPDATE jobs SET task = 'no_such_task' WHERE id = ?", (renamed,))
        # A row written with the backend's own INSERT, for a task no worker knows.
        ghost = Job(id=unknown_direct, task="ghost.task", payload=b'{"n": 1}', run_at=now,
                    enqueued_at=now, max_attempts=3)  # fmt: skip
        conn.execute(_INSERT_PLAIN, _insert_row(ghost, now))
        conn.commit()
    conn.close()

    worker = cluster.worker("-c", "4", "--burst", "--lease", "2")
    assert cluster.wait_exit(worker, 40) == 0, cluster.logs()

    expect = {
        not_json: "PoisonPayload",
        wrong_shape: "PoisonPayload",
        wrong_type: "PoisonPayload",
        renamed: "UnknownTask",
        unknown_direct: "UnknownTask",
    }
    jobs = await app.backend.get(list(expect))
    for job_id, job in zip(expect, jobs, strict=True):
        assert job is not None, job_id
        assert job.state is conveyor.JobState.FAILED, (job_id, job.state, job.errors)
        assert job.attempts == 1, (job_id, job.attempts)
        assert [e.type for e in job.errors] == [expect[job_id]], (job_id, job.errors)
        assert job.errors[0].message, job_id  # a reason, not an empty string

    done = await app.backend.get(good)
    assert all(j is not None and j.state is conveyor.JobState.COMPLETED for j in done), [
        (j.id, j.state) for j in done if j is not None
    ]
    assert {msgspec.json.decode(j.result) for j in done if j is not None} == {worker.pid}
    # The handler never ran for the poison rows (100..103), and ran once for each good job.
    starts = sorted(n for ev, n, _, _ in cluster.ledger() if ev == "start")
    assert starts == list(range(20))
    assert "Traceback" not in worker.stderr(), worker.stderr()
    print(worker.stderr()[-2000:], file=sys.stderr)
