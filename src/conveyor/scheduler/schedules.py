"""The schedule registry: `Schedule` (a task, its arguments and when it fires), `Schedules`
(an app's, by name, every check done at registration) and the fire jobs' keys.

A fire of schedule ``name`` at epoch second ``t`` is a job with the unique key
``sched:<name>:<t>`` (see `fire_key`); `describe` reads each schedule's latest fire job back
by that key for ``conveyor inspect schedules``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from conveyor.backends.base import Backend
from conveyor.errors import ConveyorError, InvalidSchedule
from conveyor.job import Job
from conveyor.producer import JobOptions, build_jobs
from conveyor.registry import Registry
from conveyor.scheduler.cron import Expression, parse_expression
from conveyor.task import Task, flow_fields

__all__ = [
    "KEY_PREFIX",
    "MAX_CATCH_UP",
    "RETAIN",
    "CatchUp",
    "Schedule",
    "ScheduleInfo",
    "Schedules",
    "describe",
    "fire_id",
    "fire_key",
]

CatchUp = Literal["latest", "all", "none"]

KEY_PREFIX = "sched:"
MAX_CATCH_UP = 100
"""Most missed fires of one schedule that ``catch_up="all"`` enqueues (the latest ones), and
most fires of one schedule enqueued in one tick."""

RETAIN = 60.0
"""Seconds a fire's key stays held beyond the last moment a scheduler looks back at it
(its time + `misfire_grace`)."""
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,199}")


def fire_key(name: str, fire: float) -> str:
    """The unique key of schedule `name`'s fire at epoch second `fire`."""
    stamp = str(int(fire)) if fire == int(fire) else f"{fire:.3f}"
    return f"{KEY_PREFIX}{name}:{stamp}"


def fire_id(name: str, fire: float) -> str:
    """The job id of schedule `name`'s fire at `fire`: the same in every process, so what
    the store knows of a fire is one batched `Backend.get` away (a store answers a second
    enqueue of an id it has with that id, and keeps the record as it is)."""
    ms = int(fire * 1000) & 0xFFFF_FFFF_FFFF
    digest = hashlib.blake2b(fire_key(name, fire).encode(), digest_size=10).hexdigest()
    return f"{ms:012x}{digest}"


@dataclass(frozen=True, eq=False)
class Schedule:
    """A registered schedule: which task runs with which arguments, when.

    Attributes:
        name: unique among the app's schedules (default: the task's name).
        task: the task each fire runs.
        expression: when it fires (`conveyor.scheduler.cron.Expression`).
        args: positional arguments of every fire.
        kwargs: keyword arguments of every fire.
        catch_up: what to do about missed fires: ``"latest"``, ``"all"`` or ``"none"``.
        misfire_grace: seconds after its time a missed fire is still enqueued.
        overlap: whether a fire may start while the previous fire's job is still live.
    """

    name: str
    task: Task[..., object]
    expression: Expression
    args: tuple[object, ...]
    kwargs: Mapping[str, object]
    catch_up: CatchUp
    misfire_grace: float
    overlap: bool
    _template: Job = field(repr=False)

    def jobs(self, fires: Sequence[float], now: float) -> list[Job]:
        """The fire jobs for `fires`, built at `now`."""
        ids = [fire_id(self.name, fire) for fire in fires]
        hold = self.misfire_grace + RETAIN
        replace = msgspec.structs.replace
        return [
            replace(
                self._template,
                id=i,
                run_at=fire,
                enqueued_at=now,
                key=fire_key(self.name, fire),
                unique_until=max(fire, now) + hold,
                meta={"schedule": self.name, "fire": fire},
            )
            for i, fire in zip(ids, fires, strict=True)
        ]


