"""JSON Web Tokens: verifying them (PyJWT, one explicit algorithm per configured key) and
minting development tokens.

Claims (nested like Mercure's)::

    {"exp": 1767225600, "pushsvc": {"subscribe": ["user:42", "team:*"], "publish": ["orders:*"]}}

`exp` is required; `nbf`, `aud` and `iss` are checked (`aud`/`iss` against
``PUSHSVC_JWT_AUDIENCE`` / ``PUSHSVC_JWT_ISSUER``).  The algorithm is chosen by the key,
never by the token: HS256 for ``PUSHSVC_JWT_SECRET``, RS256 or ES256 for the type of
``PUSHSVC_JWT_PUBLIC_KEY``.  So ``alg: none`` and an HS256 token "signed" with the public
key are refused.  Nothing here logs a token.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jwt

from .config import Settings
from .keys import PublicKey, load_public_key
from .patterns import PATTERN_RE

CLAIM = "pushsvc"
MAX_TOKEN_BYTES = 8192


class TokenError(Exception):
    """A missing, malformed, expired or badly signed token (401); `detail` never quotes it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Grant:
    """What a verified token allows."""

    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    expires: float | None  # wall-clock `exp`
    subject: str | None = None  # `sub` (the scope of a publisher's idempotency keys)


_REASONS: list[tuple[type[jwt.InvalidTokenError], str]] = [
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet (nbf)"),
    (jwt.InvalidAudienceError, "the token's audience (aud) is not accepted"),
    (jwt.InvalidIssuerError, "the token's issuer (iss) is not accepted"),
    (jwt.MissingRequiredClaimError, "the token lacks a required claim (exp, or aud/iss)"),
    (jwt.InvalidSignatureError, "the token's signature is not valid"),
]


class TokenVerifier:
    def __init__(self, settings: Settings) -> None:
        self.secret = settings.jwt_secret.encode("utf-8") if settings.jwt_secret else None
        self.public_key: PublicKey | None = None
        self.public_alg: str | None = None
        if settings.jwt_public_key:
            self.public_key, self.public_alg = load_public_key(settings.jwt_public_key)
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self.leeway = settings.jwt_leeway_seconds

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier | None:
        if settings.jwt_secret is None and settings.jwt_public_key is None:
            return None
        return cls(settings)

    def _key_for(self, token: str) -> tuple[Any, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise TokenError("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg == "HS256" and self.secret is not None:
            return self.secret, "HS256"
        if self.public_key is not None and self.public_alg is not None and alg == self.public_alg:
            return self.public_key, self.public_alg
        raise TokenError("the token's algorithm is not accepted")

    def verify(self, token: str) -> Grant:
        if len(token) > MAX_TOKEN_BYTES:
            raise TokenError("the token is too long")
        key, alg = self._key_for(token)
        try:
            claims = jwt.decode(
                token, key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                leeway=self.leeway, options={"require": ["exp"]},
            )
        except jwt.InvalidTokenError as exc:
            for kind, reason in _REASONS:
                if isinstance(exc, kind):
                    raise TokenError(reason) from None
            raise TokenError("the token is not a valid JWT") from None
        return grant_from_claims(claims)


_TIME_CLAIMS = ("exp", "nbf", "iat")


def _check_time_claims(claims: dict[str, Any]) -> None:
    # PyJWT skips a time claim it cannot read in some versions; a string exp would then
    # never expire.  NumericDate is a JSON number (RFC 7519 2).
    for name in _TIME_CLAIMS:
        if name in claims:
            value = claims[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
                raise TokenError(f"the token's {name} is not a number")


def _patterns(section: dict[str, Any], name: str) -> tuple[str, ...]:
    value = section.get(name, [])
    if not isinstance(value, list) or not all(
        isinstance(p, str) and PATTERN_RE.fullmatch(p) for p in value
    ):
        raise TokenError(f"claim {CLAIM}.{name} must be a list of channel names or patterns")
    return tuple(value)


def grant_from_claims(claims: dict[str, Any]) -> Grant:
    _check_time_claims(claims)
    section = claims.get(CLAIM, {})
    if not isinstance(section, dict):
        raise TokenError(f"claim {CLAIM} must be an object")
    exp = claims.get("exp")
    sub = claims.get("sub")
    return Grant(
        _patterns(section, "subscribe"), _patterns(section, "publish"),
        float(exp) if isinstance(exp, int | float) else None,
        sub if isinstance(sub, str) and sub else None,
    )


def mint(
    secret: str, *, subscribe: Sequence[str] = (), publish: Sequence[str] = (),
    ttl_seconds: int = 3600, audience: str | None = None, issuer: str | None = None,
    subject: str | None = None, now: float | None = None,
) -> str:
    """An HS256 token for development (`pushsvc token`)."""
    issued = int(time.time() if now is None else now)
    section: dict[str, list[str]] = {}
    if subscribe:
        section["subscribe"] = list(subscribe)
    if publish:
        section["publish"] = list(publish)
    claims: dict[str, Any] = {"iat": issued, "exp": issued + ttl_seconds, CLAIM: section}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    if subject:
        claims["sub"] = subject
    return jwt.encode(claims, secret, algorithm="HS256")
