"""Turning stored bytes and times into text for the pages: payloads, results and checkpoints
as JSON when they decode, times as UTC and ages."""

from __future__ import annotations

import datetime as dt
import json

import msgspec

__all__ = ["ago", "as_json", "when"]


def as_json(data: bytes | None) -> str:
    """`data` (JSON or msgpack) as indented JSON text; else a note with its size."""
    if data is None:
        return ""
    value: object
    try:
        value = msgspec.json.decode(data)
    except msgspec.DecodeError:
        try:
            value = msgspec.msgpack.decode(data)
        except msgspec.DecodeError:
            return f"({len(data)} bytes, not JSON or msgpack)"
    try:
        return json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    except (TypeError, ValueError):
        return repr(value)


def when(epoch: float | None) -> str:
    """An epoch time as ``YYYY-MM-DD HH:MM:SS`` UTC ('' for none)."""
    if not epoch:
        return ""
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(seconds: float | None) -> str:
    """A duration as ``3s``, ``5m 2s``, ``2h 10m``, ``4d 1h``."""
    if seconds is None:
        return ""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"
