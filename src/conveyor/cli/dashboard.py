"""``conveyor dashboard APP``: serve the web dashboard with uvicorn.

Binding a non-loopback address needs ``--token`` / ``--basic`` (or env
``CONVEYOR_DASHBOARD_TOKEN``): the dashboard can requeue, cancel and delete jobs.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from types import FrameType

import click

from conveyor.cli.load import load_app
from conveyor.errors import ConfigError

__all__ = ["check_bind", "dashboard_command", "is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether `host` names only this machine (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), or ConfigError with one clear line if it can't be."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use; pick another with --port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


@click.command("dashboard")
@click.argument("app_spec", metavar="APP")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--token",
    envvar="CONVEYOR_DASHBOARD_TOKEN",
    help="Bearer token (env CONVEYOR_DASHBOARD_TOKEN).",
)
@click.option("--basic", metavar="USER:PASS", help="HTTP basic credentials.")
@click.option("--read-only", is_flag=True, help="Hide every action; refuse every POST.")
def dashboard_command(
    app_spec: str, host: str, port: int, token: str | None, basic: str | None, read_only: bool
) -> None:
    """Serve the web dashboard of APP (module:attribute)."""
    if token and basic:
        raise ConfigError("give --token or --basic, not both")
    if not (token or basic) and not is_loopback(host):
        raise ConfigError(
            f"refusing to serve the dashboard on {host} without --token or --basic "
            "(or env CONVEYOR_DASHBOARD_TOKEN); only loopback addresses may go without"
        )
    from conveyor.dashboard import Basic, Token, create_app  # needs the dashboard extra

    auth: Token | Basic | None = None
    if token:
        auth = Token(token)
    elif basic:
        user, sep, password = basic.partition(":")
        if not sep:
            raise ConfigError("--basic takes USER:PASS")
        auth = Basic(user, password)
    app = load_app(app_spec)
    web = create_app(app.inspector, schedules=app.schedules, auth=auth, read_only=read_only)
    sock = check_bind(host, port)
    import uvicorn

    click.echo(f"dashboard on http://{host}:{port}/ (ctrl-c to stop)", err=True)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            web.state.streams.close()  # else uvicorn waits for the overviews' open streams
            super().handle_exit(sig, frame)
            # uvicorn raises the signal again once stopped (a KeyboardInterrupt traceback
            # from the lifespan): a dashboard stopped by ctrl-c or SIGTERM just exits.
            self._captured_signals.clear()

    config = uvicorn.Config(web, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
