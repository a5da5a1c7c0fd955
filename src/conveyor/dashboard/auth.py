"""Who may use the dashboard: a bearer token, HTTP basic credentials, or a callable.

Secrets are compared with `hmac.compare_digest`. A wrong or missing credential gets 401 and
the request goes no further, so nothing is changed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from conveyor.errors import ConfigError

__all__ = ["COOKIE", "Auth", "AuthMiddleware", "Basic", "Check", "Token"]

COOKIE = "conveyor_token"

Check = Callable[[Request], "bool | Awaitable[bool]"]


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


@dataclass(frozen=True, slots=True)
class Token:
    """A bearer token: ``Authorization: Bearer <token>``, or ``?token=<token>`` once (which
    sets an HttpOnly, SameSite=Strict cookie and redirects to the URL without it)."""

    token: str

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or not self.token:
            raise ConfigError("dashboard Token needs a non-empty string")

    def __repr__(self) -> str:
        return "Token('***')"


@dataclass(frozen=True, slots=True)
class Basic:
    """HTTP basic authentication with one user name and password."""

    user: str
    password: str

    def __post_init__(self) -> None:
        if not self.user or not self.password or ":" in self.user:
            raise ConfigError("dashboard Basic needs a user (without ':') and a password")

    def __repr__(self) -> str:
        return f"Basic({self.user!r}, '***')"


Auth = Token | Basic | Check


def _basic_ok(auth: Basic, header: str) -> bool:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        user, sep, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return bool(sep) and _same(user, auth.user) & _same(password, auth.password)


class AuthMiddleware:
    """Refuse (401) every request that does not carry the configured credential."""

    def __init__(self, app: ASGIApp, auth: Auth | None) -> None:
        if auth is not None and not isinstance(auth, Token | Basic) and not callable(auth):
            raise ConfigError(f"dashboard auth must be Token, Basic or a callable, not {auth!r}")
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.auth is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        response = await self._check(request)
        if response is None:
            await self.app(scope, receive, send)
        else:
            await response(scope, receive, send)

    async def _check(self, request: Request) -> Response | None:
        auth = self.auth
        if isinstance(auth, Token):
            header = request.headers.get("authorization", "")
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer" and _same(value.strip(), auth.token):
                return None
            if _same(request.cookies.get(COOKIE, ""), auth.token):
                return None
            given = request.query_params.get("token")
            if given is not None and _same(given, auth.token):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                url = request.url.replace(query=urlencode(rest))
                redirect = RedirectResponse(str(url), status_code=303)
                root = request.scope.get("root_path", "") or "/"
                redirect.set_cookie(COOKIE, auth.token, httponly=True, samesite="strict", path=root)
                return redirect
            return PlainTextResponse("unauthorized: a valid token is needed", status_code=401)
        if isinstance(auth, Basic):
            if _basic_ok(auth, request.headers.get("authorization", "")):
                return None
            return PlainTextResponse(
                "unauthorized",
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="conveyor", charset="UTF-8"'},
            )
        assert auth is not None
        verdict = auth(request)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if verdict is True:
            return None
        return PlainTextResponse("unauthorized", status_code=401)
