"""Browser fixtures: a real SQLite file store seeded through the real API (a burst worker
completes some jobs and fails others into dead letters), the dashboard served by uvicorn on
127.0.0.1 in a background thread, and one headless Debian chromium driven by Selenium.

Nothing is downloaded: the driver and browser are the Debian ones (Selenium Manager is off),
and the browser never talks to anything but the local server."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import conveyor
from conveyor.backends.sqlite import SQLiteBackend
from conveyor.clock import FakeClock
from conveyor.dashboard import Token, create_app
from conveyor.job import AttemptError
from tests.dashboard.conftest import XSS, fail, make_job, run_on

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-test-token"
EVIL = ("<script>window.__xss=1</script>", '"><img src=x onerror="window.__xss=1">')
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)

if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"CI needs {CHROMIUM} and {CHROMEDRIVER} (scripts/setup installs them)")
    pytest.skip(f"{CHROMIUM} or {CHROMEDRIVER} is missing", allow_module_level=True)

os.environ["SE_OFFLINE"] = "1"  # Selenium Manager must never fetch a browser or driver

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402

__all__ = ["EVIL", "TOKEN", "XSS", "Site", "console"]


def build_app(db: Path) -> tuple[conveyor.App, Any, Any]:
    """A fresh App on `db` with the test tasks: `ok` completes, `boom` fails for good."""
    app = conveyor.App(f"sqlite:///{db}")

    @app.task(name="browser.ok")
    async def ok(n: int) -> int:
        return n * 2

    @app.task(name="browser.boom", retry=conveyor.RetryPolicy(max_attempts=1))
    async def boom(n: int) -> None:
        raise ValueError(f"boom {n}")

    return app, ok, boom


def produce(db: Path, completed: int, failed: int) -> None:
    """Enqueue `completed` ok jobs and `failed` boom jobs, and run a burst worker on them."""

    async def go() -> None:
        app, ok, boom = build_app(db)
        try:
            for n in range(completed):
                await ok.enqueue(n)
            for n in range(failed):
                await boom.enqueue(n)
            await app.worker(burst=True).run()
        finally:
            await app.aclose()

    asyncio.run(go())


def seed_evil(db: Path) -> list[str]:
    """Failed jobs whose payload, error, traceback and meta hold script-running markup."""

    async def seed(backend: SQLiteBackend, clock: FakeClock) -> list[str]:
        ids = []
        for evil in EVIL:
            job = make_job(
                clock,
                payload=json.dumps({"args": [evil], "kwargs": {"note": evil}}).encode(),
                meta={"note": evil},
                max_attempts=1,
            )
            await fail(backend, [job], AttemptError(1, evil, evil, f"Traceback\n{evil}"))
            ids.append(job.id)
        return ids

    ids: list[str] = run_on(db, seed)
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Site:
    """The running dashboard: its base URL, the store file, and the seeded ids."""

    url: str
    db: Path
    evil_ids: list[str]

    def at(self, path: str) -> str:
        return self.url + path

    def store(self, body: Callable[[conveyor.App], Any]) -> Any:
        """Run ``await body(app)`` on a fresh App of the store (own loop; closed after)."""

        async def go() -> Any:
            app, _, _ = build_app(self.db)
            try:
                return await body(app)
            finally:
                await app.aclose()

        return asyncio.run(go())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """Seed the store, then serve the dashboard (token auth) until the module is done."""
    import uvicorn

    db = tmp_path_factory.mktemp("store") / "jobs.db"
    produce(db, completed=6, failed=3)
    evil_ids = seed_evil(db)
    app, _, _ = build_app(db)
    dashboard = create_app(
        app.inspector, schedules=app.schedules, auth=Token(TOKEN), sample_every=0.5
    )
    port = free_port()
    config = uvicorn.Config(
        dashboard, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    errors: list[BaseException] = []

    async def serve() -> None:
        try:
            await server.serve()
        finally:
            await app.aclose()  # in the loop that opened its connections

    def run() -> None:
        try:
            asyncio.run(serve())
        except BaseException as exc:  # reported by the waiting fixture below
            errors.append(exc)

    thread = threading.Thread(target=run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"the dashboard did not start: {errors}")
        if time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start within 15 s")
        time.sleep(0.02)
    yield Site(f"http://127.0.0.1:{port}", db, evil_ids)
    server.should_exit = True
    thread.join(timeout=15)
    assert not thread.is_alive(), "the dashboard thread did not stop"


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory, site: Site) -> Iterator[webdriver.Chrome]:
    """One headless chromium for the module, with its console log kept; it quits before the
    server stops (an open SSE stream would hold uvicorn's graceful shutdown)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tmp_path_factory.mktemp("chromium-profile")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    chrome.set_page_load_timeout(20)
    try:
        yield chrome
    finally:
        chrome.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console(driver: webdriver.Chrome) -> list[dict[str, Any]]:
    """The browser console entries since the last call (reading drains them)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


@pytest.fixture
def browser(driver: webdriver.Chrome, site: Site) -> webdriver.Chrome:
    """The module's browser, logged in (``?token=`` sets the cookie), console log drained."""
    driver.get(site.at(f"/?token={TOKEN}"))
    console(driver)
    return driver
