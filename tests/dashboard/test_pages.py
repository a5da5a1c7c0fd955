"""Every page renders over a real SQLite store, with the DOM contract's ids; job actions
redirect back with a flash; pagination walks past 1,000 jobs by cursor; SSE sends at once."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from conveyor.job import AttemptError, JobState
from tests.dashboard.conftest import TestClient, csrf_of, fail, make_job, run_on

PAGES = {
    "overview": "/",
    "queues": "/queues",
    "jobs": "/jobs",
    "dead": "/dead",
    "schedules": "/schedules",
    "workers": "/workers",
    "locks": "/locks",
}


def test_every_page_renders_with_its_nav_and_page_marker(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    run_on(db, lambda b, c: b.enqueue([make_job(c, queue="emails")]))
    client = make_client()
    for name, path in PAGES.items():
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[-500:])
        assert f'<main id="page" data-page="{name}"' in r.text
        assert all(f'id="nav-{n}"' in r.text for n in PAGES)
        assert 'id="outage"' not in r.text
    home = client.get("/").text
    assert re.search(r'id="total-queued" class="num">1<', home)
    assert 'id="chart-throughput"' in home and 'id="chart-depth"' in home
    queues = client.get("/queues").text
    assert 'id="queue-emails"' in queues and 'id="pause-emails"' in queues
    assert re.search(r'id="queue-state-emails">running<', queues)


def test_pause_and_resume_a_queue(db: Path, make_client: Callable[..., TestClient]) -> None:
    run_on(db, lambda b, c: b.enqueue([make_job(c, queue="emails")]))
    client = make_client()
    token = csrf_of(client.get("/queues").text)
    r = client.post("/queues/emails/pause", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    page = client.get("/queues").text
    assert re.search(r'id="queue-state-emails">paused<', page)
    assert 'id="resume-emails"' in page and "paused emails" in page  # the flash
    client.post("/queues/emails/resume", data={"csrf": token})
    assert re.search(r'id="queue-state-emails">running<', client.get("/queues").text)


def test_job_page_and_its_actions(db: Path, make_client: Callable[..., TestClient]) -> None:
    async def seed(b, c):  # type: ignore[no-untyped-def]
        job = make_job(c, task="tests.send", payload=b'{"to":"ann"}', max_attempts=1)
        await fail(b, [job], AttemptError(1, "ValueError", "bad address", "Traceback: boom"))
        return job.id

    job_id = run_on(db, seed)
    client = make_client()
    page = client.get(f"/jobs/{job_id}").text
    assert re.search(r'id="job-state"[^>]*>failed<', page)
    assert (
        '"to": "ann"' in html.unescape(page)
        and 'class="attempt-error">ValueError: bad address' in page
    )
    assert '<pre class="traceback">Traceback: boom' in page
    assert 'id="timeline"' in page and 'id="job-graph"' in page
    assert 'id="action-retry"' in page and 'id="action-copy"' in page
    assert 'id="action-cancel"' not in page  # it has ended
    token = csrf_of(page)

    r = client.post(f"/jobs/{job_id}/retry", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job_id}"
    page = client.get(f"/jobs/{job_id}").text
    assert re.search(r'id="job-state"[^>]*>queued<', page) and "requeued" in page

    r = client.post(f"/jobs/{job_id}/copy", data={"csrf": token}, follow_redirects=False)
    new_path = r.headers["location"]
    assert r.status_code == 303 and new_path.startswith("/jobs/") and new_path != f"/jobs/{job_id}"
    assert "copied from" in client.get(new_path).text

    r = client.post(f"/jobs/{job_id}/cancel", data={"csrf": token}, follow_redirects=False)
    assert r.status_code == 303
    assert re.search(r'id="job-state"[^>]*>cancelled<', client.get(f"/jobs/{job_id}").text)
    assert client.get("/jobs/nope").status_code == 404


def test_job_page_draws_its_parents(db: Path, make_client: Callable[..., TestClient]) -> None:
    async def seed(b, c):  # type: ignore[no-untyped-def]
        grand = make_job(c, task="tests.grand")
        parent = make_job(c, task="tests.parent", parents=(grand.id,))
        child = make_job(c, task="tests.child", parents=(parent.id,))
        await b.enqueue([grand, parent, child])
        return grand.id, parent.id, child.id

    grand_id, parent_id, child_id = run_on(db, seed)
    graph = make_client().get(f"/jobs/{child_id}").text.split('id="job-graph"')[1]
    assert graph.index(parent_id) < graph.index(grand_id)  # two levels up
    assert "Children are not indexed" in graph


def test_search_by_exact_id_goes_to_the_job(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    (job_id,) = run_on(db, lambda b, c: b.enqueue([make_job(c)]))
    client = make_client()
    r = client.get("/jobs", params={"id": job_id}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/jobs/{job_id}"
    assert "No job with id" in client.get("/jobs", params={"id": "missing"}).text


def test_pagination_walks_past_1000_jobs_by_cursor(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    async def seed(b, c):  # type: ignore[no-untyped-def]
        jobs = [make_job(c, task="tests.many") for _ in range(1203)]
        await b.enqueue(jobs)
        return [j.id for j in jobs]

    ids = run_on(db, seed)
    client = make_client()
    seen: list[str] = []
    url: str | None = "/jobs?task=tests.many"
    while url:
        page = client.get(url).text
        seen += re.findall(r'class="job-row" data-id="([^"]+)"', page)
        found = re.search(r'id="next-page" href="([^"]+)"', page)
        url = found.group(1).replace("&amp;", "&") if found else None
    assert seen == ids  # every job once, in enqueue order
    assert "offset" not in client.get("/jobs").text


def test_jobs_filters_by_state(db: Path, make_client: Callable[..., TestClient]) -> None:
    async def seed(b, c):  # type: ignore[no-untyped-def]
        await b.enqueue([make_job(c, queue="other")])
        bad = make_job(c, max_attempts=1)
        await fail(b, [bad], AttemptError(1, "KeyError", "k"))
        return bad.id

    bad_id = run_on(db, seed)
    page = make_client().get("/jobs", params={"state": JobState.FAILED.value}).text
    assert re.findall(r'class="job-row" data-id="([^"]+)"', page) == [bad_id]


def test_events_send_an_update_at_once(db: Path, make_client: Callable[..., TestClient]) -> None:
    run_on(db, lambda b, c: b.enqueue([make_job(c)]))
    r = make_client().get("/events", params={"limit": 1})
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.text.startswith("retry: 1000\n\n")  # the browser reconnects within a second
    name, data = r.text.removeprefix("retry: 1000\n\n").strip().split("\n")
    assert name == "event: update"
    body = json.loads(data.removeprefix("data: "))
    assert body["totals"]["queued"] == 1 and body["depth"]["queues"] == ["default"]


@pytest.mark.parametrize("path", ["/static/dashboard.js", "/static/dashboard.css"])
def test_static_files_are_served(path: str, make_client: Callable[..., TestClient]) -> None:
    assert make_client().get(path).status_code == 200


def test_closing_the_streams_ends_them(make_client: Callable[..., TestClient]) -> None:
    client = make_client()
    assert client.app is not None
    client.app.state.streams.close()  # as before stopping the server: open streams end
    text = client.get("/events").text  # no limit: it ends only because it was closed
    assert text.count("event: update") == 1
