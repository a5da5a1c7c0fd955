"""Redis servers a test owns: on a fixed port and directory, so they can be SIGKILLed,
started again (with their data, given AOF), paused with SIGSTOP and resumed."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis


class ServerDied(RuntimeError):
    """redis-server exited (or never answered) while starting."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """A redis-server on a fixed loopback port and dir: kill it, start it again on the same
    port, pause it (SIGSTOP) and resume it. `tls` puts TLS on that port (plain port off)."""

    def __init__(self, root: Path, extra: Sequence[str] = (), *, tls: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.extra = list(extra)
        self.tls = tls
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        path = self.root / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> None:
        """Start on `port` (a free one the first time, retried if someone else took it)."""
        fixed = self.port != 0
        for _ in range(1 if fixed else 3):
            if not fixed:
                self.port = _free_port()
            try:
                self._spawn()
                return
            except ServerDied:
                if fixed or "Address already in use" not in self.log:
                    raise
        raise ServerDied(self.log[-2000:])

    def _spawn(self) -> None:
        if self.tls:
            ports = ["--port", "0", "--tls-port", str(self.port)]
        else:
            ports = ["--port", str(self.port)]
        argv = [
            "redis-server", *ports, "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.root), *self.extra,
        ]  # fmt: skip
        with open(self.root / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise ServerDied(self.log[-2000:])
            time.sleep(0.01)

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                if self.tls:
                    return True  # listening: TLS setup is done before the port opens
                sock.sendall(b"PING\r\n")
                reply = sock.recv(64)
                return reply.startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGCONT)  # a stopped process would ignore SIGTERM
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def info(self, section: str) -> dict[str, Any]:
        client = redis.Redis(host="127.0.0.1", port=self.port)
        try:
            result: dict[str, Any] = client.info(section)
            return result
        finally:
            client.close()
