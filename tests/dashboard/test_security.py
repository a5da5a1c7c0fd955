"""Auth (token, basic, callable), CSRF, read-only, security headers and escaping: a bad
credential or token gets 401/403 and changes nothing; stored markup never comes back raw."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from starlette.requests import Request

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.dashboard import Basic, Token
from conveyor.dashboard.headers import CSP
from conveyor.errors import ConfigError
from conveyor.job import AttemptError, JobState
from tests.dashboard.conftest import XSS, TestClient, csrf_of, fail, make_job, run_on

TEMPLATES = Path(__file__).parents[2] / "src" / "conveyor" / "dashboard" / "templates"
PATHS = ["/", "/queues", "/jobs", "/dead", "/schedules", "/workers", "/locks"]


def failed_job(db: Path) -> str:
    async def seed(b: SQLiteBackend, c: FakeClock) -> str:
        job = make_job(c, max_attempts=1)
        await fail(b, [job], AttemptError(1, "ValueError", "boom"))
        return job.id

    job_id: str = run_on(db, seed)
    return job_id


def state_of(db: Path, job_id: str) -> JobState:
    async def get(b: SQLiteBackend, c: FakeClock) -> JobState:
        (job,) = await b.get([job_id])
        assert job is not None
        return job.state

    state: JobState = run_on(db, get)
    return state


def test_token_auth(db: Path, make_client: Callable[..., TestClient]) -> None:
    job_id = failed_job(db)
    client = make_client(auth=Token("s3cret"))
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/static/dashboard.js").status_code == 401
    r = client.post(f"/jobs/{job_id}/retry", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and state_of(db, job_id) is JobState.FAILED
    r = client.get("/jobs?token=s3cret&state=failed", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].endswith("/jobs?state=failed")
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert client.get("/jobs").status_code == 200  # the cookie now lets it in
    assert make_client(auth=Token("s3cret")).get("/?token=wrong").status_code == 401


def test_basic_auth(db: Path, make_client: Callable[..., TestClient]) -> None:
    client = make_client(auth=Basic("ops", "pw"))
    r = client.get("/")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert client.get("/", auth=("ops", "bad")).status_code == 401
    garbage = {"Authorization": "Basic !!!"}
    assert client.get("/", headers=garbage).status_code == 401
    good = base64.b64encode(b"ops:pw").decode()
    assert client.get("/", headers={"Authorization": f"Basic {good}"}).status_code == 200


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_callable_auth(kind: str, make_client: Callable[..., TestClient]) -> None:
    def sync(request: Request) -> bool:
        return request.headers.get("x-user") == "ann"

    async def coro(request: Request) -> bool:
        return sync(request)

    client = make_client(auth=sync if kind == "sync" else coro)
    assert client.get("/").status_code == 401
    assert client.get("/", headers={"x-user": "ann"}).status_code == 200


def test_bad_auth_options_are_refused() -> None:
    with pytest.raises(ConfigError):
        Token("")
    with pytest.raises(ConfigError):
        Basic("a:b", "c")


def test_csrf_missing_or_forged_is_403_and_changes_nothing(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    job_id = failed_job(db)
    client = make_client()
    page = client.get(f"/jobs/{job_id}").text
    assert client.post(f"/jobs/{job_id}/retry").status_code == 403
    forged = {"csrf": "0" * 64}
    assert client.post(f"/jobs/{job_id}/retry", data=forged).status_code == 403
    other = make_client()  # a token from another session is not this session's
    other_token = csrf_of(other.get("/queues").text)
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf": other_token}).status_code == 403
    assert client.post("/dead/requeue", data={"id": job_id}).status_code == 403
    assert state_of(db, job_id) is JobState.FAILED
    assert client.post(f"/jobs/{job_id}/retry", data={"csrf": csrf_of(page)}).status_code == 200
    assert state_of(db, job_id) is JobState.QUEUED


def test_get_changes_nothing(db: Path, make_client: Callable[..., TestClient]) -> None:
    job_id = failed_job(db)
    client = make_client()
    assert client.get(f"/jobs/{job_id}/retry").status_code == 405
    assert client.get("/queues/default/pause").status_code == 405
    assert state_of(db, job_id) is JobState.FAILED


def test_read_only_hides_actions_and_refuses_posts(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    job_id = failed_job(db)
    client = make_client(read_only=True)
    pages = [client.get(p).text for p in [*PATHS, f"/jobs/{job_id}"]]
    for page in pages:
        assert 'method="post"' not in page and 'id="action-' not in page
        assert not re.search(r'id="(pause|resume)-|id="(requeue|delete)-', page)
    r = client.post(f"/jobs/{job_id}/retry", data={"csrf": "x"})
    assert r.status_code == 403
    assert client.post("/queues/default/pause").status_code == 403
    assert state_of(db, job_id) is JobState.FAILED


def test_security_headers_on_every_response(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    job_id = failed_job(db)
    open_client = make_client()
    locked = make_client(auth=Token("t"))
    responses = [open_client.get(p) for p in [*PATHS, f"/jobs/{job_id}", "/static/dashboard.js"]]
    responses += [locked.get("/"), open_client.post(f"/jobs/{job_id}/retry")]
    for r in responses:
        assert r.headers["content-security-policy"] == CSP
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_templates_have_no_inline_script_style_or_handlers() -> None:
    for path in TEMPLATES.glob("*.html"):
        text = path.read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)", text), path
        assert not re.search(r"\sstyle=|<style", text), path
        assert not re.search(r"\son[a-z]+\s*=", text), path


def test_stored_markup_is_never_rendered_raw(
    db: Path, make_client: Callable[..., TestClient]
) -> None:
    import json

    async def seed(b: SQLiteBackend, c: FakeClock) -> list[str]:
        ids = []
        for evil in XSS:
            job = make_job(
                c,
                payload=json.dumps({"to": evil}).encode(),
                meta={"note": evil},
                max_attempts=1,
            )
            await fail(b, [job], AttemptError(1, evil, evil, f"Traceback\n{evil}"))
            ids.append(job.id)
            await b.acquire_lock("report", evil, 60)  # lock owners are free text
        return ids

    ids = run_on(db, seed)
    client = make_client()
    pages = [client.get(p).text for p in PATHS]
    pages += [client.get(f"/jobs/{i}").text for i in ids]
    pages += [client.get("/dead", params={"task": "tests.noop", "error": XSS[0]}).text]
    pages += [client.get("/jobs", params={"task": XSS[1], "key": XSS[0]}).text]
    pages += [client.get("/jobs", params={"id": XSS[0]}).text]
    for page in pages:
        for evil in XSS:
            assert evil not in page
        assert "<img" not in page and "<script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get(f"/jobs/{ids[0]}").text
