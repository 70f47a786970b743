"""The split journey stage (`TOUCHLINE_JOURNEY_BUILDERS`) end to end: a simulated day with
cross-channel returns, identity links, duplicates and late events through the real broker, the
resolver and builder agents and embedded ClickHouse; every journey must equal the simulator's
truth, and lookups take their two hops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import Workspace, wait_until
from .test_journeys_e2e import (
    FAULTS,
    VERSIONED_QUERY,
    Background,
    a_known_customer,
    assert_matches_truth,
    converge,
    dead_store,
    journey_offsets,
    kill_after_a_message,
    kill_after_journey_rows,
    latest,
    lookup,
    lookup_refused,
    simulate_day,
    wait_for_journeys,
)

pytestmark = pytest.mark.integration

BUILDERS = 4


def state_held(worker: Any) -> dict[str, float]:
    """`touchline_journey_state{what}`: what the worker's journey stage holds."""
    text = worker.get("/metrics").decode()
    return {
        sample.labels["what"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "touchline_journey_state"
    }


def test_a_day_through_the_split_stage_matches_the_truth_and_lookup_works(workspace: Workspace) -> None:
    workspace.env["TOUCHLINE_JOURNEY_BUILDERS"] = str(BUILDERS)
    records = simulate_day(workspace, seed=31)
    summary = next(r for r in records if r["kind"] == "summary")
    worker = workspace.start_worker()
    rows = wait_for_journeys(worker, records, summary)
    assert_matches_truth(rows, records)
    # this one worker holds the resolver and every builder partition
    assert worker.metric("touchline_journey_partitions") == BUILDERS + 1
    # nothing is evicted within a day (7-day repeat window): the builders hold every contact and journey
    journeys = [r for r in records if r["kind"] == "journey"]
    held = state_held(worker)
    print(f"held {held}; truth: {len(journeys)} journeys, {sum(r['contacts'] for r in journeys)} contacts")
    assert held["journeys"] >= len(journeys)  # and the journeys merges retracted, kept as tombstones
    assert held["contacts"] == sum(r["contacts"] for r in journeys)
    journey = next(r for r in records if r["kind"] == "journey" and r["contacts"] > 1 and r["customer_id"])
    found = lookup(worker, journey["customer_id"])  # a 503 (a rebalance under way) is retried, as the API asks
    assert found["customer"] == f"cust:{journey['customer_id']}"
    assert f"j-{journey['contact_ids'][0]}" in found["journeys"]
    phone = worker.sql(
        f"SELECT any(phone) FROM interaction_events WHERE phone != '' AND customer_id = '{journey['customer_id']}'"
    )[0][0]
    if phone:
        assert lookup(worker, phone, kind="phone")["customer"] == found["customer"]
    assert lookup_refused(worker, "email", "nobody@example.invalid").code == 404


def test_split_stage_killed_three_times_gives_the_truth_and_answers_lookups_at_once(
    workspace: Workspace, tmp_path: Path
) -> None:
    """The day is produced while the worker running the split stage (resolver and every builder)
    is SIGKILLed three times and restarted: twice right after its resolver finished a message, once
    right after a builder's journey rows were inserted, before that round's state was written. A
    lookup right after each restart answers from the restored state (two hops); the kills
    interrupted unacknowledged work and the round cut after its rows is read again whole."""
    workspace.env["TOUCHLINE_JOURNEY_BUILDERS"] = str(BUILDERS)
    flag = tmp_path / "kill-after-insert"
    workspace.env["TOUCHLINE_TEST_KILL_AFTER_INSERT_FILE"] = str(flag)
    workspace.env["PYTHONPATH"] = f"{FAULTS}:{workspace.env['PYTHONPATH']}"
    worker = workspace.start_worker()
    port = worker.port
    producing = Background(workspace, seed=33, speed=1000)
    redelivered = []
    for kill in range(3):
        customer_id, journey_id = a_known_customer(worker)
        if kill == 1:
            kill_after_journey_rows(worker, flag)
            last = -1
        else:
            last = kill_after_a_message(worker)
        worker = workspace.start_worker(port=port)
        started = time.monotonic()
        found = lookup(worker, customer_id)  # waits for the restores, never a 404
        took = time.monotonic() - started
        assert found["customer"] == f"cust:{customer_id}" and journey_id in found["journeys"]
        print(f"killed after resolver offset {last}; lookup after the restart answered in {took:.2f} s")
        wait_until(lambda w=worker: w.metric("touchline_journey_restored_contacts") > 0, 60, "the restore timed")
        print(f"restore of every partition: {worker.metric('touchline_journey_restore_seconds'):.2f} s")
        wait_until(lambda w=worker: journey_offsets(w)[0] >= 0, 120, "the restarted resolver to finish a message")
        first, _ = journey_offsets(worker)
        if kill == 1:
            wait_until(
                lambda w=worker: "round under way read again" in w.log.read_text(), 60, "the cut round read again"
            )
            print("the builder round cut after its rows was read again")
        else:
            redelivered.append(first <= last)
            print(f"restarted at resolver offset {first}: {'read again' if first <= last else 'no redelivery'}")
    assert any(redelivered), "no kill interrupted unacknowledged resolver work"
    records = producing.result()
    converge(lambda: latest(worker.sql(VERSIONED_QUERY)), records)
    assert lookup(worker, customer_id)["customer"] == f"cust:{customer_id}"


def test_two_workers_share_the_split_stage_and_one_killed_gives_the_truth(workspace: Workspace) -> None:
    """Two workers share the builder partitions (each with its own embedded store; `latest` combines
    versions as one shared server would). The one running the resolver is killed mid-day and not
    restarted: the other takes the resolver and the dead one's builders over from the changelogs.
    Lookups sent to either worker answer for a known customer (routed to the resolver's owner, then
    to the builder's)."""
    workspace.env["TOUCHLINE_JOURNEY_BUILDERS"] = str(BUILDERS)
    first = workspace.start_worker()
    second = workspace.start_worker(own_store=True)
    both = [first, second]

    def spread() -> bool:  # the resolver and the builders held, some builders on each worker
        held = [w.metric("touchline_journey_partitions") for w in both]
        return sum(held) == BUILDERS + 1 and all(h > 0 for h in held)

    wait_until(spread, 240, "both workers to hold journey partitions")
    producing = Background(workspace, seed=32, speed=1500)
    wait_until(lambda: any(journey_offsets(w)[1] >= 0 for w in both), 120, "the resolver to finish a message")
    dead = next(w for w in both if journey_offsets(w)[1] >= 0)
    survivor = second if dead is first else first
    customer_id, journey_id = a_known_customer(dead)
    for worker in both:  # answered through the resolver's owner and the builder's, wherever they are
        found = lookup(worker, customer_id)
        assert found["customer"] == f"cust:{customer_id}" and journey_id in found["journeys"]
    kill_after_a_message(dead)
    wait_until(
        lambda: survivor.metric("touchline_journey_partitions") == BUILDERS + 1, 120, "the survivor to take all over"
    )
    found = lookup(survivor, customer_id)
    assert found["customer"] == f"cust:{customer_id}" and journey_id in found["journeys"]
    records = producing.result()
    dead_rows = dead_store(dead.workspace.path / ("data" if dead is first else f"data-{dead.port}"))
    converge(lambda: latest(dead_rows, survivor.sql(VERSIONED_QUERY)), records)
