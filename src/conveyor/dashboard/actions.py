"""The dashboard's actions: every state change is a POST carrying the session's CSRF token
(refused with 403 when it is missing or forged, or when the dashboard is read-only) that
redirects (303) to a page with a flash message. GET never changes anything."""

from __future__ import annotations

import urllib.parse
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

from conveyor.dashboard.pages import FLASH, OUTAGE, Pages
from conveyor.errors import ConveyorError, JobNotFound

__all__ = ["Actions"]


class Actions:
    """The POST handlers, next to `Pages` (whose inspector, CSRF and links they use)."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def back(self, request: Request, path: str, message: str) -> Response:
        response = RedirectResponse(self.pages.href(request, path), status_code=303)
        root = str(request.scope.get("root_path", "")) or "/"
        response.set_cookie(
            FLASH, urllib.parse.quote(message[:500]), httponly=True, samesite="strict", path=root
        )
        return response

    async def posted(self, request: Request) -> dict[str, Any] | Response:
        """The POST's form if it may change anything, else the 403 response."""
        if self.pages.read_only:
            return PlainTextResponse("forbidden: the dashboard is read-only", status_code=403)
        form = await request.form()
        if not self.pages.csrf.valid(request, form.get("csrf")):
            return PlainTextResponse("forbidden: missing or invalid CSRF token", status_code=403)
        return {"ids": [str(v) for v in form.getlist("id")], **{k: form.get(k) for k in form}}

    async def job_action(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        job_id = request.path_params["job_id"]
        action = request.path_params["action"]
        path = f"/jobs/{job_id}"
        try:
            if action == "retry":
                ok = await self.pages.inspector.requeue(job_id)
                message = "requeued" if ok else "not requeued (not failed or cancelled)"
            elif action == "cancel":
                state = await self.pages.inspector.cancel(job_id)
                message = f"cancel requested (now {state.value})"
            elif action == "delete":
                n = await self.pages.inspector.delete([job_id])
                return self.back(request, "/jobs", "deleted" if n else "not deleted (not ended)")
            elif action == "copy":
                new_id = await self.pages.inspector.copy(job_id)
                return self.back(request, f"/jobs/{new_id}", f"copied from {job_id}")
            else:
                return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        except JobNotFound as exc:
            return self.back(request, "/jobs", str(exc))
        except OUTAGE as exc:
            return self.back(request, path, f"store unavailable: {exc}")
        return self.back(request, path, message)

    async def queue_action(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        queue = request.path_params["queue"]
        action = request.path_params["action"]
        try:
            if action == "pause":
                await self.pages.inspector.pause(queue)
            elif action == "resume":
                await self.pages.inspector.resume(queue)
            else:
                return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        except OUTAGE as exc:
            return self.back(request, "/queues", f"store unavailable: {exc}")
        except ConveyorError as exc:
            return self.back(request, "/queues", str(exc))
        return self.back(request, "/queues", f"{action}d {queue}")

    async def dead_action(self, request: Request) -> Response:
        form = await self.posted(request)
        if isinstance(form, Response):
            return form
        action = request.path_params["action"]
        if action not in ("requeue", "delete"):
            return PlainTextResponse(f"unknown action {action!r}", status_code=404)
        if form.get("scope") == "matching":
            task, err = str(form.get("task") or ""), str(form.get("error") or "")
            run = self.pages.bulk.start(action, task, err)
            return self.back(request, "/dead", f"bulk {action} #{run.id} started")
        ids = form["ids"][:5000]
        try:
            if action == "requeue":
                n = await self.pages.inspector.requeue_many(ids)
            else:
                n = await self.pages.inspector.delete(ids)
        except OUTAGE as exc:
            return self.back(request, "/dead", f"store unavailable: {exc}")
        return self.back(request, "/dead", f"{action}d {n} of {len(ids)} selected")
