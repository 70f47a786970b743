"""Ground truth of a simulation run, built from the model's own state (never by parsing events back).

The truth file is JSON Lines, in this order: one `contact` record per contact (in start order), one
`journey` record per journey (in start order), one `bad_message` record per injected malformed
message (in delivery order) and a final `summary`. Times are ISO-8601 UTC with milliseconds
(`2026-03-01T09:15:02.250Z`), or null. The truth describes the world as of the run's horizon: the
end of `--duration`, the moment the run was interrupted, or the end of the last contact.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.times import iso_ms


def _seconds(ms: int) -> float:
    return round(ms / 1000.0, 3)


@dataclass(slots=True)
class Leg:
    """One stay of a contact in one queue: queued, then answered, abandoned or still waiting."""

    queue: str
    queued_at: int
    answered_at: int | None = None
    agent_id: str | None = None
    abandoned_at: int | None = None
    transferred_at: int | None = None
    to_queue: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "queue": self.queue,
            "queued_at": iso_ms(self.queued_at),
            "answered_at": iso_ms(self.answered_at),
            "wait_seconds": _seconds(self.answered_at - self.queued_at) if self.answered_at is not None else None,
            "agent_id": self.agent_id,
            "abandoned_at": iso_ms(self.abandoned_at),
            "transferred_at": iso_ms(self.transferred_at),
            "to_queue": self.to_queue,
        }


@dataclass(slots=True)
class Survey:
    survey: str
    score: int
    at: int


@dataclass(slots=True)
class ContactTruth:
    """Everything that happened on one contact, as the model made it happen."""

    contact_id: str
    channel: str
    customer_key: str
    customer_id: str | None
    anonymous: bool
    journey_id: str
    intent: str
    priority: int
    segment: str
    started_at: int
    identity: str  # how the contact is tied to customer_id: "on_event", "identity_link" or "none"
    ended_at: int | None = None
    ivr_zero_out: bool = False
    ivr_nodes: list[str] = field(default_factory=list)
    bot_involved: bool = False
    bot_contained: bool = False
    bot_handoff_at: int | None = None
    legs: list[Leg] = field(default_factory=list)
    abandoned_at: int | None = None
    abandoned_stage: str | None = None
    first_response_at: int | None = None
    agent_replies: list[int] = field(default_factory=list)
    customer_messages: list[int] = field(default_factory=list)
    waiting: list[list[int | None]] = field(default_factory=list)
    waiting_reasons: list[str] = field(default_factory=list)  # who each `waiting` span waits on
    transfers: int = 0
    hold_ms: int = 0
    talk_ms: int = 0
    acw_seconds: float = 0.0
    resolved_at: int | None = None
    resolved_by: str | None = None
    resolutions: list[int] = field(default_factory=list)
    reopened_at: list[int] = field(default_factory=list)
    surveys: list[Survey] = field(default_factory=list)
    events: int = 0

    @property
    def outcome(self) -> str:
        """`resolved` (currently resolved), `abandoned`, `unresolved` (ended without resolution) or
        `in_progress` (not ended by the horizon and not resolved)."""
        if self.abandoned_at is not None:
            return "abandoned"
        if self.resolved_at is not None:
            return "resolved"
        if self.ended_at is not None:
            return "unresolved"
        return "in_progress"

    def as_dict(self) -> dict[str, Any]:
        first_leg = self.legs[0] if self.legs else None
        answered = next((leg for leg in self.legs if leg.answered_at is not None), None)
        handle_ms = self.talk_ms + self.hold_ms
        return {
            "kind": "contact",
            "contact_id": self.contact_id,
            "channel": self.channel,
            "customer_key": self.customer_key,
            "customer_id": self.customer_id,
            "anonymous": self.anonymous,
            "identity": self.identity,
            "journey_id": self.journey_id,
            "intent": self.intent,
            "queues": [leg.queue for leg in self.legs],
            "priority": self.priority,
            "segment": self.segment,
            "started_at": iso_ms(self.started_at),
            "ended_at": iso_ms(self.ended_at),
            "ivr_nodes": self.ivr_nodes,
            "ivr_zero_out": self.ivr_zero_out,
            "bot_involved": self.bot_involved,
            "bot_contained": self.bot_contained,
            "bot_handoff_at": iso_ms(self.bot_handoff_at),
            "queued_at": iso_ms(first_leg.queued_at) if first_leg else None,
            "answered_at": iso_ms(answered.answered_at) if answered else None,
            "wait_seconds": (
                _seconds(answered.answered_at - answered.queued_at)
                if answered is not None and answered.answered_at is not None
                else None
            ),
            "abandoned_at": iso_ms(self.abandoned_at),
            "abandoned_stage": self.abandoned_stage,
            "legs": [leg.as_dict() for leg in self.legs],
            "first_response_at": iso_ms(self.first_response_at),
            "agent_replies": [iso_ms(t) for t in self.agent_replies],
            "customer_messages": [iso_ms(t) for t in self.customer_messages],
            "waiting_on_customer": [[iso_ms(a), iso_ms(b)] for a, b in self.waiting],
            "waiting_reasons": list(self.waiting_reasons),
            "transfers": self.transfers,
            "hold_seconds": _seconds(self.hold_ms),
            "talk_seconds": _seconds(self.talk_ms),
            "acw_seconds": round(self.acw_seconds, 3),
            "handle_seconds": round(handle_ms / 1000.0 + self.acw_seconds, 3),
            "resolved_at": iso_ms(self.resolved_at),
            "resolved_by": self.resolved_by,
            "resolutions": [iso_ms(t) for t in self.resolutions],
            "reopened_at": [iso_ms(t) for t in self.reopened_at],
            "outcome": self.outcome,
            "surveys": [{"survey": s.survey, "score": s.score, "at": iso_ms(s.at)} for s in self.surveys],
            "events": self.events,
        }


@dataclass(slots=True)
class JourneyTruth:
    """One customer issue (customer x intent) and the contacts it took."""

    journey_id: str
    customer_key: str
    customer_id: str | None
    intent: str
    started_at: int
    contacts: list[ContactTruth] = field(default_factory=list)
    reopened: bool = False

    @property
    def resolved_at(self) -> int | None:
        """Last resolution, when the journey is resolved now (no later contact still open/failed)."""
        last = self.contacts[-1]
        if last.resolved_at is None:
            return None
        return last.resolved_at

    def as_dict(self) -> dict[str, Any]:
        resolved_at = self.resolved_at
        first = self.contacts[0]
        fcr = len(self.contacts) == 1 and not self.reopened and first.resolved_at is not None
        return {
            "kind": "journey",
            "journey_id": self.journey_id,
            "customer_key": self.customer_key,
            "customer_id": self.customer_id,
            "intent": self.intent,
            "started_at": iso_ms(self.started_at),
            "contact_ids": [c.contact_id for c in self.contacts],
            "channels": [c.channel for c in self.contacts],
            "contacts": len(self.contacts),
            "first_contact_resolved": fcr,
            "resolved": resolved_at is not None,
            "resolved_at": iso_ms(resolved_at),
            "resolution_seconds": _seconds(resolved_at - self.started_at) if resolved_at is not None else None,
            "reopened": self.reopened,
        }


@dataclass(frozen=True, slots=True)
class BadMessageTruth:
    topic: str
    key: str | None
    kind: str
    value_b64: str
    delivered_at: int
    size: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": "bad_message",
            "bad_kind": self.kind,
            "topic": self.topic,
            "key": self.key,
            "delivered_at": iso_ms(self.delivered_at),
            "size": self.size,
            "value_b64": self.value_b64,
        }


def truth_lines(
    contacts: Iterable[ContactTruth],
    journeys: Iterable[JourneyTruth],
    bad_messages: Iterable[BadMessageTruth],
    summary: dict[str, Any],
) -> Iterator[str]:
    """The truth file's lines (without newlines), in file order."""
    for contact in contacts:
        yield _dumps(contact.as_dict())
    for journey in journeys:
        yield _dumps(journey.as_dict())
    for bad in bad_messages:
        yield _dumps(bad.as_dict())
    yield _dumps({"kind": "summary", **summary})


def write_truth(
    path: Path,
    contacts: Iterable[ContactTruth],
    journeys: Iterable[JourneyTruth],
    bad_messages: Iterable[BadMessageTruth],
    summary: dict[str, Any],
) -> None:
    """Write the truth JSONL file (atomically: a temporary file renamed into place)."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for line in truth_lines(contacts, journeys, bad_messages, summary):
            handle.write(line)
            handle.write("\n")
    tmp.replace(path)


def read_truth(path: Path) -> list[dict[str, Any]]:
    """Read a truth file back (for tests and checks)."""
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _dumps(record: dict[str, Any]) -> str:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False)
