"""Stored rows back into `Job`s: the one decoder every store uses, derived from `fields`.

`decode_job(values)` takes a row's values in `fields.FIELDS` order. Two fast paths are
generated from the table (as ``dataclasses`` generates ``__init__``), one for rows of
natural Python types (SQLite) and one for rows of bytes (Redis): straight-line code with one
`Job(...)` call, as fast as a hand-written mapping and with nothing to keep in sync. A row
either path refuses (a missing or unreadable value) takes the careful path, which never
raises and names what was wrong: poison decodes the same way on every store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import msgspec

from conveyor.fields import FIELDS, NAMES, Kind
from conveyor.job import AttemptError, Job, JobState

__all__ = ["decode_job"]

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


def _ids_of(raw: object) -> tuple[str, ...]:
    text = _text(raw)
    return tuple(text.split(",")) if text else ()


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
    Kind.IDS: _ids_of,
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
_PLAN = tuple(
    (f.name, _EXACT.get(f.kind), _READ[f.kind], f.kind.optional, f.default) for f in FIELDS
)


# How each kind is tested and converted on the two fast paths, as expressions over the
# raw value ``{v}``. Native rows (SQLite): exact types, floats also as ints (SQLite hands
# integral REALs back as ints), state/meta/errors as text, the flag as 0/1. Bytes rows
# (Redis): every value bytes or missing; an optional value missing is None, meta and errors
# missing are empty, a missing flag is false, a missing integer its default (as on the
# careful path: a field added after the record was written).
_NATIVE: dict[Kind, tuple[str, str]] = {
    Kind.TEXT: ("type({v}) is str", "{v}"),
    Kind.OPT_TEXT: ("({v} is None or type({v}) is str)", "{v}"),
    Kind.INT: ("type({v}) is int", "{v}"),
    Kind.FLOAT: ("(type({v}) is float or type({v}) is int)", "float({v})"),
    Kind.OPT_FLOAT: (
        "({v} is None or type({v}) is float or type({v}) is int)",
        "(None if {v} is None else float({v}))",
    ),
    Kind.BYTES: ("type({v}) is bytes", "{v}"),
    Kind.OPT_BYTES: ("({v} is None or type({v}) is bytes)", "{v}"),
    Kind.FLAG: ("type({v}) is int", "_FLAG[{v}]"),
    Kind.STATE: ("type({v}) is str", "_STATE[{v}]"),
    Kind.META: ("type({v}) is str", "({{}} if {v} == '{{}}' else _meta_of({v}))"),
    Kind.ERRORS: ("type({v}) is str", "(() if {v} == '[]' else _errors_of({v}))"),
    Kind.IDS: ("type({v}) is str", "(tuple({v}.split(',')) if {v} else ())"),
}
_BYTES: dict[Kind, tuple[str, str]] = {
    Kind.TEXT: ("{v} is not None", "{v}.decode()"),
    Kind.OPT_TEXT: ("True", "(None if {v} is None else {v}.decode())"),
    Kind.INT: ("True", "({d} if {v} is None else int({v}))"),  # missing: the default
    Kind.FLOAT: ("{v} is not None", "float({v})"),
    Kind.OPT_FLOAT: ("True", "(None if {v} is None else float({v}))"),
    Kind.BYTES: ("{v} is not None", "{v}"),
    Kind.OPT_BYTES: ("True", "{v}"),
    Kind.FLAG: ("True", "_FLAG[{v}]"),
    Kind.STATE: ("True", "_STATE[{v}]"),
    Kind.META: ("True", "({{}} if not {v} else _meta_of({v}))"),
    Kind.ERRORS: ("True", "(() if not {v} or {v} == b'[]' else _errors_of({v}))"),
    Kind.IDS: ("True", "(tuple({v}.decode().split(',')) if {v} else ())"),
}


Decoder = Callable[[Sequence[object]], Job | None]


def _compile(
    name: str, plan: Mapping[Kind, tuple[str, str]], states: object, flags: object
) -> Decoder:
    """A fast decoder generated from the table: ``name(row) -> Job | None`` (None: the row
    failed a test; a conversion that fails raises, and the caller takes the careful path)."""
    tests, args = [], []
    for i, f in enumerate(FIELDS):
        test, value = plan[f.kind]
        tests.append(test.format(v=f"r[{i}]"))
        args.append(f"{f.name}={value.format(v=f'r[{i}]', d=repr(f.default))}")
    source = (
        f"def {name}(r):\n"
        f"    if len(r) == {len(FIELDS)} and {' and '.join(t for t in tests if t != 'True')}:\n"
        f"        return Job({', '.join(args)})\n"
        "    return None\n"
    )
    scope: dict[str, object] = {
        "Job": Job, "_STATE": states, "_FLAG": flags, "_meta_of": _meta_of,
        "_errors_of": _errors_of,
    }  # fmt: skip
    exec(source, scope)  # the source is built from field names and kinds only
    decoder: Decoder = scope[name]  # type: ignore[assignment]
    return decoder


_fast_native = _compile("native", _NATIVE, _BY_VALUE, {0: False, 1: True})
_fast_bytes = _compile(
    "from_bytes", _BYTES, {s.value.encode(): s for s in JobState},
    {None: False, b"0": False, b"1": True, b"": False},
)  # fmt: skip
# What a fast path may raise on a value that passed its test but does not convert.
_REFUSED = (_Bad, KeyError, ValueError, TypeError, AttributeError)


def decode_job(row: Sequence[object], extra_meta: Mapping[str, object] | None = None) -> Job:
    """A `Job` from its stored values, in `FIELDS` order, whatever the store.

    Values may be the natural Python types (SQLite) or bytes (Redis); `None` is a missing
    value. A poison row never raises: an unreadable value decodes to its field's default and
    the job's ``meta["invalid_record"]`` names each such field and its raw value; an unknown
    state also makes the job read as `failed`, with the raw state in
    ``meta["invalid_state"]``. `extra_meta` (say, a cancel reason kept beside the record)
    is merged into `meta`.
    """
    fast = _fast_bytes if row and type(row[0]) is bytes else _fast_native
    try:
        job = fast(row)
    except _REFUSED:
        job = None  # poison after all: the careful path names it
    if job is None:
        return _decode_careful(row, extra_meta)
    if extra_meta:
        return msgspec.structs.replace(job, meta={**job.meta, **extra_meta})
    return job


def _decode_careful(row: Sequence[object], extra_meta: Mapping[str, object] | None) -> Job:
    """Field by field: what reads is kept, what doesn't takes its default and is named."""
    values: dict[str, object] = {}
    problems: list[str] = []
    for (name, exact, read, optional, default), raw in zip(_PLAN, row, strict=True):
        if raw is None:
            values[name] = None if optional else _fresh(default)
        elif exact is not None and type(raw) is exact:
            values[name] = raw
        else:
            try:
                values[name] = read(raw)
            except _Bad:
                values[name] = _fresh(default)
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
    return Job(**values)  # type: ignore[arg-type]


def _show(raw: object) -> str:
    text = _text(raw) if isinstance(raw, str | bytes) else repr(raw)
    return repr(text[:60] + ("…" if len(text) > 60 else ""))


def _fresh(default: object) -> object:
    """`default`, or a copy of it when it is mutable (a JSON object field's ``{}``): no two
    jobs share one dict."""
    return dict(default) if type(default) is dict else default
