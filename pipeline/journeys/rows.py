"""The ClickHouse rows of an emitted journey (`schemas/clickhouse/0004_journeys.sql`): `journeys` and
`journey_steps`, as value lists in column order (`JOURNEY_COLUMNS`, `STEP_COLUMNS`: what the stage
inserts) or as column -> value dicts (`journey_row`, `step_rows`).

Times are rendered by a function of epoch ms (`from_ms` for the rows: aware datetimes; the topic
documents pass an ISO renderer), so one pass builds both forms."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pipeline.journeys.contact import from_ms
from pipeline.journeys.model import JourneyVersion

JOURNEY_COLUMNS = (
    "journey_id", "customer_key", "intent", "status", "started_at", "last_activity_at", "contact_ids",
    "channel_path", "contacts", "channel_switches", "transfers", "bot_handoffs", "bot_contained_contacts",
    "ivr_zero_outs", "abandoned_contacts", "starts_with_bot", "first_human_at", "first_human_channel",
    "time_to_first_human_s", "resolved", "resolved_at", "resolved_by", "resolving_channel",
    "time_to_resolution_s", "first_contact_resolved", "reopened", "last_csat", "last_ces", "last_nps",
    "effort_score", "version", "is_deleted",
)  # fmt: skip
STEP_COLUMNS = (
    "journey_id", "contact_id", "step", "customer_key", "intent", "channel", "started_at", "ended_at",
    "first_human_at", "resolved_at", "resolved_by", "was_bot", "handed_off", "bot_contained", "transfers",
    "ivr_zero_out", "abandoned", "reopened", "version", "is_deleted",
)  # fmt: skip
STEP_CONTACT = STEP_COLUMNS.index("contact_id")
STEP_NUMBER = STEP_COLUMNS.index("step")
STEP_DELETED = STEP_COLUMNS.index("is_deleted")


def journey_values(emitted: JourneyVersion, time: Callable[[int], Any] = from_ms) -> list[Any]:
    """The `journeys` row of an emitted journey in `JOURNEY_COLUMNS` order (times by `time`)."""
    j = emitted.journey
    steps = j.steps
    # one pass over the steps (the Journey properties each walk them again: twice the cost)
    contact_ids: list[str] = []
    path: list[str] = []
    switches = transfers = handoffs = contained = zero_outs = abandoned = 0
    previous: str | None = None
    for step in steps:
        contact_ids.append(step.contact_id)
        channel = step.channel
        path.append(channel)
        if previous is not None and channel != previous:
            switches += 1
        previous = channel
        transfers += step.transfers
        handoffs += step.handed_off
        contained += step.bot_contained
        zero_outs += step.ivr_zero_out
        abandoned += step.abandoned
    started, human, resolved_at = j.started_at, j.first_human_at, j.resolved_at
    resolved = resolved_at is not None
    csat, ces, nps = j.csat, j.ces, j.nps
    return [
        j.journey_id,
        j.customer,
        j.intent or "",
        j.status,
        time(started),
        time(j.last_activity_at),
        contact_ids,
        path,
        len(steps),
        switches,
        transfers,
        handoffs,
        contained,
        zero_outs,
        abandoned,
        int(steps[0].was_bot),
        None if human is None else time(human),
        j.first_human_channel or "",
        None if human is None else round((human - started) / 1000, 3),
        int(resolved),
        None if resolved_at is None else time(resolved_at),
        j.resolved_by or "",
        steps[-1].channel if resolved else "",
        None if resolved_at is None else round((resolved_at - started) / 1000, 3),
        int(len(steps) == 1 and resolved and not j.reopened),
        int(j.reopened),
        None if csat is None else csat.score,
        None if ces is None else ces.score,
        None if nps is None else nps.score,
        j.effort,
        emitted.version,
        int(emitted.deleted),
    ]


def step_values(emitted: JourneyVersion, time: Callable[[int], Any] = from_ms) -> list[list[Any]]:
    """The `journey_steps` rows of an emitted journey in `STEP_COLUMNS` order, retractions of
    removed contacts included (times by `time`)."""
    j = emitted.journey
    journey_id, customer, intent = j.journey_id, j.customer, j.intent or ""
    version, deleted = emitted.version, int(emitted.deleted)
    rows: list[list[Any]] = [
        [
            journey_id,
            s.contact_id,
            s.step,
            customer,
            intent,
            s.channel,
            time(s.started_at),
            None if s.ended_at is None else time(s.ended_at),
            None if s.first_human_at is None else time(s.first_human_at),
            None if s.resolved_at is None else time(s.resolved_at),
            s.resolved_by or "",
            int(s.was_bot),
            int(s.handed_off),
            int(s.bot_contained),
            s.transfers,
            int(s.ivr_zero_out),
            int(s.abandoned),
            int(s.reopened),
            version,
            deleted,
        ]
        for s in j.steps
    ]
    if rows and not emitted.deleted:
        template = rows[0]
        for contact_id in emitted.removed_contacts:
            retracted = list(template)
            retracted[STEP_CONTACT], retracted[STEP_NUMBER], retracted[STEP_DELETED] = contact_id, 0, 1
            rows.append(retracted)
    return rows


def journey_row(emitted: JourneyVersion) -> dict[str, Any]:
    """The `journeys` row of an emitted journey (times as aware datetimes)."""
    return dict(zip(JOURNEY_COLUMNS, journey_values(emitted), strict=True))


def step_rows(emitted: JourneyVersion) -> list[dict[str, Any]]:
    """The `journey_steps` rows of an emitted journey, retractions of removed contacts included."""
    return [dict(zip(STEP_COLUMNS, row, strict=True)) for row in step_values(emitted)]
