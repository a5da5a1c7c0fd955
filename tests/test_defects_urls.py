"""A store URL's password never reaches a repr, an error message or the terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import conveyor
from conveyor.backends import from_url
from conveyor.backends.redis.connect import parse_url
from conveyor.errors import ConfigError
from conveyor.urls import mask

SECRET = "s3cret"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://alice:s3cret@cache:6379/0", "redis://alice:***@cache:6379/0"),
        ("redis://:s3cret@cache/0", "redis://***@cache/0"),
        ("redis://s3cret@cache/0", "redis://***@cache/0"),  # a lone name may be a password
        ("rediss://alice:s3/cr?et@cache:6380/2", "rediss://alice:***@cache:6380/2"),
        ("redis://alice:s3cret@cache/0?prefix=p&password=s3cret", None),
        (
            "redis://cache/0?ssl_password=s3cret&prefix=p",
            "redis://cache/0?ssl_password=***&prefix=p",
        ),
        ("alice:s3cret@cache", "alice:***@cache"),  # no scheme at all
        ("redis://cache:6379/0?prefix=myapp", "redis://cache:6379/0?prefix=myapp"),
        ("sqlite:///home/a@b/jobs.db", "sqlite:///home/a@b/jobs.db"),  # no authority
        ("memory://", "memory://"),
        ("", ""),
    ],
)
def test_mask_hides_the_password_and_keeps_the_rest(url: str, shown: str | None) -> None:
    masked = mask(url)
    assert SECRET not in masked
    if shown is not None:
        assert masked == shown


def test_app_repr_masks_the_password() -> None:
    app = conveyor.App("redis://alice:s3cret@127.0.0.1:1/0?prefix=t")
    assert repr(app) == "<conveyor.App redis://alice:***@127.0.0.1:1/0?prefix=t tasks=0>"
    assert SECRET not in repr(app.backend)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redsi://alice:s3cret@h/0", "unknown backend scheme 'redsi'"),
        ("alice:s3cret@h", "has no scheme"),
        ("redis://alice:s3cret@h/0?socket_timeout=soon", "must be a number of seconds"),
        ("redis://alice:s3cret@h/0?socket_timeout=-1", "must be a finite number > 0"),
        ("redis+cluster://alice:s3cret@h:7000/3", "only database 0"),
        ("redis://alice:s3cret@h/0?prefix=b!d", "invalid Redis key prefix 'b!d'"),
        ("redis://alice:s3cret@[::1/0", "invalid Redis URL"),
    ],
)
def test_config_errors_about_a_url_mask_it(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        from_url(url)
    assert SECRET not in str(info.value)
    assert "alice:***@" in str(info.value)


def test_parse_url_errors_mask_the_url() -> None:
    with pytest.raises(ConfigError) as info:
        parse_url("http://alice:s3cret@h/0")
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "redsi://alice:s3cret@h/0",
        "redis://alice:s3cret@h/0?socket_timeout=x",
        "redis://alice:s3cret@127.0.0.1:1/0",  # nothing listens: a connection error
    ],
)
def test_cli_url_errors_mask_the_password(tmp_path: Path, url: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "conveyor", "--url", url, "inspect", "stats"],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: ")
    assert "Traceback" not in out.stderr
    assert SECRET not in out.stdout + out.stderr
    assert "alice:***@" in out.stderr
