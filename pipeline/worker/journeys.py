"""The journey stage's plain parts: how forwarded event batches are cut and read, how they are kept
in the stage's event log (one table entry per batch, so a table write and its changelog message
serve thousands of events) and replayed into a stitcher, how journeys are rendered for the topic and
the lookup endpoint. The Faust shell (`pipeline.worker.app`) owns the table, the agent and the
timers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pipeline.events.models import EVENT_ADAPTER, EventBase, Identifier, IdentifierKind, to_json
from pipeline.journeys.lifecycle import Journey, JourneyVersion, Stitcher, journey_row, step_rows

# stay under the producer's 1 MB request limit, also when the journey stage logs a batch re-serialized
MAX_FORWARD_BYTES = 700_000


def chunks(values: list[bytes], limit: int = MAX_FORWARD_BYTES) -> Iterator[bytes]:
    """Newline-joined runs of `values`, each at most `limit` bytes (a single larger value alone)."""
    run: list[bytes] = []
    size = 0
    for value in values:
        if run and size + len(value) + 1 > limit:
            yield b"\n".join(run)
            run, size = [], 0
        run.append(value)
        size += len(value) + 1
    if run:
        yield b"\n".join(run)


def read_batch(value: bytes) -> list[EventBase]:
    """Events of one forwarded batch (already validated upstream)."""
    return [EVENT_ADAPTER.validate_json(line) for line in value.split(b"\n") if line]


def batch_key(partition: int, offset: int) -> str:
    """Key of one forwarded batch in the journey stage's event log table (redelivery: same key)."""
    return f"batch:{partition}:{offset}"


def batch_value(events: Iterable[EventBase]) -> bytes:
    """What the log table keeps of a batch: its new events, one canonical JSON per line."""
    return b"\n".join(to_json(event) for event in events)


def rebuild(batches: Iterable[bytes]) -> tuple[Stitcher, int, set[str]]:
    """A stitcher from the logged batches, events applied once each in event-time order; the newest
    event time (epoch ms) and the ids of the events applied."""
    events: dict[str, EventBase] = {}
    for batch in batches:
        for line in batch.split(b"\n"):
            if line:
                event = EVENT_ADAPTER.validate_json(line)
                events.setdefault(event.event_id, event)
    ordered = sorted(events.values(), key=lambda e: (e.occurred_at, e.event_id))
    stitcher = Stitcher()
    for item in ordered:
        stitcher.observe(item)
    newest = int(ordered[-1].occurred_at.timestamp() * 1000) if ordered else 0
    return stitcher, newest, set(events)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def journey_document(version: JourneyVersion) -> dict[str, Any]:
    """The JSON a consumer of `touchline.journeys` (or the lookup endpoint) sees."""
    row = {k: _plain(v) for k, v in journey_row(version).items()}
    row["steps"] = [
        {k: _plain(v) for k, v in step.items()} for step in step_rows(version) if not step.get("is_deleted")
    ]
    return row


def journey_json(version: JourneyVersion) -> bytes:
    return json.dumps(journey_document(version), separators=(",", ":")).encode()


LOOKUP_KINDS = {kind.value: kind for kind in IdentifierKind}


def lookup(stitcher: Stitcher, kind: str, value: str, as_of: int | None) -> tuple[str, Journey | None, list[Journey]]:
    """The customer key of an identifier, their current journey (the latest open one, else the
    latest) and all their journeys. Raises KeyError for an unknown identifier."""
    customer = stitcher.graph.customer_of(Identifier(kind=LOOKUP_KINDS[kind], value=value))
    if customer is None:
        raise KeyError(value)
    journeys = stitcher.store.journeys(customer, as_of)
    open_ones = [j for j in journeys if j.status == "open"]
    candidates = open_ones or journeys
    return customer, (candidates[-1] if candidates else None), journeys
