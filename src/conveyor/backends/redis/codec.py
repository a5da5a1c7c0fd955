"""Key names and the translation between `Job` records and Redis hashes / script arguments.

Key layout (``P`` is the prefix; ``T`` the hash tag: ``{P}`` on a single Redis, ``{P:queue}``
in cluster mode, so every key of one queue shares a slot)::

    T:job:<id>                 HASH   one job (fields: scripts.FIELDS + seq, token, lease)
    T:q:<queue>:ready          ZSET   queued jobs; members sort by priority, run_at, seq
    T:q:<queue>:scheduled      ZSET   scheduled jobs by run_at
    T:q:<queue>:running        ZSET   running jobs by lease expiry
    T:q:<queue>:state:<state>  ZSET   every job of that state by seq (counts, queries)
    T:q:<queue>:expires:<st>   ZSET   finished jobs by finished_at + keep_for (purge)
    T:q:<queue>:wake           LIST   wake-up tokens for idle workers (BLPOP)
    T:uniq                     HASH   unique key → the id of the job holding it
    T:seq                      STRING the enqueue counter
    {P}:queues                 SET    every queue ever used (counts, rescue, query)
    {P}:idx                    HASH   id → queue (cluster mode only: finds a job's slot)
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from conveyor.backends.redis.scripts import FIELDS
from conveyor.job import AttemptError, Job, JobState

__all__ = ["Keys", "decode", "enqueue_args", "text", "unpack_lease"]

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_errors = msgspec.json.Decoder(tuple[AttemptError, ...])
_meta = msgspec.json.Decoder(dict[str, object])
_STATES = {s.value.encode(): s for s in JobState}
assert FIELDS[0] == "id" and FIELDS[-1] == "cancel_reason"


class Keys:
    """Key names for one prefix, mirroring the formulas in the scripts' prelude."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.queues = f"{{{prefix}}}:queues"
        self.idx = f"{{{prefix}}}:idx"

    def slot(self, queue: str) -> str:
        return f"{{{self.prefix}:{queue}}}" if self.cluster else f"{{{self.prefix}}}"

    def q(self, queue: str, name: str) -> str:
        return f"{self.slot(queue)}:q:{queue}:{name}"

    def job(self, queue: str, job_id: str) -> str:
        return f"{self.slot(queue)}:job:{job_id}"

    def inbox(self, worker: str) -> str:
        """The list a waiting worker is handed leases in (single Redis only)."""
        return f"{self.slot('')}:inbox:{worker}"

    def route(self, queue: str) -> str:
        """A key in `queue`'s slot, passed as KEYS[1] so a cluster client routes the call."""
        return f"{self.slot(queue)}:seq"

    def counter(self, key: str) -> str:
        return f"{self.prefix}:counter:{key}"


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))


def enqueue_args(jobs: Sequence[Job]) -> list[bytes]:
    """The enqueue script's arguments, two per job: a msgpack array of its
    `scripts.ENQUEUE_WIDTH` fields (the payload's slot empty) and the payload itself. Few
    arguments keep the client's command packing cheap; numbers are sent as strings so Lua
    never reformats (and rounds) them."""
    pack = _msgpack.encode
    out: list[bytes] = []
    for j in jobs:
        out.append(pack((
            j.id, j.task, "", j.queue, str(j.priority), repr(j.run_at),
            repr(j.enqueued_at), str(j.max_attempts), _opt(j.timeout), _opt(j.deadline),
            j.key or "", _opt(j.unique_until), repr(j.keep_for),
            _json.encode(j.meta).decode() if j.meta else "",
        )))  # fmt: skip
        out.append(j.payload)
    return out


def _str(v: bytes | None) -> str | None:
    return None if v is None else v.decode("utf-8", "replace")


def _float(v: bytes | None, default: float | None = None) -> float | None:
    if v is None:
        return default
    try:
        return float(v)
    except ValueError:
        return default


def _int(v: bytes | None, default: int = 0) -> int:
    if v is None:
        return default
    try:
        return int(v)
    except ValueError:
        f = _float(v)
        return default if f is None or f != f else int(f)


def decode(row: Sequence[bytes | None]) -> Job | None:
    """A `Job` from the `FIELDS` of its hash; `None` if the hash is missing.

    Garbage written into a hash by hand never raises here: unreadable numbers fall back to
    their defaults, unreadable meta/errors to empty, and an unknown state is reported as
    failed with the raw value in ``meta["invalid_state"]`` (the worker then fails such a job
    with a reason when it claims it).
    """
    (id_, task, payload, queue, priority, state, run_at, enqueued_at, attempts, max_attempts,
     timeout, deadline, key, unique_until, keep_for, meta, result, errors, started_at,
     finished_at, worker, cancel_requested, cancel_reason) = row  # fmt: skip
    if id_ is None:
        return None
    meta_d: dict[str, object] = {}
    if meta:
        try:
            meta_d = _meta.decode(meta)
        except msgspec.DecodeError:
            meta_d = {"invalid_meta": meta.decode("utf-8", "replace")}
    if cancel_reason is not None:
        meta_d["cancel_reason"] = cancel_reason.decode("utf-8", "replace")
    st = _STATES.get(state or b"")
    if st is None:
        st = JobState.FAILED
        meta_d["invalid_state"] = _str(state)
    errs: tuple[AttemptError, ...] = ()
    if errors and errors != b"[]":
        try:
            errs = _errors.decode(errors)
        except msgspec.DecodeError:
            errs = ()
    return Job(
        id=id_.decode(),
        task=_str(task) or "",
        payload=payload or b"",
        queue=_str(queue) or "default",
        priority=_int(priority),
        state=st,
        run_at=_float(run_at, 0.0),  # type: ignore[arg-type]
        enqueued_at=_float(enqueued_at, 0.0),  # type: ignore[arg-type]
        attempts=_int(attempts),
        max_attempts=_int(max_attempts, 1),
        timeout=_float(timeout),
        deadline=_float(deadline),
        key=_str(key),
        unique_until=_float(unique_until),
        keep_for=_float(keep_for, 86_400.0),  # type: ignore[arg-type]
        meta=meta_d,
        result=result,
        errors=errs,
        started_at=_float(started_at),
        finished_at=_float(finished_at),
        worker=_str(worker),
        cancel_requested=cancel_requested == b"1",
    )


def text(value: bytes | str) -> str:
    """A reply value as `str`."""
    return value.decode() if isinstance(value, bytes) else value


def unpack_lease(entry: bytes) -> tuple[int, float, list[bytes | None]]:
    """A lease handed to a waiting worker (the scripts' ``pack_lease``): its token, its expiry
    and the job's `FIELDS` row. Each element is ``<length>:<bytes>``, or ``-`` for none."""
    out: list[bytes | None] = []
    pos, end = 0, len(entry)
    while pos < end:
        if entry[pos] == 45:  # "-"
            out.append(None)
            pos += 1
            continue
        colon = entry.index(b":", pos)
        start = colon + 1
        stop = start + int(entry[pos:colon])
        out.append(entry[start:stop])
        pos = stop
    if len(out) != 2 + len(FIELDS) or out[0] is None or out[1] is None:
        raise ValueError(f"malformed lease entry ({len(out)} elements)")
    return int(out[0]), float(out[1]), out[2:]
