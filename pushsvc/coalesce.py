"""Coalesced writes: the frames of one channel that its cooling streams have not taken yet.

While a one-channel stream cools (``PUSHSVC_WRITE_DELAY_MS``, see `pushsvc.hub.Hub.cool`),
the hub's fan-out does not push each frame into its queue: the channel appends the frame
once to its `ChannelLog`, and the stream takes its slice -- every frame after its mark -- in
one step when it stops cooling (`ChannelLog.unpark`).  So per event and per cooling stream
nothing at all is done (no method call, no bound check, no wake-up test): that per-event
per-stream work is what remains of a delivery's cost once writes are coalesced.

Bounds: the log holds the frames from the oldest parked stream's mark on.  Once that span
reaches the per-write byte cap or half the smallest queue bound of the streams parked
(`append` says it is ripe), every parked stream takes its slice at once, so a delay never
makes a queue hold more than half its bound.  Streams leave in about the order they came
(one flush instant after another), so the oldest mark is the head of a FIFO whose entries of
streams already gone are skipped lazily: O(1) amortised per park.

Multi-channel streams are not parked (the order of their channels' frames is the order of
arrival, which separate logs would lose): they cool in their own queue (`StreamQueue.push`).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .events import Frame

if TYPE_CHECKING:
    from .hub import StreamQueue

#: A parked stream's mark: (stream, index of its first frame in the log, log bytes before it).
Mark = tuple["StreamQueue", int, int]
#: A run of live frames as one chunk: (bytes, first frame, last frame, number of frames).
Run = tuple[bytes, Frame, Frame, int]

_NO_BOUND = 1 << 62


class ChannelLog:
    """One channel's frames since its oldest parked stream's mark; `awake` is the channel's
    fan-out set, which parked streams leave and rejoin."""

    __slots__ = ("awake", "cached", "cap_bytes", "frames", "parked", "ripe_bytes", "ripe_items", "run_from",
                 "start", "start_bytes", "total_bytes")

    def __init__(self, awake: set[StreamQueue], cap_bytes: int) -> None:
        self.awake = awake
        self.cap_bytes = cap_bytes  # the per-write byte cap
        self.frames: list[Frame] = []
        self.start = 0  # index (counted since the log was made) of frames[0]
        self.start_bytes = 0  # bytes appended before frames[0]
        self.total_bytes = 0  # bytes ever appended
        self.parked: deque[Mark] = deque()
        self.ripe_items = _NO_BOUND
        self.ripe_bytes = _NO_BOUND
        # Index of the first frame of the run the log ends with: frames of one epoch with
        # consecutive seqs (a foreign frame, or a new epoch or a gap, starts a new run).
        self.run_from = 0
        self.cached: tuple[int, int, Run] | None = None  # (from index, end index, its run)

    def park(self, sub: StreamQueue) -> None:
        """`sub` starts cooling with an empty queue: frames from now on wait here for it."""
        mark = (sub, self.start + len(self.frames), self.total_bytes)
        sub.cooled_in = self
        sub.mark = mark
        self.awake.discard(sub)
        self.parked.append(mark)
        # min(ripe, half the bound) (and the byte cap), without min()'s call: once per write
        items = (sub.max_items + 1) // 2
        if items < self.ripe_items:
            self.ripe_items = items
        nbytes = (sub.max_bytes + 1) // 2
        if nbytes > self.cap_bytes:
            nbytes = self.cap_bytes
        if nbytes < self.ripe_bytes:
            self.ripe_bytes = nbytes

    def append(self, frame: Frame) -> bool:
        """A frame for the parked streams (call only while some are); True when the span
        held is ripe: then `unpark_all`."""
        frames = self.frames
        if frame.epoch is None:  # foreign: no position, never part of a run
            self.run_from = self.start + len(frames) + 1
        elif frames:
            last = frames[-1]
            if last.epoch != frame.epoch or last.seq + 1 != frame.seq:
                self.run_from = self.start + len(frames)
        frames.append(frame)
        self.total_bytes += len(frame.single)
        return len(frames) >= self.ripe_items or self.total_bytes - self.start_bytes >= self.ripe_bytes

    def unpark(self, sub: StreamQueue) -> None:
        """`sub` stops cooling: its frames go to its queue, and it rejoins the fan-out."""
        self._release(sub)
        self._trim()

    def unpark_all(self) -> list[StreamQueue]:
        """Every parked stream takes its frames (and stops cooling); the streams."""
        released = []
        for sub, _, _ in self.parked:
            if sub.cooled_in is self:
                self._release(sub)
                sub.cooling = 0
                released.append(sub)
        self._clear()
        return released

    def run(self, sub: StreamQueue) -> Run | None:
        """`sub`'s parked frames as one chunk, when they are one run of live frames (one
        epoch, consecutive seqs): (bytes, first frame, last frame, count).  Computed once
        for every stream parked at the same mark -- streams that wrote at the same flush
        instant -- so each takes its write in O(1).  None: take them frame by frame
        (`unpark`)."""
        mark = sub.mark
        assert mark is not None
        index = mark[1]
        end = self.start + len(self.frames)
        if index < self.run_from or index >= end:
            return None
        cached = self.cached
        if cached is not None and cached[0] == index and cached[1] == end:
            return cached[2]
        frames = self.frames[index - self.start:]
        chunk = frames[0].single if len(frames) == 1 else b"".join([frame.single for frame in frames])
        run = (chunk, frames[0], frames[-1], len(frames))
        self.cached = (index, end, run)
        return run

    def repark(self, sub: StreamQueue) -> None:
        """`sub` wrote its `run` and cools again at once: it stays parked, its mark moved
        past the run (no round trip through the fan-out set), nothing copied."""
        mark = (sub, self.start + len(self.frames), self.total_bytes)
        sub.mark = mark
        self.parked.append(mark)  # its old mark is stale now: `_trim` drops it
        self._trim()

    def drop(self, sub: StreamQueue) -> None:
        """`sub` leaves the channel while parked: its frames are not needed any more."""
        sub.cooled_in = None
        sub.mark = None
        self._trim()

    def _release(self, sub: StreamQueue) -> None:
        mark = sub.mark
        assert mark is not None
        sub.cooled_in = None
        sub.mark = None
        _, index, before = mark
        at = index - self.start
        frames = self.frames
        if at < len(frames):
            if sub.items:
                sub.items += frames[at:]
            else:
                sub.items = frames[at:]
            sub.nbytes += self.total_bytes - before
        self.awake.add(sub)

    def _trim(self) -> None:
        """Drop the marks of streams gone from the head; free the frames before the oldest
        mark left once they are at least half the log (amortised)."""
        parked = self.parked
        while parked:
            head = parked[0]
            sub = head[0]
            if sub.cooled_in is self and sub.mark is head:
                break
            parked.popleft()
        if not parked:
            self._clear()
            return
        _, index, before = parked[0]
        cut = index - self.start
        if cut and 2 * cut >= len(self.frames):
            del self.frames[:cut]
            self.start = index
            self.start_bytes = before

    def _clear(self) -> None:
        self.start += len(self.frames)
        self.frames = []
        self.run_from = self.start
        self.cached = None
        self.start_bytes = self.total_bytes
        self.parked.clear()
        self.ripe_items = self.ripe_bytes = _NO_BOUND
