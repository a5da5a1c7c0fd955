"""The backend contract as reusable test classes: every backend must pass them unchanged.

`CoreContract` is the job lifecycle; `CountersContract`, `LocksContract`,
`PresenceContract`, `QueueControlContract` and `RollupsContract` test the optional capabilities
(`conveyor.capabilities`);
`AnnotateContract` is a running job's checkpoint and progress; `DependContract` jobs that
wait for parent jobs (workflows); `FlowContract` flow control (lanes: turns, concurrency
slots, rate buckets, circuits, and the `FlowControl` capability);
`RecordContract` checks that every field of the job record round-trips. `BackendContract`
is all of these: the stores we ship pass it. `PoisonContract` checks that rows corrupted in
storage read the same way on every store; a store with storage to corrupt adds it, with a
`corrupt` fixture.

Subclass it and provide a `backend` fixture built on the `clock` fixture (a `FakeClock`),
so lease, delay and retention tests run instantly::

    class TestMyBackend(BackendContract):
        @pytest.fixture
        async def backend(self, clock, tmp_path):
            async with MyBackend(..., clock=clock) as b:
                yield b
"""

from __future__ import annotations

from conveyor.testing.contract.annotate import AnnotateContract
from conveyor.testing.contract.capabilities import (
    CountersContract,
    LocksContract,
    PresenceContract,
    QueueControlContract,
)
from conveyor.testing.contract.core import CoreContract, err, make_job, stored
from conveyor.testing.contract.depend import DependContract
from conveyor.testing.contract.flow import FlowContract
from conveyor.testing.contract.record import Corrupt, PoisonContract, RecordContract
from conveyor.testing.contract.rollups import RollupsContract

__all__ = [
    "AnnotateContract",
    "BackendContract",
    "CoreContract",
    "Corrupt",
    "CountersContract",
    "DependContract",
    "FlowContract",
    "LocksContract",
    "PoisonContract",
    "PresenceContract",
    "QueueControlContract",
    "RecordContract",
    "RollupsContract",
    "err",
    "make_job",
    "stored",
]


class BackendContract(
    AnnotateContract,  # these three build on CoreContract's helpers, so they come first
    DependContract,
    FlowContract,
    CoreContract,
    RecordContract,
    CountersContract,
    LocksContract,
    PresenceContract,
    QueueControlContract,
    RollupsContract,
):
    """Every contract test: the lifecycle, dependencies, flow control, the record, and every
    capability."""
