"""Right to erasure end to end: a simulated day through the real broker and worker, then
`touchline forget --customer-id` through the running worker; no row of that customer remains in any
table, every other customer's rows are untouched, and KPI aggregates keep their counts; with the
single journey stage and with the split one (`TOUCHLINE_JOURNEY_BUILDERS`)."""

from __future__ import annotations

import json
import urllib.error
from typing import Any

import pytest

from pipeline.privacy.pseudonym import Pseudonymiser
from pipeline.simulator.truth import read_truth

from .conftest import PSEUDONYM_KEY, Worker, Workspace, asked_until_not_busy, wait_until
from .test_journeys_e2e import lookup

pytestmark = pytest.mark.integration

START = "2026-03-02T00:00:00Z"
PER_CONTACT = {
    "interaction_events": "SELECT count() FROM interaction_events WHERE contact_id IN {c}",
    "sla_events": "SELECT count() FROM sla_events WHERE contact_id IN {c}",
    "journey_steps": "SELECT count() FROM journey_steps WHERE contact_id IN {c}",
    "journeys": "SELECT count() FROM journeys WHERE hasAny(contact_ids, {c})",
    "stage_state": "SELECT count() FROM stage_state WHERE key IN {c}",
}
OTHERS = {  # everyone else's rows, deduplicated (background merges collapse repeats at any time)
    "interaction_events": "SELECT count() FROM interaction_events FINAL WHERE contact_id NOT IN {c}",
    "sla_events": "SELECT count() FROM sla_events FINAL WHERE contact_id NOT IN {c}",
    "journey_steps": "SELECT count() FROM journey_steps FINAL WHERE contact_id NOT IN {c}",
    "journeys": "SELECT count() FROM journeys FINAL WHERE NOT hasAny(contact_ids, {c})",
}
KPI_ROWS = "SELECT count() FROM kpi_minute_partials FINAL"


def counts(worker_sql: Any, queries: dict[str, str], contacts: list[str] | None = None) -> dict[str, int]:
    listed = "[" + ",".join(f"'{c}'" for c in contacts or []) + "]"
    return {table: int(worker_sql(sql.format(c=listed))[0][0]) for table, sql in queries.items()}


def settled_others(workers: list[Worker], contacts: list[str]) -> list[dict[str, int]]:
    """Everyone else's row counts in each worker's store once nothing more is on its way: no output
    waiting in any outbox and the counts unchanged over a poll. The journeys and pending rows being
    written is not enough: in one run the SLA rows of others still grew from 109 to 127 after it."""
    previous: list[dict[str, int]] | None = None

    def quiet() -> bool:
        nonlocal previous
        now = [counts(w.sql, OTHERS, contacts) for w in workers]
        idle = all(w.metric("touchline_outbox_pending") == 0 for w in workers)
        same, previous = now == previous, now
        return idle and same

    wait_until(quiet, 120, "the stores to stop changing", interval=3)
    assert previous is not None
    return previous


def lookup_status(worker: Worker, customer_id: str) -> int:
    """The lookup's status for a customer; a 503 (a rebalance or restore under way) is retried as the
    API asks, as the journey e2e tests do: a loaded host can rebalance at any moment."""
    try:
        found = lookup(worker, customer_id)
    except urllib.error.HTTPError as error:
        return error.code
    assert found["customer"] == f"cust:{customer_id}"
    return 200


