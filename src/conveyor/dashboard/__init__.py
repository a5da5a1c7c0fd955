"""The web dashboard (``conveyor[dashboard]``): a Starlette app over the inspector.

Example:
    from conveyor.dashboard import Token, create_app
    asgi = create_app(app.inspector, schedules=app.schedules, auth=Token("s3cret"))
"""

from __future__ import annotations

from conveyor.errors import ConfigError

try:
    import jinja2  # noqa: F401
    import starlette  # noqa: F401
except ImportError:  # pragma: no cover - depends on the extra being installed
    raise ConfigError(
        "the dashboard needs the dashboard extra: pip install 'conveyor[dashboard]'"
    ) from None

from conveyor.dashboard.app import create_app
from conveyor.dashboard.auth import Basic, Token

__all__ = ["Basic", "Token", "create_app"]
