"""The ClickHouse rows of an emitted journey (`schemas/clickhouse/0004_journeys.sql`): `journeys` and
`journey_steps`."""

from __future__ import annotations

from typing import Any

from pipeline.journeys.contact import from_ms
from pipeline.journeys.model import JourneyVersion


def journey_row(emitted: JourneyVersion) -> dict[str, Any]:
    """The `journeys` row of an emitted journey (times as aware datetimes)."""
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
    return {
        "journey_id": j.journey_id,
        "customer_key": j.customer,
        "intent": j.intent or "",
        "status": j.status,
        "started_at": from_ms(started),
        "last_activity_at": from_ms(j.last_activity_at),
        "contact_ids": contact_ids,
        "channel_path": path,
        "contacts": len(steps),
        "channel_switches": switches,
        "transfers": transfers,
        "bot_handoffs": handoffs,
        "bot_contained_contacts": contained,
        "ivr_zero_outs": zero_outs,
        "abandoned_contacts": abandoned,
        "starts_with_bot": int(steps[0].was_bot),
        "first_human_at": None if human is None else from_ms(human),
        "first_human_channel": j.first_human_channel or "",
        "time_to_first_human_s": None if human is None else round((human - started) / 1000, 3),
        "resolved": int(resolved),
        "resolved_at": None if resolved_at is None else from_ms(resolved_at),
        "resolved_by": j.resolved_by or "",
        "resolving_channel": steps[-1].channel if resolved else "",
        "time_to_resolution_s": None if resolved_at is None else round((resolved_at - started) / 1000, 3),
        "first_contact_resolved": int(len(steps) == 1 and resolved and not j.reopened),
        "reopened": int(j.reopened),
        "last_csat": None if csat is None else csat.score,
        "last_ces": None if ces is None else ces.score,
        "last_nps": None if nps is None else nps.score,
        "effort_score": j.effort,
        "version": emitted.version,
        "is_deleted": int(emitted.deleted),
    }


def step_rows(emitted: JourneyVersion) -> list[dict[str, Any]]:
    """The `journey_steps` rows of an emitted journey, retractions of removed contacts included."""
    j = emitted.journey
    rows: list[dict[str, Any]] = []
    for s in j.steps:
        rows.append(
            {
                "journey_id": j.journey_id,
                "contact_id": s.contact_id,
                "step": s.step,
                "customer_key": j.customer,
                "intent": j.intent or "",
                "channel": s.channel,
                "started_at": from_ms(s.started_at),
                "ended_at": None if s.ended_at is None else from_ms(s.ended_at),
                "first_human_at": None if s.first_human_at is None else from_ms(s.first_human_at),
                "resolved_at": None if s.resolved_at is None else from_ms(s.resolved_at),
                "resolved_by": s.resolved_by or "",
                "was_bot": int(s.was_bot),
                "handed_off": int(s.handed_off),
                "bot_contained": int(s.bot_contained),
                "transfers": s.transfers,
                "ivr_zero_out": int(s.ivr_zero_out),
                "abandoned": int(s.abandoned),
                "reopened": int(s.reopened),
                "version": emitted.version,
                "is_deleted": int(emitted.deleted),
            }
        )
    template = rows[0] if rows else None
    for contact_id in emitted.removed_contacts if not emitted.deleted else ():
        assert template is not None
        rows.append({**template, "contact_id": contact_id, "step": 0, "is_deleted": 1})
    return rows
