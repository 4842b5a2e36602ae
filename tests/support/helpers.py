"""Small helpers shared by tests."""

from __future__ import annotations

import json
from typing import Any

import httpx

from .procs import Service

TOKEN = "test-publish-token"


async def publish(http: httpx.AsyncClient, service: Service, body: Any,
                  token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await http.post(service.base + "/publish", json=body, headers=headers)


async def metric(http: httpx.AsyncClient, service: Service, name: str) -> float:
    text = (await http.get(service.base + "/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(name)


def flask_sse_message(data: Any, type_: str | None = None) -> str:
    """The exact JSON flask-sse's `sse.publish(data, type=...)` PUBLISHes."""
    return json.dumps({"data": data, "type": type_, "id": None, "retry": None})
