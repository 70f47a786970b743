"""Journeys end to end: a day of simulated traffic with cross-channel returns, identity links,
duplicates and late events, through the real broker, worker(s) and embedded ClickHouse; every
journey in ClickHouse must equal the simulator's truth. Also the live lookup over HTTP."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest

from pipeline.events.topics import INTERACTION_TOPICS
from pipeline.simulator.truth import read_truth

from .conftest import PARTITIONS, Worker, Workspace, wait_until

pytestmark = pytest.mark.integration

START = "2026-03-02T00:00:00Z"


def simulate_day(workspace: Workspace, seed: int) -> list[dict[str, Any]]:
    truth = workspace.path / "truth.jsonl"
    workspace.cli(
        "simulate", "--seed", seed, "--start", START, "--duration", "24h", "--rate", "250", "--speed", "0",
        "--duplicate-rate", "0.05", "--late-rate", "0.05", "--max-lateness", "120", "--truth", truth,
    )  # fmt: skip
    return read_truth(truth)


def iso(value: str | None) -> str | None:
    """ClickHouse DateTime64(3) as the truth writes it: 2026-03-02T08:00:05.889Z."""
    if value is None:
        return None
    return value.replace(" ", "T")[:23] + "Z"


JOURNEY_QUERY = """
SELECT journey_id, customer_key, contact_ids, channel_path, intent, toString(started_at),
       first_contact_resolved, resolved, toString(resolved_at), time_to_resolution_s, reopened
