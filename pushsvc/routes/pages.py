"""GET /: the demo page of the original flask-sse write-up; GET /pushsvc.js: the browser
client (`pushsvc/static/pushsvc.js`, package data)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from quart import Blueprint, Response, render_template, request

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


@cache
def client_script() -> bytes:
    return files("pushsvc").joinpath("static/pushsvc.js").read_bytes()


@bp.get("/pushsvc.js")
async def pushsvc_js() -> Response:
    return Response(client_script(), 200, {"Content-Type": "text/javascript; charset=utf-8",
                                           "Cache-Control": "public, max-age=300"})
