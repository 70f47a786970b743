"""The journey stage's plain parts: how the analytics stage's events become compact contact records
on `touchline.journey-events` and are read back, how the stage's keyed state is encoded in its
tables, how journeys are rendered for the topic and the lookup endpoint, and the retry of outputs.
The Faust shell (`pipeline.worker.journey_agent`) owns the tables, the agent and the endpoint.

Wire format: each message is a run of contact records (`pipeline.journeys.record`, one JSON object
with `"v": 1` per line), one record per contact of the analytics batch. Messages are keyed by the
contacts' shard (`shard_of`): the identity graph is global, so there is one shard (and the topic
has one partition) today; a graph partitioned by component would raise the shard count without a
change of format. Records are batched because a Faust agent costs about 100 us per message
(`make bench`: a bare agent that only counts and acknowledges does 9,895 messages/s on one core),
which alone would cap a stage reading one message per contact below 10,000 contacts/s."""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_not_exception_type,
    stop_after_delay,
    wait_exponential,
)

from pipeline.events.models import EventBase, IdentifierKind
from pipeline.journeys.model import Emitted, Journey, JourneyVersion
from pipeline.journeys.record import ContactRecord, RecordError, records_of
from pipeline.journeys.rows import journey_row, step_rows
from pipeline.journeys.stitcher import Stitcher

log = logging.getLogger(__name__)

# stay under the producer's 1 MB request limit
MAX_FORWARD_BYTES = 700_000
SHARDS = 1  # the identity graph is global: one shard, one partition
# messages the stage takes as one round (`pipeline.worker.journey_agent`: one, see there; the
# benchmark's `--take` measures rounds of several)
TAKE_MESSAGES = 1

T = TypeVar("T")


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


def shard_of(contact_id: str, shards: int = SHARDS) -> int:
    return zlib.crc32(contact_id.encode()) % shards if shards > 1 else 0


def forward_messages(events: Iterable[EventBase], shards: int = SHARDS) -> list[tuple[bytes, bytes]]:
    """The (key, value) messages that carry `events` to the journey stage: one record per contact,
    grouped by shard, cut under the producer's size limit."""
    by_shard: dict[int, list[bytes]] = {}
    for record in records_of(events):
        by_shard.setdefault(shard_of(record.contact_id, shards), []).append(record.to_json())
    return [(f"shard-{shard}".encode(), chunk) for shard, lines in sorted(by_shard.items()) for chunk in chunks(lines)]


def read_records(value: bytes) -> tuple[list[ContactRecord], list[str]]:
    """The records of one message, and the reasons of lines that could not be read (skipped)."""
    records: list[ContactRecord] = []
    rejected: list[str] = []
    for line in value.split(b"\n"):
        if not line:
            continue
        try:
            records.append(ContactRecord.from_json(line))
        except RecordError as error:
            rejected.append(str(error))
    return records, rejected


def arrival_seq(offset: int, index: int) -> int:
    """Arrival order of the `index`-th record of the message at `offset`: the same when the
    message is read again, so a rebuilt identity graph unites in the original order."""
    return (offset << 20) | min(index, (1 << 20) - 1)


def emitted_value(entry: Emitted) -> bytes:
    return json.dumps(entry.to_dict(), separators=(",", ":")).encode()


def emitted_entry(value: bytes) -> Emitted:
    return Emitted.from_dict(json.loads(value))


JOURNEY_TIMES = ("started_at", "last_activity_at", "first_human_at", "resolved_at")
STEP_TIMES = ("started_at", "ended_at", "first_human_at", "resolved_at")


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def journey_document(
    version: JourneyVersion, row: dict[str, Any] | None = None, steps: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON a consumer of `touchline.journeys` (or the lookup endpoint) sees (from the
    ClickHouse rows of the version when the caller has them already)."""
    document = dict(journey_row(version) if row is None else row)
    for key in JOURNEY_TIMES:
        document[key] = _plain(document[key])
    document["steps"] = [
        {**step, **{key: _plain(step[key]) for key in STEP_TIMES}}
        for step in (step_rows(version) if steps is None else steps)
        if not step["is_deleted"]
    ]
    return document


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def journey_json(
    version: JourneyVersion, row: dict[str, Any] | None = None, steps: list[dict[str, Any]] | None = None
) -> bytes:
    """`journey_document` as JSON bytes. The rows' times (their only datetimes) are rendered by the
    encoder as it meets them: no copy of every row (half the cost of a version's outputs)."""
    row = journey_row(version) if row is None else row
    steps = step_rows(version) if steps is None else steps
    document = {**row, "steps": [step for step in steps if not step["is_deleted"]]}
    return json.dumps(document, separators=(",", ":"), default=_iso).encode()


LOOKUP_KINDS = {kind.value: kind for kind in IdentifierKind}


def lookup(stitcher: Stitcher, kind: str, value: str, as_of: int | None) -> tuple[str, Journey | None, list[Journey]]:
    """The customer key of an identifier, their current journey (the latest open one, else the
    latest) and all their journeys. Raises KeyError for an unknown or unusable identifier."""
    customer = stitcher.graph.customer_of_value(kind, value)
    if customer is None:
        raise KeyError(kind)
    journeys = stitcher.store.journeys(customer, as_of)
    open_ones = [j for j in journeys if j.status == "open"]
    candidates = open_ones or journeys
    return customer, (candidates[-1] if candidates else None), journeys


async def retried(
    what: str,
    attempt: Callable[[], Awaitable[T]],
    *,
    on_retry: Callable[[], None] = lambda: None,
    give_up_after: float = 120.0,
) -> T:
    """`attempt()` until it succeeds, waiting 0.2 s, 0.4 s, ... (at most 5 s) between tries; after
    `give_up_after` seconds of failures the last error is raised, and the stage stops the worker
    (ClickHouse or the broker is not coming back by itself)."""

    def before_sleep(state: RetryCallState) -> None:
        on_retry()
        error = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.warning("%s failed (%s), retrying in %.1f s", what, type(error).__name__, wait)

    async for trying in AsyncRetrying(
        stop=stop_after_delay(give_up_after),
        wait=wait_exponential(multiplier=0.1, min=0.2, max=5.0),
        retry=retry_if_not_exception_type(asyncio.CancelledError),
        before_sleep=before_sleep,
        reraise=True,
    ):
        with trying:
            return await attempt()
    raise AssertionError("unreachable: tenacity re-raises the last error")
