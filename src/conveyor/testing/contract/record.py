"""The job record's contract: every field round-trips, and poison reads alike everywhere.

The expectations derive from `conveyor.fields`: a field added to `Job` is checked here with
no change to this file.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from conveyor.backends.base import Backend, ClaimRequest, JobFilter
from conveyor.clock import FakeClock
from conveyor.fields import ENQUEUED, STATES, Field, Kind
from conveyor.job import Completed, JobState
from conveyor.testing.contract.core import make_job, stored

__all__ = ["Corrupt", "PoisonContract", "RecordContract"]

#: `corrupt(job_id, field, raw)`: overwrite one stored field of a job with raw text, as a
#: bad migration, a hand edit or another program might.
Corrupt = Callable[[str, str, str], Awaitable[None]]


def _sample(field: Field, now: float) -> object:
    """A value for `field` unlike its default, so a dropped field shows."""
    if field.name in ("id", "task", "payload", "queue"):
        return None  # make_job sets these
    return {
        Kind.TEXT: "text-value",
        Kind.OPT_TEXT: f"{field.name}-value",
        Kind.INT: 7,
        Kind.FLOAT: now + 12.25,
        Kind.OPT_FLOAT: now + 3.5,
        Kind.BYTES: b"\x00\xffbytes",
        Kind.OPT_BYTES: b"\x01opt",
        Kind.FLAG: True,
        Kind.META: {"nested": {"list": [1, 2.5, "x"]}, "unicode": "é✓"},
    }.get(field.kind)


class RecordContract:
    """Every field an enqueue writes comes back as written."""

    async def test_every_enqueued_field_round_trips(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        values = {f.name: v for f in ENQUEUED if (v := _sample(f, clock.now())) is not None}
        values["run_at"] = clock.now()  # due now
        job = make_job(clock, **values)
        assert await stored(backend, [job]) == [True]
        (got,) = await backend.get([job.id])
        assert got is not None
        for field in ENQUEUED:
            assert getattr(got, field.name) == getattr(job, field.name), field.name

    async def test_counts_and_states_come_from_the_state_table(
        self, backend: Backend, clock: FakeClock
    ) -> None:
        await backend.enqueue([make_job(clock), make_job(clock, delay=60)])
        done = make_job(clock)
        await backend.enqueue([done])
        leases = await backend.claim(ClaimRequest(["default"], 1, 30, "w"))
        await backend.settle([(leases[0], Completed(None))])
        counts = (await backend.counts())["default"]
        assert set(counts) <= set(STATES)
        assert counts == {JobState.QUEUED: 1, JobState.SCHEDULED: 1, JobState.COMPLETED: 1}


class PoisonContract:
    """A row corrupted in storage reads the same way on every store (`rows.decode_job`):
    unreadable values fall back to defaults and are named in ``meta["invalid_record"]``; an
    unknown state reads as failed. Nothing raises; the rest of the store keeps working."""

    async def test_an_unknown_state_reads_as_failed_and_says_why(
        self, backend: Backend, clock: FakeClock, corrupt: Corrupt
    ) -> None:
        bad, good = make_job(clock), make_job(clock)
        await backend.enqueue([bad, good])
        await corrupt(bad.id, "state", "zombie")
        (got,) = await backend.get([bad.id])
        assert got is not None and got.state is JobState.FAILED
        assert got.meta["invalid_state"] == "zombie"
        assert "state='zombie'" in str(got.meta["invalid_record"])
        counts = (await backend.counts())["default"]
        assert sum(counts.values()) == 2 and set(counts) <= set(STATES)
        assert await backend.cancel(bad.id) is JobState.FAILED  # no change, no crash
        assert [x.id for x in (await backend.query(JobFilter())).jobs] == [bad.id, good.id]

    async def test_unreadable_values_fall_back_and_are_named(
        self, backend: Backend, clock: FakeClock, corrupt: Corrupt
    ) -> None:
        job = make_job(clock, meta={"a": 1})
        await backend.enqueue([job])
        await corrupt(job.id, "max_attempts", "many")
        await corrupt(job.id, "timeout", "soon")
        await corrupt(job.id, "meta", "{{{")
        (got,) = await backend.get([job.id])
        assert got is not None and got.state is JobState.QUEUED
        assert (got.max_attempts, got.timeout) == (1, None)
        reason = str(got.meta["invalid_record"])
        assert "max_attempts='many'" in reason and "timeout='soon'" in reason
        assert "meta='{{{'" in reason
