"""werkzeug's HTTP errors (404, 405, 408, 413 ...) as pushsvc's `ApiError`; `ApiError` itself
and its renderer live in the framework-free `pushsvc.core.errors` (re-exported here)."""

from __future__ import annotations

from werkzeug.exceptions import HTTPException

from .core.errors import INTERNAL_ERROR_CODE, INTERNAL_ERROR_DETAIL, ApiError, internal_error

__all__ = ["INTERNAL_ERROR_CODE", "INTERNAL_ERROR_DETAIL", "ApiError", "from_http_exception", "internal_error"]


def from_http_exception(error: HTTPException) -> ApiError:
    """A werkzeug/Quart HTTP error (404, 405, 408, 413 ...) as the ApiError it is answered as."""
    code = (error.name or "error").lower().replace(" ", "_")
    headers: dict[str, str] = {}
    valid_methods = getattr(error, "valid_methods", None)
    if error.code == 405 and valid_methods:
        headers["Allow"] = ", ".join(valid_methods)
    return ApiError(code, error.description or error.name, error.code or 500, headers)
