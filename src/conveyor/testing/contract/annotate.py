"""The annotate contract: a running job's checkpoint and progress, fenced, kept across retries."""

from __future__ import annotations

import pytest

from conveyor.backends.base import Backend
from conveyor.clock import FakeClock
from conveyor.errors import InvalidOption
from conveyor.job import Completed, Retrying
from conveyor.testing.contract.core import CoreContract, err

__all__ = ["AnnotateContract"]


class AnnotateContract(CoreContract):
    """`Backend.annotate`. Subclasses provide the `backend` fixture."""

    async def test_annotate_writes_checkpoint_and_progress(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        values = {"checkpoint": b"[1,2]", "progress": b'{"fraction":0.5,"message":"half"}'}
        assert await backend.annotate([(lease, values)]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None
        assert got.checkpoint == b"[1,2]"
        assert got.progress == {"fraction": 0.5, "message": "half"}
        # Only the names given change; None clears.
        assert await backend.annotate([(lease, {"checkpoint": None})]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None and got.checkpoint is None
        assert got.progress == {"fraction": 0.5, "message": "half"}

    async def test_annotate_is_fenced(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock)
        stale = await self._claim_one(backend)
        clock.advance(31)
        assert await backend.rescue() == 1
        fresh = await self._claim_one(backend)
        out = await backend.annotate(
            [(stale, {"checkpoint": b"1"}), (fresh, {"progress": b'{"fraction":0.1}'})]
        )
        assert out == [False, True]
        (got,) = await backend.get([job.id])
        assert got is not None and got.checkpoint is None
        assert got.progress == {"fraction": 0.1}
        assert await backend.settle([(fresh, Completed(None))]) == [True]
        assert await backend.annotate([(fresh, {"checkpoint": b"2"})]) == [False]
        (got,) = await backend.get([job.id])
        assert got is not None and got.checkpoint is None

    async def test_checkpoint_survives_retry_and_rescue(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        assert await backend.annotate([(lease, {"checkpoint": b'"a"'})]) == [True]
        assert await backend.settle([(lease, Retrying(clock.now(), err()))]) == [True]
        lease = await self._claim_one(backend)
        assert lease.job.checkpoint == b'"a"'
        assert await backend.annotate([(lease, {"checkpoint": b'"b"'})]) == [True]
        clock.advance(31)
        assert await backend.rescue() == 1
        lease = await self._claim_one(backend)
        assert lease.job.checkpoint == b'"b"' and lease.job.attempts == 3
        assert await backend.settle([(lease, Completed(None))]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None and got.checkpoint == b'"b"'  # kept on the finished record

    async def test_bad_annotations_write_nothing(self, backend: Backend, clock: FakeClock) -> None:
        job = await self._enqueue(backend, clock)
        lease = await self._claim_one(backend)
        with pytest.raises(InvalidOption, match="annotate only"):
            await backend.annotate([(lease, {"checkpoint": b"1"}), (lease, {"state": b"x"})])
        with pytest.raises(InvalidOption, match="JSON object"):
            await backend.annotate([(lease, {"checkpoint": b"1", "progress": b"[1]"})])
        (got,) = await backend.get([job.id])
        assert got is not None and got.checkpoint is None and got.progress == {}
