"""Bus order on a worker: every event once, in seq order, with holes repaired from history.

ZeroMQ PUB/SUB drops silently (a slow joiner, a full high-water mark). The worker feeds each
event, and the ingest's periodic ``(epoch, seq)`` beat, to ``BusOrder``; it answers with what to
do: deliver events, ask the ingest's history for a range (holding everything newer until the
answer), or announce a new epoch. Nothing newer than a hole is delivered before the hole is
filled, or known to be unfillable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.routing import RoutingHeader

Event = tuple[RoutingHeader, bytes]
# Events held behind a hole: past this, the hole is given up as lost rather than memory spent.
MAX_HELD = 50_000


@dataclass(frozen=True, slots=True)
class Deliver:
    events: list[Event]


@dataclass(frozen=True, slots=True)
class Repair:
    first: int
    last: int


@dataclass(frozen=True, slots=True)
class NewEpoch:
    epoch: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class Lost:
    """A hole history could not fill: these seqs will never be delivered."""

    first: int
    last: int


Action = Deliver | Repair | NewEpoch | Lost


@dataclass(slots=True)
class BusOrder:
    epoch: str | None = None
    last: int = 0  # the newest seq delivered (or skipped as lost)
    repairing: Repair | None = None
    held: list[Event] = field(default_factory=list)

    def on_event(self, header: RoutingHeader, payload: bytes) -> list[Action]:
        actions: list[Action] = []
        if header.epoch != self.epoch:
            actions.append(self._new_epoch(header.epoch, header.seq))
        if self.repairing is not None:
            self.held.append((header, payload))
            if len(self.held) >= MAX_HELD:
                actions += self.on_repaired([])
            return actions
        return actions + self._advance([(header, payload)])

    def on_beat(self, epoch: str, seq: int) -> list[Action]:
        """The ingest's periodic word on its newest seq: catches a lost *last* event too."""
        actions: list[Action] = []
        if epoch != self.epoch:
            actions.append(self._new_epoch(epoch, seq + 1))
        if self.repairing is None and seq > self.last:
            self.repairing = Repair(self.last + 1, seq)
            actions.append(self.repairing)
        return actions

    def on_repaired(self, events: list[Event], more: bool = False) -> list[Action]:
        """History's answer to the pending repair (empty if it had nothing, or did not answer).

        ``more``: history holds the rest of the range but sent only part of it (answers are
        bounded); what it sent is delivered and the rest asked for, instead of counted lost.
        """
        if self.repairing is None:
            return []
        wanted, self.repairing = self.repairing, None
        if more and events:
            newest = max(e[0].seq for e in events)
            if newest < wanted.last:
                self.repairing = Repair(wanted.first, newest)
                done = self.on_repaired(events)
                # Events held behind the hole are held again; ask for the rest of the range.
                self.repairing = Repair(newest + 1, wanted.last)
                return [a for a in done if not isinstance(a, Repair)] + [self.repairing]
        actions: list[Action] = []
        found = sorted((e for e in events if wanted.first <= e[0].seq <= wanted.last), key=lambda e: e[0].seq)
        delivered: list[Event] = []
        for event in found:
            seq = event[0].seq
            if seq <= self.last:
                continue
            if seq > self.last + 1:
                actions.append(Lost(self.last + 1, seq - 1))
            delivered.append(event)
            self.last = seq
        if delivered:
            actions.append(Deliver(delivered))
        if self.last < wanted.last:
            actions.append(Lost(self.last + 1, wanted.last))
            self.last = wanted.last
        held, self.held = self.held, []
        return actions + self._advance(held)

    def _new_epoch(self, epoch: str, first_seen: int) -> NewEpoch:
        previous = self.epoch
        self.epoch = epoch
        self.held.clear()
        self.repairing = None
        # A fresh worker starts from what it first sees; after a restart of the ingest the new run
        # starts at 1 and everything of it is owed to the clients.
        self.last = first_seen - 1 if previous is None else 0
        return NewEpoch(epoch, previous)

    def _advance(self, events: list[Event]) -> list[Action]:
        actions: list[Action] = []
        ready: list[Event] = []
        for index, event in enumerate(events):
            seq = event[0].seq
            if seq <= self.last:
                continue  # a duplicate
            if seq == self.last + 1:
                ready.append(event)
                self.last = seq
                continue
            self.repairing = Repair(self.last + 1, seq - 1)
            self.held = events[index:]
            if ready:
                actions.append(Deliver(ready))
            actions.append(self.repairing)
            return actions
        if ready:
            actions.append(Deliver(ready))
        return actions
