"""RedisServer: a throwaway real redis-server on a free loopback port, for tests and benches.

Example:
    with RedisServer() as server:
        client = redis.asyncio.Redis.from_url(server.url)
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["RedisServer", "RedisServerError"]


class RedisServerError(RuntimeError):
    """redis-server is missing, or did not start and answer PING in time."""


class RedisServer:
    """Starts `redis-server` without persistence in a temporary directory; stops it on exit.

    Args:
        extra_args: more configuration, as command-line arguments (``["--maxmemory", "64mb"]``).
        executable: the server binary; found on PATH by default.
        startup_timeout: seconds to wait for the server to answer PING.

    Raises:
        RedisServerError: the binary is missing, or the server did not come up.

    Example:
        with RedisServer(["--maxmemory-policy", "allkeys-lru"]) as server:
            print(server.url)        # redis://127.0.0.1:<port>/0
    """

    def __init__(
        self,
        extra_args: Sequence[str] = (),
        *,
        executable: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        found = executable or shutil.which("redis-server")
        if found is None:
            raise RedisServerError("redis-server is not on PATH (apt-get install redis-server)")
        self._executable = found
        self._extra = list(extra_args)
        self._timeout = startup_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self.port = 0

    @staticmethod
    def available() -> bool:
        """Whether a redis-server binary is on PATH."""
        return shutil.which("redis-server") is not None

    @property
    def url(self) -> str:
        """The server's redis:// URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        # Picking a free port then binding it later can race with another process; retry.
        last_error = ""
        for _ in range(3):
            self._dir = Path(tempfile.mkdtemp(prefix="conveyor-redis-"))
            self.port = _free_port()
            args = [
                self._executable,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self._dir),
                *self._extra,
            ]  # fmt: skip
            # Log to a file, not a pipe: a pipe nobody reads would block a chatty server.
            with open(self._dir / "redis.log", "wb") as log:
                self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready():
                return
            last_error = self._output()
            self.stop()
        raise RedisServerError(f"redis-server did not start: {last_error.strip()[-500:]}")

    def stop(self) -> None:
        """Stop the server and remove its directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            if _ping(self.port):
                return True
            time.sleep(0.02)
        return False

    def _output(self) -> str:
        if self._dir is None:
            return ""
        log = self._dir / "redis.log"
        return log.read_text(errors="replace") if log.exists() else ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False
