"""Health, readiness and metrics."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response, current_app

from ..exporter import CONTENT_TYPE, Exporter
from ..runtime import runtime

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
async def healthz() -> dict[str, Any]:
    return {"status": "ok"}


@bp.get("/readyz")
async def readyz() -> tuple[dict[str, Any], int]:
    rt = runtime()
    ready, reason = rt.broker.status()
    if rt.hub.draining:
        ready, reason = False, "draining for shutdown"
    body = {"status": "ready" if ready else "unavailable", "broker": rt.broker.name, "detail": reason}
    if not ready:
        body["error"] = "not_ready"
    return body, 200 if ready else 503


@bp.get("/metrics")
async def metrics() -> Response:
    exporter: Exporter = current_app.extensions["pushsvc.exporter"]
    return Response(exporter.render(), 200, {"Content-Type": CONTENT_TYPE})
