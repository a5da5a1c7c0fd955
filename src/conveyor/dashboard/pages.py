"""The dashboard's pages: server-rendered (Jinja2, autoescape on everywhere), one handler per
page; a store error renders the page's outage banner with HTTP 503 (see `Pages.guarded`).
The POST handlers are in `conveyor.dashboard.actions`."""

from __future__ import annotations

import builtins
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from conveyor.backends.base import Backend, JobFilter
from conveyor.capabilities import FlowControl, Presence, QueueControl
from conveyor.dashboard.bulk import BulkRuns
from conveyor.dashboard.csrf import SESSION, Csrf
from conveyor.dashboard.view import ago, as_json, when
from conveyor.errors import BackendError, ConveyorError, JobNotFound
from conveyor.inspector import Inspector
from conveyor.job import TERMINAL, Job, JobState
from conveyor.observability.backlog import oldest_ready_age
from conveyor.scheduler.schedules import Schedules, describe

__all__ = ["Pages"]

FLASH = "conveyor_flash"
DEAD_SCAN = 1000
Context = dict[str, Any]
OUTAGE = (BackendError, OSError, ConnectionError, TimeoutError)


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["when"] = when
    env.filters["ago"] = ago
    return env


class Pages:
    """The routes' handlers, over one inspector."""

    def __init__(
        self,
        inspector: Inspector,
        *,
        schedules: Schedules | None,
        read_only: bool,
        title: str,
    ) -> None:
        self.inspector = inspector
        self.backend: Backend = inspector.backend
        self.schedules = schedules
        self.read_only = read_only
        self.title = title
        self.csrf = Csrf()
        self.env = _environment()
        self.bulk = BulkRuns(inspector)

    # -- rendering ---------------------------------------------------------------------------

    def href(self, request: Request, path: str, **query: object) -> str:
        base = str(request.scope.get("root_path", "")).rstrip("/")
        q = {k: v for k, v in query.items() if v not in (None, "")}
        return base + path + ("?" + urllib.parse.urlencode(q) if q else "")

    def render(
        self, request: Request, page: str, template: str, ctx: Context, status: int = 200
    ) -> Response:
        sid, new = self.csrf.session(request)
        flash = request.cookies.get(FLASH, "")
        body = self.env.get_template(template).render(
            request=request,
            page=page,
            title=self.title,
            read_only=self.read_only,
            csrf=self.csrf.token(sid),
            flash=urllib.parse.unquote(flash)[:500] if flash else "",
            href=lambda path, **q: self.href(request, path, **q),
            now=time.time(),
            **ctx,
        )
        response = HTMLResponse(body, status_code=status)
        root = str(request.scope.get("root_path", "")) or "/"
        if new:
            response.set_cookie(SESSION, sid, httponly=True, samesite="strict", path=root)
        if flash:
            response.delete_cookie(FLASH, path=root)
        return response

    async def guarded(
        self,
        request: Request,
        page: str,
        template: str,
        load: Callable[[Request], Awaitable[Context | Response]],
    ) -> Response:
        """Render `template` with what `load` gives; the store down → 503 with the banner."""
        try:
            ctx = await load(request)
        except OUTAGE as exc:
            error = f"{type(exc).__name__}: {exc}"
            return self.render(request, page, "outage.html", {"outage": error}, status=503)
        if isinstance(ctx, Response):
            return ctx
        return self.render(request, page, template, ctx)

    # -- pages -------------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        async def load(_: Request) -> Context:
            stats = await self.inspector.stats()
            totals = {s.value: sum(q[s] for q in stats) for s in JobState}
            workers = (
                len(await self.inspector.workers()) if isinstance(self.backend, Presence) else 0
            )
            return {"totals": totals, "workers_online": workers}

        return await self.guarded(request, "overview", "overview.html", load)

    async def queues(self, request: Request) -> Response:
        async def load(_: Request) -> Context:
            stats = await self.inspector.stats()
            oldest = await oldest_ready_age(self.backend, [q.queue for q in stats])
            lanes = await self.inspector.lanes() if isinstance(self.backend, FlowControl) else []
            return {
                "stats": stats,
                "states": list(JobState),
                "oldest": oldest,
                "lanes": lanes,
                "can_pause": isinstance(self.backend, QueueControl),
            }

        return await self.guarded(request, "queues", "queues.html", load)

    async def jobs(self, request: Request) -> Response:
        async def load(r: Request) -> Context | Response:
            q = r.query_params
            wanted = q.get("id", "").strip()
            if wanted:
                (job,) = await self.backend.get([wanted])
                if job is not None:
                    return RedirectResponse(self.href(r, f"/jobs/{job.id}"), status_code=303)
            filters = {k: q.get(k, "").strip() for k in ("queue", "state", "task", "key", "group")}
            state = JobState(filters["state"]) if filters["state"] in set(JobState) else None
            error = ""
            page_jobs: builtins.list[Job] = []
            next_cursor = None
            try:
                page = await self.inspector.list(
                    queue=filters["queue"] or None,
                    state=state,
                    task=filters["task"] or None,
                    key=filters["key"] or None,
                    lane=filters["group"] or None,
                    after=q.get("after") or None,
                    limit=50,
                )
                page_jobs, next_cursor = page.jobs, page.next
            except OUTAGE:
                raise
            except (ConveyorError, ValueError) as exc:
                error = str(exc)
            next_href = self.href(r, "/jobs", **filters, after=next_cursor) if next_cursor else ""
            return {
                "jobs": page_jobs,
                "filters": filters,
                "states": list(JobState),
                "next_href": next_href,
                "error": error,
                "searched": wanted,
            }

        return await self.guarded(request, "jobs", "jobs.html", load)

    async def job(self, request: Request) -> Response:
        job_id = request.path_params["job_id"]

        async def load(r: Request) -> Context | Response:
            try:
                job = await self.inspector.job(job_id)
            except JobNotFound as exc:
                return self.render(r, "job", "missing.html", {"error": str(exc)}, status=404)
            parents = await self._parents(job.parents)
            return {
                "job": job,
                "args": as_json(job.payload),
                "result": as_json(job.result),
                "checkpoint": as_json(job.checkpoint) if job.checkpoint else "",
                "parents": parents,
                "actions": self._actions(job),
            }

        return await self.guarded(request, "job", "job.html", load)

    async def _parents(self, ids: tuple[str, ...], depth: int = 2) -> list[dict[str, Any]]:
        if not ids or depth == 0:
            return []
        shown = list(ids[:20])
        got = await self.backend.get(shown)
        out = []
        for pid, parent in zip(shown, got, strict=True):
            grand = await self._parents(parent.parents, depth - 1) if parent else []
            out.append({"id": pid, "job": parent, "parents": grand})
        return out

    def _actions(self, job: Job) -> list[str]:
        if self.read_only:
            return []
        out = []
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            out.append("retry")
        if not job.state.terminal:
            out.append("cancel")
        if job.state in TERMINAL:
            out.append("delete")
        out.append("copy")
        return out

    async def dead(self, request: Request) -> Response:
        async def load(r: Request) -> Context:
            task = r.query_params.get("task", "").strip()
            err = r.query_params.get("error", "").strip()
            scanned: builtins.list[Job] = []
            after = None
            while len(scanned) < DEAD_SCAN:
                page = await self.backend.query(
                    JobFilter(state=JobState.FAILED), after, min(500, DEAD_SCAN - len(scanned))
                )
                scanned.extend(page.jobs)
                if page.next is None:
                    break
                after = page.next
            groups: dict[tuple[str, str], int] = {}
            for j in scanned:
                k = (j.task, j.last_error.type if j.last_error else "")
                groups[k] = groups.get(k, 0) + 1
            shown = [
                j
                for j in scanned
                if (not task or j.task == task)
                and (not err or (j.last_error.type if j.last_error else "") == err)
            ][:200]
            total = await self.inspector.count(JobState.FAILED)
            return {
                "groups": sorted(groups.items(), key=lambda kv: -kv[1]),
                "rows": shown,
                "scanned": len(scanned),
                "limit": DEAD_SCAN,
                "total": total,
                "task": task,
                "error_type": err,
                "runs": sorted(self.bulk.runs.values(), key=lambda b: -b.id),
            }

        return await self.guarded(request, "dead", "dead.html", load)

    async def schedules_page(self, request: Request) -> Response:
        async def load(_: Request) -> Context:
            infos: list[Any] = []
            if self.schedules is not None and len(self.schedules):
                infos = await describe(self.backend, self.schedules, time.time())
            else:  # no schedules to look up: still reach the store, for the outage banner
                await self.backend.get(["-"])
            return {"schedules": infos}

        return await self.guarded(request, "schedules", "schedules.html", load)

    async def workers(self, request: Request) -> Response:
        async def load(_: Request) -> Context:
            found = await self.inspector.workers() if isinstance(self.backend, Presence) else []
            return {"workers": found, "supported": isinstance(self.backend, Presence)}

        return await self.guarded(request, "workers", "workers.html", load)

    async def locks(self, request: Request) -> Response:
        async def load(_: Request) -> Context:
            return {"locks": await self.inspector.locks()}

        return await self.guarded(request, "locks", "locks.html", load)
