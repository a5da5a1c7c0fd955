"""Lua on a `Pipe`: scripts run with ``EVALSHA`` and FUNCTIONs run with ``FCALL``, each
loaded when the server lacks it (first use, a restart without persistence, a flush)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis.exceptions as rexc

if TYPE_CHECKING:
    from conveyor.backends.redis.resp.pipe import Pipe

__all__ = ["PipeFunction", "PipeScript"]

log = logging.getLogger("conveyor.backends.redis")


class PipeScript:
    """A Lua script run with ``EVALSHA`` on a `Pipe`, loaded on ``NOSCRIPT``."""

    __slots__ = ("pipe", "sha", "text")

    def __init__(self, pipe: Pipe, text: str) -> None:
        self.pipe = pipe
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        try:
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)
        except rexc.NoScriptError:
            await self.pipe.call("SCRIPT", "LOAD", self.text)
            return await self.pipe.call("EVALSHA", self.sha, len(keys), *keys, *args)


class PipeFunction:
    """A Redis FUNCTION run with ``FCALL``; its library is loaded when the server lacks it
    (first use, a restart without persistence, ``FUNCTION FLUSH``). Where FUNCTION LOAD is
    refused (an ACL without it, a proxy), the same code runs as a script (`fallback`).
    """

    __slots__ = ("_eval", "fallback", "library", "name", "pipe")

    def __init__(self, pipe: Pipe, library: str, name: str, fallback: str) -> None:
        self.pipe = pipe
        self.library = library
        self.name = name
        self.fallback = fallback
        self._eval: PipeScript | None = None

    async def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        if self._eval is not None:
            return await self._eval(keys, args)
        try:
            return await self.pipe.call("FCALL", self.name, len(keys), *keys, *args)
        except rexc.ResponseError as exc:
            if "function not found" not in str(exc).lower():
                raise
        try:
            await self.pipe.call("FUNCTION", "LOAD", self.library)
        except rexc.ResponseError as exc:
            if "already exists" not in str(exc):  # else loaded meanwhile by someone: fine
                log.warning("FUNCTION LOAD refused (%s); running scripts with EVALSHA", exc)
                self._eval = PipeScript(self.pipe, self.fallback)
                return await self._eval(keys, args)
        return await self.pipe.call("FCALL", self.name, len(keys), *keys, *args)
