"""The backend contract against the in-memory backend."""

from collections.abc import AsyncIterator

import pytest

from conveyor.backends.memory import MemoryBackend
from conveyor.clock import FakeClock
from conveyor.testing.contract import BackendContract


class TestMemoryBackend(BackendContract):
    @pytest.fixture
    async def backend(self, clock: FakeClock) -> AsyncIterator[MemoryBackend]:
        async with MemoryBackend(clock=clock) as b:
            yield b
