"""A channel's subscription state in the hub, as a named state machine (pure, no I/O).

A channel is subscribed at the broker when its first stream arrives (SUBSCRIBING).  Each
confirmation of the subscription (the first, and one after every reconnect) starts a
*resync pass*: read the channel's position S, then a barrier on the pub/sub connection;
the first live frame seen during the pass (L) shows where live delivery starts, so the
channel is synced at L - 1 if L <= S, else at S (`ChannelSync.decide`).  A confirmation
that arrives during a pass asks for one more pass once this one is done (..._AGAIN).

    SUBSCRIBING --confirmed--> SYNCING --decided--> SYNCED --confirmed--> RESYNCING
    SYNCING / RESYNCING --confirmed--> SYNCING_AGAIN / RESYNCING_AGAIN
    SYNCING_AGAIN / RESYNCING_AGAIN --decided--> RESYNCING (the next pass runs at once)
    any pass state --restarted (a read failed, the pass starts over)--> SYNCING / RESYNCING

`TRANSITIONS` is the whole table; `ChannelSync.transition` refuses anything else.
"""

from __future__ import annotations

import enum

from .resume import EMPTY, Position


class State(enum.Enum):
    SUBSCRIBING = "subscribing"  # subscribe sent, no confirmation yet
    SYNCING = "syncing"  # first pass: deciding the position, not synced yet
    SYNCING_AGAIN = "syncing_again"  # first pass, and another confirmation came meanwhile
    SYNCED = "synced"
    RESYNCING = "resyncing"  # synced before; a pass after a reconfirmation
    RESYNCING_AGAIN = "resyncing_again"


class Happened(enum.Enum):
    CONFIRMED = "confirmed"  # the broker confirmed the subscription
    RESTARTED = "restarted"  # a pass starts over (its reads failed)
    DECIDED = "decided"  # a pass decided the sync position


S, H = State, Happened
TRANSITIONS: dict[tuple[State, Happened], State] = {
    (S.SUBSCRIBING, H.CONFIRMED): S.SYNCING,
    (S.SYNCING, H.CONFIRMED): S.SYNCING_AGAIN,
    (S.SYNCING_AGAIN, H.CONFIRMED): S.SYNCING_AGAIN,
    (S.SYNCED, H.CONFIRMED): S.RESYNCING,
    (S.RESYNCING, H.CONFIRMED): S.RESYNCING_AGAIN,
    (S.RESYNCING_AGAIN, H.CONFIRMED): S.RESYNCING_AGAIN,
    (S.SYNCING, H.RESTARTED): S.SYNCING,
    (S.SYNCING_AGAIN, H.RESTARTED): S.SYNCING,
    (S.RESYNCING, H.RESTARTED): S.RESYNCING,
    (S.RESYNCING_AGAIN, H.RESTARTED): S.RESYNCING,
    (S.SYNCING, H.DECIDED): S.SYNCED,
    (S.RESYNCING, H.DECIDED): S.SYNCED,
    (S.SYNCING_AGAIN, H.DECIDED): S.RESYNCING,
    (S.RESYNCING_AGAIN, H.DECIDED): S.RESYNCING,
}
del S, H

PASSING = frozenset({State.SYNCING, State.SYNCING_AGAIN, State.RESYNCING, State.RESYNCING_AGAIN})
SYNCED_STATES = frozenset({State.SYNCED, State.RESYNCING, State.RESYNCING_AGAIN})


class IllegalTransition(RuntimeError):
    def __init__(self, state: State, happened: Happened) -> None:
        super().__init__(f"{happened.value} is not allowed in state {state.value}")
        self.state = state
        self.happened = happened


class ChannelSync:
    """One channel's state, its latest known position and the pass's first live position."""

    __slots__ = ("first_live", "position", "state")

    def __init__(self) -> None:
        self.state = State.SUBSCRIBING
        self.position = EMPTY  # latest position seen (live frames, or the last decision)
        self.first_live: Position | None = None

    def transition(self, happened: Happened) -> State:
        new = TRANSITIONS.get((self.state, happened))
        if new is None:
            raise IllegalTransition(self.state, happened)
        self.state = new
        return new

    @property
    def synced(self) -> bool:
        """A position was decided once: new streams can be told it at once."""
        return self.state in SYNCED_STATES

    @property
    def passing(self) -> bool:
        return self.state in PASSING

    def confirmed(self) -> bool:
        """The subscription was (re)confirmed; True when a pass must be started (none runs)."""
        running = self.passing
        self.transition(Happened.CONFIRMED)
        if not running:
            self.first_live = None
        return not running

    def restart(self) -> None:
        """A pass (re)starts: forget what an earlier attempt saw."""
        self.transition(Happened.RESTARTED)
        self.first_live = None

    def live(self, position: Position) -> None:
        """A live frame with a position arrived."""
        self.position = position
        if self.first_live is None and self.passing:
            self.first_live = position

    def decide(self, read: Position) -> tuple[Position, bool]:
        """The pass read `read` and its barrier returned: the sync position, and whether
        another pass must run."""
        first = self.first_live
        if first is not None and first.epoch == read.epoch and first.seq <= read.seq:
            sync_at = Position(read.epoch, first.seq - 1)
        else:
            sync_at = read
        if first is None or self.position.epoch != sync_at.epoch:
            self.position = sync_at
        again = self.transition(Happened.DECIDED) is State.RESYNCING
        self.first_live = None
        return sync_at, again
