"""`create_app`: the dashboard as a Starlette app, to run alone (``conveyor dashboard``) or
mount inside another ASGI app (links follow the mount's ``root_path``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from conveyor.dashboard.actions import Actions
from conveyor.dashboard.auth import Auth, AuthMiddleware
from conveyor.dashboard.events import Snapshots, Streams, stream
from conveyor.dashboard.headers import SecurityHeaders
from conveyor.dashboard.pages import Pages
from conveyor.dashboard.sampler import DepthSampler
from conveyor.errors import ConfigError
from conveyor.inspector import Inspector
from conveyor.scheduler.schedules import Schedules

__all__ = ["create_app"]


def create_app(
    inspector: Inspector,
    *,
    schedules: Schedules | None = None,
    auth: Auth | None = None,
    read_only: bool = False,
    title: str = "Conveyor",
    sample_every: float = 5.0,
) -> Starlette:
    """The dashboard over `inspector` (``app.inspector``).

    Args:
        schedules: the app's schedules (``app.schedules``) for the schedules page.
        auth: `Token`, `Basic`, or a callable ``(request) -> bool | Awaitable[bool]``;
            None lets everyone in (the CLI allows that on a loopback address only).
        read_only: hide every action and refuse every POST (403).
        title: shown in the page header.
        sample_every: seconds between queue-depth samples for the overview's chart.

    The overview's live stream stays open; a server that waits for open responses before it
    stops (uvicorn) needs ``app.state.streams.close()`` first (any thread), or waits up to a
    minute (each stream's most).
    """
    if not isinstance(inspector, Inspector):
        raise ConfigError(f"create_app needs an Inspector (app.inspector), not {inspector!r}")
    pages = Pages(inspector, schedules=schedules, read_only=read_only, title=title)
    actions = Actions(pages)
    sampler = DepthSampler(inspector, every=sample_every)
    snapshots = Snapshots(inspector, sampler)
    streams = Streams()

    async def events(request: Request) -> Response:
        sampler.start()  # a mounted app gets no lifespan of its own
        return stream(request, snapshots, streams)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        sampler.start()
        try:
            yield
        finally:
            await sampler.stop()
            await pages.bulk.stop()

    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/events", events, name="events"),
        Route("/queues", pages.queues, name="queues"),
        Route("/queues/{queue}/{action}", actions.queue_action, methods=["POST"]),
        Route("/jobs", pages.jobs, name="jobs"),
        Route("/jobs/{job_id}", pages.job, name="job"),
        Route("/jobs/{job_id}/{action}", actions.job_action, methods=["POST"]),
        Route("/dead", pages.dead, name="dead"),
        Route("/dead/{action}", actions.dead_action, methods=["POST"]),
        Route("/schedules", pages.schedules_page, name="schedules"),
        Route("/workers", pages.workers, name="workers"),
        Route("/locks", pages.locks, name="locks"),
        Mount("/static", StaticFiles(directory=Path(__file__).parent / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(SecurityHeaders), Middleware(AuthMiddleware, auth=auth)],
        lifespan=lifespan,
    )
    app.state.pages = pages
    app.state.sampler = sampler
    app.state.streams = streams  # app.state.streams.close() before stopping the server
    return app
