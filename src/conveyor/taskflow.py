"""A task's flow options, checked once: the lane of its queue its jobs take, and its limits.

`@app.task(concurrency=, rate_limit=, limit_key=, circuit=, group=, group_weight=)` builds a
`TaskFlow` at decoration, each mistake a `ConfigError` naming the option and the value.
`TaskFlow.fields` gives one call's `Job` fields (`lane`, `weight`, `concurrency`, `rate`,
`burst`, `circuit`; see `Backend.claim`), a template resolved from the call's bound
arguments; a bad value is an `InvalidOption` before anything is written. A task without
these options has no `TaskFlow`, so its enqueue does no extra work.

The lane a job takes:

==========================  ================================  ==============================
task                        lane                              example
==========================  ================================  ==============================
``group="{tenant}"``        the group's value; its limits     ``acme`` (weight group_weight)
                            apply per group
``limit_key="{account}"``   ``<task>:<value>``                ``sync_account:42``
a limit or a circuit        ``<task>``                        ``render_pdf``
none of these               ``""`` (plain jobs)
==========================  ================================  ==============================
"""

from __future__ import annotations

import inspect
from typing import TypedDict

from conveyor.errors import ConfigError, InvalidOption
from conveyor.flow import Circuit, KeyTemplate, RateLimit
from conveyor.names import check_key

__all__ = ["MAX_GROUP_WEIGHT", "FlowOptionsDict", "TaskFlow"]

MAX_GROUP_WEIGHT = 1000
"""Largest `group_weight`: jobs a group is served per turn."""

_ALPHABET = "1-255 characters from A-Z a-z 0-9 _ . : @ / + = # -"


class FlowOptionsDict(TypedDict, total=False):
    """The flow options `app.task` takes, by keyword (every one optional)."""

    concurrency: int | None
    rate_limit: str | RateLimit | None
    limit_key: str | None
    circuit: Circuit | None
    group: str | None
    group_weight: int | None


def _whole(value: object, low: int, high: int | None = None) -> bool:
    if isinstance(value, bool) or not isinstance(value, int):
        return False
    return low <= value and (high is None or value <= high)


