"""Run pushsvc under Hypercorn with a clean drain on SIGTERM.

Hypercorn runs the app's shutdown hooks only after it has waited for (and then cancelled)
open connections, which is too late for streams.  So `pushsvc serve` runs Hypercorn from
code with a shutdown trigger that first asks every stream to end (a jittered ``retry:``,
then the response completes), waits until they have or ``PUSHSVC_DRAIN_SECONDS`` passed,
and only then lets Hypercorn stop.  It also makes the listening socket itself, to set
``TCP_USER_TIMEOUT`` (inherited by accepted sockets) so that a peer which stops reading
is cut by the kernel, and hands it to Hypercorn as ``fd://``.  With ``--workers N`` a
small supervisor starts N worker processes on that socket and forwards signals to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from multiprocessing.connection import wait as wait_for_sentinels
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

from . import gcpolicy, serverconfig
from .config import ConfigError, Settings
from .hypercorn_logger import RedactingLogger
from .logs import configure as configure_logging

log = logging.getLogger("pushsvc.server")

DEFAULT_BIND = "127.0.0.1:8000"
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class ListenError(ConfigError):
    """The listening socket could not be made: names the address and what to do."""

    def __init__(self, host: str, port: int, error: OSError) -> None:
        self.address, self.errno = f"{host}:{port}", error.errno
        if isinstance(error, socket.gaierror):
            hint = f"{host!r} is not a known host name or IP address; use an address of this machine"
        elif error.errno == errno.EADDRINUSE:
            hint = "the port is in use (another pushsvc still running?); stop that process or choose another --bind"
        elif error.errno == errno.EACCES:
            hint = "permission denied (ports below 1024 need privileges); choose a port above 1023"
        elif error.errno == errno.EADDRNOTAVAIL:
            hint = f"{host} is not an address of this machine; use 127.0.0.1, 0.0.0.0 or one of its own"
        else:
            hint = error.strerror or str(error)
        super().__init__(f"cannot listen on {self.address}: {hint}")


def parse_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--bind {bind!r} must be HOST:PORT, e.g. 127.0.0.1:8000 or 0.0.0.0:8000")
    return host.strip("[]") or "0.0.0.0", int(port)


def listen_socket(
    host: str, port: int, tcp_user_timeout_ms: int, backlog: int, send_buffer_bytes: int = 0
) -> socket.socket:
    """The listening socket; accepted sockets inherit its TCP_USER_TIMEOUT and SO_SNDBUF."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tcp_user_timeout_ms and hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, tcp_user_timeout_ms)
    if send_buffer_bytes:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer_bytes)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        raise ListenError(host, port, exc) from None
    sock.set_inheritable(True)
    return sock


def hypercorn_config(path: str | None) -> Config:
    """`--config PATH`, else ./hypercorn.toml, else the packaged defaults (see serverconfig)."""
    return serverconfig.load(serverconfig.locate(path))


def tune_gc() -> None:
    """The garbage-collection policy of a served process (why: `pushsvc.gcpolicy`)."""
    gcpolicy.install()


def asgi_app(app: Any) -> Any:
    """What Hypercorn serves: the app's ASGI chain (`create_app` mounted the request-context
    wrapper and the fast door), without the `Quart.__call__` frame above it -- one coroutine
    less under every request; plain `hypercorn` serves the app itself, the same chain."""
    from .asgi import RequestContext

    wrapper = app.asgi_app
    return wrapper if isinstance(wrapper, RequestContext) else app


def _new_loop_runner() -> Any:
    try:
        import uvloop

        return uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run


