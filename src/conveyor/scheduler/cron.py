"""Schedule expressions: cron (parsed by cronsim), ``@every <duration>`` and the ``@daily``-style
aliases, turned into fire times (epoch seconds) in a time zone.

Cron expressions have 5 fields (minute hour day-of-month month day-of-week) or 6 (a seconds
field first), and follow Debian cron (cronsim reproduces it): in a zone with DST, a fire at a
wall time that is skipped happens once, at the first valid instant after it; a wall time that
repeats fires once, at its first occurrence. ``@every 90s`` / ``@every 1h30m`` fire at whole
multiples of the interval since the Unix epoch, so every scheduler agrees on the fire times
without talking to the others.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from conveyor.errors import InvalidSchedule

__all__ = ["ALIASES", "Expression", "parse_duration", "parse_expression"]

ALIASES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

# (name, low, high) of each field of a 6-field expression, seconds first.
_FIELDS = [
    ("second", 0, 59),
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
]
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``1h30m``, ``500ms`` or ``2d``.

    Raises:
        InvalidSchedule: not a duration, or not positive.
    """
    spec = text.strip().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(spec):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not spec or pos != len(spec):
        raise InvalidSchedule(
            f"@every {text.strip()!r} is not a duration; use numbers with units ms, s, m, h, d "
            "(e.g. @every 90s, @every 1h30m)"
        )
    if total < 0.001:
        raise InvalidSchedule(f"@every {text.strip()!r} must be a positive duration (at least 1ms)")
    return total


def _zone(tz: str | None) -> ZoneInfo | timezone:
    if tz is None or tz == "UTC":
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(
            f"unknown time zone {tz!r}; use an IANA name such as 'Europe/Berlin' or 'UTC'"
        ) from None


def _field_error(parts: list[str], exc: CronSimError) -> str:
    """Say which field is wrong (cronsim says only "Bad hour") and, for a number out of its
    range, the number and the range."""
    offset = 0 if len(parts) == 6 else 1  # 5 fields: no seconds field
    named = str(exc).removeprefix("Bad ").strip()
    for i, (name, low, high) in enumerate(_FIELDS):
        if name != named or i - offset < 0:
            continue
        text = parts[i - offset]
        for number in re.findall(r"\d+", text):
            if not low <= int(number) <= high and not (name == "day-of-week" and "#" in text):
                return f"{name} {number} is out of range {low}-{high}"
        return f"{name} field {text!r} is not valid"
    return str(exc)


@dataclass(frozen=True)
class Expression:
    """A parsed schedule: the text, its zone, and either a cron expression or an interval.

    Build one with `parse_expression`; `next_after(t)` is the first fire time after `t`.
    """

    text: str
    tz: str
    cron: str | None = None
    every_ms: int | None = None
    zone: ZoneInfo | timezone = field(default=UTC, compare=False, repr=False)

    def next_after(self, t: float) -> float:
        """The first fire time strictly after epoch second `t`."""
        if self.every_ms is not None:
            step = self.every_ms
            return (int(t * 1000) // step + 1) * step / 1000
        assert self.cron is not None
        start = datetime.fromtimestamp(t, self.zone)
        return next(iter(CronSim(self.cron, start))).timestamp()

    def prev_at_or_before(self, t: float, *, limit: float) -> float | None:
        """The last fire time at or before `t`, if one is after `limit`."""
        if self.every_ms is not None:
            step = self.every_ms
            fire = int(t * 1000) // step * step / 1000
            return fire if fire > limit else None
        assert self.cron is not None
        start = datetime.fromtimestamp(t + 1, self.zone)
        try:
            fire = next(iter(CronSim(self.cron, start, reverse=True))).timestamp()
        except StopIteration:
            return None
        # Reverse iteration can land in a DST gap; the forward answer is the authority.
        fire = self.next_after(fire - 1) if fire <= t else fire
        return fire if limit < fire <= t else None

    def fires_between(self, after: float, until: float, *, cap: int) -> list[float]:
        """Fire times in (after, until], at most the last `cap` of them."""
        out: list[float] = []
        fire = self.next_after(after)
        while fire <= until:
            out.append(fire)
            if len(out) > cap:
                del out[0]
            fire = self.next_after(fire)
        return out


def parse_expression(text: str, tz: str | None = None) -> Expression:
    """Parse a cron expression, ``@every <duration>`` or an alias, in zone `tz` (IANA name,
    default UTC).

    Raises:
        InvalidSchedule: the expression or the zone is invalid; the message names the field.
    """
    if not isinstance(text, str):
        raise InvalidSchedule(f"a schedule expression must be a string, got {text!r}")
    zone = _zone(tz)
    zone_name = tz or "UTC"
    spec = " ".join(text.split())
    lower = spec.lower()
    if lower.startswith("@every"):
        seconds = parse_duration(spec[len("@every") :])
        return Expression(text, zone_name, every_ms=max(1, round(seconds * 1000)), zone=zone)
    if lower.startswith("@"):
        if lower not in ALIASES:
            raise InvalidSchedule(
                f"unknown schedule alias {text!r}; use one of {', '.join(ALIASES)} or @every"
            )
        spec = ALIASES[lower]
    parts = spec.split()
    if len(parts) not in (5, 6):
        raise InvalidSchedule(
            f"cron expression {text!r} has {len(parts)} field(s); give 5 (minute hour "
            "day-of-month month day-of-week) or 6 (a seconds field first)"
        )
    try:
        sim = CronSim(spec, datetime(2000, 1, 1, tzinfo=zone))
        next(iter(sim))
    except CronSimError as exc:
        raise InvalidSchedule(f"cron expression {text!r}: {_field_error(parts, exc)}") from None
    except StopIteration:
        raise InvalidSchedule(f"cron expression {text!r} never fires") from None
    return Expression(text, zone_name, cron=spec, zone=zone)
