"""CSRF tokens: HMAC(per-process secret, session cookie). Every POST must carry the token of
its session cookie in the ``csrf`` form field; a missing or forged one gets 403."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from starlette.requests import Request

__all__ = ["SESSION", "Csrf"]

SESSION = "conveyor_session"


class Csrf:
    """Issue and check CSRF tokens bound to a random session cookie."""

    def __init__(self) -> None:
        self._secret = secrets.token_bytes(32)

    def session(self, request: Request) -> tuple[str, bool]:
        """The request's session id, and whether it is new (then set it as a cookie)."""
        sid = request.cookies.get(SESSION, "")
        if len(sid) == 43:
            return sid, False
        return secrets.token_urlsafe(32), True

    def token(self, sid: str) -> str:
        return hmac.new(self._secret, sid.encode(), hashlib.sha256).hexdigest()

    def valid(self, request: Request, given: object) -> bool:
        sid = request.cookies.get(SESSION, "")
        if not sid or not isinstance(given, str):
            return False
        return hmac.compare_digest(self.token(sid).encode(), given.encode())
