"""Channel patterns: exact names, or names with `*` (any run of characters, even empty).

Channel names can never contain `*`, so a pattern without one is an exact name.  Used by
`PUSHSVC_PRIVATE_CHANNELS` and by the `subscribe` / `publish` claims of tokens.  Pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

PATTERN_RE = re.compile(r"[A-Za-z0-9_\-.:@/*]{1,200}")


@lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def matches(pattern: str, channel: str) -> bool:
    if "*" not in pattern:
        return pattern == channel
    if pattern == "*":
        return True
    return _compiled(pattern).fullmatch(channel) is not None


def matches_any(patterns: Iterable[str], channel: str) -> bool:
    return any(matches(pattern, channel) for pattern in patterns)
