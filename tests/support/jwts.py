"""Tokens for tests: well-formed ones, and the attacks (alg none, HS256 keyed with a public key)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from functools import cache
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

SECRET = "test-jwt-secret-that-is-long-enough-0123456789"
OTHER_SECRET = "another-secret-nobody-configured-0123456789ab"
AUDIENCE = "pushsvc-tests"


def claims(subscribe: list[str] | None = None, publish: list[str] | None = None, *,
           ttl: float = 300, aud: str | None = AUDIENCE, **extra: Any) -> dict[str, Any]:
    section: dict[str, Any] = {}
    if subscribe is not None:
        section["subscribe"] = subscribe
    if publish is not None:
        section["publish"] = publish
    body: dict[str, Any] = {"exp": int(time.time() + ttl), "pushsvc": section, **extra}
    if aud is not None:
        body["aud"] = aud
    return body


def hs256(subscribe: list[str] | None = None, publish: list[str] | None = None, *,
          secret: str = SECRET, **kwargs: Any) -> str:
    return jwt.encode(claims(subscribe, publish, **kwargs), secret, algorithm="HS256")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segments(header: dict[str, Any], body: dict[str, Any]) -> str:
    return _b64(json.dumps(header).encode()) + "." + _b64(json.dumps(body).encode())


def alg_none(body: dict[str, Any]) -> str:
    """An unsigned token (`alg: none`), which must never be accepted."""
    return _segments({"alg": "none", "typ": "JWT"}, body) + "."


def hs256_keyed_with(body: dict[str, Any], key: bytes) -> str:
    """HS256 over `key` bytes, by hand (PyJWT itself refuses a PEM as an HMAC secret):
    the classic algorithm-confusion forgery with the server's public key as the secret."""
    signing_input = _segments({"alg": "HS256", "typ": "JWT"}, body)
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + _b64(signature)


@cache
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@cache
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
