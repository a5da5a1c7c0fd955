"""Finding the user's `App` from a ``module:attribute`` string."""

from __future__ import annotations

import importlib
import os
import sys

from conveyor.app import App
from conveyor.errors import ConfigError

__all__ = ["load_app"]


def load_app(spec: str) -> App:
    """Import ``package.module:app`` (the attribute defaults to ``app``) and return the App."""
    module_name, _, attr = spec.partition(":")
    attr = attr or "app"
    if not module_name:
        raise ConfigError(f"app {spec!r}: expected module:attribute, e.g. myapp:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ConfigError(
                f"cannot import {module_name!r} (from {spec!r}): no such module on the path; "
                "run from the project directory or set PYTHONPATH"
            ) from None
        raise
    try:
        app = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not isinstance(app, App):
        raise ConfigError(f"{spec!r} is a {type(app).__name__}, not a conveyor.App")
    return app
