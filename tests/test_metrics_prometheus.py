"""A real Prometheus (``/usr/bin/prometheus``, Debian package) scrapes a worker's /metrics."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

import conveyor

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _query(base: str, promql: str) -> list[dict[str, object]]:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            body = json.load(r)
    except (urllib.error.URLError, ConnectionError):
        return []  # not up yet
    result: list[dict[str, object]] = body["data"]["result"]
    return result


@pytest.fixture
def prometheus_binary() -> str:
    """The binary; locally the test skips without it, under ``CI=true`` it fails."""
    if not os.path.exists(PROMETHEUS):
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus is not installed (scripts/setup); CI must run this test")
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    return PROMETHEUS


def _start(binary: str, tmp_path: Path, target: str) -> tuple[subprocess.Popen[bytes], str]:
    """A Prometheus scraping `target` every second; the process and its listen address."""
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        "scrape_configs:\n  - job_name: conveyor\n"
        f"    static_configs:\n      - targets: ['{target}']\n"
    )
    listen = f"127.0.0.1:{_free_port()}"
    with open(tmp_path / "prometheus.log", "wb") as log:
        prom = subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address={listen}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return prom, listen


def _stop(prom: subprocess.Popen[bytes]) -> None:
    prom.terminate()
    try:
        prom.wait(10)
    except subprocess.TimeoutExpired:
        prom.kill()
        prom.wait()


async def test_a_real_prometheus_scrapes_the_completed_count(
    tmp_path: Path, prometheus_binary: str
) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")

    @app.task
    async def ok(n: int) -> int:
        return n

    for i in range(7):
        await ok.enqueue(i)
    server = app.worker(metrics_port=0)
    async with server:
        assert server.metrics is not None
        target = f"127.0.0.1:{server.metrics.port}"
        prom, listen = await asyncio.to_thread(_start, prometheus_binary, tmp_path, target)
        try:
            found: list[dict[str, object]] = []
            promql = f'conveyor_jobs_total{{task="{ok.name}",outcome="completed"}}'
            for _ in range(300):
                found = await asyncio.to_thread(_query, f"http://{listen}", promql)
                if found and float(found[0]["value"][1]) == 7:  # type: ignore[index]
                    break
                assert prom.poll() is None, "prometheus exited: see prometheus.log in tmp_path"
                await asyncio.sleep(0.1)
            assert found and float(found[0]["value"][1]) == 7, found  # type: ignore[index]
            up = await asyncio.to_thread(_query, f"http://{listen}", "conveyor_store_up")
            assert up and float(up[0]["value"][1]) == 1  # type: ignore[index]
        finally:
            await asyncio.to_thread(_stop, prom)
    await app.aclose()
