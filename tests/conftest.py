"""Shared fixtures: an App on each embedded backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import conveyor


@pytest.fixture(params=["memory", "sqlite"])
async def app(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[conveyor.App]:
    """An App on the memory backend and on a SQLite file (each test runs on both)."""
    url = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/jobs.db"
    application = conveyor.App(url)
    yield application
    await application.aclose()
