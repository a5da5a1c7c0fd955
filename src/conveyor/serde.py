"""Encoding of task arguments and results: JSON via msgspec, typed by the task's signature.

A task's arguments are bound to its signature at enqueue time and stored as a JSON object
(parameter name → value). At run time they are decoded *into the annotated types*, so a
task taking a `datetime`, a `dataclass` or a `msgspec.Struct` receives one. Pickle is never
used.

Limits, so that what is stored can always be read back: a value may nest lists, tuples, sets
and dicts at most `MAX_DEPTH` levels deep (msgspec, like `json`, recurses once per level and
fails near Python's recursion limit, which the caller's own stack depth eats into), and a
task's result is at most `MAX_RESULT` bytes encoded.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from conveyor.errors import (
    InvalidArguments,
    PayloadTooLarge,
    ResultTooLarge,
    SerializationError,
)

__all__ = [
    "MAX_DEPTH",
    "MAX_RESULT",
    "ArgsCodec",
    "decode_result",
    "encode_result",
    "nested_deeper_than",
]

MAX_DEPTH = 256
"""Most levels of lists, tuples, sets and dicts inside one argument, result or `meta`."""

MAX_RESULT = 1 << 20
"""Largest encoded task result stored, in bytes (1 MiB); a larger one fails its job."""

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()
_NESTING = frozenset({list, tuple, dict, set, frozenset})


def nested_deeper_than(value: object, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests lists, tuples, sets or dicts more than `limit` levels deep.

    Walks one level at a time and stops at `limit + 1`, so a cyclic value ends too.
    (Other containers, such as dataclasses, are caught by the encoder's `RecursionError`.)
    """
    level: list[Any] = [value] if type(value) in _NESTING else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        below: list[Any] = []
        for x in level:
            items: Iterable[Any] = x.values() if type(x) is dict else x
            if not _NESTING.isdisjoint(set(map(type, items))):  # skip flat ones in C
                below.extend(y for y in items if type(y) in _NESTING)
        level = below
    return False


def encode_result(value: object, max_size: int = MAX_RESULT) -> bytes:
    """Encode a task's return value (`None` encodes to `b"null"`).

    Raises:
        SerializationError: the value can't be encoded, or nests deeper than `MAX_DEPTH`.
        ResultTooLarge: it encodes to more than `max_size` bytes.
    """
    too_deep = f"task result nests deeper than {MAX_DEPTH} levels; return a flatter value"
    try:
        data = _encoder.encode(value)
    except RecursionError:
        raise SerializationError(too_deep) from None
    except (TypeError, ValueError, OverflowError) as exc:
        raise SerializationError(
            f"task result of type {type(value).__name__} is not JSON-serializable: {exc}"
        ) from exc
    if len(data) > 2 * MAX_DEPTH and nested_deeper_than(value):
        raise SerializationError(too_deep)
    if len(data) > max_size:
        raise ResultTooLarge(
            f"task result is {len(data)} bytes encoded, over the maximum of {max_size}; "
            "store large results elsewhere and return a reference"
        )
    return data


def decode_result(data: bytes | None, type_: object = Any) -> object:
    """Decode a stored result, converting it to `type_` when the task's return is annotated."""
    if data is None:
        return None
    try:
        if type_ is Any:
            return _decoder.decode(data)
        return msgspec.json.decode(data, type=type_)
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError, RecursionError) as exc:
        raise SerializationError(f"stored result could not be decoded: {exc}") from exc


@dataclass(frozen=True, slots=True)
class _Param:
    name: str
    kind: inspect._ParameterKind
    has_default: bool


