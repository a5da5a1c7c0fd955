"""The job record's fields and states as a table: what every store derives its layout from.

`Job` (in `conveyor.job`) is the one definition of the record. This module reads its fields
once, at import, and gives each a *kind* from its type (text, number, optional number,
bytes, flag, state, JSON object, JSON list of errors). From that table:

- the SQLite store derives its column list, column declarations (new fields are added to old
  files by `ALTER TABLE` on open, no hand-written migration), its insert and its row mapping;
- the Redis store derives its hash field list, the field list its Lua scripts are given, and
  the fields an enqueue carries;
- `decode_job` turns a stored row of any store back into a `Job`, the same way everywhere,
  including rows corrupted by hand (poison): see its docstring;
- counts and `QueueCounts` iterate `JobState`, so a new state needs no code there.

Adding a job field is one line in `Job` (with its default); if the store sets it rather than
the producer, also one name in `MANAGED`. Adding a state is one member of `JobState` (and
its place in the lifecycle rules).
"""

from __future__ import annotations

import enum
import typing
from collections.abc import Callable, Mapping, Sequence
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
    "decode_job",
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
     "cancel_requested"}
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

_BY_VALUE = {s.value: s for s in JobState}
_errors = msgspec.json.Decoder(tuple[AttemptError, ...])
_meta = msgspec.json.Decoder(dict[str, object])


class _Bad(Exception):
    """A stored value that can't be read as its field's kind."""


def _text(raw: object) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, bytes | bytearray | memoryview):
        return bytes(raw).decode("utf-8", "replace")
    raise _Bad


def _int(raw: object) -> int:
    if type(raw) is int:
        return raw
    if isinstance(raw, float) and raw == raw and abs(raw) != float("inf"):
        return int(raw)
    if isinstance(raw, str | bytes):
        try:
            return int(raw)
        except ValueError:
            return _int(_float(raw))
    raise _Bad


def _float(raw: object) -> float:
    if type(raw) is float:
        return raw
    if type(raw) is int:
        return float(raw)
    if isinstance(raw, str | bytes):
        try:
            return float(raw)
        except ValueError:
            raise _Bad from None
    raise _Bad


def _bytes(raw: object) -> bytes:
    if type(raw) is bytes:
        return raw
    if isinstance(raw, str):
        return raw.encode()
    if isinstance(raw, bytearray | memoryview):
        return bytes(raw)
    raise _Bad


def _flag(raw: object) -> bool:
    if raw in (1, b"1", "1", True):
        return True
    if raw in (0, b"0", "0", False, b"", ""):
        return False
    raise _Bad


def _state(raw: object) -> JobState:
    try:
        return _BY_VALUE[_text(raw)]
    except KeyError:
        raise _Bad from None


def _meta_of(raw: object) -> Mapping[str, object]:
    if raw in ("{}", b"{}", "", b""):
        return {}
    try:
        return _meta.decode(_bytes(raw))
    except msgspec.DecodeError:
        raise _Bad from None


def _errors_of(raw: object) -> tuple[AttemptError, ...]:
    if raw in ("[]", b"[]", "", b""):
        return ()
    try:
        return _errors.decode(_bytes(raw))
    except msgspec.DecodeError:
        raise _Bad from None


_READ: dict[Kind, Callable[[object], object]] = {
    Kind.TEXT: _text,
    Kind.OPT_TEXT: _text,
    Kind.INT: _int,
    Kind.FLOAT: _float,
    Kind.OPT_FLOAT: _float,
    Kind.BYTES: _bytes,
    Kind.OPT_BYTES: _bytes,
    Kind.FLAG: _flag,
    Kind.STATE: _state,
    Kind.META: _meta_of,
    Kind.ERRORS: _errors_of,
}
# The Python type a well-formed value already has (SQLite returns these): kept as is.
_EXACT: dict[Kind, type] = {
    Kind.TEXT: str,
    Kind.OPT_TEXT: str,
    Kind.INT: int,
    Kind.FLOAT: float,
    Kind.OPT_FLOAT: float,
    Kind.BYTES: bytes,
    Kind.OPT_BYTES: bytes,
}
_DEFAULT_META = next(f.default for f in FIELDS if f.name == "meta")
_PLAN = tuple(
    (f.name, _EXACT.get(f.kind), _READ[f.kind], f.kind.optional, f.default) for f in FIELDS
)


