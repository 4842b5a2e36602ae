"""Real processes for tests: a redis-server on a free loopback port, pushsvc services."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Any, timeout: float, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI=true but is not installed")
        pytest.skip(f"{name} not installed")
    return path


class RedisServer:
    """A private redis-server the tests can kill, pause (SIGSTOP) and restart."""

    def __init__(self, persist: bool = False) -> None:
        self.persist = persist  # AOF with fsync always: data survives kill + restart
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="pushsvc-redis-")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes" if self.persist else "no", "--appendfsync", "always",
             "--dir", self.dir, "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, 10, what="redis-server to answer")

    def _pings(self) -> bool:
        try:
            with redis.Redis(port=self.port, socket_timeout=0.5) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def restart(self) -> None:
        self.kill()
        self.start()

    def stop(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class Service:
    """A pushsvc process (`pushsvc serve`, or plain `hypercorn` with hypercorn.toml)."""

    def __init__(self, env: dict[str, str] | None = None, mode: str = "serve",
                 workers: int = 1, port: int | None = None, config: Path | None = None) -> None:
        self.port = port or free_port()
        self.config = config or ROOT / "hypercorn.toml"
        self.mode = mode
        self.workers = workers
        self.env = {**os.environ, "PUSHSVC_LOG_LEVEL": "INFO", **(env or {})}
        self.env.pop("PUSHSVC_REDIS_URL", None) if "PUSHSVC_REDIS_URL" not in (env or {}) else None
        self.log_path = Path(tempfile.mkstemp(prefix="pushsvc-log-", suffix=".txt")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.mode == "hypercorn":
            return [sys.executable, "-m", "hypercorn", "--config", str(self.config), "--workers", str(self.workers),
                    "--bind", f"127.0.0.1:{self.port}", "pushsvc.app:create_app()"]
        return [sys.executable, "-m", "pushsvc.cli", "serve", "--bind", f"127.0.0.1:{self.port}",
                "--workers", str(self.workers), "--config", str(self.config)]

    def start(self, ready: str = "/healthz", log_line: str | None = None) -> Service:
        """Start; wait until `ready` answers 200 (or, with `log_line`, until the log shows it)."""
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if log_line is not None:
            wait_until(lambda: log_line in self.log(), 20, what=f"{log_line!r} in the log")
        else:
            wait_until(lambda: self._answers(ready), 20, what=f"pushsvc on {self.port}")
        return self

    def _answers(self, path: str) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"pushsvc exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(self.base + path, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        code = self.proc.returncode
        self.proc = None
        return code
