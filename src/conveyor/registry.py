"""The task registry: names → tasks, and the producer and portal that tasks enqueue through."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from conveyor.errors import ConfigError, UnknownTask
from conveyor.portal import Portal
from conveyor.producer import Producer

if TYPE_CHECKING:
    from conveyor.task import Task

__all__ = ["Registry"]


class Registry:
    """Registered tasks by name, plus what they need to enqueue.

    Args:
        producer: where enqueues go.
        max_payload: largest encoded argument payload accepted, in bytes.
    """

    def __init__(self, producer: Producer, max_payload: int = 1 << 20) -> None:
        self.producer = producer
        self.max_payload = max_payload
        self.portal = Portal()
        self._tasks: dict[str, Task[..., object]] = {}

    def add(self, task: Task[..., object]) -> None:
        """Register `task`; a second task with the same name is a `ConfigError`."""
        existing = self._tasks.get(task.name)
        if existing is not None and existing.fn is not task.fn:
            raise ConfigError(
                f"a task named {task.name!r} is already registered ({existing.fn.__module__}."
                f"{existing.fn.__qualname__}); give one of them another name: "
                "@app.task(name='...')"
            )
        self._tasks[task.name] = task

    def get(self, name: str) -> Task[..., object]:
        """The task registered as `name`, or `UnknownTask`."""
        try:
            return self._tasks[name]
        except KeyError:
            known = ", ".join(sorted(self._tasks)) or "none"
            raise UnknownTask(f"no task named {name!r} is registered (known: {known})") from None

    def find(self, name: str) -> Task[..., object] | None:
        """The task registered as `name`, or `None`."""
        return self._tasks.get(name)

    def __iter__(self) -> Iterator[Task[..., object]]:
        return iter(self._tasks.values())

    def __len__(self) -> int:
        return len(self._tasks)