def _compile_fast() -> Callable[[Sequence[object]], Job | None]:
    """The fast path of `decode_job`, generated from the table as ``dataclasses`` generates
    ``__init__``.

    For a row whose values already have their natural Python types (SQLite returns them:
    exact kinds as themselves, floats also as ints, None where optional; the state, meta and
    errors as text; the flag as 0 or 1) it makes one type test per field and one `Job(...)`
    call with the few conversions inline: as fast as a hand-written mapping, with nothing to
    keep in sync. It returns None for any other row, which then takes the careful path.
    """
    raw = {Kind.STATE: "str", Kind.META: "str", Kind.ERRORS: "str", Kind.FLAG: "int"}
    convert = {
        Kind.STATE: "_STATE[{v}]",
        Kind.META: "({{}} if {v} == '{{}}' else _meta_of({v}))",
        Kind.ERRORS: "(() if {v} == '[]' else _errors_of({v}))",
        Kind.FLAG: "_FLAG[{v}]",
    }
    tests, args = [], []
    for i, f in enumerate(FIELDS):
        v = f"r[{i}]"
        exact = _EXACT.get(f.kind)
        if exact is float:  # SQLite hands integral REALs back as ints (RETURNING does)
            test, value = f"(type({v}) is float or type({v}) is int)", f"float({v})"
            if f.kind.optional:
                value = f"(None if {v} is None else float({v}))"
        elif exact is not None:
            test, value = f"type({v}) is {exact.__name__}", v
        else:
            test, value = f"type({v}) is {raw[f.kind]}", convert[f.kind].format(v=v)
        tests.append(f"({v} is None or {test})" if f.kind.optional else test)
        args.append(f"{f.name}={value}")
    source = (
        "def fast(r):\n"
        f"    if len(r) == {len(FIELDS)} and {' and '.join(tests)}:\n"
        f"        return Job({', '.join(args)})\n"
        "    return None\n"
    )
    scope: dict[str, object] = {
        "Job": Job, "_STATE": _BY_VALUE, "_FLAG": {0: False, 1: True}, "_meta_of": _meta_of,
        "_errors_of": _errors_of,
    }  # fmt: skip
    exec(source, scope)  # the source is built from field names and kinds only
    return scope["fast"]  # type: ignore[return-value]


_fast = _compile_fast()


def decode_job(row: Sequence[object], extra_meta: Mapping[str, object] | None = None) -> Job:
    """A `Job` from its stored values, in `FIELDS` order, whatever the store.

    Values may be the natural Python types (SQLite) or bytes (Redis); `None` is a missing
    value. A poison row never raises: an unreadable value decodes to its field's default and
    the job's ``meta["invalid_record"]`` names each such field and its raw value; an unknown
    state also makes the job read as `failed`, with the raw state in
    ``meta["invalid_state"]``. `extra_meta` (say, a cancel reason kept beside the record)
    is merged into `meta`.
    """
    if extra_meta is None:
        try:
            job = _fast(row)
        except (_Bad, KeyError):
            job = None  # poison after all: the careful path names it
        if job is not None:
            return job
    return _decode_careful(row, extra_meta)


def _decode_careful(row: Sequence[object], extra_meta: Mapping[str, object] | None) -> Job:
    values: dict[str, object] = {}
    problems: list[str] = []
    for (name, exact, read, optional, default), raw in zip(_PLAN, row, strict=True):
        if raw is None:
            values[name] = None if optional else default
        elif exact is not None and type(raw) is exact:
            values[name] = raw
        else:
            try:
                values[name] = read(raw)
            except _Bad:
                values[name] = default
                problems.append(name)
    if problems or extra_meta:
        meta = dict(values["meta"])  # type: ignore[call-overload]
        if extra_meta:
            meta.update(extra_meta)
        if problems:
            shown = (f"{n}={_show(row[NAMES.index(n)])}" for n in problems)
            meta["invalid_record"] = "unreadable stored value(s): " + ", ".join(shown)
            if "state" in problems:
                values["state"] = JobState.FAILED
                meta["invalid_state"] = _text(row[NAMES.index("state")])
        values["meta"] = meta
    elif values["meta"] is _DEFAULT_META:
        values["meta"] = {}  # never share one mutable default between jobs
    return Job(**values)  # type: ignore[arg-type]


def _show(raw: object) -> str:
    text = _text(raw) if isinstance(raw, str | bytes) else repr(raw)
    return repr(text[:60] + ("…" if len(text) > 60 else ""))
