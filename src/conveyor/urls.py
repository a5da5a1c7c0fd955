"""Store URLs shown to people: `mask` hides the credentials a URL carries.

Every message, repr or log line that shows a store URL passes it through `mask` first, so a
password never reaches a terminal, a log file or an exception report.
"""

from __future__ import annotations

import re

__all__ = ["mask"]

# Query options whose values are secrets (redis-py accepts ``?password=`` and friends).
_SECRET_OPTION = re.compile(r"(?i)([?&][^=&#]*(?:pass|secret|token|credential)[^=&#]*=)[^&#]*")


def mask(url: str) -> str:
    """`url` with its password (and any secret query option) replaced by ``***``.

    The user name stays, so the message still says who connected. Everything before the
    last ``@`` of the authority counts as credentials, so a password holding ``/``, ``?``
    or ``#`` (unencoded) is hidden too; a URL without an authority (``sqlite:///a@b.db``)
    has nothing to hide and comes back unchanged. Never raises, whatever the input.

    Example:
        mask("redis://alice:s3cret@cache:6379/0")   # 'redis://alice:***@cache:6379/0'
        mask("redis://:s3cret@cache/0")              # 'redis://***@cache/0'
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if rest.startswith("/"):  # no authority, so no credentials (sqlite:///path)
        return url
    head, at, tail = rest.rpartition("@")
    if at:
        user, colon, _ = head.partition(":")
        # A user name holds none of these; if it seems to, the '@' was not the authority's
        # and what came before it is hidden whole rather than risk showing a password.
        shown = user if colon and user and not set(user) & set("/?#") else ""
        rest = f"{shown}:***@{tail}" if shown else f"***@{tail}"
    rest = _SECRET_OPTION.sub(r"\1***", rest)
    return f"{scheme}{sep}{rest}"