class ArgsCodec:
    """Binds, encodes and decodes the arguments of one function.

    Args:
        fn: the task function; its signature and annotations define the payload.
        name: the task name, used in error messages.
        max_payload: largest encoded payload accepted, in bytes.
    """

    def __init__(self, fn: Callable[..., object], name: str, max_payload: int) -> None:
        self.name = name
        self.max_payload = max_payload
        self._fn = fn
        self.signature = inspect.signature(fn)
        self._params = tuple(
            _Param(p.name, p.kind, p.default is not inspect.Parameter.empty)
            for p in self.signature.parameters.values()
        )
        # Functions with only plain parameters take the fast path: fn(**arguments).
        self._plain = all(p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD for p in self._params)
        self._names = tuple(p.name for p in self._params)
        self._required = frozenset(p.name for p in self._params if not p.has_default)
        self._type = _args_type(fn, self.signature, name)
        self.return_type = _return_type(fn)
        self._fed_type: type | None = None  # the type check of a fed call (built when used)

    def bind(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> dict[str, object]:
        """Bind call arguments to parameter names, or raise `InvalidArguments`."""
        if self._plain and len(args) <= len(self._names):
            # Fast path for plain signatures; anything unusual goes to inspect for its message.
            bound = dict(zip(self._names, args, strict=False))  # fewer args than names is fine
            ok = True
            for k, v in kwargs.items():
                if k in bound or k not in self._names:
                    ok = False
                    break
                bound[k] = v
            if ok and self._required.issubset(bound):
                return bound
        try:
            slow = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise InvalidArguments(f"task {self.name!r}: {exc}") from None
        return dict(slow.arguments)

    def encode(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> bytes:
        """Bind and encode the arguments; raise a specific `EnqueueError` on bad input."""
        payload = self._encode(self.bind(args, kwargs))
        if self._type is not None:
            # Check the values against the annotations now, so a wrong type is refused at
            # enqueue instead of failing later in the worker.
            self.decode(payload)
        return payload

    @property
    def fed_parameter(self) -> str:
        """The parameter a fed call leaves to run time: the first, which must be positional.

        Raises:
            InvalidArguments: the function has no positional first parameter.
        """
        first = self._params[0] if self._params else None
        if first is None or first.kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise InvalidArguments(
                f"task {self.name!r} can't take the previous step's result: its first "
                "parameter must be positional (it receives the result)"
            )
        return first.name

    def encode_fed(self, args: tuple[object, ...], kwargs: Mapping[str, object]) -> bytes:
        """Bind and encode the arguments of a call whose first parameter is given at run
        time (a chain step gets the previous result there, a chord callback the list of
        results): `args` are the parameters after it. Raises like `encode`."""
        first = self.fed_parameter
        if first in kwargs:
            raise InvalidArguments(
                f"task {self.name!r}: {first!r} receives the previous result; don't pass it"
            )
        arguments = self.bind((_FED, *args), kwargs)
        del arguments[first]
        payload = self._encode(arguments)
        if self._type is not None:
            if self._fed_type is None:
                rest = list(self.signature.parameters.values())[1:]
                self._fed_type = _args_type(
                    self._fn, self.signature.replace(parameters=rest), self.name
                )
            if self._fed_type is not None:
                try:
                    msgspec.json.decode(payload, type=self._fed_type)
                except msgspec.ValidationError as exc:
                    raise InvalidArguments(f"task {self.name!r}: {exc}") from None
        return payload

    def decode_fed(self, payload: bytes, fed: bytes) -> dict[str, object]:
        """`decode` of a fed call's payload with `fed` (JSON) as its first parameter: the
        value is checked against that parameter's annotation like any argument."""
        head = b'{"' + self.fed_parameter.encode() + b'":' + fed
        return self.decode(
            head + (b"}" if payload.strip() == b"{}" else b"," + payload.lstrip()[1:])
        )

    def _encode(self, arguments: dict[str, object]) -> bytes:
        try:
            payload = _encoder.encode(arguments)
        except RecursionError:
            raise InvalidArguments(_which_arg_too_deep(self.name, arguments)) from None
        except (TypeError, ValueError, OverflowError) as exc:
            raise SerializationError(_which_arg_fails(self.name, arguments, exc)) from None
        # Nesting deeper than MAX_DEPTH takes at least 2 bytes per level: small payloads
        # (every benchmark's) skip the walk.
        if len(payload) > 2 * MAX_DEPTH and nested_deeper_than(arguments, MAX_DEPTH + 1):
            raise InvalidArguments(_which_arg_too_deep(self.name, arguments))
        if len(payload) > self.max_payload:
            raise PayloadTooLarge(
                f"task {self.name!r}: encoded arguments are {len(payload)} bytes, over the "
                f"maximum of {self.max_payload}; store large data elsewhere and pass a reference"
            )
        return payload

    def decode(self, payload: bytes) -> dict[str, object]:
        """Decode a stored payload into typed arguments, or raise `SerializationError`."""
        try:
            if self._type is None:
                value = _decoder.decode(payload)
                if not isinstance(value, dict):
                    raise SerializationError(f"task {self.name!r}: payload is not a JSON object")
                return value
            struct: msgspec.Struct = msgspec.json.decode(payload, type=self._type)
        except msgspec.ValidationError as exc:
            raise InvalidArguments(f"task {self.name!r}: {exc}") from None
        except (msgspec.DecodeError, RecursionError) as exc:
            raise SerializationError(f"task {self.name!r}: undecodable payload: {exc}") from None
        return {f: getattr(struct, f) for f in struct.__struct_fields__}

    def call(self, fn: Callable[..., Any], arguments: Mapping[str, object]) -> Any:
        """Call `fn` with decoded arguments."""
        if self._plain:
            return fn(**arguments)
        args: list[object] = []
        kwargs: dict[str, object] = {}
        for p in self._params:
            if p.name not in arguments:
                continue
            value = arguments[p.name]
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                args.extend(typing.cast("list[object]", value))
            elif p.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update(typing.cast("dict[str, object]", value))
            elif p.kind is inspect.Parameter.KEYWORD_ONLY:
                kwargs[p.name] = value
            else:
                args.append(value)
        return fn(*args, **kwargs)


def _which_arg_fails(task: str, arguments: Mapping[str, object], exc: Exception) -> str:
    for name, value in arguments.items():
        try:
            _encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as inner:
            return (
                f"task {task!r}: argument {name!r} ({type(value).__name__}) is not "
                f"JSON-serializable: {inner}"
            )
    return f"task {task!r}: arguments are not JSON-serializable: {exc}"


def _which_arg_too_deep(task: str, arguments: Mapping[str, object]) -> str:
    for name, value in arguments.items():
        try:
            _encoder.encode(value)
        except RecursionError:
            pass
        except (TypeError, ValueError, OverflowError):
            continue
        else:
            if not nested_deeper_than(value):
                continue
        return (
            f"task {task!r}: argument {name!r} nests deeper than {MAX_DEPTH} levels; "
            "pass a flatter value"
        )
    return f"task {task!r}: arguments nest deeper than {MAX_DEPTH} levels; pass flatter values"


def _hints(fn: Callable[..., object]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception:
        # Unresolvable forward references: fall back to untyped decoding.
        return {}


def _return_type(fn: Callable[..., object]) -> object:
    hint = _hints(fn).get("return", Any)
    return Any if hint is None or hint is type(None) else hint


def _args_type(fn: Callable[..., object], sig: inspect.Signature, name: str) -> type | None:
    """A msgspec Struct type mirroring the signature, or None when it can't be typed."""
    hints = _hints(fn)
    fields: list[tuple[str, object] | tuple[str, object, object]] = []
    for p in sig.parameters.values():
        hint: object = hints.get(p.name, Any)
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            hint = list[hint]  # type: ignore[valid-type]
        elif p.kind is inspect.Parameter.VAR_KEYWORD:
            hint = dict[str, hint]  # type: ignore[valid-type]
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            fields.append((p.name, hint, msgspec.field(default_factory=_empty(p.kind))))
        elif p.default is not inspect.Parameter.empty:
            fields.append((p.name, hint, p.default))
        else:
            fields.append((p.name, hint))
    try:
        struct = msgspec.defstruct(
            f"{name.replace('.', '_')}_args", fields, forbid_unknown_fields=True
        )
        msgspec.json.Decoder(struct)  # raises TypeError on annotations msgspec can't decode
    except (TypeError, ValueError):
        return None
    return struct


def _empty(kind: inspect._ParameterKind) -> Callable[[], object]:
    return list if kind is inspect.Parameter.VAR_POSITIONAL else dict


class _Fed:
    """Stands in for the argument a fed call gets at run time, while its others are bound."""

    def __repr__(self) -> str:
        return "<the previous result>"


_FED = _Fed()
