"""The store down: every page still renders (503) with the ``#outage`` banner naming the
error, SSE sends an ``outage`` event and goes on, and the first request after the store is
back renders normally (no restart). On a real redis-server that is killed and started again."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import conveyor
from conveyor.dashboard import create_app
from conveyor.testing.redis_server import RedisServer
from tests.dashboard.conftest import TestClient
from tests.redis.servers import Server

PATHS = ["/", "/queues", "/jobs", "/dead", "/workers", "/locks", "/schedules"]


@pytest.fixture
def server(redis_server: RedisServer, tmp_path: Path) -> Iterator[Server]:
    """A redis-server of this test's own (the session one only gates on redis-server)."""
    own = Server(tmp_path / "redis")
    own.start()
    try:
        yield own
    finally:
        own.stop()


def test_store_down_then_back(server: Server) -> None:
    async def seed() -> None:
        app = conveyor.App(server.url)

        @app.task(queue="emails")
        def send(to: str) -> None: ...

        await send.enqueue("ann")
        await app.aclose()

    asyncio.run(seed())
    app = conveyor.App(server.url)
    with TestClient(create_app(app.inspector, schedules=app.schedules)) as client:
        assert client.get("/queues").status_code == 200
        server.kill()
        for path in PATHS:
            r = client.get(path)
            assert r.status_code == 503, path
            assert re.search(r'<div id="outage" class="outage">Store unavailable: \w+', r.text)
            assert f'data-page="{path.strip("/") or "overview"}"' in r.text
        events = client.get("/events", params={"limit": 2}).text.strip().split("\n\n")[1:]
        assert [e.split("\n")[0] for e in events] == ["event: outage", "event: outage"]
        server.start()  # same port; the data is gone (no AOF), which is fine here
        for path in PATHS:
            r = client.get(path)
            assert r.status_code == 200, (path, r.text[-300:])
            assert 'id="outage"' not in r.text
        assert "event: update" in client.get("/events", params={"limit": 1}).text
        assert client.portal is not None
        client.portal.call(app.aclose)
