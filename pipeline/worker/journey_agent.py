"""The journey stage's Faust shell: the agent on `touchline.journey-events`, its table, the timer
that emits changed journeys, and the lookup endpoint. The plain parts are in
`pipeline.worker.journeys`."""

from __future__ import annotations

import logging
from typing import Any

import faust
from clickhouse_connect.driver.client import Client
from faust.web import Request, Response

from pipeline.events.models import EventBase
from pipeline.events.topics import JOURNEY_EVENTS_TOPIC, JOURNEYS_TOPIC
from pipeline.journeys.lifecycle import JourneyVersion, Stitcher, journey_row, step_rows
from pipeline.store.clickhouse import BlockingExecutor, insert_dicts
from pipeline.worker import journeys as journey_stage
from pipeline.worker import metrics
from pipeline.worker.produce import produce

log = logging.getLogger(__name__)


async def forward_events(app: faust.App, events: list[tuple[EventBase, bytes]]) -> None:
    """What the analytics stage hands the journey stage: each new valid event (decoded, and its raw
    bytes), once per batch, delivered before the batch counts as checkpointable."""
    await produce(
        app, JOURNEY_EVENTS_TOPIC, ((None, chunk, None) for chunk in journey_stage.chunks([raw for _, raw in events]))
    )


def install_journey_stage(
    app: faust.App, client: Client, executor: BlockingExecutor, journey_events_topic: Any
) -> None:
    # one partition, so one worker at a time owns the identity graph and the books. Every forwarded
    # batch's new events are logged in a Faust table (RocksDB + changelog), one entry per batch,
    # from which the stitcher is rebuilt when this worker gets the partition.
    journey_log = app.Table(  # batch_key -> batch_value
        "journey-event-batches", default=None, partitions=1, key_type=bytes, value_type=bytes
    )
    journey_state: dict[str, Any] = {"stitcher": None, "newest_ms": 0, "seen": set()}

    def stitcher() -> Stitcher:
        current = journey_state["stitcher"]
        if current is None:
            current, newest, seen = journey_stage.rebuild(v for v in journey_log.values() if v)
            journey_state["stitcher"], journey_state["newest_ms"], journey_state["seen"] = current, newest, seen
        assert isinstance(current, Stitcher)
        return current

    @app.agent(journey_events_topic)
    async def stitch(stream: Any) -> None:
        async for event in stream.events():
            core = stitcher()
            seen: set[str] = journey_state["seen"]
            fresh = [e for e in journey_stage.read_batch(event.value) if e.event_id not in seen]
            if not fresh:
                continue
            journey_log[journey_stage.batch_key(event.message.partition, event.message.offset)] = (
                journey_stage.batch_value(fresh)
            )
            newest = journey_state["newest_ms"]
            for item in fresh:
                seen.add(item.event_id)
                resolution = core.observe(item)
                for refusal in resolution.refusals:
                    metrics.IDENTITY_REFUSALS.labels(refusal.reason).inc()
                    log.warning("identity link refused (%s): %s ~ %s", refusal.reason, refusal.left, refusal.right)
                newest = max(newest, int(item.occurred_at.timestamp() * 1000))
            journey_state["newest_ms"] = newest

    @app.timer(interval=1.0)
    async def emit_journeys() -> None:
        core = journey_state["stitcher"]
        if core is None:
            return
        changed: list[JourneyVersion] = core.changes(as_of=journey_state["newest_ms"] or None)
        if not changed:
            return
        await executor.run(insert_dicts, client, "journeys", [journey_row(v) for v in changed])
        await executor.run(insert_dicts, client, "journey_steps", [r for v in changed for r in step_rows(v)])
        for version in changed:
            metrics.JOURNEY_UPDATES.labels("deleted" if version.deleted else version.journey.status).inc()
        await produce(
            app,
            JOURNEYS_TOPIC,
            ((v.journey.journey_id.encode(), journey_stage.journey_json(v), None) for v in changed),
        )

    @app.page("/journeys/lookup")
    @app.table_route(table=journey_log, query_param="value")
    async def journey_lookup(web: Any, request: Request) -> Response:
        """GET /journeys/lookup?kind=phone&value=%2B44...: the customer's current journey."""
        kind, value = request.query.get("kind", ""), request.query.get("value", "")
        if kind not in journey_stage.LOOKUP_KINDS or not value:
            kinds = ", ".join(sorted(journey_stage.LOOKUP_KINDS))
            body = {"error": "bad request", "detail": f"give ?kind=<{kinds}>&value=<identifier>"}
            response: Response = web.json(body, status=400)
            return response
        core = journey_state["stitcher"]
        try:
            if core is None:
                raise KeyError(value)
            customer, current, all_journeys = journey_stage.lookup(
                core, kind, value, journey_state["newest_ms"] or None
            )
        except KeyError:
            response = web.json({"error": "unknown identifier", "kind": kind, "value": value}, status=404)
            return response
        document = {
            "customer": customer,
            "current_journey": None if current is None else journey_stage.journey_document(JourneyVersion(current, 0)),
            "journeys": [j.journey_id for j in all_journeys],
        }
        response = web.json(document)
        return response

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assignment(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
        # rebuilt lazily from the table once this worker processes the journey partition
        journey_state["stitcher"] = None
