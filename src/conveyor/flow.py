"""The vocabulary of flow control: `Circuit`, `RateLimit` and `KeyTemplate`, validated.

Pure data and rules (layer 0). The in-process `primitives.CircuitBreaker` is configured with
a `Circuit`; the store-side limits will take the same types. Every bad value is a
`ConfigError` naming the field (or the text) and what is accepted; a key that resolves to a
value unfit for a store key is an `InvalidOption` at enqueue, before anything is written.

Example:
    Circuit(failure_rate=0.5, window=30, cooldown=60)
    RateLimit.parse("100/s")                 # 100 per second, bursts of 100
    RateLimit.parse("10/m", burst=2)         # one every 6 s, at most 2 at once
    key = KeyTemplate("acct-{account_id}").check(inspect.signature(sync_account))
    key.resolve(inspect.signature(sync_account).bind(42))      # "acct-42"
"""

from __future__ import annotations

import enum
import inspect
import math
import re
import string
import uuid
from dataclasses import dataclass

from conveyor.errors import ConfigError, InvalidOption
from conveyor.names import check_key

__all__ = ["Circuit", "KeyTemplate", "RateLimit"]


def _number(owner: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(f"{owner} {name} must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True, slots=True)
class Circuit:
    """When to stop calling a failing dependency, and for how long.

    The circuit opens when, over the last `window` seconds, at least `min_calls` calls were
    made and the share that failed reached `failure_rate`. Open, calls fail fast for
    `cooldown` seconds; then one probe call is let through (half-open): its success closes
    the circuit, its failure opens it again.

    Attributes:
        failure_rate: share of failed calls that opens the circuit, in (0, 1].
        window: seconds of history the rate is measured over (> 0).
        cooldown: seconds the circuit stays open before a probe (> 0).
        min_calls: fewest calls in the window before the rate counts (>= 1), so one
            failure of the first call does not open it.

    Example:
        Circuit(failure_rate=0.5, window=30, cooldown=60, min_calls=10)
    """

    failure_rate: float
    window: float
    cooldown: float
    min_calls: int = 5

    def __post_init__(self) -> None:
        rate = _number("Circuit", "failure_rate", self.failure_rate)
        if not 0 < rate <= 1:
            raise ConfigError(
                f"Circuit failure_rate must be in (0, 1] (a share of calls, e.g. 0.5), "
                f"got {self.failure_rate!r}"
            )
        for name in ("window", "cooldown"):
            value = _number("Circuit", name, getattr(self, name))
            if not 0 < value < math.inf:
                raise ConfigError(
                    f"Circuit {name} must be a finite number of seconds > 0, "
                    f"got {getattr(self, name)!r}"
                )
        calls = self.min_calls
        if isinstance(calls, bool) or not isinstance(calls, int) or calls < 1:
            raise ConfigError(f"Circuit min_calls must be a whole number >= 1, got {calls!r}")

    def spec(self) -> str:
        """The form a job carries (`Job.circuit`): ``"<failure_rate>:<window>:<cooldown>:
        <min_calls>"``, e.g. ``"0.5:30:60:5"``; `Circuit.from_spec` reads it back."""
        return f"{self.failure_rate:g}:{self.window:g}:{self.cooldown:g}:{self.min_calls}"

    @classmethod
    def from_spec(cls, spec: str) -> Circuit:
        """The `Circuit` of a `spec()` string.

        Raises:
            ConfigError: not four ``:``-separated numbers, or values `Circuit` refuses.
        """
        parts = spec.split(":")
        try:
            rate, window, cooldown, calls = parts
            return cls(float(rate), float(window), float(cooldown), int(calls))
        except ValueError:
            raise ConfigError(
                f"circuit spec {spec!r} is not '<failure_rate>:<window>:<cooldown>:<min_calls>'"
            ) from None


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"([0-9]+)/([a-z]+)")
_FORMS = "'<count>/<unit>' with a whole count >= 1 and unit s, m, h or d, e.g. '100/s', '10/m'"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `rate` starts per second, in bursts of up to `burst` (a token bucket).

    Build it with `RateLimit.parse("100/s")`, or directly with a rate per second.

    Attributes:
        rate: tokens added per second (> 0).
        burst: the bucket's size: the most starts at once after a quiet spell (>= 1).
        period: seconds of the unit the limit was written in (1 for ``/s``, 60 for ``/m``):
            the window of a fixed-window implementation, and how `str()` writes it.

    Example:
        RateLimit.parse("5000/h")          # rate 1.389/s, burst 5000
        RateLimit(rate=2.5, burst=5)
    """

    rate: float
    burst: int
    period: float = 1.0

    def __post_init__(self) -> None:
        rate = _number("RateLimit", "rate", self.rate)
        if not 0 < rate < math.inf:
            raise ConfigError(f"RateLimit rate must be > 0 per second, got {self.rate!r}")
        burst = self.burst
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"RateLimit burst must be a whole number >= 1, got {burst!r}")
        period = _number("RateLimit", "period", self.period)
        if not 0 < period < math.inf:
            raise ConfigError(f"RateLimit period must be > 0 seconds, got {self.period!r}")

    @classmethod
    def parse(cls, text: str, burst: int | None = None) -> RateLimit:
        """Read ``"<count>/<unit>"``: ``"100/s"``, ``"10/m"``, ``"5000/h"`` or ``"20/d"``.

        Args:
            text: the limit.
            burst: the bucket's size; defaults to the count (``"10/m"`` allows 10 at once).

        Raises:
            ConfigError: the text is not of that form (it is quoted, with the accepted forms),
                the count is 0, or `burst` is below 1.
        """
        if not isinstance(text, str):
            raise ConfigError(f"rate limit must be a string like '100/s', got {text!r}")
        match = _RATE.fullmatch(text.strip())
        if match is None:
            raise ConfigError(f"rate limit {text!r} is not valid: use {_FORMS}")
        count, unit = int(match[1]), match[2]
        if unit not in _UNITS:
            raise ConfigError(f"rate limit {text!r} has an unknown unit {unit!r}: use {_FORMS}")
        if count < 1:
            raise ConfigError(f"rate limit {text!r} lets nothing through: use {_FORMS}")
        period = _UNITS[unit]
        return cls(rate=count / period, burst=count if burst is None else burst, period=period)

    def __str__(self) -> str:
        unit = next((u for u, p in _UNITS.items() if p == self.period), None)
        count = self.rate * self.period
        if unit is None:
            return f"{self.rate:g}/s (burst {self.burst})"
        return f"{count:g}/{unit}" + (
            "" if self.burst == round(count) else f" (burst {self.burst})"
        )


_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_KINDS = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class KeyTemplate:
    """A key (a limit key or a group) made of a task's arguments: ``"{account_id}"``.

    Placeholders name parameters of the task's function; the literal text between them
    follows the rules of job keys (`conveyor.names.check_key`). `check` runs at decoration
    time, `resolve` once per enqueue, from the bound arguments.

    Args:
        template: e.g. ``"{account_id}"`` or ``"acct-{account_id}:{region}"``.

    Raises:
        ConfigError: unbalanced braces, a placeholder that is not a plain parameter name
            (``{a.b}``, ``{a[0]}``, ``{a!r}``, ``{a:>3}``), or literal text a key can't hold.

    Example:
        key = KeyTemplate("{tenant}").check(inspect.signature(import_rows))
        key.resolve(inspect.signature(import_rows).bind("acme", 1))   # "acme"
    """

    __slots__ = ("_parts", "fields", "template")

    def __init__(self, template: str) -> None:
        if not isinstance(template, str):
            raise ConfigError(
                f"key template must be a string like '{{account_id}}', got {template!r}"
            )
        self.template = template
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as exc:
            raise ConfigError(f"key template {template!r} is not valid: {exc}") from None
        parts: list[tuple[str, str | None]] = []
        for literal, field, spec, conversion in parsed:
            if literal:
                try:
                    check_key(literal)
                except InvalidOption:
                    raise ConfigError(
                        f"key template {template!r}: the text {literal!r} can't be part of a "
                        "key; use characters from A-Z a-z 0-9 _ . : @ / + = # - between "
                        "placeholders"
                    ) from None
            if field is not None and (not _FIELD.fullmatch(field) or spec or conversion):
                shown = "{" + field + (f"!{conversion}" if conversion else "")
                shown += (f":{spec}" if spec else "") + "}"
                raise ConfigError(
                    f"key template {template!r}: placeholder {shown!r} must be a plain "
                    "parameter name like '{account_id}' (no attributes, indexes or formats)"
                )
            parts.append((literal, field))
        self._parts = tuple(parts)
        #: The parameter names the template uses, in order of first use.
        self.fields = tuple(dict.fromkeys(f for _, f in parts if f is not None))

    def check(self, signature: inspect.Signature) -> KeyTemplate:
        """Check the template against a task's signature (at decoration time); returns self.

        Raises:
            ConfigError: it names no parameter, a parameter the function doesn't have, or
                a ``*args`` / ``**kwargs`` parameter.
        """
        if not self.fields:
            raise ConfigError(
                f"key template {self.template!r} names no parameter: a constant key would "
                "put every job under one key; write e.g. '{account_id}'"
            )
        params = signature.parameters
        for name in self.fields:
            if name not in params:
                known = ", ".join(p for p, v in params.items() if v.kind not in _KINDS)
                raise ConfigError(
                    f"key template {self.template!r} names {name!r}, which is not a parameter "
                    f"of the task (its parameters: {known or 'none'})"
                )
            if params[name].kind in _KINDS:
                raise ConfigError(
                    f"key template {self.template!r} names {name!r}, a *args/**kwargs "
                    "parameter; name a single parameter"
                )
        return self

    def resolve(self, bound: inspect.BoundArguments) -> str:
        """Render the key from one call's bound arguments (defaults fill the gaps).

        Values may be strings, integers, UUIDs or enums of those.

        Raises:
            InvalidOption: a value of another type (``None``, a float, a bool, …), or a key
                that is not 1-255 characters from A-Z a-z 0-9 _ . : @ / + = # -.
        """
        params = bound.signature.parameters
        out: list[str] = []
        for literal, name in self._parts:
            out.append(literal)
            if name is None:
                continue
            if name in bound.arguments:
                value = bound.arguments[name]
            elif name in params and params[name].default is not inspect.Parameter.empty:
                value = params[name].default
            else:
                raise InvalidOption(
                    f"key template {self.template!r}: no value for parameter {name!r}"
                )
            out.append(self._text(name, value))
        key = "".join(out)
        try:
            return check_key(key)
        except InvalidOption:
            raise InvalidOption(
                f"key template {self.template!r} resolved to {key[:300]!r}: a key must be "
                "1-255 characters from A-Z a-z 0-9 _ . : @ / + = # -"
            ) from None

    def _text(self, name: str, value: object) -> str:
        if isinstance(value, enum.Enum):
            value = value.value
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, uuid.UUID):
            return str(value)
        raise InvalidOption(
            f"key template {self.template!r}: parameter {name!r} is {value!r} "
            f"({type(value).__name__}); a key takes strings, integers, UUIDs or enums of them"
        )

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyTemplate) and other.template == self.template

    def __hash__(self) -> int:
        return hash(self.template)
