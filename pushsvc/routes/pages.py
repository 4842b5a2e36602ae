"""GET /: the demo page of the original flask-sse write-up."""

from __future__ import annotations

from quart import Blueprint, render_template, request

from ..events import DEFAULT_CHANNEL, EventError, check_channel

bp = Blueprint("pages", __name__)


@bp.get("/")
async def index() -> str:
    channel = request.args.get("channel", DEFAULT_CHANNEL)
    try:
        check_channel(channel)
    except EventError:
        channel = DEFAULT_CHANNEL
    return await render_template("index.html", channel=channel)
