"""Stuck-job reports with a real worker on a SQLite file: a sync task sleeping past its
timeout on a thread, and an async task blocking the loop with `time.sleep`."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

import conveyor
from conveyor.observability.stuck import StuckWatch


def sleepy_sync_handler() -> None:
    time.sleep(1.5)


async def loop_blocking_handler() -> None:
    time.sleep(0.8)  # noqa: ASYNC251 - blocking the loop is the point


async def test_stuck_watch_reports_a_timed_out_sync_job_and_a_blocked_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = conveyor.App(f"sqlite:///{tmp_path}/jobs.db")
    try:
        sleepy = app.task(timeout=0.3, retry=conveyor.RetryPolicy(max_attempts=1))(
            sleepy_sync_handler
        )
        blocker = app.task(loop_blocking_handler)
        server = app.worker(poll=0.01, maintenance=False, block_threshold=0.3)
        watch = server.stuck  # every worker runs one (serve.Server)
        assert isinstance(watch, StuckWatch)
        calls: list[tuple[str, str]] = []
        watch.on_report.append(lambda kind, line: calls.append((kind, line)))
        caplog.set_level(logging.WARNING, "conveyor.stuck")
        async with asyncio.TaskGroup() as tg:
            run = tg.create_task(server.run())
            await server.ready()
            await sleepy.enqueue()
            current: tuple[str, ...] = ()
            for _ in range(100):
                await asyncio.sleep(0.05)
                current = watch.reports()
                if any("past its" in r for r in current):
                    break
            assert any("past its 0.3 s timeout" in r for r in current), current
            await asyncio.sleep(1.5)
            await blocker.enqueue()
            for _ in range(100):
                await asyncio.sleep(0.05)
                if any(k == "loop_blocked" for k, _ in calls):
                    break
            assert any("event loop blocked" in r for r in watch.reports())
            for _ in range(100):  # the sync job's thread has ended: its report goes
                if not any("past its" in r for r in watch.reports()):
                    break
                await asyncio.sleep(0.05)
            assert not any("past its" in r for r in watch.reports())
            server.stop()
            await run
        kinds = [k for k, _ in calls]
        assert kinds.count("timeout") == 1 and kinds.count("loop_blocked") == 1, calls
        texts = [r.getMessage() for r in caplog.records if r.name == "conveyor.stuck"]
        assert len(texts) == 2
        assert any("sleepy_sync_handler" in t for t in texts if "timeout" in t)
        assert any("loop_blocking_handler" in t for t in texts if "blocked" in t)
    finally:
        await app.aclose()
