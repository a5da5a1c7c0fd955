"""The flow-control option types: Circuit, RateLimit and KeyTemplate, and their bad inputs."""

from __future__ import annotations

import enum
import inspect
import math
import uuid

import pytest

from conveyor.errors import ConfigError, InvalidOption
from conveyor.flow import Circuit, KeyTemplate, RateLimit

# -- Circuit ---------------------------------------------------------------------------------


def test_circuit_keeps_its_settings() -> None:
    c = Circuit(failure_rate=0.5, window=30, cooldown=60, min_calls=10)
    assert (c.failure_rate, c.window, c.cooldown, c.min_calls) == (0.5, 30, 60, 10)
    assert Circuit(failure_rate=1, window=0.1, cooldown=0.1).min_calls == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_rate": 1.5}, "failure_rate must be in (0, 1]"),
        ({"failure_rate": 0}, "failure_rate must be in (0, 1]"),
        ({"failure_rate": -0.1}, "failure_rate must be in (0, 1]"),
        ({"failure_rate": math.nan}, "failure_rate must be a number"),
        ({"failure_rate": "half"}, "failure_rate must be a number"),
        ({"failure_rate": True}, "failure_rate must be a number"),
        ({"window": 0}, "window must be a finite number of seconds > 0"),
        ({"window": -5}, "window must be a finite number of seconds > 0"),
        ({"window": math.inf}, "window must be a finite number of seconds > 0"),
        ({"cooldown": 0}, "cooldown must be a finite number of seconds > 0"),
        ({"cooldown": -1.0}, "cooldown must be a finite number of seconds > 0"),
        ({"min_calls": 0}, "min_calls must be a whole number >= 1"),
        ({"min_calls": 2.5}, "min_calls must be a whole number >= 1"),
    ],
)
def test_circuit_rejects_bad_settings_naming_the_field(
    kwargs: dict[str, object], message: str
) -> None:
    settings: dict[str, object] = {"failure_rate": 0.5, "window": 30, "cooldown": 60}
    settings.update(kwargs)
    with pytest.raises(ConfigError) as info:
        Circuit(**settings)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert repr(next(iter(kwargs.values())))[:3] in str(info.value)  # quotes the bad value


# -- RateLimit -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "rate", "burst", "period"),
    [
        ("100/s", 100.0, 100, 1.0),
        ("10/m", 10 / 60, 10, 60.0),
        ("5000/h", 5000 / 3600, 5000, 3600.0),
        ("20/d", 20 / 86400, 20, 86400.0),
        (" 1/s ", 1.0, 1, 1.0),
    ],
)
def test_rate_limit_parses_per_unit_counts(
    text: str, rate: float, burst: int, period: float
) -> None:
    limit = RateLimit.parse(text)
    assert limit.rate == pytest.approx(rate)
    assert (limit.burst, limit.period) == (burst, period)
    assert str(limit) == text.strip()


