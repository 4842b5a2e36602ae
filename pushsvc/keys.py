"""Public keys for JWT verification: PEM text to a key and the one algorithm it verifies.

Kept apart from `pushsvc.tokens` so that `pushsvc.config` can validate
``PUSHSVC_JWT_PUBLIC_KEY`` at start-up without importing the token verifier (which needs
the settings): no import cycle between configuration and tokens.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey


class InvalidKey(ValueError):
    """PEM text that is not a usable public key; the message says why (never the key)."""


def load_public_key(pem: str) -> tuple[PublicKey, str]:
    """(key, algorithm) from PEM text (a one-line value with ``\\n`` works too)."""
    text = pem.replace("\\n", "\n").strip()  # PEM squeezed onto one line in an env file
    try:
        key = load_pem_public_key(text.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError):
        raise InvalidKey("is not a PEM public key ('-----BEGIN PUBLIC KEY-----' ...)") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidKey("an RSA key needs at least 2048 bits")
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise InvalidKey("an EC key must be on P-256 (ES256)")
        return key, "ES256"
    raise InvalidKey("only RSA (RS256) and EC P-256 (ES256) keys are supported")
