"""The job-record table: derived from `Job`, and one decoder for every store's rows."""

from __future__ import annotations

import msgspec

from conveyor.fields import ENQUEUED, FIELDS, MANAGED, NAMES, Kind
from conveyor.job import AttemptError, Job, JobState
from conveyor.rows import decode_job


def _native(job: Job) -> list[object]:
    """A row as SQLite returns it: natural types, meta and errors as JSON text."""
    row: list[object] = []
    for f in FIELDS:
        v = getattr(job, f.name)
        if f.kind is Kind.STATE:
            v = v.value
        elif f.kind in (Kind.META, Kind.ERRORS):
            v = msgspec.json.encode(v).decode()
        elif f.kind is Kind.FLAG:
            v = int(v)
        elif f.kind is Kind.IDS:
            v = ",".join(v)
        row.append(v)
    return row


def _job() -> Job:
    return Job(
        id="j1", task="t", payload=b"{}", queue="q", priority=3, state=JobState.RUNNING,
        run_at=12.5, enqueued_at=10.25, attempts=2, max_attempts=5, timeout=1.5, key="k",
        meta={"a": [1, 2]}, errors=(AttemptError(1, "ValueError", "boom", "tb", 11.0),),
        started_at=12.75, worker="w", cancel_requested=True, parents=("p1", "p2"),
        on_parent_failure="run", feed="all", waiting_for=1,
    )  # fmt: skip


def test_the_table_is_read_off_job() -> None:
    assert [f.name for f in msgspec.structs.fields(Job)] == list(NAMES)
    assert {f.name for f in ENQUEUED} == set(NAMES) - MANAGED
    kinds = {f.name: f.kind for f in FIELDS}
    assert kinds["timeout"] is Kind.OPT_FLOAT and kinds["state"] is Kind.STATE


def test_native_and_text_rows_decode_to_the_same_job() -> None:
    job = _job()
    native = _native(job)
    assert decode_job(native) == job
    as_bytes = [
        None if v is None else str(v).encode() if not isinstance(v, bytes) else v for v in native
    ]  # fmt: skip  (how Redis hands a hash back)
    as_bytes[NAMES.index("cancel_requested")] = b"1"
    assert decode_job(as_bytes) == job


def test_integral_floats_come_back_as_floats() -> None:
    native = _native(_job())
    native[NAMES.index("run_at")] = 12  # SQLite's RETURNING gives integral REALs as ints
    got = decode_job(native)
    assert got.run_at == 12.0 and type(got.run_at) is float


def test_poison_is_named_and_an_unknown_state_reads_failed() -> None:
    native = _native(_job())
    native[NAMES.index("state")] = "zombie"
    native[NAMES.index("priority")] = "high"
    got = decode_job(native)
    assert got.state is JobState.FAILED and got.priority == 0
    assert got.meta["invalid_state"] == "zombie"
    assert got.meta["invalid_record"] == (
        "unreadable stored value(s): priority='high', state='zombie'"
    )
    assert got.meta["a"] == [1, 2]  # the rest of the record is intact
