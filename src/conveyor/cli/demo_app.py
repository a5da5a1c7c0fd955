"""The demo's tasks: a small shop's background work, with realistic failures."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random

import conveyor

app = conveyor.App(os.environ.get("CONVEYOR_DEMO_URL", "sqlite:///conveyor-demo.db"))

quick_retry = conveyor.RetryPolicy(max_attempts=4, base_delay=0.2, max_delay=2.0)


class GatewayDown(ConnectionError):
    """A transient upstream error: retried with backoff."""


@app.task(retry=quick_retry)
async def send_email(to: str, template: str) -> str:
    """Render and send an email; the SMTP relay drops ~3 % of connections."""
    await asyncio.sleep(random.uniform(0.002, 0.015))
    if random.random() < 0.03:
        raise GatewayDown("SMTP relay closed the connection")
    return f"sent {template} to {to}"


@app.task
def resize_image(image_id: int, width: int) -> dict[str, int]:
    """CPU work in a thread: hash the 'pixels' a few hundred times."""
    digest = str(image_id).encode()
    for _ in range(300 + image_id % 300):
        digest = hashlib.sha256(digest).digest()
    return {"image_id": image_id, "width": width, "bytes": 1000 + digest[0] * 37}


@app.task(queue="critical", priority=10, retry=quick_retry)
async def charge_card(order_id: int, cents: int) -> str:
    """Payments jump the line; a bad amount is never retried."""
    if cents <= 0:
        raise conveyor.Fail(f"order {order_id}: amount must be positive, got {cents}")
    await asyncio.sleep(random.uniform(0.003, 0.008))
    return f"charged order {order_id}"


@app.task(queue="low", retry=quick_retry)
async def sync_inventory(sku: str) -> int:
    """A flaky partner API: half the calls for some SKUs time out, and succeed on retry."""
    await asyncio.sleep(random.uniform(0.001, 0.005))
    if sku.endswith("7") and random.random() < 0.5:
        raise TimeoutError(f"partner API timed out for {sku}")
    return len(sku)


@app.task(retry=conveyor.RetryPolicy(max_attempts=3, base_delay=0.1, max_delay=0.5))
async def call_webhook(url: str) -> int:
    """Customer webhooks; a few endpoints are simply gone (these end dead-lettered)."""
    await asyncio.sleep(random.uniform(0.001, 0.01))
    if "gone" in url:
        raise ConnectionRefusedError(f"{url}: connection refused")
    return 200


@app.task(queue="low")
async def build_report(account: int) -> str:
    """Nightly-style report, scheduled a few seconds out."""
    await asyncio.sleep(0.02)
    return f"report for account {account}"
