"""The simulator: determinism, event validity, fault injection and ground-truth invariants."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.events.models import EVENT_ADAPTER, EventBase, IdentityLink, event_type, to_json
from pipeline.events.topics import channel_of_topic, interaction_topic
from pipeline.simulator import delivered, delivery_of, summary_of
from pipeline.simulator.cli import parse_duration, parse_start, simulate_command
from pipeline.simulator.faults import BAD_KINDS, Delivery, FaultConfig, FaultInjector, Message
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.simulator.produce import FileSink, Pacer, deliver
from pipeline.simulator.truth import truth_lines
from pipeline.times import iso_ms, to_ms

START = to_ms(datetime(2026, 3, 2, 8, 0, tzinfo=UTC))  # a Monday morning
FAULTS = FaultConfig(duplicate_rate=0.03, late_rate=0.05, max_lateness_s=120, bad_rate=0.02)


class Run:
    def __init__(self, config: SimConfig, faults: FaultConfig, fault_seed: int | None = None) -> None:
        self.sim = Simulation(config)
        self.injector = FaultInjector(faults, config.seed if fault_seed is None else fault_seed, self.sim.tag)
        self.messages: list[Message] = list(delivered(self.sim, self.injector))
        self.summary = summary_of(self.sim, self.injector)
        self.truth = [json.loads(line) for line in truth_lines(
            self.sim.contacts, self.sim.journeys, self.injector.bad_messages, self.summary
        )]  # fmt: skip

    def records(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.truth if r["kind"] == kind]

    def valid(self) -> list[Message]:
        return [m for m in self.messages if m.kind == "event"]


def config(seed: int = 7, **overrides: Any) -> SimConfig:
    options: dict[str, Any] = {"seed": seed, "start_ms": START, "duration_ms": 3 * 3_600_000, "rate": 500.0}
    options.update(overrides)
    return SimConfig(**options)


@pytest.fixture(scope="module")
def run() -> Run:
    return Run(config(), FAULTS)


@pytest.fixture(scope="module")
def events(run: Run) -> list[EventBase]:
    return [EVENT_ADAPTER.validate_json(m.value) for m in run.valid()]


# ---------------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes(run: Run) -> None:
    again = Run(config(), FAULTS)
    assert [(m.topic, m.key, m.value, m.deliver_ms) for m in again.messages] == [
        (m.topic, m.key, m.value, m.deliver_ms) for m in run.messages
    ]
    assert again.truth == run.truth


def test_different_seed_differs(run: Run) -> None:
    other = Run(config(seed=8), FAULTS)
    assert {m.value for m in other.valid()}.isdisjoint({m.value for m in run.valid()})
    assert [m.topic for m in other.messages[:200]] != [m.topic for m in run.messages[:200]]


def test_cli_out_and_truth_are_byte_identical(tmp_path: Path) -> None:
    runner = CliRunner()
    outputs = []
    for name in ("a", "b"):
        out, truth = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.truth.jsonl"
        args = ["--start", "2026-03-02T09:00Z", "--duration", "20m", "--speed", "0", "--seed", "3"]
        args += ["--duplicate-rate", "0.02", "--late-rate", "0.05", "--bad-rate", "0.02", "--quiet"]
        result = runner.invoke(simulate_command, [*args, "--out", str(out), "--truth", str(truth)])
        assert result.exit_code == 0, result.output
        assert "simulate:" in result.output
        outputs.append((out.read_bytes(), truth.read_bytes()))
    assert outputs[0] == outputs[1]
    assert outputs[0][0].count(b"\n") > 500
    line = json.loads(outputs[0][0].splitlines()[0])
    assert set(line) >= {"topic", "key", "at"}


# ---------------------------------------------------------------------------------------- events


def test_every_valid_event_validates_and_matches_its_topic(run: Run) -> None:
    for message in run.messages:
        if message.kind == "bad":
            continue
        event = EVENT_ADAPTER.validate_json(message.value)
        assert message.topic == interaction_topic(event.channel)
        assert message.key == event.contact_id.encode()
        assert to_json(event) == message.value  # canonical bytes
        assert len(message.value) < 65_536


def test_event_ids_unique_and_stream_in_event_time_order() -> None:
    sim = Simulation(config(seed=11, duration_ms=3_600_000))
    times = []
    ids = set()
    for at, event in sim.run():
        times.append(at)
        ids.add(event.event_id)
        assert at == (event.occurred_at - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1000 // 1
    assert times == sorted(times)
    assert len(ids) == len(times) == sim.events_emitted
    assert times[-1] < START + 3_600_000


def test_contacts_start_with_contact_started_and_carry_their_intent(run: Run, events: list[EventBase]) -> None:
    by_contact: dict[str, list[EventBase]] = defaultdict(list)
    for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id)):
        by_contact[event.contact_id].append(event)
    contacts = {c["contact_id"]: c for c in run.records("contact")}
    assert set(by_contact) == set(contacts)
    for contact_id, evs in by_contact.items():
        truth = contacts[contact_id]
        assert event_type(evs[0]) == "contact_started"
        assert {e.intent for e in evs} == {truth["intent"]}
        assert {e.channel.value for e in evs} == {truth["channel"]}
        assert len(evs) == truth["events"]


def test_duplicates_are_identical_copies_delivered_after_the_original(run: Run) -> None:
    first_seen: dict[bytes, int] = {}
    duplicates = 0
    for index, message in enumerate(run.messages):
        if message.kind == "duplicate":
            duplicates += 1
            assert message.value in first_seen
            original = run.messages[first_seen[message.value]]
            assert (original.topic, original.key) == (message.topic, message.key)
        elif message.kind == "event":
            assert message.value not in first_seen
            first_seen[message.value] = index
    assert duplicates == run.summary["duplicates"] > 0


def test_late_events_are_out_of_order_within_max_lateness(run: Run) -> None:
    late = [m for m in run.messages if m.late and m.kind == "event"]
    assert len(late) == run.summary["late"] > 0
    for message in late:
        assert 0 < message.deliver_ms - message.event_ms <= 120_000
    delivered_order = [m.deliver_ms for m in run.messages]
    assert delivered_order == sorted(delivered_order)
    event_order = [m.event_ms for m in run.messages if m.kind == "event"]
    assert event_order != sorted(event_order)  # lateness really reorders


def test_bad_messages_all_fail_validation(run: Run) -> None:
    bad = [m for m in run.messages if m.kind == "bad"]
    assert len(bad) == run.summary["bad"] > 0
    kinds = Counter(m.bad_kind for m in bad)
    assert set(kinds) == set(BAD_KINDS)  # every kind shows up at this size
    for message in bad:
        if message.bad_kind == "channel_mismatch":
            event = EVENT_ADAPTER.validate_json(message.value)
            assert channel_of_topic(message.topic) != event.channel
            continue
        with pytest.raises(ValidationError):
            EVENT_ADAPTER.validate_json(message.value)
        if message.bad_kind == "oversized":
            assert len(message.value) > 65_536
    records = run.records("bad_message")
    assert [r["bad_kind"] for r in records] == [m.bad_kind for m in bad]
    assert [r["topic"] for r in records] == [m.topic for m in bad]


# ---------------------------------------------------------------------------------------- truth


def test_summary_counts_equal_what_was_emitted(run: Run) -> None:
    summary = run.records("summary")[0]
    assert summary["distinct_valid_events"] == len(run.valid())
    assert summary["messages_delivered"] == len(run.messages)
    assert summary["duplicates"] == sum(m.kind == "duplicate" for m in run.messages)
    assert summary["bad"] == sum(summary["bad_by_kind"].values()) == sum(m.kind == "bad" for m in run.messages)
    assert summary["contacts"] == len(run.records("contact"))
    assert summary["journeys"] == len(run.records("journey"))
    assert sum(summary["events_by_type"].values()) == summary["distinct_valid_events"]
    assert sum(c["events"] for c in run.records("contact")) == summary["distinct_valid_events"]
    assert summary["as_of"] == iso_ms(START + 3 * 3_600_000)


def test_queue_and_answer_invariants(run: Run) -> None:
    contacts = run.records("contact")
    answered = abandoned = 0
    for contact in contacts:
        for leg in contact["legs"]:
            if leg["answered_at"] is not None:
                answered += 1
                assert leg["answered_at"] >= leg["queued_at"]
                assert leg["abandoned_at"] is None
            if leg["abandoned_at"] is not None:
                assert leg["answered_at"] is None
        if contact["outcome"] == "abandoned":
            abandoned += 1
            assert contact["ended_at"] == contact["abandoned_at"]
            assert contact["resolved_at"] is None
            if contact["abandoned_stage"] == "queue":
                assert contact["legs"][-1]["answered_at"] is None
            else:
                assert contact["answered_at"] is None
        if contact["answered_at"] is not None:
            assert contact["answered_at"] >= contact["queued_at"]
        if contact["first_response_at"] is not None:
            assert contact["first_response_at"] >= contact["answered_at"]
        if contact["ended_at"] is not None:
            assert contact["ended_at"] >= contact["started_at"]
        assert contact["handle_seconds"] >= contact["talk_seconds"] >= 0
        for survey in contact["surveys"]:
            low, high = {"csat": (1, 5), "ces": (1, 7), "nps": (0, 10)}[survey["survey"]]
            assert low <= survey["score"] <= high
    assert answered > 100 and abandoned > 0


def test_journeys_partition_the_contacts(run: Run) -> None:
    contacts = {c["contact_id"]: c for c in run.records("contact")}
    seen: list[str] = []
    for journey in run.records("journey"):
        assert journey["contact_ids"], journey
        seen.extend(journey["contact_ids"])
        starts = [contacts[c]["started_at"] for c in journey["contact_ids"]]
        assert starts == sorted(starts)
        for contact_id in journey["contact_ids"]:
            contact = contacts[contact_id]
            assert contact["journey_id"] == journey["journey_id"]
            assert contact["customer_key"] == journey["customer_key"]
            assert contact["intent"] == journey["intent"]
        if journey["first_contact_resolved"]:
            assert len(journey["contact_ids"]) == 1 and journey["resolved"]
    assert sorted(seen) == sorted(contacts)
    assert any(len(j["contact_ids"]) > 1 for j in run.records("journey"))


def test_anonymous_callers_are_single_contact_journeys(run: Run) -> None:
    anonymous = [c for c in run.records("contact") if c["anonymous"]]
    assert anonymous
    journeys = {j["journey_id"]: j for j in run.records("journey")}
    keys = Counter(c["customer_key"] for c in anonymous)
    assert max(keys.values()) == 1
    for contact in anonymous:
        assert contact["channel"] == "voice" and contact["customer_id"] is None
        assert journeys[contact["journey_id"]]["contact_ids"] == [contact["contact_id"]]


class _Links:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, node: str) -> str:
        self.parent.setdefault(node, node)
        while self.parent[node] != node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: str, b: str) -> None:
        self.parent[self.find(a)] = self.find(b)


def test_every_known_contact_is_linkable_to_its_customer_id(run: Run, events: list[EventBase]) -> None:
    """Within each contact's own events, its channel identifier meets the customer's customer_id."""
    per_contact: dict[str, _Links] = defaultdict(_Links)
    for event in events:
        links = per_contact[event.contact_id]
        ids = [f"{k}:{v}" for k, v in event.customer.model_dump(exclude_none=True).items()]
        for other in ids[1:]:
            links.union(ids[0], other)
        if isinstance(event, IdentityLink):
            links.union(f"{event.left.kind.value}:{event.left.value}", f"{event.right.kind.value}:{event.right.value}")
    journeys = {j["journey_id"]: j for j in run.records("journey")}
    multi = 0
    for contact in run.records("contact"):
        if contact["anonymous"]:
            continue
        links = per_contact[contact["contact_id"]]
        channel_ids = [n for n in links.parent if not n.startswith("customer_id:")]
        assert channel_ids, contact["contact_id"]
        target = links.find(f"customer_id:{contact['customer_id']}")
        assert all(links.find(n) == target for n in channel_ids), contact["contact_id"]
        multi += len(journeys[contact["journey_id"]]["contact_ids"]) > 1
    assert multi > 0


def test_interrupted_run_truth_matches_what_was_delivered() -> None:
    sim = Simulation(config(seed=5))
    injector = FaultInjector(FaultConfig(late_rate=0.1, duplicate_rate=0.05), 5, sim.tag)
    sent: list[Message] = []
    for message in delivered(sim, injector):
        sent.append(message)
        if len(sent) == 1500:
            sim.stop()
    per_contact = Counter(json.loads(m.value)["contact_id"] for m in sent if m.kind == "event")
    assert {c.contact_id: c.events for c in sim.contacts} == dict(per_contact)
    assert injector.stats.delivered == len(sent)
    assert sim.as_of_ms < START + 3 * 3_600_000


def test_contact_budget_bounds_the_run() -> None:
    sim = Simulation(SimConfig(seed=2, start_ms=START, max_contacts=150, rate=2000))
    emitted = sum(1 for _ in sim.run())
    assert len(sim.contacts) == 150
    assert sum(c.events for c in sim.contacts) == emitted
    assert all(c.ended_at is not None for c in sim.contacts)  # with no duration, everything finishes


# ---------------------------------------------------------------------------------------- faults


@pytest.fixture(scope="module")
def plain() -> list[Delivery]:
    sim = Simulation(config(seed=21, duration_ms=20 * 60_000))
    return [delivery_of(event, at) for at, event in sim.run()]


@settings(max_examples=25, deadline=None)
@given(
    duplicate=st.floats(0, 1),
    late=st.floats(0, 1),
    bad=st.floats(0, 1),
    lateness=st.floats(0, 600),
    seed=st.integers(0, 2**32),
)
def test_fault_injection_never_changes_the_distinct_valid_events(
    plain: list[Delivery], duplicate: float, late: float, bad: float, lateness: float, seed: int
) -> None:
    injector = FaultInjector(FaultConfig(duplicate, late, lateness, bad), seed)
    out: list[Message] = []
    for delivery in plain:
        out.extend(injector.feed(delivery))
    out.extend(injector.flush())
    valid = [(m.topic, m.key, m.value) for m in out if m.kind != "bad"]
    assert set(valid) == {(d.topic, d.key, d.value) for d in plain}
    assert len([m for m in out if m.kind == "event"]) == len(plain)
    assert injector.stats.delivered == len(out)
    assert [m.deliver_ms for m in out] == sorted(m.deliver_ms for m in out)
    for message in out:
        if message.kind == "bad" and message.bad_kind != "channel_mismatch":
            with pytest.raises(ValidationError):
                EVENT_ADAPTER.validate_json(message.value)


# ---------------------------------------------------------------------------------------- plumbing


def test_parse_duration() -> None:
    assert parse_duration("2h") == 7_200_000
    assert parse_duration("90m") == 5_400_000
    assert parse_duration("3600s") == 3_600_000
    assert parse_duration("1d") == 86_400_000
    assert parse_duration("1h30m") == 5_400_000
    assert parse_duration("45") == 45_000
    for bad in ("", "abc", "0s", "2x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_parse_start() -> None:
    assert parse_start("2026-03-02T08:00Z") == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert parse_start("2026-03-02T09:00:00+01:00") == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    assert parse_start("2026-03-02 08:00") == datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
    now = parse_start(None)
    assert now.second == 0 and now.microsecond == 0 and now.tzinfo is not None


def test_file_sink_writes_the_out_format(tmp_path: Path, run: Run) -> None:
    path = tmp_path / "out.jsonl"
    sink = FileSink(path)
    report = deliver(run.messages[:300], sink, Pacer(0, None))
    sink.close()
    assert report.sent == 300
    for line, message in zip(path.read_bytes().splitlines(), run.messages[:300], strict=True):
        record = json.loads(line)
        assert record["topic"] == message.topic and record["at"] == iso_ms(message.deliver_ms)
        if message.kind == "bad":
            assert record["bad"] == message.bad_kind and "value_b64" in record
        else:
            assert EVENT_ADAPTER.validate_python(record["value"]).event_id == json.loads(message.value)["event_id"]


def test_staffing_makes_queues_under_stress() -> None:
    """With arrivals far above the staffing plan, waits and abandonment emerge."""
    sim = Simulation(config(seed=9, duration_ms=2 * 3_600_000))
    sim._plan = {name: tuple(max(1, n // 3) for n in hours) for name, hours in sim._plan.items()}
    for _ in sim.run():
        pass
    voice = [c for c in sim.contacts if c.channel == "voice" and c.legs]
    abandoned = [c for c in voice if c.abandoned_stage == "queue"]
    assert len(abandoned) > 0.1 * len(voice)
