"""An idle worker's wait on Redis ends when a delayed job is due, timed on the client: a
`BLPOP` timeout fires on the server's `hz` timer (every second at ``hz 1``, 100 ms at the
default 10), which made periodic fires start up to 1/hz late."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import conveyor
from conveyor.backends.base import ClaimRequest
from conveyor.testing.redis_server import RedisServer


@pytest.fixture(scope="module")
def slow_timer_server() -> Iterator[RedisServer]:
    if not RedisServer.available():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is not on PATH; CI must run the Redis tests")
        pytest.skip("redis-server is not on PATH")
    with RedisServer(extra_args=["--hz", "1"]) as server:
        yield server


async def test_wait_ends_when_a_delayed_job_is_due(slow_timer_server: RedisServer) -> None:
    app = conveyor.App(slow_timer_server.url + "?prefix=delayed")

    @app.task
    async def later() -> None: ...

    try:
        await later.options(delay=0.3).enqueue()
        began = time.monotonic()
        got = await app.backend.wait_for_lease(["default"], 3.0, "w1", 5.0)
        waited = time.monotonic() - began
        assert got == []
        assert 0.2 < waited < 0.7, waited  # at hz 1 the server alone would take up to 1.3 s
        (lease,) = await app.backend.claim(ClaimRequest(["default"], 1, 5.0, "w1"))
        assert lease.job.task == "later"
    finally:
        await app.aclose()
