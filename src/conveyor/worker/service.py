"""Services: the one shape of a worker process's background loops, and how a group runs them.

A `Service` has a `name`, one loop (`run`), a readiness signal (the loop calls `started()`
once it serves; others `await service.ready()`: trio's handshake) and a graceful `stop()`.
`ServiceGroup` runs a list of them in one `asyncio.TaskGroup`:

* **Start in list order**, each one ready before the next is started, so a service may
  rely on every one before it (jobs settle through the settle service; maintenance starts
  once the claim loop reached the store).
* **Stop in reverse order**, each one finished before the one before it is told to stop,
  so what a service hands to those before it (a job to run, an outcome to settle) is
  still taken. The stop begins on `ServiceGroup.stop()` or when any service's `run`
  returns of its own accord (the claim loop does when a burst is over).
* **A service that raises** cancels the others (no graceful stop) and the error leaves
  `ServiceGroup.run`, as from any TaskGroup.

Adding a loop (a scheduler, presence beats, a metrics exporter) is writing a `Service` and
putting it in the list where its dependencies are before it.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

__all__ = ["Loop", "Service", "ServiceGroup"]


class Service(abc.ABC):
    """One background loop of a worker process.

    Subclasses implement `run` (call `started()` once serving; return soon after `stop()`)
    and may extend `stop` to interrupt their own waits. A loop with nothing to finish on a
    stop can run under `cancel_on_stop`.
    """

    #: Names the service in task names and logs.
    name: str = "service"

    def __init__(self) -> None:
        self._ready = asyncio.Event()
        self._stop = asyncio.Event()

    @abc.abstractmethod
    async def run(self) -> None:
        """Serve until stopped. Call `started()` once ready."""

    def started(self) -> None:
        """Signal readiness (from inside `run`)."""
        self._ready.set()

    async def ready(self) -> None:
        """Wait until the service is ready."""
        await self._ready.wait()

    @property
    def is_ready(self) -> bool:
        """Whether `started()` was called."""
        return self._ready.is_set()

    def stop(self) -> None:
        """Ask `run` to finish what it must and return (idempotent)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stop.is_set()

    async def cancel_on_stop(self, loop: Coroutine[Any, Any, None]) -> None:
        """Run `loop` until it returns or `stop()` is called, then cancel it."""
        async with asyncio.TaskGroup() as tg:
            task = tg.create_task(loop, name=f"conveyor-{self.name}-loop")
            stop = tg.create_task(self._stop.wait(), name=f"conveyor-{self.name}-stop")
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
            task.cancel()
            stop.cancel()


class Loop(Service):
    """A service made of one loop with nothing to finish on a stop: ready at once, the loop
    cancelled by `stop()` (a heartbeat, say).

    Args:
        name: the service's name.
        loop: makes the loop's coroutine when the service starts.
    """

    def __init__(self, name: str, loop: Callable[[], Coroutine[Any, Any, None]]) -> None:
        super().__init__()
        self.name = name
        self._loop = loop

    async def run(self) -> None:
        self.started()
        await self.cancel_on_stop(self._loop())


class ServiceGroup:
    """Runs services in one TaskGroup: started in order, stopped in reverse (see the module).

    Args:
        services: the services, dependencies first. The list is read when `run` starts, so
            services may be added until then.
    """

    def __init__(self, services: Sequence[Service]) -> None:
        self.services = services
        self._stop = asyncio.Event()
        self._ready = asyncio.Event()

    def stop(self) -> None:
        """Begin the stop: every started service is stopped, last started first."""
        self._stop.set()

    async def ready(self) -> None:
        """Wait until every service is ready."""
        await self._ready.wait()

    @property
    def is_ready(self) -> bool:
        """Whether every service is ready."""
        return self._ready.is_set()

    async def run(self) -> None:
        """Start the services, serve until a stop, then stop them in reverse order."""
        async with asyncio.TaskGroup() as tg:
            stop = tg.create_task(self._stop.wait(), name="conveyor-stop")
            started: list[tuple[Service, asyncio.Task[None]]] = []
            for service in list(self.services):
                task = tg.create_task(service.run(), name=f"conveyor-{service.name}")
                started.append((service, task))
                ready = tg.create_task(service.ready(), name=f"conveyor-{service.name}-ready")
                await asyncio.wait({ready, task, stop}, return_when=asyncio.FIRST_COMPLETED)
                ready.cancel()
                if not service.is_ready:
                    break  # stopped (or ended) before it was ready: start no more
            else:
                self._ready.set()
                await asyncio.wait(
                    {stop, *(t for _, t in started)}, return_when=asyncio.FIRST_COMPLETED
                )
            for service, task in reversed(started):
                service.stop()
                await asyncio.wait({task})  # its error, if any, is the TaskGroup's to raise
            stop.cancel()
