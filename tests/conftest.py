"""Shared fixtures: an App on each embedded backend, and one real redis-server per session."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor.testing.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server on a free loopback port for the session. Without the binary the
    tests that need it skip locally, and fail when ``CI=true`` (CI must run them)."""
    if not RedisServer.available():
        message = "redis-server is not on PATH (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI must run the Redis tests")
        pytest.skip(message)
    with RedisServer() as server:
        yield server


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[conveyor.App]:
    """An App on the memory backend and on a SQLite file (each test runs on both)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    application = conveyor.App(url)
    yield application
    await application.aclose()
