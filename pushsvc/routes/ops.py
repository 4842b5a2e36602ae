"""Health, readiness and metrics."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response

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
    rt = runtime()
    lines = [
        "# TYPE pushsvc_open_streams gauge",
        f"pushsvc_open_streams {rt.hub.stream_count}",
        "# TYPE pushsvc_subscribed_channels gauge",
        f"pushsvc_subscribed_channels {rt.hub.channel_count}",
    ]
    reconnects = getattr(rt.broker, "reconnects", 0)
    lines += ["# TYPE pushsvc_redis_reconnects_total counter", f"pushsvc_redis_reconnects_total {reconnects}"]
    for name, value in rt.metrics.snapshot().items():
        lines += [f"# TYPE pushsvc_{name}_total counter", f"pushsvc_{name}_total {value}"]
    return Response("\n".join(lines) + "\n", 200, {"Content-Type": "text/plain; version=0.0.4"})
