"""A real redis-server for the Redis tests: started once per session, flushed between tests.

Without a redis-server binary the tests skip locally and fail when ``CI=true``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis

from conveyor.testing.redis_server import RedisServer


def flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
        client.script_flush()
    finally:
        client.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The session server's URL, with an empty database for this test."""
    flush(redis_server.url)
    return redis_server.url


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain redis-py client on the test's database, for poking at keys."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