def run_worker(
    settings: Settings, config_path: str | None, sock: socket.socket, armed: Any = None
) -> None:
    """One worker process: serve the app on `sock` until SIGTERM/SIGINT, then drain.

    A stop signal that arrives while the worker is still starting is noted and honoured
    as soon as serving starts; `armed` (a multiprocessing Event) tells the supervisor
    that from now on it may forward signals here.
    """
    early: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda received, _frame: early.append(received))
    if armed is not None:
        armed.set()
    from .app import create_app

    configure_logging(settings.log_format, settings.log_level)
    config = hypercorn_config(config_path)
    config.bind = [f"fd://{sock.fileno()}"]
    config.workers = 1
    config.logger_class = RedactingLogger  # no ?token= (nor credentials headers) in the access log
    app = create_app(settings)
    hub = app.extensions["pushsvc"].hub
    tune_gc()
    if config.graceful_timeout <= settings.drain_seconds:
        log.warning("graceful_timeout should exceed PUSHSVC_DRAIN_SECONDS")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        if early:
            stop.set()

        async def shutdown_trigger() -> None:
            await stop.wait()
            open_streams = hub.stream_count
            started = loop.time()
            left = await hub.drain(settings.drain_seconds)
            log.info(
                "drained streams for shutdown",
                extra={"streams": open_streams, "left": left,
                       "seconds": round(loop.time() - started, 3)},
            )

        await hypercorn_serve(asgi_app(app), config, shutdown_trigger=shutdown_trigger)

    try:
        _new_loop_runner()(main())
    finally:
        for handler in logging.getLogger("pushsvc").handlers:
            handler.flush()  # the access lines still held (`logs.LineHandler`)


def serve(settings: Settings, bind: str, workers: int, config_path: str | None) -> int:
    if workers > 1 and not settings.uses_redis:
        raise ConfigError(
            "--workers > 1 needs PUSHSVC_REDIS_URL: the embedded broker cannot carry events "
            "between processes"
        )
    host, port = parse_bind(bind)
    source = serverconfig.locate(config_path)
    config = serverconfig.load(source)
    sock = listen_socket(host, port, settings.tcp_user_timeout_ms, config.backlog, settings.send_buffer_bytes)
    log.info("hypercorn configuration", extra={"config": source.path, "from": source.origin})
    log.info("listening", extra={"bind": f"{host}:{sock.getsockname()[1]}", "workers": workers,
                                 "backlog": config.backlog})
    if workers <= 1:
        run_worker(settings, config_path, sock)
        return 0
    if settings.metrics_dir is not None:
        return _supervise(settings, config_path, sock, workers)
    # Each worker writes its counters here; any worker's /metrics sums them (see exporter.py).
    metrics_dir = tempfile.mkdtemp(prefix="pushsvc-metrics-")
    try:
        settings = dataclasses.replace(settings, metrics_dir=metrics_dir)
        return _supervise(settings, config_path, sock, workers)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


#: A worker that exits within this many seconds of its start counts as a fast crash.
FAST_CRASH_SECONDS = 10.0
#: After this many fast crashes in a row of one worker slot, the supervisor gives up.
MAX_FAST_CRASHES = 5
#: Restart delays: 0.5 s, doubling per fast crash in a row, at most this many seconds.
MAX_RESTART_DELAY_SECONDS = 30.0


class RestartPolicy:
    """When to restart a worker slot after its worker exited, and when to give up.

    A worker that ran longer than `FAST_CRASH_SECONDS` is restarted at once (a crash after
    hours of service is not a crash loop); one that exited sooner counts as a fast crash:
    the next start is delayed exponentially (0.5 s, 1 s, 2 s, ...), and after
    `MAX_FAST_CRASHES` in a row the supervisor gives up, so a broken deploy exits non-zero
    instead of restarting a crashing worker forever.
    """

    def __init__(self) -> None:
        self.fast_crashes = 0

    def on_exit(self, ran_seconds: float) -> float | None:
        """The delay before the next start, or None to give up."""
        if ran_seconds >= FAST_CRASH_SECONDS:
            self.fast_crashes = 0
            return 0.0
        self.fast_crashes += 1
        if self.fast_crashes >= MAX_FAST_CRASHES:
            return None
        return float(min(MAX_RESTART_DELAY_SECONDS, 0.5 * 2.0 ** (self.fast_crashes - 1)))


