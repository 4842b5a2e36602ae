"""`create_app(settings) -> Quart`: wires broker, hub and routes; owns their lifecycle."""

from __future__ import annotations

import fcntl
import logging
import multiprocessing
import os
import tempfile
from pathlib import Path
from typing import Any, cast

from quart import Quart, Response
from werkzeug.exceptions import HTTPException

from . import appauth, cors, gcpolicy
from .asgi import RequestContext
from .auth import Authority
from .broker import create_broker
from .config import Settings
from .core import streams
from .core.errors import JSON_TYPE, render_error
from .errors import ApiError, from_http_exception, internal_error
from .exporter import Exporter
from .fastpath import FastPath
from .h2fix import correct_hypercorn_h2
from .hub import Hub
from .logs import configure as configure_logging
from .metrics import Metrics
from .routes import admin, channels, debug, docs, history, ops, pages, publish, stream
from .runtime import Runtime

log = logging.getLogger("pushsvc.app")


def _templates_dir() -> str:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "templates", here / "templates"):
        if (candidate / "index.html").is_file():
            return str(candidate)
    return str(here / "templates")


class SingleProcessGuard:
    """The embedded broker cannot cross processes: refuse a second worker of one server."""

    def __init__(self) -> None:
        self._file: Any = None

    def acquire(self) -> None:
        parent = multiprocessing.parent_process()
        if parent is None or parent.pid is None:
            return  # not a worker of a multi-process server
        path = Path(tempfile.gettempdir()) / f"pushsvc-embedded-{parent.pid}.lock"
        self._file = open(path, "w")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(
                "the embedded broker (no PUSHSVC_REDIS_URL) works in one process only; "
                "run one worker or set PUSHSVC_REDIS_URL"
            ) from None


def create_app(settings: Settings | None = None) -> Quart:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_format, settings.log_level)
    app = Quart(__name__, template_folder=_templates_dir(), static_folder=None)  # no static files
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    metrics = Metrics()
    broker = create_broker(
        settings.redis_url,
        settings.redis_cluster_nodes,
        history_size=settings.history_size,
        history_ttl_seconds=settings.history_ttl_seconds,
        **({"timeout_seconds": settings.redis_timeout_seconds} if settings.uses_redis else {}),
        **({"refresh_interval_seconds": settings.redis_cluster_refresh_seconds}
           if settings.redis_cluster_nodes else {}),
    )
    hub = Hub(broker, metrics, keepalive_seconds=settings.keepalive_seconds,
              write_timeout_seconds=settings.write_timeout_seconds,
              write_delay_seconds=settings.write_delay_ms / 1000)
    rt = app.extensions["pushsvc"] = Runtime(settings, broker, hub, metrics)
    app.extensions["pushsvc.auth"] = Authority(settings)
    cors.install(app, settings.cors_origins)
    appauth.install(app, settings, metrics, streams.over_capacity_body, streams.STREAM_HEADERS)
    exporter = app.extensions["pushsvc.exporter"] = Exporter(rt)
    guard = SingleProcessGuard()
    # The ASGI chain, whatever serves the app: RequestContext (pure ASGI, never buffers a
    # body: real client address, request ids, access log) -> the fast door -> Quart's own.
    fast_door = app.extensions["pushsvc.fastpath"] = FastPath(cast(Any, app.asgi_app), app)
    app.asgi_app = RequestContext(  # type: ignore[method-assign, assignment]
        fast_door, settings.trusted_proxies
    )
    correct_hypercorn_h2()  # a stalled HTTP/2 peer must not grow the process (pushsvc/h2fix.py)
    # A closed connection freed by reference counting under any server start (plain
    # `hypercorn` too); `pushsvc serve` adds the collector policy (pushsvc/gcpolicy.py).
    gcpolicy.release_closed_connections()

    for blueprint in (stream.bp, publish.bp, ops.bp, pages.bp, channels.bp, docs.bp, history.bp, admin.bp):
        app.register_blueprint(blueprint)
    if settings.debug_gc:
        app.register_blueprint(debug.bp)

    @app.before_serving
    async def start() -> None:
        if settings.redis_cluster_nodes:
            seeds = ",".join(_redact_url(url) for url in settings.redis_cluster_nodes)
            log.info("using redis cluster", extra={"seeds": seeds})
        elif settings.redis_url is None:
            guard.acquire()
            log.info("no PUSHSVC_REDIS_URL: using the embedded in-process broker (one process only)")
        else:
            log.info("using redis", extra={"redis": _redact_url(settings.redis_url)})
        await hub.start()
        await exporter.start()
        log.info("pushsvc started", extra={"pid": os.getpid()})

    @app.after_serving
    async def stop() -> None:
        await hub.drain(0)
        await hub.stop()
        await exporter.stop()
        log.info("pushsvc stopped", extra={"pid": os.getpid()})

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        status, headers, body = render_error(error)
        return Response(body, status, headers, content_type=JSON_TYPE)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        return await api_error(from_http_exception(error))

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.exception("unexpected error")
        return await api_error(internal_error())

    return app


def _redact_url(url: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"
