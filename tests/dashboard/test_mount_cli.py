"""The dashboard mounted under a prefix inside another Starlette app (links, forms, redirects
and cookies follow the prefix), and the CLI's refusals (non-loopback without auth, port in
use), each in one line."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

import conveyor
from conveyor.cli.dashboard import check_bind, is_loopback
from conveyor.dashboard import Token, create_app
from conveyor.errors import ConfigError
from tests.dashboard.conftest import TestClient, csrf_of, make_job, run_on


def test_mounted_under_a_prefix(db: Path) -> None:
    (job_id,) = run_on(db, lambda b, c: b.enqueue([make_job(c, queue="emails")]))
    app = conveyor.App(f"sqlite:///{db}")

    async def home(_: object) -> PlainTextResponse:
        return PlainTextResponse("outer")

    outer = Starlette(
        routes=[
            Route("/", home),
            Mount("/ops/jobs-ui", create_app(app.inspector, auth=Token("t"))),
        ]
    )
    with TestClient(outer) as client:
        assert client.get("/").text == "outer"
        assert client.get("/ops/jobs-ui/").status_code == 401
        r = client.get("/ops/jobs-ui/queues?token=t", follow_redirects=False)
        assert r.headers["location"].endswith("/ops/jobs-ui/queues")
        assert "Path=/ops/jobs-ui" in r.headers["set-cookie"]
        page = client.get("/ops/jobs-ui/queues").text
        links = re.findall(r'(?:href|action|src|data-events)="([^"]+)"', page)
        assert links and all(link.startswith("/ops/jobs-ui/") for link in links), links
        assert client.get("/ops/jobs-ui/static/dashboard.js").status_code == 200
        token = csrf_of(page)
        r = client.post(
            "/ops/jobs-ui/queues/emails/pause", data={"csrf": token}, follow_redirects=False
        )
        assert r.status_code == 303 and r.headers["location"] == "/ops/jobs-ui/queues"
        jobs = client.get("/ops/jobs-ui/jobs").text
        assert f'href="/ops/jobs-ui/jobs/{job_id}"' in jobs
        assert "event: update" in client.get("/ops/jobs-ui/events?limit=1").text
        assert client.portal is not None
        client.portal.call(app.aclose)


def test_loopback_hosts() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    assert not is_loopback("example.com")


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "dashboard", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[2] / "src")},
    )


def test_cli_refuses_a_public_host_without_auth() -> None:
    done = run_cli("tests.nothing:app", "--host", "0.0.0.0")
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: refusing to serve the dashboard on 0.0.0.0 without --token or --basic "
        "(or env CONVEYOR_DASHBOARD_TOKEN); only loopback addresses may go without"
    ]


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port} on 127.0.0.1 is already in use"):
            check_bind("127.0.0.1", port)


def test_cli_port_in_use(tmp_path: Path) -> None:
    (tmp_path / "dashapp.py").write_text(
        f"import conveyor\napp = conveyor.App('sqlite:///{tmp_path}/j.db')\n"
    )
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "conveyor", "dashboard", "dashapp:app", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use; pick another with --port"
    ]


def test_without_the_extra_the_import_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['starlette'] = None\n"
        "try:\n    import conveyor.dashboard\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == (
        "ConfigError the dashboard needs the dashboard extra: pip install 'conveyor[dashboard]'"
    )
