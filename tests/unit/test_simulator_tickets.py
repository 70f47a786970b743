"""The simulator's ticket-like profile (`--profile tickets`): long e-mail/social threads over 90
days with waits on customer, vendor and team, transfers between teams, repeated reopens and quiet
weekends; its truth is accepted by the independent KPI and SLA oracles."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from pipeline.events.models import EVENT_ADAPTER, Channel, event_type
from pipeline.simulator import tickets
from pipeline.simulator.cli import simulate_command
from pipeline.simulator.model import DAY, SimConfig, Simulation
from pipeline.simulator.truth import ContactTruth
from pipeline.times import to_ms
from tests.oracles.kpi_truth import kpi_oracle
from tests.oracles.sla_truth import sla_oracle

REPO = Path(__file__).resolve().parents[2]
START = to_ms(datetime(2026, 3, 2, tzinfo=UTC))  # a Monday
AGENT_EVENTS = {"agent_assigned", "first_agent_reply", "agent_reply", "transferred", "resolved"}


class TicketRun:
    def __init__(self, days: int, rate: float, seed: int = 5) -> None:
        config = SimConfig(seed=seed, start_ms=START, duration_ms=days * DAY, rate=rate, profile="tickets")
        self.sim = Simulation(config)
        self.events = list(self.sim.run())
        self.contacts: list[ContactTruth] = self.sim.contacts
        self.truth: list[dict[str, Any]] = [c.as_dict() for c in self.contacts]


@pytest.fixture(scope="module")
def run() -> TicketRun:
    return TicketRun(days=91, rate=3.0)


def _moments(c: ContactTruth) -> list[int]:
    times = [c.started_at, *c.agent_replies, *c.customer_messages, *c.resolutions, *c.reopened_at]
    times += [t for leg in c.legs for t in (leg.queued_at, leg.answered_at, leg.transferred_at) if t is not None]
    times += [t for span in c.waiting for t in span if t is not None]
    return sorted([*times, *([c.ended_at] if c.ended_at is not None else [])])


def test_ticket_traffic_has_the_shape_of_a_ticket_desk(run: TicketRun) -> None:
    contacts = run.contacts
    horizon = run.sim.as_of_ms
    assert horizon - START >= 90 * DAY
    assert {c.channel for c in contacts} == {"email", "social"}
    assert 1500 < len(contacts) < 3500, len(contacts)
    reopens = Counter(len(c.reopened_at) for c in contacts)
    assert reopens[1] > 50 and sum(n for k, n in reopens.items() if k >= 2) > 30, reopens
    assert max(reopens) <= tickets.MAX_REOPENS
    reasons = Counter(r for c in contacts for r in c.waiting_reasons)
    assert reasons["customer"] > 300 and reasons["vendor"] > 100 and reasons["internal"] > 50, reasons
    assert all(len(c.waiting_reasons) == len(c.waiting) for c in contacts)
    teams = Counter(leg.queue for c in contacts for leg in c.legs)
    assert set(teams) == set(tickets.TEAMS)
    assert sum(c.transfers for c in contacts) > 300
    assert all(leg.to_queue in tickets.TEAMS and leg.to_queue != leg.queue for c in contacts for leg in c.legs[:-1])
    # threads open for days to weeks; some silent for more than 30 days (still open or not)
    lifetimes = sorted((c.ended_at or horizon) - c.started_at for c in contacts)
    assert lifetimes[len(lifetimes) // 2] > 3 * DAY
    silent = 0
    for c in contacts:
        moments = [*_moments(c), *([horizon] if c.ended_at is None else [])]
        if max(b - a for a, b in itertools.pairwise(moments)) > 30 * DAY:
            silent += 1
    assert silent > 20, silent
    assert sum(1 for c in contacts if c.ended_at is None) > 50  # open at the horizon
    assert sum(1 for c in contacts if c.outcome == "unresolved") > 10  # silent customers closed unresolved


def test_agents_work_weekdays_only_and_weekends_are_quiet(run: TicketRun) -> None:
    per_weekday: Counter[int] = Counter()
    for ms, event in run.events:
        weekday = (ms // DAY + 3) % 7
        if event_type(event) in AGENT_EVENTS:
            assert tickets.is_business(ms), f"{event_type(event)} at {event.occurred_at} outside business hours"
        if event_type(event) == "contact_started":
            per_weekday[weekday] += 1
    weekday_mean = sum(per_weekday[d] for d in range(5)) / 5
    weekend_mean = (per_weekday[5] + per_weekday[6]) / 2
    assert weekend_mean < 0.15 * weekday_mean, per_weekday


def test_events_are_valid_in_time_order_and_carry_team_and_agent(run: TicketRun) -> None:
    times = [ms for ms, _ in run.events]
    assert times == sorted(times)
    for _, event in run.events[:5000]:
        assert EVENT_ADAPTER.validate_python(event.model_dump()) == event
    for _, event in run.events:
        assert event.channel in (Channel.EMAIL, Channel.SOCIAL)
        if event_type(event) in ("agent_assigned", "first_agent_reply", "agent_reply"):
            assert event.agent_id is not None and event.agent_id.startswith("tk-")
            assert event.queue in tickets.TEAMS


def test_the_oracles_accept_ticket_traffic(run: TicketRun) -> None:
    """The independent KPI and SLA oracles run on the ticket truth and find no ambiguity in it
    (same-millisecond ties, first reply = first response); the SLA policies give breaches."""
    horizon = run.sim.as_of_ms
    oracle = kpi_oracle(run.truth, until_ms=horizon)
    assert oracle.problems == []
    assert oracle.contacts == len(run.contacts)
    rows = oracle.rows(horizon, 60)
    assert sum(r["resolved"] for r in rows.values()) > 1000
    assert max(r["backlog_end"] for r in rows.values()) > 5
    sla = sla_oracle(run.truth, REPO / "deploy" / "sla-policies.yaml", until_ms=horizon)
    targets = Counter(b.target for b in sla.breaches)
    assert targets["first_response"] > 10 and targets["resolution"] > 100, targets


def test_business_time_helpers() -> None:
    friday_17 = to_ms(datetime(2026, 3, 6, 17, tzinfo=UTC))
    monday_8 = to_ms(datetime(2026, 3, 9, 8, tzinfo=UTC))
    assert tickets.is_business(friday_17) and not tickets.is_business(friday_17 + 3600_000)
    assert tickets.next_opening(friday_17 + 3600_000) == monday_8
    assert tickets.next_opening(to_ms(datetime(2026, 3, 9, 6, tzinfo=UTC))) == monday_8
    # 90 minutes of work from Friday 17:00: one hour on Friday, half an hour on Monday
    assert tickets.add_business(friday_17, 90 * 60_000) == monday_8 + 30 * 60_000


def test_cli_profile_tickets(tmp_path: Path) -> None:
    out, truth = tmp_path / "events.jsonl", tmp_path / "truth.jsonl"
    result = CliRunner().invoke(
        simulate_command,
        [
            *("--profile", "tickets", "--start", "2026-03-02T00:00Z", "--duration", "14d", "--speed", "0"),
            *("--out", str(out), "--truth", str(truth), "--quiet"),
        ],
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in truth.read_text().splitlines()]
    summary = records[-1]
    assert summary["profile"] == "tickets" and summary["rate"] == tickets.DEFAULT_RATE
    assert summary["duration_seconds"] == 14 * 86_400
    topics = {json.loads(line)["topic"] for line in out.read_text().splitlines()}
    assert topics == {"touchline.interactions.email", "touchline.interactions.social"}
    contacts = [r for r in records if r["kind"] == "contact"]
    assert contacts and all(len(r["waiting_reasons"]) == len(r["waiting_on_customer"]) for r in contacts)
