"""Dead letters: groups by (task, last error type), requeue of a selection, and of every
job matching a filter as a background run whose progress the page shows."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.inspector import Inspector
from conveyor.job import AttemptError, JobState
from tests.dashboard.conftest import TestClient, csrf_of, fail, make_job, run_on


def seed_dead(db: Path, many: int = 1203) -> tuple[list[str], list[str]]:
    """`many` failed ``tests.a`` jobs (ValueError) and 3 failed ``tests.b`` (KeyError)."""

    async def seed(b: SQLiteBackend, c: FakeClock) -> tuple[list[str], list[str]]:
        a = [make_job(c, task="tests.a", max_attempts=1) for _ in range(many)]
        await fail(b, a, AttemptError(1, "ValueError", "bad"))
        bs = [make_job(c, task="tests.b", queue="other", max_attempts=1) for _ in range(3)]
        await fail(b, bs, AttemptError(1, "KeyError", "missing"))
        return [j.id for j in a], [j.id for j in bs]

    ids: tuple[list[str], list[str]] = run_on(db, seed)
    return ids


def counts(db: Path) -> dict[JobState, int]:
    async def get(b: SQLiteBackend, c: FakeClock) -> dict[JobState, int]:
        out: dict[JobState, int] = {}
        for per in (await b.counts()).values():
            for state, n in per.items():
                out[state] = out.get(state, 0) + n
        return out

    found: dict[JobState, int] = run_on(db, get)
    return found


def test_groups_cover_the_first_1000_and_say_so(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    seed_dead(db, many=5)
    page = make_client().get("/dead").text
    groups = re.findall(r'class="dead-group" data-task="([^"]+)" data-error="([^"]+)"', page)
    assert groups == [("tests.a", "ValueError"), ("tests.b", "KeyError")]
    assert "8 failed jobs in all" in page and "at most 1000 are scanned" in page
    assert len(re.findall(r'class="dead-row"', page)) == 8
    assert 'id="requeue-selected"' in page and 'id="requeue-matching"' in page


def test_requeue_selected(db: Path, make_client: Callable[..., TestClient]) -> None:
    _, bs = seed_dead(db, many=2)
    client = make_client()
    token = csrf_of(client.get("/dead").text)
    r = client.post("/dead/requeue", data={"csrf": token, "id": bs[:2]}, follow_redirects=False)
    assert r.status_code == 303
    assert "requeued 2 of 2 selected" in client.get("/dead").text
    assert counts(db)[JobState.QUEUED] == 2 and counts(db)[JobState.FAILED] == 3


def test_requeue_matching_runs_in_the_background(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    seed_dead(db)
    client = make_client()
    page = client.get("/dead", params={"task": "tests.a", "error": "ValueError"}).text
    data = {"csrf": csrf_of(page), "scope": "matching", "task": "tests.a", "error": "ValueError"}
    r = client.post("/dead/requeue", data=data, follow_redirects=False)
    assert r.status_code == 303  # at once: the run goes on in the dashboard process
    for _ in range(600):  # a bound, not a timing assert
        page = client.get("/dead").text
        if 'data-finished="yes"' in page:
            break
        time.sleep(0.05)
    assert re.search(r'<span class="bulk-done">1203</span> done, finished', page)
    assert counts(db)[JobState.QUEUED] == 1203 and counts(db)[JobState.FAILED] == 3


def test_delete_is_offered_only_when_the_inspector_can(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    _, bs = seed_dead(db, many=1)
    client = make_client()
    page = client.get("/dead").text
    job_page = client.get(f"/jobs/{bs[0]}").text
    supported = hasattr(Inspector, "delete")
    assert ('id="delete-selected"' in page) is supported
    assert ('id="action-delete"' in job_page) is supported
    if supported:
        token = csrf_of(page)
        client.post("/dead/delete", data={"csrf": token, "id": bs})
        assert counts(db).get(JobState.FAILED, 0) == 1
    else:
        assert client.post("/dead/delete", data={"csrf": csrf_of(page)}).status_code == 404
