"""Delivery faults: redelivered duplicates, late (out-of-order) delivery and malformed messages.

Pure and streaming. Feed valid deliveries in event-time order to `FaultInjector.feed`; it yields
`Message`s in delivery order as soon as nothing later can overtake them, and `flush()` yields the
rest. Faults never alter a valid event: duplicates are byte-identical copies with the same key, late
events keep their event time, and malformed messages are extra messages, never replacements.
"""

from __future__ import annotations

import base64
import heapq
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline.events.models import Channel, EventBase
from pipeline.events.topics import TopicNames
from pipeline.simulator.truth import BadMessageTruth

BAD_KINDS: tuple[str, ...] = (
    "not_json",
    "missing_event_id",
    "survey_score_out_of_range",
    "naive_timestamp",
    "unknown_event_type",
    "channel_mismatch",
    "oversized",
)
OVERSIZED_BYTES = 70_000  # above the 64 KiB limit
DUPLICATE_DELAY_MS = (50, 3_000)

MessageKind = Literal["event", "duplicate", "bad"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One valid event ready to send: where, the key, the canonical bytes and its event time."""

    topic: str
    key: bytes
    value: bytes
    event_ms: int


@dataclass(frozen=True, slots=True)
class Message:
    """One message as delivered (what a consumer sees, plus what the injector knows about it)."""

    deliver_ms: int
    topic: str
    key: bytes | None
    value: bytes
    event_ms: int
    kind: MessageKind = "event"
    late: bool = False
    bad_kind: str | None = None


@dataclass(frozen=True, slots=True)
class FaultConfig:
    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    max_lateness_s: float = 120.0
    bad_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("duplicate_rate", "late_rate", "bad_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value}")
        if self.max_lateness_s < 0:
            raise ValueError("max_lateness_s must not be negative")

    @property
    def active(self) -> bool:
        return bool(self.duplicate_rate or self.late_rate or self.bad_rate)


@dataclass(slots=True)
class FaultStats:
    valid: int = 0  # distinct valid events
    delivered: int = 0  # every message delivered (valid + duplicates + bad)
    duplicates: int = 0
    late: int = 0
    bad: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {
            "distinct_valid_events": self.valid,
            "messages_delivered": self.delivered,
            "duplicates": self.duplicates,
            "late": self.late,
            "bad": sum(self.bad.values()),
            "bad_by_kind": {kind: self.bad[kind] for kind in BAD_KINDS if self.bad[kind]},
        }


class FaultInjector:
    """Turns the valid stream into the delivered stream. Deterministic for a given seed."""

    def __init__(self, config: FaultConfig, seed: int, run_tag: str = "run") -> None:
        self.config = config
        self.rng = random.Random(f"touchline-faults/{seed}/{run_tag}")
        self.stats = FaultStats()
        self.bad_messages: list[BadMessageTruth] = []
        self._tag = run_tag
        self._pending: list[tuple[int, int, Message]] = []
        self._seq = 0
        self._bad_seq = 0
        self._max_lateness_ms = int(config.max_lateness_s * 1000)

    def _push(self, message: Message) -> None:
        self._seq += 1
        heapq.heappush(self._pending, (message.deliver_ms, self._seq, message))

    def feed(self, delivery: Delivery) -> Iterator[Message]:
        """Add the next valid event (event times must not decrease); yield what is now due."""
        config = self.config
        self.stats.valid += 1
        now = delivery.event_ms
        if not config.active:
            self.stats.delivered += 1
            yield Message(now, delivery.topic, delivery.key, delivery.value, now)
            return
        rng = self.rng
        deliver_ms = now
        late = False
        if config.late_rate and rng.random() < config.late_rate and self._max_lateness_ms > 0:
            deliver_ms = now + rng.randint(1, self._max_lateness_ms)
            late = True
        self._push(Message(deliver_ms, delivery.topic, delivery.key, delivery.value, now, "event", late))
        if config.duplicate_rate and rng.random() < config.duplicate_rate:
            again = deliver_ms + rng.randint(*DUPLICATE_DELAY_MS)
            self._push(Message(again, delivery.topic, delivery.key, delivery.value, now, "duplicate", late))
        if config.bad_rate and rng.random() < config.bad_rate:
            self._push(self._bad(delivery))
        yield from self._release(now)

    def flush(self) -> Iterator[Message]:
        """Everything still pending, in delivery order."""
        yield from self._release(None)

    def _release(self, upto: int | None) -> Iterator[Message]:
        pending = self._pending
        stats = self.stats
        while pending and (upto is None or pending[0][0] <= upto):
            message = heapq.heappop(pending)[2]
            stats.delivered += 1
            if message.kind == "duplicate":
                stats.duplicates += 1
            elif message.kind == "bad":
                assert message.bad_kind is not None
                stats.bad[message.bad_kind] += 1
                self.bad_messages.append(
                    BadMessageTruth(
                        topic=message.topic,
                        key=message.key.decode() if message.key is not None else None,
                        kind=message.bad_kind,
                        value_b64=base64.b64encode(message.value).decode(),
                        delivered_at=message.deliver_ms,
                        size=len(message.value),
                    )
                )
            elif message.late:
                stats.late += 1
            yield message

    # ------------------------------------------------------------------ malformed messages

    def _bad(self, template: Delivery) -> Message:
        kind = self.rng.choice(BAD_KINDS)
        topic, value = make_bad(kind, template, self.rng, f"bad-{self._tag}-{self._next_bad():08d}")
        when = template.event_ms + self.rng.randint(0, 1_000)
        return Message(when, topic, template.key, value, template.event_ms, "bad", False, kind)

    def _next_bad(self) -> int:
        self._bad_seq += 1
        return self._bad_seq


_BASE_FIELDS = tuple(EventBase.model_fields)  # the fields every event carries


def make_bad(kind: str, template: Delivery, rng: random.Random, bad_id: str) -> tuple[str, bytes]:
    """A malformed message of `kind` modelled on a valid event: (topic, bytes). Pure."""
    source: dict[str, Any] = json.loads(template.value)
    base = {k: source[k] for k in _BASE_FIELDS if k in source}
    base["event_id"] = bad_id
    topic = template.topic

    def dumps(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    if kind == "not_json":
        cut = rng.randint(1, max(1, len(template.value) - 2))
        return topic, template.value[:cut] + b"\x00\xff"
    if kind == "missing_event_id":
        body = {k: v for k, v in source.items() if k != "event_id"}
        return topic, dumps(body)
    if kind == "survey_score_out_of_range":
        survey = rng.choice(("csat", "ces", "nps"))
        score = {"csat": rng.choice((0, 6, 9)), "ces": rng.choice((0, 8)), "nps": rng.choice((-1, 11))}[survey]
        return topic, dumps({**base, "type": "survey_response", "survey": survey, "score": score})
    if kind == "naive_timestamp":
        body = dict(source, event_id=bad_id)
        body["occurred_at"] = str(body["occurred_at"]).removesuffix("Z")
        return topic, dumps(body)
    if kind == "unknown_event_type":
        return topic, dumps({**base, "type": rng.choice(("screen_pop", "wrap_up_code", "coffee_break"))})
    if kind == "channel_mismatch":
        current = Channel(source["channel"])
        other = rng.choice([c for c in Channel if c != current])
        # Valid as an event, but sent to the topic of another channel.
        body = dict(source, event_id=bad_id)
        names = TopicNames.of_interaction_topic(topic)
        assert names is not None, f"{topic!r} is not a channel topic"
        return names.interaction(other), dumps(body)
    if kind == "oversized":
        body = dict(source, event_id=bad_id, transcript="lorem ipsum " * (OVERSIZED_BYTES // 12 + 1))
        return topic, dumps(body)
    raise ValueError(f"unknown bad-message kind {kind!r}")