class TaskFlow:
    """The checked flow options of one task (or of one `task.options(group=...)`).

    Attributes:
        task: the task's name.
        concurrency: most of its lane's jobs running at once (0: no limit).
        rate_limit: its lane's starts per second and burst, if limited.
        circuit: its lane's circuit breaker, if any.
        limit_key: the template of a lane per key (``"<task>:<value>"``), if any.
        group: the template of its group, or a literal group (from `options`), if any.
        group_weight: jobs its group is served per turn (1 without a group).
    """

    __slots__ = (
        "_fixed",
        "circuit",
        "concurrency",
        "group",
        "group_weight",
        "limit_key",
        "rate_limit",
        "task",
        "templates",
    )

    def __init__(
        self,
        task: str,
        *,
        concurrency: int = 0,
        rate_limit: RateLimit | None = None,
        circuit: Circuit | None = None,
        limit_key: KeyTemplate | None = None,
        group: KeyTemplate | str | None = None,
        group_weight: int = 1,
    ) -> None:
        self.task, self.concurrency, self.rate_limit = task, concurrency, rate_limit
        self.circuit, self.limit_key, self.group = circuit, limit_key, group
        self.group_weight = group_weight
        #: The templates one call resolves (its option's name and the template).
        self.templates = tuple(
            (name, t)
            for name, t in (("limit_key", limit_key), ("group", group))
            if isinstance(t, KeyTemplate)
        )
        if isinstance(group, str):
            lane = group
        elif group is None and limit_key is None:
            lane = task
        else:
            lane = ""  # resolved per call
        self._fixed: dict[str, object] = {
            "lane": lane,
            "weight": group_weight,
            "concurrency": concurrency,
            "rate": rate_limit.rate if rate_limit else 0.0,
            "burst": rate_limit.burst if rate_limit else 0,
            "circuit": circuit.spec() if circuit else "",
        }

    @classmethod
    def of(
        cls,
        task: str,
        signature: inspect.Signature,
        *,
        concurrency: int | None = None,
        rate_limit: str | RateLimit | None = None,
        limit_key: str | None = None,
        circuit: Circuit | None = None,
        group: str | None = None,
        group_weight: int | None = None,
    ) -> TaskFlow | None:
        """The flow of a task with these options (`None` if none is given).

        Raises:
            ConfigError: a bad value (named with the option), a template naming no
                parameter of `signature`, `limit_key` without a limit, `limit_key` with
                `group`, `group_weight` without `group`.
        """
        given = (concurrency, rate_limit, limit_key, circuit, group, group_weight)
        if all(v is None for v in given):
            return None
        where = f"task {task!r}"
        if concurrency is not None and not _whole(concurrency, 1):
            raise ConfigError(
                f"{where}: concurrency must be a whole number >= 1 (its jobs running at once, "
                f"on all workers together), got {concurrency!r}"
            )
        limit: RateLimit | None = None
        if isinstance(rate_limit, RateLimit):
            limit = rate_limit
        elif rate_limit is not None:
            try:
                limit = RateLimit.parse(rate_limit)
            except ConfigError as exc:
                raise ConfigError(f"{where}: rate_limit: {exc}") from None
        if circuit is not None and not isinstance(circuit, Circuit):
            raise ConfigError(
                f"{where}: circuit takes a conveyor.Circuit(failure_rate=..., window=..., "
                f"cooldown=...), got {circuit!r}"
            )
        key = _template(where, "limit_key", limit_key, signature)
        grouped = _template(where, "group", group, signature)
        if key is not None and grouped is not None:
            raise ConfigError(
                f"{where}: give group= or limit_key=, not both: with group= the task's limits "
                f"apply per group (each group value is its own lane), so give the limits with "
                f"group={group!r} and drop limit_key={limit_key!r}"
            )
        if key is not None and concurrency is None and limit is None and circuit is None:
            raise ConfigError(
                f"{where}: limit_key={limit_key!r} limits nothing on its own: give "
                "concurrency=, rate_limit= or circuit= to apply per key"
            )
        if group_weight is not None:
            if grouped is None:
                raise ConfigError(
                    f"{where}: group_weight={group_weight!r} needs group= (the weight of the "
                    "task's group among the queue's groups)"
                )
            _check_weight(where, group_weight, ConfigError)
        return cls(
            task,
            concurrency=concurrency or 0,
            rate_limit=limit,
            circuit=circuit,
            limit_key=key,
            group=grouped,
            group_weight=group_weight or 1,
        )

    def with_group(self, group: str | None, group_weight: int | None) -> TaskFlow:
        """This flow with a literal group (replacing a group template) and/or its weight:
        `task.options(group="acme", group_weight=2)`.

        Raises:
            InvalidOption: a group that is not a valid lane, a weight outside 1..1000, a
                weight with no group, or a group for a task with `limit_key`.
        """
        where = f"task {self.task!r}"
        if group is not None:
            if self.limit_key is not None:
                raise InvalidOption(
                    f"{where} has limit_key={self.limit_key.template!r}: its lanes are per key, "
                    f"so it takes no group= (got group={group!r})"
                )
            if not isinstance(group, str):
                raise InvalidOption(f"{where}: group must be a string, got {group!r}")
            try:
                check_key(group)
            except InvalidOption:
                raise InvalidOption(
                    f"{where}: group {group[:300]!r} is not a valid group: use {_ALPHABET}"
                ) from None
        if group_weight is not None:
            if group is None and self.group is None:
                raise InvalidOption(
                    f"{where}: group_weight={group_weight!r} needs a group: give group= "
                    "with it, or to the task"
                )
            _check_weight(where, group_weight, InvalidOption)
        return TaskFlow(
            self.task,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            circuit=self.circuit,
            limit_key=self.limit_key,
            group=self.group if group is None else group,
            group_weight=self.group_weight if group_weight is None else group_weight,
        )

    def fields(self, bound: inspect.BoundArguments | None) -> dict[str, object]:
        """The `Job` fields of one call; `bound` (its bound arguments) is needed when
        `templates` is not empty.

        Raises:
            InvalidOption: a template's value is not a valid key, or the lane it makes is
                too long (``<task>:<value>`` over 255 characters).
        """
        if not self.templates:
            return self._fixed
        assert bound is not None
        ((option, template),) = self.templates
        try:
            value = template.resolve(bound)
        except InvalidOption as exc:
            raise InvalidOption(f"task {self.task!r}: {option}: {exc}") from None
        lane = value if option == "group" else f"{self.task}:{value}"
        if len(lane) > 255:
            raise InvalidOption(
                f"task {self.task!r}: limit_key {template.template!r} makes the lane "
                f"{lane[:80]!r}… of {len(lane)} characters: a lane (task name, ':', key) "
                "must be at most 255; use a shorter key or task name"
            )
        return {**self._fixed, "lane": lane}

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in ("concurrency", "rate_limit", "circuit", "limit_key", "group")
            if getattr(self, name)
        )
        return f"TaskFlow({self.task!r}, {shown}, group_weight={self.group_weight})"


def _template(
    where: str, option: str, text: str | None, signature: inspect.Signature
) -> KeyTemplate | None:
    if text is None:
        return None
    try:
        return KeyTemplate(text).check(signature)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {option}: {exc}") from None


def _check_weight(where: str, weight: object, error: type[Exception]) -> None:
    if not _whole(weight, 1, MAX_GROUP_WEIGHT):
        raise error(
            f"{where}: group_weight must be a whole number from 1 to {MAX_GROUP_WEIGHT} (jobs "
            f"the group is served per turn), got {weight!r}"
        )
