"""A version-checked correction of Hypercorn's HTTP/2 flow control and stream close.

The one place where pushsvc reaches into Hypercorn's internals (DESIGN.md, "Decided
points"): Hypercorn 0.18 breaks a promise pushsvc makes -- one client can never make the
process hold more than the per-stream bound -- and offers no public way around it.

1. `StreamBuffer.pop` releases the writer's backpressure after every pop shorter than
   ``BUFFER_LOW_WATER``.  With the peer's flow-control window at 0 the send task pops 0
   bytes, so ``push`` (the app's ``await send``) never waits: a peer that stops reading
   grows its buffer without limit (measured: 50 stalled streams while 20 MB were
   published took the process from 58 MiB to 1,022 MiB).  Corrected: the writer is
   released once what is *left* in the buffer is under the low-water mark.
2. `H2Protocol._close_stream` forgets the stream without resetting it and leaves its
   `StreamBuffer`: when the app ends a response whose data cannot be sent (pushsvc cutting
   a stalled stream), the client never learns the stream ended and the buffer stays until
   the connection closes.  Corrected: a stream closed with its body unfinished is reset
   (``RST_STREAM``, CANCEL) and its buffer emptied; the send task then drops it.

Applied by `create_app` (so plain ``hypercorn`` runs it too), only on the Hypercorn
versions whose code was read (`CORRECTED_VERSIONS`); on any other version it logs a
warning and changes nothing.  tests/e2e/test_http2.py
(``test_a_stalled_http2_stream_is_cut_reset_and_freed``) fails without it.
"""

from __future__ import annotations

import contextlib
import logging
from importlib.metadata import PackageNotFoundError, version
from typing import Any

log = logging.getLogger("pushsvc.h2fix")

#: Hypercorn versions whose `hypercorn/protocol/h2.py` was read and is corrected here.
CORRECTED_VERSIONS = frozenset({"0.18.0"})

_applied = False


def correct_hypercorn_h2() -> bool:
    """Apply the correction once per process; False (with a warning) if not applied."""
    global _applied
    if _applied:
        return True
    try:
        found = version("hypercorn")
    except PackageNotFoundError:
        return False  # not served by Hypercorn: nothing to correct
    if found not in CORRECTED_VERSIONS:
        log.warning(
            "not correcting Hypercorn's HTTP/2 flow control: version %s was not checked "
            "(checked: %s); a stalled HTTP/2 peer may grow memory -- see pushsvc/h2fix.py",
            found, ", ".join(sorted(CORRECTED_VERSIONS)),
        )
        return False
    _patch()
    _applied = True
    return True


def _patch() -> None:
    import h2.errors
    import h2.exceptions
    import priority.priority
    from hypercorn.protocol import h2 as hyper_h2

    low_water = hyper_h2.BUFFER_LOW_WATER
    original_close_stream = hyper_h2.H2Protocol._close_stream

    async def pop(self: Any, max_length: int) -> bytes:
        length = min(len(self.buffer), max_length)
        data = bytes(self.buffer[:length])
        del self.buffer[:length]
        if len(self.buffer) < low_water:  # Hypercorn: `len(data) < low_water` (a 0-byte pop)
            await self._paused.set()
        if len(self.buffer) == 0:
            await self._is_empty.set()
        return data

    async def close_stream(self: Any, stream_id: int) -> None:
        buffer = self.stream_buffers.get(stream_id)
        if buffer is not None and not buffer.complete:
            if not self.closed:
                try:
                    self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.CANCEL)
                except h2.exceptions.ProtocolError:
                    pass  # the peer reset it, or the connection is gone
                else:
                    await self._flush()
            await buffer.close()  # empties it; a writer waiting on it wakes
            with contextlib.suppress(priority.priority.MissingStreamError):
                self.priority.unblock(stream_id)  # the send task drops the stream
            await self.has_data.set()
        await original_close_stream(self, stream_id)

    hyper_h2.StreamBuffer.pop = pop  # type: ignore[method-assign]
    hyper_h2.H2Protocol._close_stream = close_stream  # type: ignore[method-assign]
