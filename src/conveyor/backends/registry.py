"""URL scheme → store factory: the one table `from_url` reads.

Each entry names the module and the factory function that builds the store from its URL,
imported only when that scheme is used (so a missing optional dependency is reported only
to those who need it, with the extra to install). Another package can add a store without
touching Conveyor, through the ``conveyor.backends`` entry-point group: the entry point's
name is the scheme and its value a factory ``(url: str, clock: Clock | None) -> Backend``::

    [project.entry-points."conveyor.backends"]
    postgres = "conveyor_postgres:from_url"
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from conveyor.clock import Clock
from conveyor.errors import ConfigError
from conveyor.urls import mask

if TYPE_CHECKING:
    from conveyor.backends.base import Backend

__all__ = ["SCHEMES", "Factory", "factory", "schemes"]

Factory = Callable[[str, "Clock | None"], "Backend"]

#: The stores shipped with Conveyor: scheme → "module:function".
SCHEMES: dict[str, str] = {
    "memory": "conveyor.backends.memory:from_url",
    "sqlite": "conveyor.backends.sqlite:from_url",
    "redis": "conveyor.backends.redis:from_url",
    "rediss": "conveyor.backends.redis:from_url",
    "redis+cluster": "conveyor.backends.redis:from_url",
    "rediss+cluster": "conveyor.backends.redis:from_url",
}

_GROUP = "conveyor.backends"


def schemes() -> list[str]:
    """Every scheme a URL may use: the shipped ones, then installed plugins'."""
    plugins = sorted(ep.name for ep in entry_points(group=_GROUP) if ep.name not in SCHEMES)
    return [*SCHEMES, *plugins]


def factory(url: str) -> Factory:
    """The factory for `url`'s scheme, or a `ConfigError` listing the schemes there are."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise ConfigError(
            f"backend URL {mask(url)!r} has no scheme; use sqlite:///path.db, memory:// or "
            "redis://..."
        )
    target = SCHEMES.get(scheme)
    if target is not None:
        module, _, name = target.partition(":")
        found: Factory = getattr(importlib.import_module(module), name)
        return found
    for ep in entry_points(group=_GROUP, name=scheme):
        plugin: Factory = ep.load()
        return plugin
    raise ConfigError(
        f"unknown backend scheme {scheme!r} in {mask(url)!r}; supported: {', '.join(schemes())}"
    )
