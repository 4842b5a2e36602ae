"""GET /admin and its data endpoints: live channels with subscriber counts across every
process, event counters (the page turns them into events/s), the last events of a channel,
and the effective settings with secrets hidden.

The page itself holds no data.  Every ``/admin/api/*`` answer needs an admin credential:
a static publish token (``PUSHSVC_PUBLISH_TOKENS``) or a publisher JWT allowed to publish
to ``*`` -- even when ``PUSHSVC_ALLOW_ANONYMOUS_PUBLISH`` lets anyone publish, the admin
data stays behind a real credential.  ``401`` without or with a bad credential, ``403``
for a JWT scoped to fewer channels.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

from quart import Blueprint, Response, current_app, render_template, request

from ..auth import Authority, authority
from ..broker import BrokerUnavailable
from ..clierrors import redact_url
from ..config import Settings, env_name
from ..errors import ApiError
from ..events import EventError, check_channel, loads
from ..exporter import Exporter, local_snapshot, merge
from ..runtime import Runtime, runtime

bp = Blueprint("admin", __name__)

#: Most channels listed (and counted) in one overview; the rest is flagged `truncated`.
MAX_CHANNELS = 100
#: Concurrent cross-process subscriber counts while building the overview.
COUNT_CONCURRENCY = 10
MAX_TAIL = 100
DEFAULT_TAIL = 20
HIDDEN = "[hidden]"
PAGE_HEADERS = {"Cache-Control": "no-store", "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}


def _admin_authority() -> Authority:
    """The app's Authority, but never one that lets anonymous publishers in."""
    auth = authority()
    if not auth.settings.allow_anonymous_publish:
        return auth
    strict: Authority | None = current_app.extensions.get("pushsvc.admin_auth")
    if strict is None:
        strict = Authority(dataclasses.replace(auth.settings, allow_anonymous_publish=False))
        current_app.extensions["pushsvc.admin_auth"] = strict
    return strict


def require_admin() -> None:
    """ApiError 401/403 unless the request carries an admin credential."""
    scope = _admin_authority().authenticate_publisher(request.headers.get("Authorization"))
    if scope.patterns is not None and "*" not in scope.patterns:
        raise ApiError("forbidden", "the admin API needs a static publish token or a JWT allowed to "
                       "publish to '*'", 403)


def _unavailable(exc: Exception) -> ApiError:
    return ApiError("broker_unavailable", f"not available now: {exc}", 503, {"Retry-After": "1"})


async def live_channels(rt: Runtime) -> list[str]:
    """Channels some pushsvc process listens to: Redis knows every process's subscriptions
    (PUBSUB CHANNELS); the embedded broker has only this process."""
    client = getattr(rt.broker, "client", None)
    if client is None or not hasattr(client, "pubsub_channels"):
        return sorted(rt.hub.channel_names())
    async with asyncio.timeout(rt.settings.redis_timeout_seconds):
        names = await client.pubsub_channels()
    texts = (n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)
    return sorted(n for n in texts if not n.startswith("pushsvc:"))


async def channel_counts(rt: Runtime, names: list[str]) -> list[dict[str, Any]]:
    limit = asyncio.Semaphore(COUNT_CONCURRENCY)

    async def count(name: str) -> dict[str, Any]:
        async with limit:
            total = await rt.broker.count_subscribers(name, rt.hub.local_subscribers(name))
        return {"channel": name, "subscribers": total}

    counted = await asyncio.gather(*(count(name) for name in names))
    return [entry for entry in counted if entry["subscribers"] > 0]


def effective_settings(settings: Settings) -> list[dict[str, Any]]:
    """Every setting with its value; secrets (and a Redis URL's password) hidden."""
    rows = []
    for f in dataclasses.fields(settings):
        value: Any = getattr(settings, f.name)
        if not f.repr:  # pushsvc.config marks secrets repr=False
            value = None if value in (None, ()) else HIDDEN
        elif f.name == "redis_url" and value:
            value = redact_url(value)
        elif isinstance(value, tuple):
            value = ",".join(value)
        rows.append({"name": env_name(f.name), "value": value, "secret": not f.repr})
    return rows


@bp.get("/admin")
async def admin_page() -> Response:
    html = await render_template("admin.html")
    return Response(html, 200, {"Content-Type": "text/html; charset=utf-8", **PAGE_HEADERS})


@bp.get("/admin/api/overview")
async def overview() -> dict[str, Any]:
    require_admin()
    rt = runtime()
    try:
        names = await live_channels(rt)
        truncated = len(names) > MAX_CHANNELS
        channels = await channel_counts(rt, names[:MAX_CHANNELS])
    except (BrokerUnavailable, TimeoutError, OSError) as exc:
        raise _unavailable(exc) from None
    except Exception as exc:  # redis-py's errors, without importing redis for the embedded broker
        if type(exc).__module__.startswith("redis"):
            raise _unavailable(exc) from None
        raise
    exporter: Exporter = current_app.extensions["pushsvc.exporter"]
    others = list(exporter.snapshots.others()) if exporter.snapshots is not None else []
    values = merge(local_snapshot(rt), others)
    counters = values["counters"]
    return {
        "time": time.time(),
        "workers": values["workers"],
        "open_streams": values["gauges"].get("open_streams", 0),
        "events_published": counters.get("events_published", 0),
        "events_delivered": counters.get("events_delivered", 0),
        "channels": channels,
        "truncated": truncated,
    }


@bp.get("/admin/api/tail")
async def tail() -> dict[str, Any]:
    require_admin()
    rt = runtime()
    try:
        channel = check_channel(request.args.get("channel", ""))
    except EventError as exc:
        raise ApiError(exc.code, exc.detail) from None
    raw_limit = request.args.get("limit", str(DEFAULT_TAIL))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_TAIL:
        raise ApiError("invalid_limit", f"limit must be an integer from 1 to {MAX_TAIL}")
    limit = int(raw_limit)
    try:
        position = await rt.broker.position(channel)
        history = await rt.broker.history(channel, max(0, position.seq - limit))
    except BrokerUnavailable as exc:
        raise _unavailable(exc) from None
    events = []
    for seq, payload in history.entries[-limit:]:
        try:
            message = loads(payload)
        except ValueError:
            continue
        if isinstance(message, dict):
            events.append({"id": f"{history.epoch}-{seq}", "seq": seq, "type": message.get("type") or "message",
                           "data": message.get("data")})
    return {"channel": channel, "last_seq": history.last_seq, "events": events[::-1]}  # newest first


@bp.get("/admin/api/settings")
async def settings() -> dict[str, Any]:
    require_admin()
    return {"settings": effective_settings(runtime().settings)}
