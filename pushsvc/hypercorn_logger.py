"""Hypercorn access log without secrets: `pushsvc serve` uses `RedactingLogger`.

Hypercorn's atoms carry the query string (``%(R)s``, ``%(Uq)s``, ``%(q)s``; ``%(r)s`` too in
some versions), every request header (``%({authorization}i)s``) and the environment
(``%({pushsvc_jwt_secret}e)s``).  Whatever format hypercorn.toml uses, ``token=`` values,
credentials headers and secret-looking environment variables come out as ``[redacted]``,
and control characters in every atom are escaped (``%0a`` in a path cannot forge a line).
Hypercorn's loggers also take pushsvc's log format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from hypercorn.logging import Logger

from .logs import adopt, escape_controls

REDACTED = "[redacted]"
_TOKEN_PARAM = re.compile(r"(?i)(^|[?&;\s])(token=)[^&;\s\"]*")
_SECRET_HEADERS = {"{authorization}i", "{proxy-authorization}i", "{cookie}i", "{set-cookie}o"}
_SECRET_ENV = re.compile(r"(?i)secret|token|key|password|passwd|credential|redis_url|redis_cluster_nodes")


def redact_query(text: str) -> str:
    return _TOKEN_PARAM.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def redact_atoms(atoms: Any) -> Any:
    for key, value in list(atoms.items()):
        if key in _SECRET_HEADERS or (key.endswith("}e") and _SECRET_ENV.search(key)):
            atoms[key] = REDACTED
        elif isinstance(value, str):
            if "oken=" in value.lower():
                value = redact_query(value)
            atoms[key] = escape_controls(value)
    return atoms


class RedactingLogger(Logger):
    def __init__(self, config: Any) -> None:
        super().__init__(config)
        # Hypercorn's own lines ("Running on ...", its errors) in pushsvc's format
        # (PUSHSVC_LOG_FORMAT: text, or one JSON object per line).
        for logger in (self.error_logger, self.access_logger):
            if logger is not None:
                adopt(logger)

    def atoms(self, request: Any, response: Any, request_time: float) -> Mapping[str, str]:
        atoms: Mapping[str, str] = redact_atoms(super().atoms(request, response, request_time))
        return atoms
