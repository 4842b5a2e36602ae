"""HTTP errors as small named exceptions, turned into JSON answers in one place: `app.py`'s
error handlers (and `fastpath.py`, which answers ``POST /publish`` without Quart) render
them as ``{"error", "detail"}`` with their status and extra headers."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException


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


def from_http_exception(error: HTTPException) -> ApiError:
    """A werkzeug/Quart HTTP error (404, 405, 408, 413 ...) as the ApiError it is answered as."""
    code = (error.name or "error").lower().replace(" ", "_")
    headers: dict[str, str] = {}
    valid_methods = getattr(error, "valid_methods", None)
    if error.code == 405 and valid_methods:
        headers["Allow"] = ", ".join(valid_methods)
    return ApiError(code, error.description or error.name, error.code or 500, headers)


def internal_error() -> ApiError:
    return ApiError(INTERNAL_ERROR_CODE, INTERNAL_ERROR_DETAIL, 500)
