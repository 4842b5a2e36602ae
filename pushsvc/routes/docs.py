"""GET /openapi.json: the OpenAPI 3 description of the HTTP API (a file in the package,
checked against the routes by tests/unit/test_openapi.py)."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from quart import Blueprint, Response

bp = Blueprint("docs", __name__)


@cache
def openapi_bytes() -> bytes:
    return files("pushsvc").joinpath("openapi.json").read_bytes()


@bp.get("/openapi.json")
async def openapi() -> Response:
    return Response(openapi_bytes(), 200, {"Content-Type": "application/json"})
