"""`from_url` reads one scheme table; other packages add stores through entry points."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from conveyor.backends import from_url
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.registry import SCHEMES, schemes
from conveyor.errors import ConfigError


def test_every_shipped_scheme_builds_its_store(tmp_path: Path) -> None:
    assert {"memory", "sqlite", "redis", "rediss", "redis+cluster"} <= set(SCHEMES)
    assert isinstance(from_url("memory://"), MemoryBackend)
    assert type(from_url(f"sqlite:///{tmp_path}/x.db")).__name__ == "SQLiteBackend"


def test_an_unknown_scheme_lists_the_known_ones_and_hides_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        from_url("postgres://user:s3cret@db/jobs")
    message = str(info.value)
    assert "unknown backend scheme 'postgres'" in message
    assert "sqlite" in message and "redis" in message and "s3cret" not in message


def test_a_plugin_store_is_found_by_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real (if tiny) installed distribution: a module and its dist-info on sys.path.
    (tmp_path / "toy_store.py").write_text(
        "from conveyor.backends.memory import MemoryBackend\n"
        "def from_url(url, clock=None):\n"
        "    backend = MemoryBackend(clock=clock)\n"
        "    backend.url = url\n"
        "    return backend\n"
    )
    info = tmp_path / "toy_store-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-store\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[conveyor.backends]\ntoy = toy_store:from_url\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        assert "toy" in schemes()
        store = from_url("toy://anything")
        assert isinstance(store, MemoryBackend) and store.url == "toy://anything"  # type: ignore[attr-defined]
    finally:
        sys.modules.pop("toy_store", None)