FROM journeys FINAL WHERE is_deleted = 0
"""


def compare(rows: list[list[Any]], records: list[dict[str, Any]]) -> tuple[int, list[str]]:
    ours = {tuple(r[2]): r for r in rows}
    truth = [r for r in records if r["kind"] == "journey"]
    mismatches = []
    for t in truth:
        row = ours.get(tuple(t["contact_ids"]))
        if row is None:
            mismatches.append(f"{t['journey_id']}: contacts {t['contact_ids']} are not one journey")
            continue
        customer = f"cust:{t['customer_id']}" if t["customer_id"] else f"anon:{t['contact_ids'][0]}"
        got = (row[1], list(row[3]), row[4], iso(row[5]), bool(row[6]), bool(row[7]), iso(row[8]) if row[7] else None)
        want = (
            customer,
            t["channels"],
            t["intent"],
            t["started_at"],
            t["first_contact_resolved"],
            t["resolved"],
            t["resolved_at"],
        )
        if t["resolved"]:
            got += (round(float(row[9]), 3), bool(row[10]))
            want += (t["resolution_seconds"], t["reopened"])
        if got != want:
            mismatches.append(f"{t['journey_id']}: got {got}, truth {want}")
    if len(rows) != len(truth):
        mismatches.append(f"{len(rows)} journeys stored, {len(truth)} in the truth")
    return len(truth), mismatches


def wait_for_journeys(worker: Worker, records: list[dict[str, Any]], summary: dict[str, Any]) -> list[list[Any]]:
    wait_until(
        lambda: worker.metric("touchline_events_consumed_total") >= summary["messages_delivered"],
        300,
        "all messages read",
    )
    wanted = sum(1 for r in records if r["kind"] == "journey")
    rows: list[list[Any]] = []

    def settled() -> bool:
        nonlocal rows
        rows = worker.sql(JOURNEY_QUERY)
        return len(rows) >= wanted and worker.metric("touchline_pending_rows") == 0

    wait_until(settled, 300, f"{wanted} journeys", interval=2)
    return worker.sql(JOURNEY_QUERY)


def assert_matches_truth(rows: list[list[Any]], records: list[dict[str, Any]]) -> None:
    compared, mismatches = compare(rows, records)
    multi = sum(1 for r in records if r["kind"] == "journey" and r["contacts"] > 1)
    links = sum(1 for r in records if r["kind"] == "contact" and r["identity"] == "identity_link")
    print(
        f"compared {compared} journeys ({multi} multi-contact, {links} contacts tied by identity links): {len(mismatches)} mismatches"
    )
    assert compared > 1000 and multi > 50 and links > 50
    assert mismatches == [], "\n".join(mismatches[:10])


def test_a_day_of_journeys_matches_the_truth_and_lookup_works(workspace: Workspace) -> None:
    records = simulate_day(workspace, seed=31)
    summary = next(r for r in records if r["kind"] == "summary")
    worker = workspace.start_worker()
    rows = wait_for_journeys(worker, records, summary)
    assert_matches_truth(rows, records)

    # live lookup by any identifier of a customer with a multi-contact journey
    journey = next(r for r in records if r["kind"] == "journey" and r["contacts"] > 1 and r["customer_id"])
    theirs = [
        r["contact_ids"] for r in records if r["kind"] == "journey" and r["customer_id"] == journey["customer_id"]
    ]
    found = json.loads(worker.get(f"/journeys/lookup?kind=customer_id&value={journey['customer_id']}"))
    assert found["customer"] == f"cust:{journey['customer_id']}"
    assert f"j-{journey['contact_ids'][0]}" in found["journeys"]
    assert found["current_journey"]["contact_ids"] in theirs
    assert [s["contact_id"] for s in found["current_journey"]["steps"]] == found["current_journey"]["contact_ids"]
    # the same customer by a channel identifier carried on one of their contacts' events
    phone = worker.sql(
        f"SELECT any(phone) FROM interaction_events WHERE phone != '' AND customer_id = '{journey['customer_id']}'"
    )[0][0]
    if phone:
        by_phone = json.loads(worker.get(f"/journeys/lookup?kind=phone&value={urllib.request.quote(phone)}"))
        assert by_phone["customer"] == found["customer"]
    for kind, value in (("phone", "+000000000000"), ("email", "nobody@example.invalid")):
        with pytest.raises(urllib.error.HTTPError) as raised:
            worker.get(f"/journeys/lookup?kind={kind}&value={urllib.request.quote(value)}")
        assert raised.value.code == 404
        body = json.loads(raised.value.read())
        assert body == {"error": "unknown identifier", "kind": kind, "value": value}
    with pytest.raises(urllib.error.HTTPError) as raised:
        worker.get("/journeys/lookup?kind=shoe_size&value=42")
    assert raised.value.code == 400 and b"Traceback" not in raised.value.read()


def test_two_workers_sharing_partitions_give_the_same_journeys(workspace: Workspace) -> None:
    first = workspace.start_worker()
    second = workspace.start_worker(own_store=True)  # embedded ClickHouse: one store per process
    both = [first, second]
    channel_partitions = PARTITIONS * len(INTERACTION_TOPICS)

    def shared() -> bool:  # each stage's group has settled, with partitions on both workers
        held = [w.stage_partitions() for w in both]
        return all(
            sum(h[stage] for h in held) == channel_partitions and all(h[stage] > 0 for h in held)
            for stage in ("ingest", "analytics")
        )

    wait_until(shared, 120, "both workers to share the partitions of both stages")
    records = simulate_day(workspace, seed=32)
    summary = next(r for r in records if r["kind"] == "summary")
    wait_until(
        lambda: (
            first.metric("touchline_events_consumed_total") + second.metric("touchline_events_consumed_total")
            >= summary["messages_delivered"]
        ),
        300,
        "all messages read by the two workers",
    )
    assert all(w.metric("touchline_events_consumed_total") > 0 for w in both), "both workers should get partitions"

    # each worker writes to its own embedded store; the journeys are in the store of the worker
    # that owns the journey partition
    def stored() -> list[list[Any]]:
        return max((w.sql(JOURNEY_QUERY) for w in both), key=len)

    wanted = sum(1 for r in records if r["kind"] == "journey")
    wait_until(lambda: len(stored()) >= wanted, 300, f"{wanted} journeys", interval=2)
    assert_matches_truth(stored(), records)
