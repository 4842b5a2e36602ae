"""Random tokens drawn in bulk: one ``getrandom`` call (``os.urandom``, as `secrets`) for
many tokens.  A publish needs an internal retry token, an epoch per channel and a request
id: three system calls per request when drawn one by one.

A forked child forgets what its parent had drawn, so two processes never hand out the same
token (an internal retry token shared by two workers would make the second's publish look
like a retry of the first's).
"""

from __future__ import annotations

import base64
import os

_BATCH = 64  # tokens per draw
_hex: list[str] = []
_epochs: list[str] = []


def _draw_hex() -> None:
    raw = os.urandom(8 * _BATCH).hex()
    _hex.extend(raw[i:i + 16] for i in range(0, len(raw), 16))


def token_hex16() -> str:
    """16 random hexadecimal characters (64 bits)."""
    if not _hex:
        _draw_hex()
    return _hex.pop()


def token_hex32() -> str:
    """32 random hexadecimal characters (128 bits): two of `token_hex16` (a request id)."""
    if len(_hex) < 2:
        _draw_hex()
    return _hex.pop() + _hex.pop()


def token_b32_8() -> str:
    """8 random characters of [a-z2-7] (40 bits)."""
    if not _epochs:
        raw = base64.b32encode(os.urandom(5 * _BATCH)).decode("ascii").lower()
        _epochs.extend(raw[i:i + 8] for i in range(0, len(raw), 8))
    return _epochs.pop()


def _forget() -> None:
    _hex.clear()
    _epochs.clear()


os.register_at_fork(after_in_child=_forget)
