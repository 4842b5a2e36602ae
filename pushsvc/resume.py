"""Stream ids: the resume position a browser holds (`Last-Event-ID`).

The format lives in `pushsvc.wire` (ids, positions and the Redis envelope in one module);
these names are re-exported here for the modules that import them from `resume`.
"""

from __future__ import annotations

from .wire import EMPTY, MAX_ID_LENGTH, Position, format_stream_id, parse_stream_id

__all__ = ["EMPTY", "MAX_ID_LENGTH", "Position", "format_stream_id", "parse_stream_id"]
