"""The job record's fields and states as a table: what every store derives its layout from.

`Job` (in `conveyor.job`) is the one definition of the record. This module reads its fields
once, at import, and gives each a *kind* from its type (text, number, optional number,
bytes, flag, state, JSON object, JSON list of errors). From that table:

- the SQLite store derives its column list, column declarations (new fields are added to old
  files by `ALTER TABLE` on open, no hand-written migration), its insert and its row mapping;
- the Redis store derives its hash field list, the field list its Lua scripts are given, and
  the fields an enqueue carries;
- `conveyor.rows.decode_job` turns a stored row of any store back into a `Job`, the same
  way everywhere, including rows corrupted by hand (poison);
- counts and `QueueCounts` iterate `JobState`, so a new state needs no code there.

Adding a job field is one line in `Job` (with its default); if the store sets it rather than
the producer, also one name in `MANAGED`. Adding a state is one member of `JobState` (and
its place in the lifecycle rules).
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from conveyor.job import AttemptError, Job, JobState

__all__ = [
    "ENQUEUED",
    "FIELDS",
    "MANAGED",
    "NAMES",
    "STATES",
    "Field",
    "Kind",
]


class Kind(enum.Enum):
    """How a field's value is stored: the storage type every store maps it to."""

    TEXT = "text"
    OPT_TEXT = "opt_text"
    INT = "int"
    FLOAT = "float"
    OPT_FLOAT = "opt_float"
    BYTES = "bytes"
    OPT_BYTES = "opt_bytes"
    FLAG = "flag"
    STATE = "state"
    META = "meta"  # a JSON object
    ERRORS = "errors"  # a JSON array of AttemptError
    IDS = "ids"  # job ids, stored as one text of comma-separated ids ("" for none)

    @property
    def optional(self) -> bool:
        """Whether the field may be absent (NULL / no hash field)."""
        return self in (Kind.OPT_TEXT, Kind.OPT_FLOAT, Kind.OPT_BYTES)


@dataclass(frozen=True, slots=True)
class Field:
    """One field of the job record.

    Attributes:
        name: the `Job` attribute (also the SQL column and the Redis hash field).
        kind: its storage kind.
        default: the `Job` default (what a missing or unreadable value decodes to).
        managed: set by the store as the job moves (state, attempts, result, ...), not by the
            producer at enqueue.
    """

    name: str
    kind: Kind
    default: object
    managed: bool


# Fields the store sets as the job moves; every other field comes from the producer.
MANAGED = frozenset(
    {"state", "attempts", "result", "errors", "started_at", "finished_at", "worker",
     "cancel_requested", "checkpoint", "progress"}
)  # fmt: skip

_KINDS: dict[object, Kind] = {
    str: Kind.TEXT,
    str | None: Kind.OPT_TEXT,
    int: Kind.INT,
    float: Kind.FLOAT,
    float | None: Kind.OPT_FLOAT,
    bytes: Kind.BYTES,
    bytes | None: Kind.OPT_BYTES,
    bool: Kind.FLAG,
    JobState: Kind.STATE,
    Mapping[str, object]: Kind.META,
    tuple[AttemptError, ...]: Kind.ERRORS,
    tuple[str, ...]: Kind.IDS,
}


def _fields() -> tuple[Field, ...]:
    hints = typing.get_type_hints(Job)
    out: list[Field] = []
    for f in msgspec.structs.fields(Job):
        kind = _KINDS.get(hints[f.name])
        if kind is None:  # a new field of a new type: say where to teach it
            raise TypeError(f"Job.{f.name}: no storage kind for {hints[f.name]!r} in fields._KINDS")
        default: object = f.default
        if f.default_factory is not msgspec.NODEFAULT:
            default = f.default_factory()
        elif default is msgspec.NODEFAULT:
            default = {Kind.TEXT: "", Kind.BYTES: b""}.get(kind)
        out.append(Field(f.name, kind, default, f.name in MANAGED))
    return tuple(out)


#: Every field of `Job`, in its declaration order (the order rows are read and written in).
FIELDS = _fields()
#: Their names, in the same order.
NAMES = tuple(f.name for f in FIELDS)
#: The fields an enqueue writes (everything but `MANAGED`), in `FIELDS` order.
ENQUEUED = tuple(f for f in FIELDS if not f.managed)
#: Every state, in lifecycle order: counts and `QueueCounts` iterate this.
STATES = tuple(JobState)