@pytest.mark.parametrize("builders", [0, 4], ids=["single-journey-stage", "split-journey-stage"])
def test_a_forgotten_customer_leaves_no_row_and_nobody_else_changes(workspace: Workspace, builders: int) -> None:
    workspace.env["TOUCHLINE_JOURNEY_BUILDERS"] = str(builders)
    truth = workspace.path / "truth.jsonl"
    workspace.cli(
        "simulate", "--seed", "41", "--start", START, "--duration", "6h", "--rate", "200", "--speed", "0", "--truth", truth
    )  # fmt: skip
    records = read_truth(truth)
    summary = next(r for r in records if r["kind"] == "summary")
    worker = workspace.start_worker()
    wait_until(
        lambda: worker.metric("touchline_events_consumed_total") >= summary["messages_delivered"], 300, "all read"
    )
    wanted = sum(1 for r in records if r["kind"] == "journey")
    wait_until(
        lambda: (
            worker.sql("SELECT count() FROM journeys FINAL")[0][0] >= wanted
            and worker.metric("touchline_pending_rows") == 0
            and worker.sql(KPI_ROWS)[0][0] > 0  # the aggregates are written too (checked below)
        ),
        300,
        f"{wanted} journeys",
        interval=2,
    )
    # withheld-number callers (the simulator sends phone 0000000000): stored without a phone, never
    # as a pseudonym that looks like one person
    withheld = sorted(r["contact_id"] for r in records if r["kind"] == "contact" and r["anonymous"])
    listed = "[" + ",".join(f"'{c}'" for c in withheld) + "]"
    placeholder = Pseudonymiser(PSEUDONYM_KEY.encode()).value("phone", "0000000000")
    stored = worker.sql(f"SELECT countIf(phone != ''), count() FROM interaction_events WHERE contact_id IN {listed}")
    assert withheld and stored[0][0] == 0 and stored[0][1] > 0, stored
    assert worker.sql(f"SELECT count() FROM interaction_events WHERE phone = '{placeholder}'")[0][0] == 0

    journey = next(r for r in records if r["kind"] == "journey" and r["contacts"] > 1 and r["customer_id"])
    customer = journey["customer_id"]
    contacts = sorted(
        {c for r in records if r["kind"] == "journey" and r["customer_id"] == customer for c in r["contact_ids"]}
    )
    other = next(r["customer_id"] for r in records if r["kind"] == "journey" and r["customer_id"] not in ("", customer))
    assert lookup_status(worker, customer) == lookup_status(worker, other) == 200
    others_before = settled_others([worker], contacts)[0]
    theirs_before = counts(worker.sql, PER_CONTACT, contacts)
    kpi_before = worker.sql(KPI_ROWS)[0][0]
    assert theirs_before["interaction_events"] > 0 and theirs_before["journeys"] > 0

    answer = json.loads(workspace.cli("forget", "--customer-id", customer, "--format", "json").stdout)
    print(f"forgot customer with {len(contacts)} contacts: {answer}")
    assert answer["subject"]["contacts"] >= len(contacts)
    assert "ingest" in answer["state"]
    assert answer["state"]["journeys"] >= len(contacts)  # their contact records, and journey entries
    assert answer["tables"]["interaction_events"] >= theirs_before["interaction_events"]

    theirs_after = counts(worker.sql, PER_CONTACT, contacts)
    assert theirs_after == dict.fromkeys(PER_CONTACT, 0)
    assert worker.sql(f"SELECT count() FROM interaction_events WHERE customer_id = '{customer}'")[0][0] == 0
    assert counts(worker.sql, OTHERS, contacts) == others_before
    # the rule: the person goes, aggregates stay (KPI rows hold no person: never touched)
    assert "kpi_minute_partials" not in answer["tables"] and worker.sql(KPI_ROWS)[0][0] >= kpi_before > 0
    log = worker.log.read_text(errors="replace")
    assert customer not in log.split("forgot one person")[-1]

    # the journey stage forgot them: its lookup, and after a restart (the stage's state restored
    # from its tables) still nothing of theirs, while everyone else is still known
    assert lookup_status(worker, customer) == 404 and lookup_status(worker, other) == 200
    worker.stop()
    worker = workspace.start_worker()
    assert lookup_status(worker, other) == 200  # waits for the restore
    assert lookup_status(worker, customer) == 404
    # nothing read again after the restart (the erasure checkpointed and committed) wrote them back
    wait_until(lambda: worker.metric("touchline_pending_rows") == 0, 60, "rows written")
    assert counts(worker.sql, PER_CONTACT, contacts) == dict.fromkeys(PER_CONTACT, 0)


