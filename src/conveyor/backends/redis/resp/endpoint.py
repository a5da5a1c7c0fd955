"""`Endpoint`: where and how a `Pipe` connects (host, port or socket, TLS, AUTH, SELECT)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection
from redis.asyncio.connection import parse_url as redis_parse_url

__all__ = ["Endpoint"]


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect, from a ``redis://`` / ``rediss://`` / ``unix://`` URL.

    Attributes:
        host: the server's host name or address (TCP).
        port: its port (TCP).
        path: the Unix socket's path, instead of host and port.
        db: the database to ``SELECT`` after connecting (0: none sent).
        username: the ACL user for ``AUTH`` (``None``: the default user).
        password: the password for ``AUTH`` (``None``: no ``AUTH``).
        tls: the TLS context for ``rediss://`` (``None``: plain TCP).
        socket_timeout: seconds a sent command may wait for its reply.
        connect_timeout: seconds to connect, TLS handshake and ``AUTH``/``SELECT`` included.
    """

    host: str = "localhost"
    port: int = 6379
    path: str | None = None
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None
    socket_timeout: float = 10.0
    connect_timeout: float = 5.0

    @classmethod
    def from_url(cls, url: str, socket_timeout: float) -> Endpoint:
        """Read `url` the way redis-py does (same query options, same TLS defaults)."""
        kw: dict[str, Any] = dict(redis_parse_url(url))
        conn_class = kw.get("connection_class")
        tls = _tls_context(kw) if conn_class is SSLConnection else None
        return cls(
            host=str(kw.get("host", "localhost")),
            port=int(kw.get("port", 6379)),
            path=kw.get("path") if conn_class is UnixDomainSocketConnection else None,
            db=int(kw.get("db", 0)),
            username=kw.get("username"),
            password=kw.get("password"),
            tls=tls,
            socket_timeout=socket_timeout,
            connect_timeout=float(kw.get("socket_connect_timeout", min(socket_timeout, 5.0))),
        )

    def hello(self) -> list[tuple[Any, ...]]:
        """The commands a fresh connection sends first: ``AUTH``, then ``SELECT``."""
        out: list[tuple[Any, ...]] = []
        if self.password is not None:
            out.append(
                ("AUTH", self.username, self.password) if self.username else ("AUTH", self.password)
            )
        if self.db:
            out.append(("SELECT", self.db))
        return out


def _tls_context(kw: dict[str, Any]) -> ssl.SSLContext:
    """Certificates and host names are checked unless the URL says ``ssl_cert_reqs=none``."""
    reqs = str(kw.get("ssl_cert_reqs", "required")).lower()
    ctx = ssl.create_default_context(cafile=kw.get("ssl_ca_certs"))
    if reqs in ("none", "cert_none"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif reqs in ("optional", "cert_optional"):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_OPTIONAL
    elif str(kw.get("ssl_check_hostname", "true")).lower() in ("false", "0", "no"):
        ctx.check_hostname = False
    if kw.get("ssl_certfile"):
        ctx.load_cert_chain(kw["ssl_certfile"], kw.get("ssl_keyfile"), kw.get("ssl_password"))
    return ctx