class _Slot:
    """One worker slot: its current process, whether it is armed, and its restart state."""

    __slots__ = ("armed", "policy", "process", "restart_at", "started_at")

    def __init__(self, process: Any, armed: Any) -> None:
        self.process = process
        self.armed = armed
        self.started_at = time.monotonic()
        self.restart_at: float | None = None
        self.policy = RestartPolicy()


class _Supervisor:
    """Start `workers` processes on `sock`, restart any that dies (with backoff, see
    `RestartPolicy`), forward stop signals.

    A signal is forwarded to a worker only once it is armed (its own handler installed):
    before that, the default action would kill it uncleanly.
    """

    def __init__(self, settings: Settings, config_path: str | None, sock: socket.socket) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.args = (settings, config_path, sock)
        self.slots: list[_Slot] = []
        self.stop_signal: int | None = None
        self.gave_up = False
        self.signalled: set[int] = set()

    def _start(self) -> tuple[Any, Any]:
        ready = self.ctx.Event()
        process = self.ctx.Process(target=run_worker, args=(*self.args, ready), daemon=False)
        process.start()
        return process, ready

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.stop_signal = signum

    def run(self, workers: int) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for _ in range(workers):
            if self.stop_signal is None:
                self.slots.append(_Slot(*self._start()))
        log.info("workers started", extra={"workers": len(self.slots)})
        while self._wait():
            if self.stop_signal is None:
                self._restart_or_give_up(time.monotonic())
        return self._exit_status()

    def _wait(self) -> bool:
        """Forward a stop signal, wait for a worker to exit or a restart to fall due; False
        once there is nothing left to wait for."""
        if self.stop_signal is not None:
            self._forward(self.stop_signal)
        alive = [slot.process for slot in self.slots if slot.process.is_alive()]
        waiting = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        if not alive and (self.stop_signal is not None or not waiting):
            return False
        timeout = 0.05 if self.stop_signal else 1.0
        if waiting and self.stop_signal is None:
            timeout = max(0.0, min(timeout, min(waiting) - time.monotonic()))
        wait_for_sentinels([process.sentinel for process in alive], timeout=timeout)
        return True

    def _forward(self, signum: int) -> None:
        for slot in self.slots:
            process = slot.process
            if process.pid not in self.signalled and process.is_alive() and slot.armed.is_set():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signum)
                self.signalled.add(process.pid)

    def _restart_or_give_up(self, now: float) -> None:
        for slot in self.slots:
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    slot.process, slot.armed = self._start()
                    slot.started_at, slot.restart_at = now, None
                continue
            if slot.process.is_alive():
                continue
            delay = slot.policy.on_exit(now - slot.started_at)
            if delay is None:
                log.error(
                    "worker keeps crashing at start-up; giving up",
                    extra={"exitcode": slot.process.exitcode, "crashes": MAX_FAST_CRASHES,
                           "within_seconds": FAST_CRASH_SECONDS},
                )
                self.gave_up = True
                self.stop_signal = signal.SIGTERM
                return
            log.warning("worker exited, restarting",
                        extra={"exitcode": slot.process.exitcode, "delay_seconds": delay})
            slot.restart_at = now + delay

    def _exit_status(self) -> int:
        codes = [slot.process.exitcode or 0 for slot in self.slots]
        for slot, code in zip(self.slots, codes, strict=True):
            if code and not self.gave_up:
                log.warning("worker exited with an error", extra={"pid": slot.process.pid, "exitcode": code})
        return 1 if self.gave_up or any(code != 0 for code in codes) else 0


def _supervise(settings: Settings, config_path: str | None, sock: socket.socket, workers: int) -> int:
    """Run `workers` worker processes on `sock` under a `_Supervisor` until they have all exited."""
    return _Supervisor(settings, config_path, sock).run(workers)