def test_an_erasure_sent_to_a_worker_without_the_journey_resolver_forgets_the_person_everywhere(
    workspace: Workspace,
) -> None:
    """Two workers (each with its own embedded store, as the split stage's two-worker test), the
    split journey stage spread over both. `POST /forget` goes to the worker that does not hold the
    resolver: it finds the other worker through Kafka, which drops the person from the resolver and
    its builders, and each store loses the person's rows; lookups on both workers answer 404 for them
    and 200 for someone else."""
    workspace.env["TOUCHLINE_JOURNEY_BUILDERS"] = "4"
    first = workspace.start_worker()
    second = workspace.start_worker(own_store=True)
    both = [first, second]
    wait_until(
        lambda: all(w.metric("touchline_journey_partitions") > 0 and w.ready() for w in both),
        240,
        "both workers to hold journey and channel partitions",
    )
    truth = workspace.path / "truth.jsonl"
    workspace.cli(
        "simulate", "--seed", "41", "--start", START, "--duration", "6h", "--rate", "200", "--speed", "0", "--truth", truth
    )  # fmt: skip
    records = read_truth(truth)
    delivered = next(r for r in records if r["kind"] == "summary")["messages_delivered"]
    wait_until(lambda: sum(w.metric("touchline_events_consumed_total") for w in both) >= delivered, 300, "all read")
    wanted = sum(1 for r in records if r["kind"] == "journey")
    wait_until(
        lambda: (
            sum(w.sql("SELECT count() FROM journeys FINAL")[0][0] for w in both) >= wanted
            and all(w.metric("touchline_pending_rows") == 0 for w in both)
        ),
        300,
        f"{wanted} journeys",
        interval=2,
    )
    holder = next(w for w in both if int(w.metric("touchline_journey_offset")) >= 0)  # the resolver's
    asked = second if holder is first else first
    journey = next(r for r in records if r["kind"] == "journey" and r["contacts"] > 1 and r["customer_id"])
    customer = journey["customer_id"]
    contacts = sorted(
        {c for r in records if r["kind"] == "journey" and r["customer_id"] == customer for c in r["contact_ids"]}
    )
    other = next(r["customer_id"] for r in records if r["kind"] == "journey" and r["customer_id"] not in ("", customer))
    # the stores hold the journeys, but the two stores can together count a journey twice after a
    # builder partition moved between the workers: a builder may still be applying its tail, so
    # the lookups are waited for. (CI, session 42: this check failed once, status not recorded;
    # the likely cause, a startup race that left a builder table unrouted, is fixed in the worker:
    # `declare_faust_topics`)
    statuses: dict[str, tuple[int, int]] = {}

    def known_on_both() -> bool:
        statuses.update({w.url: (lookup_status(w, customer), lookup_status(w, other)) for w in both})
        return set(statuses.values()) == {(200, 200)}

    try:
        wait_until(known_on_both, 60, "lookups on both workers to answer 200 for both customers", interval=1)
    except AssertionError:
        raise AssertionError(f"lookups before the erasure answered {statuses}, not 200 everywhere") from None
    others_before = settled_others(both, contacts)
    theirs_before = [counts(w.sql, PER_CONTACT, contacts) for w in both]
    assert sum(t["interaction_events"] for t in theirs_before) > 0

    request = urllib.request.Request(
        f"{asked.url}/forget", data=json.dumps({"kind": "customer_id", "value": customer}).encode(), method="POST"
    )

    def erase() -> dict[str, Any]:
        with urllib.request.urlopen(request, timeout=180) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    answer = asked_until_not_busy(erase, 120, f"an erasure at {asked.url}", interval=2)
    print(f"forgot customer with {len(contacts)} contacts through the worker without the resolver: {answer}")
    assert answer["workers"] == 2
    assert answer["state"]["journeys"] >= len(contacts)  # dropped by the resolver on the other worker
    assert answer["tables"]["interaction_events"] == sum(t["interaction_events"] for t in theirs_before)
    for worker, others in zip(both, others_before, strict=True):
        assert counts(worker.sql, PER_CONTACT, contacts) == dict.fromkeys(PER_CONTACT, 0)
        assert counts(worker.sql, OTHERS, contacts) == others
        assert lookup_status(worker, customer) == 404 and lookup_status(worker, other) == 200
    # a restart is the single-worker test's: with a store each, a partition moved to the other
    # worker is read again from that store's own (older) checkpoint, as no deployment runs it