def test_rate_limit_takes_an_explicit_burst() -> None:
    limit = RateLimit.parse("10/m", burst=2)
    assert (limit.rate, limit.burst) == (pytest.approx(1 / 6), 2)
    assert str(limit) == "10/m (burst 2)"
    assert str(RateLimit(rate=2.5, burst=5)) == "2.5/s (burst 5)"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("100/parsec", "unknown unit 'parsec'"),
        ("0/s", "lets nothing through"),
        ("-1/s", "is not valid"),
        ("abc", "is not valid"),
        ("1.5/s", "is not valid"),
        ("100", "is not valid"),
        ("/s", "is not valid"),
        ("100/S", "is not valid"),
        ("", "is not valid"),
    ],
)
def test_rate_limit_rejects_bad_text_naming_it_and_the_accepted_forms(
    text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        RateLimit.parse(text)
    assert message in str(info.value)
    assert repr(text) in str(info.value)
    assert "'100/s'" in str(info.value) and "s, m, h or d" in str(info.value)


def test_rate_limit_rejects_bad_numbers() -> None:
    with pytest.raises(ConfigError, match="burst must be a whole number >= 1, got 0"):
        RateLimit.parse("10/s", burst=0)
    with pytest.raises(ConfigError, match="rate must be > 0 per second, got 0"):
        RateLimit(rate=0, burst=1)
    with pytest.raises(ConfigError, match="rate must be > 0 per second"):
        RateLimit(rate=math.inf, burst=1)
    with pytest.raises(ConfigError, match="period must be > 0 seconds"):
        RateLimit(rate=1, burst=1, period=0)
    with pytest.raises(ConfigError, match="must be a string like '100/s', got 100"):
        RateLimit.parse(100)  # type: ignore[arg-type]


# -- KeyTemplate -----------------------------------------------------------------------------


class Region(enum.Enum):
    EU = "eu"
    US = "us"


def sync_account(account_id: int, full: bool = False, region: Region = Region.EU) -> None:
    """A task function to check templates against."""


SIG = inspect.signature(sync_account)


def test_key_template_renders_bound_arguments_and_defaults() -> None:
    key = KeyTemplate("acct-{account_id}:{region}").check(SIG)
    assert key.fields == ("account_id", "region")
    assert key.resolve(SIG.bind(42)) == "acct-42:eu"
    assert key.resolve(SIG.bind(7, region=Region.US)) == "acct-7:us"
    assert KeyTemplate("{account_id}").check(SIG).resolve(SIG.bind(account_id=3)) == "3"


def test_key_template_takes_strings_and_uuids() -> None:
    def notify(account: str, text: str) -> None: ...

    sig = inspect.signature(notify)
    key = KeyTemplate("{account}").check(sig)
    assert key.resolve(sig.bind("acme-1", "hi")) == "acme-1"
    uid = uuid.UUID(int=5)
    assert key.resolve(sig.bind(uid, "hi")) == str(uid)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("account", "names no parameter"),
        ("", "names no parameter"),
        ("{tenant}", "names 'tenant', which is not a parameter of the task (its parameters: "
         "account_id, full, region)"),
        ("{account_id}-{nope}", "names 'nope'"),
    ],
)  # fmt: skip
def test_key_template_check_rejects_templates_the_signature_cannot_fill(
    template: str, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        KeyTemplate(template).check(SIG)
    assert message in str(info.value)
    assert repr(template) in str(info.value)


def test_key_template_check_rejects_star_parameters() -> None:
    def many(*ids: int, **extra: str) -> None: ...

    for template in ("{ids}", "{extra}"):
        with pytest.raises(ConfigError, match=r"a \*args/\*\*kwargs parameter"):
            KeyTemplate(template).check(inspect.signature(many))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{account_id", "is not valid"),
        ("account_id}", "is not valid"),
        ("{account.id}", "must be a plain parameter name"),
        ("{ids[0]}", "must be a plain parameter name"),
        ("{account_id!r}", "must be a plain parameter name"),
        ("{account_id:>5}", "must be a plain parameter name"),
        ("{}", "must be a plain parameter name"),
        ("{0}", "must be a plain parameter name"),
        ("acct {account_id}", "the text 'acct ' can't be part of a key"),
    ],
)
def test_key_template_rejects_malformed_templates(template: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        KeyTemplate(template)
    assert message in str(info.value)
    assert repr(template) in str(info.value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("a b", "resolved to 'a b'"),
        ("", "resolved to ''"),
        ("x" * 256, "a key must be 1-255 characters"),
        ("é", "resolved to 'é'"),
        (None, "parameter 'account' is None (NoneType)"),
        (1.5, "parameter 'account' is 1.5 (float)"),
        (True, "parameter 'account' is True (bool)"),
        ({"a": 1}, "(dict); a key takes strings, integers, UUIDs or enums of them"),
    ],
)
def test_key_template_resolve_rejects_values_a_key_cannot_hold(value: object, message: str) -> None:
    def task(account: object) -> None: ...

    sig = inspect.signature(task)
    with pytest.raises(InvalidOption) as info:
        KeyTemplate("{account}").check(sig).resolve(sig.bind(value))
    assert message in str(info.value)
    assert "'{account}'" in str(info.value)


def test_key_template_equality_and_repr() -> None:
    assert KeyTemplate("{a}") == KeyTemplate("{a}") and KeyTemplate("{a}") != KeyTemplate("{b}")
    assert len({KeyTemplate("{a}"), KeyTemplate("{a}")}) == 1
    assert repr(KeyTemplate("{a}")) == "KeyTemplate('{a}')"
    with pytest.raises(ConfigError, match="must be a string"):
        KeyTemplate(5)  # type: ignore[arg-type]
