"""Who may listen and who may publish.

Subscribers: a stream asking for a private channel (``PUSHSVC_PRIVATE_CHANNELS``) needs a
JWT whose ``pushsvc.subscribe`` patterns allow every private channel it asks for, read
from (first present wins) the ``Authorization: Bearer`` header, the cookie
``PUSHSVC_JWT_COOKIE``, or the ``token`` query parameter.  A stream of public channels
only never looks at a token, so a stale cookie cannot break it.

Publishers: a static bearer token (``PUSHSVC_PUBLISH_TOKENS``, compared in constant time,
allowed everything) or a JWT whose ``pushsvc.publish`` patterns must allow every channel
of every event.  Only the ``Authorization`` header counts for publishing: a cookie would
let any page the browser visits publish (CSRF).

`401` for a missing, malformed, expired or badly signed credential, `403` for a valid one
that does not allow the channel.  Nothing here logs a token.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from quart import current_app

from .config import Settings
from .errors import ApiError
from .patterns import matches_any
from .tokens import Grant, TokenError, TokenVerifier

QUERY_PARAMETER = "token"


class _Getter(Protocol):
    def get(self, key: str) -> str | None: ...
_CHALLENGE = 'Bearer realm="pushsvc"'
_CHALLENGE_INVALID = 'Bearer realm="pushsvc", error="invalid_token"'


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _unauthorized(detail: str, invalid: bool = True) -> ApiError:
    return ApiError("unauthorized", detail, 401,
                    {"WWW-Authenticate": _CHALLENGE_INVALID if invalid else _CHALLENGE})


@dataclass(frozen=True, slots=True)
class PublishScope:
    """Channels a publisher may publish to; `patterns is None` means every channel."""

    patterns: tuple[str, ...] | None

    def check(self, channels_per_event: Sequence[Iterable[str]], batch: bool) -> None:
        if self.patterns is None:
            return
        for position, channels in enumerate(channels_per_event):
            for channel in channels:
                if not matches_any(self.patterns, channel):
                    where = f"event {position}: " if batch else ""
                    raise ApiError(
                        "forbidden", f"{where}the token may not publish to channel {channel!r}", 403
                    )


EVERYTHING = PublishScope(None)


class Authority:
    """Settings-bound checks for the routes; built once per app."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.private = settings.private_channels
        self.all_private = "*" in self.private
        self.verifier = TokenVerifier.from_settings(settings)
        self.static_tokens = tuple(t.encode("utf-8") for t in settings.publish_tokens)

    # -- subscribers ---------------------------------------------------------------------

    def private_of(self, channels: Iterable[str]) -> list[str]:
        if self.all_private:
            return list(channels)
        if not self.private:
            return []
        return [c for c in channels if matches_any(self.private, c)]

    def subscriber_token(self, headers: _Getter, cookies: _Getter, args: _Getter) -> str | None:
        token = bearer_token(headers.get("Authorization"))
        if token is None:
            token = cookies.get(self.settings.jwt_cookie) or None
        if token is None:
            token = args.get(QUERY_PARAMETER) or None
        return token

    def authorize_stream(self, channels: Sequence[str], token: str | None) -> float | None:
        """The `time.monotonic()` deadline of the stream's token (None: none applies), or
        ApiError 401/403.  Every private channel must be allowed, or none is opened."""
        private = self.private_of(channels)
        if not private:
            return None
        if token is None:
            raise _unauthorized(
                "a token is needed for private channels: send 'Authorization: Bearer <jwt>', "
                f"the {self.settings.jwt_cookie} cookie or ?{QUERY_PARAMETER}=", invalid=False,
            )
        grant = self._verify(token)
        forbidden = [c for c in private if not matches_any(grant.subscribe, c)]
        if forbidden:
            shown = ", ".join(repr(c) for c in forbidden[:5]) + (", ..." if len(forbidden) > 5 else "")
            raise ApiError("forbidden", f"the token does not allow subscribing to {shown}", 403)
        if grant.expires is None:
            return None
        # Close when the token would stop being accepted: at exp plus the leeway.
        remaining = grant.expires + self.settings.jwt_leeway_seconds - time.time()
        return time.monotonic() + remaining

    def _verify(self, token: str) -> Grant:
        if self.verifier is None:  # excluded by config validation; keep the refusal explicit
            raise _unauthorized("no key is configured to verify tokens")
        try:
            return self.verifier.verify(token)
        except TokenError as exc:
            raise _unauthorized(exc.detail) from None

    # -- publishers ----------------------------------------------------------------------

    def authenticate_publisher(self, authorization: str | None) -> PublishScope:
        """What the caller may publish to, or ApiError 401/403."""
        if self.settings.allow_anonymous_publish:
            return EVERYTHING
        if not self.static_tokens and self.verifier is None:
            raise ApiError(
                "publishing_disabled",
                "no publish credentials are configured: set PUSHSVC_PUBLISH_TOKENS or a JWT key "
                "(or, for development only, PUSHSVC_ALLOW_ANONYMOUS_PUBLISH=true)",
                403,
            )
        token = bearer_token(authorization)
        if token is None:
            raise _unauthorized("send 'Authorization: Bearer <token>' with a publish token", invalid=False)
        supplied = token.encode("utf-8", "surrogateescape")
        matched = False
        for candidate in self.static_tokens:  # every candidate, in constant time
            matched |= hmac.compare_digest(supplied, candidate)
        if matched:
            return EVERYTHING
        if self.verifier is None:
            raise _unauthorized("the publish token is not valid")
        return PublishScope(self._verify(token).publish)

    def publisher_identity(self, authorization: str | None) -> str:
        """The scope of a publisher's idempotency keys: a digest of its static token, its
        JWT's ``sub`` (else of the JWT), or ``a`` when publishing anonymously."""
        token = bearer_token(authorization)
        if token is None:
            return "a"
        supplied = token.encode("utf-8", "surrogateescape")
        static = False
        for candidate in self.static_tokens:  # every candidate, in constant time
            static |= hmac.compare_digest(supplied, candidate)
        if static:
            return "t:" + _digest(token)
        if self.verifier is not None:
            try:
                subject = self.verifier.verify(token).subject
            except TokenError:  # anonymous publishing with a token that is not one
                return "a"
            return "s:" + _digest(subject) if subject else "j:" + _digest(token)
        return "a"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def authority() -> Authority:
    found: Authority = current_app.extensions["pushsvc.auth"]
    return found

