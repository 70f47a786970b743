"""The journey model: the rules' windows, a journey and its steps, and what the store emits and
remembers of each journey (`JourneyVersion`, `Emitted`)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pipeline.journeys.contact import Score

SECOND = 1000
DAY = 86_400 * SECOND

Status = Literal["open", "resolved", "dormant"]


@dataclass(frozen=True, slots=True)
class JourneyConfig:
    """Windows of the journey rules, in milliseconds."""

    repeat_window_ms: int = 7 * DAY
    dormancy_ms: int = 14 * DAY


@dataclass(frozen=True, slots=True)
class JourneyStep:
    """One contact of a journey (step numbers start at 1)."""

    step: int
    contact_id: str
    channel: str
    started_at: int
    last_activity_at: int
    ended_at: int | None
    first_human_at: int | None
    resolved_at: int | None
    resolved_by: str | None
    was_bot: bool
    handed_off: bool
    bot_contained: bool
    transfers: int
    ivr_zero_out: bool
    abandoned: bool
    reopened: bool


@dataclass(frozen=True, slots=True)
class JourneySpan:
    """Of a journey, what retention needs: its id, its contacts, when it was resolved (None: it is
    not) and its last activity (ms)."""

    journey_id: str
    contact_ids: tuple[str, ...]
    resolved_at: int | None
    last_activity_at: int


@dataclass(frozen=True, slots=True)
class Journey:
    """One customer issue (customer x intent) and the contacts it took."""

    journey_id: str
    customer: str
    intent: str | None
    status: Status
    started_at: int
    last_activity_at: int
    steps: tuple[JourneyStep, ...]
    reopened: bool
    resolved_at: int | None
    resolved_by: str | None
    first_human_at: int | None
    first_human_channel: str | None
    csat: Score | None
    ces: Score | None
    nps: Score | None
    effort: float

    @property
    def contact_ids(self) -> tuple[str, ...]:
        return tuple(s.contact_id for s in self.steps)

    @property
    def channel_path(self) -> tuple[str, ...]:
        return tuple(s.channel for s in self.steps)

    @property
    def contacts(self) -> int:
        return len(self.steps)

    @property
    def channel_switches(self) -> int:
        path = self.channel_path
        return sum(1 for a, b in itertools.pairwise(path) if a != b)

    @property
    def transfers(self) -> int:
        return sum(s.transfers for s in self.steps)

    @property
    def bot_handoffs(self) -> int:
        return sum(1 for s in self.steps if s.handed_off)

    @property
    def bot_contained_contacts(self) -> int:
        return sum(1 for s in self.steps if s.bot_contained)

    @property
    def ivr_zero_outs(self) -> int:
        return sum(1 for s in self.steps if s.ivr_zero_out)

    @property
    def abandoned_contacts(self) -> int:
        return sum(1 for s in self.steps if s.abandoned)

    @property
    def resolved(self) -> bool:
        return self.resolved_at is not None

    @property
    def resolving_channel(self) -> str | None:
        return self.steps[-1].channel if self.resolved_at is not None else None

    @property
    def first_contact_resolved(self) -> bool:
        return len(self.steps) == 1 and self.resolved_at is not None and not self.reopened

    @property
    def starts_with_bot(self) -> bool:
        return self.steps[0].was_bot

    @property
    def time_to_first_human_s(self) -> float | None:
        return None if self.first_human_at is None else round((self.first_human_at - self.started_at) / 1000, 3)

    @property
    def time_to_resolution_s(self) -> float | None:
        return None if self.resolved_at is None else round((self.resolved_at - self.started_at) / 1000, 3)

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (inverse of `journey_from_dict`)."""
        return asdict(self)


def journey_from_dict(data: Mapping[str, Any]) -> Journey:
    def score(value: Any) -> Score | None:
        return None if value is None else Score(int(value["score"]), int(value["at"]))

    fields = dict(data)
    fields["steps"] = tuple(JourneyStep(**step) for step in data["steps"])
    for name in ("csat", "ces", "nps"):
        fields[name] = score(data[name])
    return Journey(**fields)


@dataclass(frozen=True, slots=True)
class JourneyVersion:
    """A journey as emitted. `deleted` rows retract a journey that no longer exists;
    `removed_contacts` are contacts that were in the previously emitted version but no longer are
    (their `journey_steps` rows must be retracted)."""

    journey: Journey
    version: int
    deleted: bool = False
    removed_contacts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Emitted:
    """What the store remembers of a journey it wrote (the journey stage persists it per journey
    id, so versions keep growing across restarts and owners): its version, whether that version
    retracted it, its customer and contacts, a digest of its content (unchanged content is not
    written again), and its last activity while it is open (when it turns dormant)."""

    version: int
    deleted: bool
    customer: str
    contact_ids: tuple[str, ...]
    digest: str
    open_since: int | None = None
    intent: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": self.version,
            "x": int(self.deleted),
            "c": self.customer,
            "ids": list(self.contact_ids),
            "d": self.digest,
            "o": self.open_since,
            "i": self.intent,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Emitted:
        return cls(
            int(data["v"]),
            bool(data["x"]),
            str(data["c"]),
            tuple(str(c) for c in data["ids"]),
            str(data["d"]),
            None if data.get("o") is None else int(data["o"]),
            None if data.get("i") is None else str(data["i"]),
        )
