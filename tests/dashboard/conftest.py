"""Dashboard fixtures: a SQLite file store seeded through the real store API, and a
TestClient over `create_app` on a fresh App of that file."""

from __future__ import annotations

import asyncio
import re
import warnings
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.dashboard import create_app
from conveyor.job import AttemptError, Failed, Job
from conveyor.testing.contract import make_job

with warnings.catch_warnings():  # starlette 1.x warns that it prefers httpx2 over httpx
    warnings.simplefilter("ignore", UserWarning)
    from starlette.testclient import TestClient

XSS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


def run_on(url_path: Path, body: Callable[[SQLiteBackend, FakeClock], Awaitable[Any]]) -> Any:
    """Run `body` against the SQLite file at `url_path` (its own loop; closed after)."""

    async def go() -> Any:
        clock = FakeClock()
        backend = SQLiteBackend(url_path)
        try:
            return await body(backend, clock)
        finally:
            await backend.aclose()

    return asyncio.run(go())


async def fail(backend: SQLiteBackend, jobs: list[Job], error: AttemptError) -> None:
    """Enqueue `jobs` and fail each for good with `error`."""
    await backend.enqueue(jobs)
    leases = await backend.claim(ClaimRequest([jobs[0].queue], len(jobs), 30, "w"))
    await backend.settle([(lease, Failed(error)) for lease in leases])


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field on the page"
    return found.group(1)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def make_client(db: Path) -> Iterator[Callable[..., TestClient]]:
    """`make_client(**create_app options)`: a TestClient on the dashboard of `db`."""
    apps: list[conveyor.App] = []
    clients: list[TestClient] = []

    def make(**options: Any) -> TestClient:
        app = conveyor.App(f"sqlite:///{db}")
        apps.append(app)
        client = TestClient(create_app(app.inspector, schedules=app.schedules, **options))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client, app in zip(clients, apps, strict=True):
        assert client.portal is not None
        client.portal.call(app.aclose)  # in the loop that opened its connections
        client.__exit__(None, None, None)


__all__ = ["XSS", "TestClient", "csrf_of", "fail", "make_job", "run_on"]
