"""Key names and the translation between `Job` records and Redis hashes / script arguments.

Key layout (``P`` is the prefix; ``T`` the hash tag: ``{P}`` on a single Redis, ``{P:queue}``
in cluster mode, so every key of one queue shares a slot)::

    T:job:<id>                 HASH   one job (fields: scripts.FIELDS + seq, token, lease,
                                      children)
    T:q:<queue>:ready          ZSET   queued jobs; members sort by priority, run_at, seq
    T:q:<queue>:scheduled      ZSET   scheduled jobs by run_at
    T:q:<queue>:running        ZSET   running jobs by lease expiry
    T:q:<queue>:state:<state>  ZSET   every job of that state by seq (counts, queries)
    T:q:<queue>:expires:<st>   ZSET   finished jobs by finished_at + keep_for (purge)
    T:q:<queue>:wake           LIST   wake-up tokens for idle workers (BLPOP)
    T:q:<queue>:paused         STRING set while the queue is paused (when it was paused)
    T:q:<queue>:children:<id>  SET    a live parent's waiting children, ``<queue>|<id>``
                                      each (the parent's hash has ``children`` = 1 then)
    T:uniq                     HASH   unique key → the id of the job holding it
    T:seq                      STRING the enqueue counter
    {P}:queues                 SET    every queue ever used (counts, rescue, query)
    {P}:idx                    HASH   id → queue (cluster mode only: finds a job's slot)
    {P}:paused                 SET    the paused queues (listing; the flags above decide)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import msgspec

from conveyor.backends.redis.scripts import BY_HAND, ENQUEUE_FIELDS, ENQUEUE_RAW, FIELDS
from conveyor.fields import ENQUEUED, NAMES, Kind
from conveyor.job import Job
from conveyor.rows import decode_job

__all__ = ["Keys", "decode", "enqueue_args", "text", "unpack_lease"]

_msgpack = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
assert (*NAMES, "cancel_reason") == FIELDS  # the record's fields, then one of this store's
# Where a plain job's missing lane fields go in a row: text and float fields missing would
# send every plain job down `decode_job`'s careful path (the integers default already).
_LANE, _RATE, _CIRCUIT = (NAMES.index(n) for n in ("lane", "rate", "circuit"))


class Keys:
    """Key names for one prefix, mirroring the formulas in the scripts' prelude."""

    def __init__(self, prefix: str, cluster: bool) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self.queues = f"{{{prefix}}}:queues"
        self.idx = f"{{{prefix}}}:idx"
        self.paused = f"{{{prefix}}}:paused"

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


# Each kind as the enqueue script receives it, an expression over the value ``{v}``: text as
# is, numbers as strings (Lua never reformats, and rounds, them), unset optionals as "",
# meta as JSON text, bytes fields empty (they follow the array as raw arguments).
_ENCODE: dict[Kind, str] = {
    Kind.TEXT: "{v}",
    Kind.OPT_TEXT: '("" if {v} is None else {v})',
    Kind.INT: "str({v})",
    Kind.FLOAT: "repr(float({v}))",
    Kind.OPT_FLOAT: '("" if {v} is None else repr(float({v})))',
    Kind.META: '(_json({v}).decode() if {v} else "")',
    Kind.IDS: '",".join({v})',
    Kind.BYTES: '""',
    Kind.OPT_BYTES: '""',
}


def _compile_enqueue() -> Callable[[Sequence[Job]], list[bytes]]:
    """`enqueue_args`, generated from `fields.ENQUEUED` (as `conveyor.rows` generates its
    decoders): straight-line code per job, as fast as a hand-written tuple. The fields the
    script writes by hand (`scripts.BY_HAND`, ints) are appended only when set."""
    generic = [f for f in ENQUEUED if f.name not in BY_HAND]
    kinds = {f.name: f.kind for f in ENQUEUED}
    assert (*(f.name for f in generic), *BY_HAND) == ENQUEUE_FIELDS
    assert BY_HAND[:2] == ("waiting_for", "lane") and kinds["waiting_for"] is Kind.INT
    array = ", ".join(_ENCODE[f.kind].format(v=f"j.{f.name}") for f in generic)
    # The holds when set; a lane job sends them (maybe "0") and then its lane and limits.
    lane = ", ".join(_ENCODE[kinds[n]].format(v=f"j.{n}") for n in BY_HAND[1:])
    tail = (
        f"\n        if j.lane:\n            a += (str(j.waiting_for), {lane})"
        "\n        elif j.waiting_for:\n            a.append(str(j.waiting_for))"
    )
    raws = "".join(f"\n        out.append(j.{name} or b'')" for name in ENQUEUE_RAW)
    source = (
        "def enqueue_args(jobs):\n"
        "    out = []\n"
        "    for j in jobs:\n"
        f"        a = [{array}]{tail}\n"
        f"        out.append(pack(a)){raws}\n"
        "    return out\n"
    )
    scope: dict[str, object] = {"pack": _msgpack.encode, "_json": _json.encode}
    exec(source, scope)  # the source is built from field names and kinds only
    encode: Callable[[Sequence[Job]], list[bytes]] = scope["enqueue_args"]  # type: ignore[assignment]
    return encode


_enqueue_args = _compile_enqueue()


def enqueue_args(jobs: Sequence[Job]) -> list[bytes]:
    """The enqueue script's arguments, derived from `fields.ENQUEUED`: per job, a msgpack
    array of its `scripts.ENQUEUE_FIELDS` (bytes fields empty there) and then each bytes
    field (`scripts.ENQUEUE_RAW`: the payload) as its own argument. Few arguments keep the
    client's command packing cheap; numbers are sent as strings so Lua never reformats (and
    rounds) them; an unset optional field is ``""``."""
    return _enqueue_args(jobs)


def decode(row: Sequence[bytes | None]) -> Job | None:
    """A `Job` from the `FIELDS` of its hash; `None` if the hash is missing.

    Poison (garbage written into a hash by hand) decodes as on every store
    (`rows.decode_job`): unreadable values fall back to their defaults and are named in
    ``meta["invalid_record"]``; an unknown state reads as failed, the raw value in
    ``meta["invalid_state"]`` (the worker then fails such a job with a reason when it
    claims it). The cancel reason, kept beside the record, joins `meta`.
    """
    if row[0] is None:
        return None
    record = list(row)
    reason = record.pop()
    extra = None if reason is None else {"cancel_reason": reason.decode("utf-8", "replace")}
    if record[_LANE] is None:  # a plain job: no lane fields in its hash (`scripts.BY_HAND`)
        record[_LANE] = record[_CIRCUIT] = b""
        record[_RATE] = b"0"
    return decode_job(record, extra)


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
