"""HTTP errors as small named exceptions (`ApiError`), and the one renderer that turns one
into its answer -- status, headers and the JSON ``{"error", "detail"}`` bytes -- for both
doors (the Quart error handlers in `pushsvc.app` and the fast door in `pushsvc.fastpath`)."""

from __future__ import annotations

import json
from typing import Any


class ApiError(Exception):
    status = 400

    def __init__(
        self, code: str, detail: str, status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        if status is not None:
            self.status = status
        self.headers = headers or {}

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


#: What an unexpected exception becomes (after it has been logged).
INTERNAL_ERROR_CODE = "internal_error"
INTERNAL_ERROR_DETAIL = "an unexpected error occurred"

JSON_TYPE = "application/json"


def internal_error() -> ApiError:
    return ApiError(INTERNAL_ERROR_CODE, INTERNAL_ERROR_DETAIL, 500)


_ENCODE = json.JSONEncoder(separators=(",", ":"), sort_keys=True, ensure_ascii=True).encode


def json_bytes(body: Any) -> bytes:
    """A JSON answer's bytes exactly as Quart's default provider renders them outside debug
    mode (compact, sorted keys, ASCII, a final newline), so both doors answer alike."""
    return _ENCODE(body).encode() + b"\n"


def render_error(error: ApiError) -> tuple[int, dict[str, str], bytes]:
    """(status, extra headers, JSON body) of an error answer; its type is `JSON_TYPE`."""
    return error.status, error.headers, json_bytes(error.body())
