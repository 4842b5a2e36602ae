"""Publisher credentials (static bearer tokens, compared in constant time)."""

from __future__ import annotations

import hmac

from .config import Settings
from .errors import ApiError


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_publisher(settings: Settings, authorization: str | None) -> None:
    """Raise 401/403 unless the request may publish."""
    if settings.allow_anonymous_publish:
        return
    if not settings.publish_tokens:
        raise ApiError(
            "publishing_disabled",
            "no publish credentials are configured: set PUSHSVC_PUBLISH_TOKENS (or, for "
            "development only, PUSHSVC_ALLOW_ANONYMOUS_PUBLISH=true)",
            403,
        )
    token = bearer_token(authorization)
    if token is None:
        raise ApiError(
            "unauthorized", "send 'Authorization: Bearer <token>' with a publish token", 401,
            {"WWW-Authenticate": 'Bearer realm="pushsvc"'},
        )
    supplied = token.encode("utf-8", "surrogateescape")
    matched = False
    for candidate in settings.publish_tokens:
        matched |= hmac.compare_digest(supplied, candidate.encode("utf-8"))
    if not matched:
        raise ApiError(
            "unauthorized", "the publish token is not valid", 401,
            {"WWW-Authenticate": 'Bearer realm="pushsvc", error="invalid_token"'},
        )