class Schedules:
    """An app's schedules by name (`App.schedules`; filled by `app.periodic` and
    `app.schedule`).

    Args:
        registry: the app's tasks (a schedule's task must be one of them).
    """

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._by_name: dict[str, Schedule] = {}

    def add(
        self,
        task: Task[..., object],
        expression: str,
        *,
        tz: str | None = None,
        args: Sequence[object] = (),
        kwargs: Mapping[str, object] | None = None,
        name: str | None = None,
        queue: str | None = None,
        priority: int | None = None,
        catch_up: CatchUp = "latest",
        misfire_grace: float = 300.0,
        overlap: bool = True,
    ) -> Schedule:
        """Register a schedule; every check happens here, never at a fire.

        Raises:
            InvalidSchedule: a bad expression (naming the field), zone, name, duplicate name,
                option, a task this app does not register, or arguments that don't fit it.
        """
        if not isinstance(task, Task) or self.registry.find(task.name) is not task:
            raise InvalidSchedule(
                f"cannot schedule {task!r}: it is not a task registered with this app; "
                "register it with @app.task first (or use @app.periodic)"
            )
        name = task.name if name is None else name
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidSchedule(
                f"invalid schedule name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . : - "
                "starting with a letter, digit or underscore"
            )
        if name in self._by_name:
            raise InvalidSchedule(
                f"a schedule named {name!r} is already registered; give this one another "
                "name: app.schedule(task, expression, name='...')"
            )
        if catch_up not in ("latest", "all", "none"):
            raise InvalidSchedule(f"catch_up must be 'latest', 'all' or 'none', got {catch_up!r}")
        if (
            isinstance(misfire_grace, bool)
            or not isinstance(misfire_grace, int | float)
            or not math.isfinite(misfire_grace)
            or misfire_grace < 0
        ):
            raise InvalidSchedule(
                f"misfire_grace must be a finite number of seconds >= 0, got {misfire_grace!r}"
            )
        expr = parse_expression(expression, tz)
        kw = dict(kwargs or {})
        try:
            payload = task.codec.encode(tuple(args), kw)
            opts = task.defaults.merged(JobOptions(queue=queue, priority=priority))
            (template,) = build_jobs(task.name, [payload], opts, 0.0)
            if task.flow is not None:  # its lane and limits, as an enqueue would give them
                fields = flow_fields(task.codec, task.flow, tuple(args), kw)
                template = msgspec.structs.replace(template, **fields)
        except ConveyorError as exc:
            raise InvalidSchedule(f"schedule {name!r}: {exc}") from None
        schedule = Schedule(
            name, task, expr, tuple(args), kw, catch_up, float(misfire_grace), overlap, template
        )
        self._by_name[name] = schedule
        return schedule

    def get(self, name: str) -> Schedule | None:
        """The schedule registered as `name`, or `None`."""
        return self._by_name.get(name)

    def __iter__(self) -> Iterator[Schedule]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


@dataclass(frozen=True, slots=True)
class ScheduleInfo:
    """One schedule as `conveyor inspect schedules` shows it.

    Attributes:
        schedule: the schedule.
        next_fire: its next fire time after now.
        last_fire: its latest fire time at or before now (within a year), if any.
        last_job: that fire's job, if the store has it (a skipped or purged fire has none).
    """

    schedule: Schedule
    next_fire: float
    last_fire: float | None
    last_job: Job | None


async def describe(backend: Backend, schedules: Schedules, now: float) -> list[ScheduleInfo]:
    """Each schedule's next fire and the job of its latest fire (one `get` for all)."""
    listed = list(schedules)
    lasts = [s.expression.prev_at_or_before(now, limit=now - 366 * 86_400) for s in listed]
    asked = [
        (i, fire_id(s.name, t)) for i, (s, t) in enumerate(zip(listed, lasts, strict=True)) if t
    ]
    got = await backend.get([j for _, j in asked])
    found = dict(zip((i for i, _ in asked), got, strict=True))
    return [
        ScheduleInfo(s, s.expression.next_after(now), last, found.get(i))
        for i, (s, last) in enumerate(zip(listed, lasts, strict=True))
    ]
