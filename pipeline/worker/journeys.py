"""The journey stage's plain parts: how forwarded event batches are cut and read, how the per-contact
event store is keyed, how journeys are rendered for the topic and the lookup endpoint. The Faust
shell (`pipeline.worker.app`) owns the table, the agent and the timers."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from pipeline.events.models import EVENT_ADAPTER, EventBase, Identifier, IdentifierKind, IdentityLink
from pipeline.journeys.lifecycle import Journey, JourneyVersion, Stitcher, journey_row, step_rows

MAX_FORWARD_BYTES = 900_000  # stay well under the broker's 2 MB message limit


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


def store_key(event: EventBase) -> str:
    """Key of the per-contact event store. Identity links are filed on their own: a CRM merge may
    carry a contact id that no conversation has."""
    return f"link:{event.event_id}" if isinstance(event, IdentityLink) else f"contact:{event.contact_id}"


def rebuild(stored: Iterable[dict[str, str]]) -> tuple[Stitcher, int]:
    """A stitcher from the stored events, applied in event-time order; and the newest event time."""
    events = [EVENT_ADAPTER.validate_json(raw) for per_key in stored for raw in per_key.values()]
    events.sort(key=lambda e: (e.occurred_at, e.event_id))
    stitcher = Stitcher()
    for event in events:
        stitcher.observe(event)
    newest = int(events[-1].occurred_at.timestamp() * 1000) if events else 0
    return stitcher, newest


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
