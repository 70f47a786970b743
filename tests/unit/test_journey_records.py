"""Contact records (the journey stage's compact input and state), restore from persisted state,
retention, and bad identifiers. Oracles: `summarise` over the raw events, the simulator's truth,
and an uninterrupted run of the same input."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import EventBase
from pipeline.journeys import Stitcher, summarise
from pipeline.journeys.identity import IdentityConfig, placeholder_values
from pipeline.journeys.model import DAY, Emitted, Journey, JourneyConfig, JourneyVersion
from pipeline.journeys.record import ContactRecord, records_of
from pipeline.journeys.rows import journey_row
from pipeline.privacy.pseudonym import Pseudonymiser
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.times import to_ms
from pipeline.worker.journeys import (
    arrival_seq,
    component_key,
    component_value,
    decode_components,
    decode_entries,
    decode_records,
    emitted_value,
    forced_end,
    journey_document,
    journey_json,
    offset_value,
    round_value,
    round_version,
    stored_offset,
    version_base,
)

START = to_ms(datetime(2026, 3, 2, tzinfo=UTC))


def simulated(seed: int, days: float, rate: float, customers: int) -> tuple[Simulation, list[EventBase]]:
    sim = Simulation(SimConfig(seed=seed, start_ms=START, duration_ms=int(days * DAY), rate=rate, customers=customers))
    return sim, [event for _, event in sim.run()]


DAY_EVENTS = simulated(5, 0.5, 150.0, 5_000)


def by_contact(events: list[EventBase]) -> dict[str, list[EventBase]]:
    grouped: dict[str, list[EventBase]] = defaultdict(list)
    for event in events:
        grouped[event.contact_id].append(event)
    return grouped


@settings(max_examples=40, deadline=None)
@given(st.randoms(use_true_random=False))
def test_merged_records_of_any_split_summarise_like_the_events(rnd: random.Random) -> None:
    """Every contact of a simulated half day (voice with IVR, bots, transfers, surveys, reopens...):
    records of random pieces of its events, with duplicates, merged in random order, give the
    summary `summarise` gives for the whole event set."""
    contacts = by_contact(DAY_EVENTS[1])
    for contact_id in rnd.sample(sorted(contacts), 60):
        events = contacts[contact_id]
        if all(e.__class__.__name__ == "IdentityLink" for e in events):
            continue
        pieces: list[list[EventBase]] = [[] for _ in range(rnd.randint(1, 4))]
        for event in events + rnd.sample(events, len(events) // 3):
            rnd.choice(pieces).append(event)
        rnd.shuffle(pieces)
        merged = ContactRecord(contact_id)
        for piece in pieces:
            for record in records_of(piece):
                before = merged.to_dict()
                changed = merged.merge(ContactRecord.from_json(record.to_json()))
                assert changed == (merged.to_dict() != before)
        assert merged.summary() == replace(summarise(events), events=0)


def test_records_are_smaller_than_the_events() -> None:
    events = DAY_EVENTS[1]
    raw = sum(len(e.model_dump_json()) for e in events)
    compact = sum(len(r.to_json()) for r in records_of(events))
    print(f"{len(events)} events, {raw:,} bytes as JSON; {compact:,} bytes as contact records")
    assert compact < raw / 3


def feed(
    stitcher: Stitcher,
    batches: list[list[EventBase]],
    first_offset: int,
    *,
    evict: bool = True,
    take: int = 1,
    limit: int | None = None,
    tables: Tables | None = None,
    base: int | None = None,
) -> list[JourneyVersion]:
    """What the journey stage does per round of `take` messages: apply their records, take the
    changes (in slices of `limit` customers) at the round's version (with `base`, as the stage
    numbers them), evict, and (with `tables`) write the changed keys."""
    out: list[JourneyVersion] = []
    for start in range(0, len(batches), take):
        round_batches = batches[start : start + take]
        for n, batch in enumerate(round_batches, start=first_offset + start):
            for index, record in enumerate(records_of(batch)):
                stitcher.apply(ContactRecord.from_json(record.to_json()).with_seq(arrival_seq(n, index)))
        as_of = stitcher.as_of_ms or None
        version = None if base is None else round_version(base, first_offset + start + len(round_batches))
        out += stitcher.changes(as_of, limit, version)
        while stitcher.store.pending:
            out += stitcher.changes(as_of, limit, version)
        if evict and as_of is not None:
            stitcher.evict_due(as_of)
        if tables is not None:
            tables.write(stitcher)
    return out


def test_eviction_in_slices_says_when_more_is_due_and_ends_where_one_pass_does() -> None:
    """`evict_due` with a small budget leaves what is still due and says so (`more`): called again
    until it does not, it has evicted exactly what one unbounded pass evicts. The stage relies on
    `more` to keep retention from falling behind."""
    events = DAY_EVENTS[1]
    batches = [events[i : i + 500] for i in range(0, len(events), 500)]
    rules = JourneyConfig(repeat_window_ms=DAY // 24, dormancy_ms=DAY // 12)
    sliced, whole = (Stitcher(journeys=rules, keep_ms=DAY // 48, identity_retention_ms=DAY // 24) for _ in "ab")
    for stitcher in (sliced, whole):
        feed(stitcher, batches, 0, evict=False)
    as_of = sliced.as_of_ms
    passes = 1
    first = sliced.evict_due(as_of, 50)
    assert first.more and first.journeys + len(first.dropped) > 0
    evicted = first.journeys
    while (step := sliced.evict_due(as_of, 50)).more:
        evicted += step.journeys
        passes += 1
    evicted += step.journeys
    once = whole.evict_due(as_of, 10**9)
    assert not once.more and passes >= 5
    assert evicted == once.journeys > 100
    assert sliced.records.keys() == whole.records.keys() and len(sliced.graph) == len(whole.graph)
    assert sliced.store._emitted.keys() == whole.store._emitted.keys()


class Tables:
    """The stage's three tables, written with the changed keys of each round as the agent does."""

    def __init__(self) -> None:
        self.identity: dict[bytes, bytes] = {}
        self.contacts: dict[bytes, bytes] = {}
        self.emitted: dict[bytes, bytes] = {}

    def write(self, stitcher: Stitcher) -> None:
        for node, members in stitcher.identity_changes():
            _put(self.identity, component_key(node), None if members is None else component_value(members))
        for contact_id in stitcher.record_changes:
            _put(self.contacts, contact_id.encode(), stitcher.record_state(contact_id))
        for journey_id in stitcher.store.emitted_changes:
            entry = stitcher.store.emitted(journey_id)
            _put(self.emitted, journey_id.encode(), None if entry is None else emitted_value(entry))
        stitcher.record_changes.clear()
        stitcher.store.emitted_changes.clear()

    def restore(self) -> Stitcher:
        components, broken = decode_components(list(self.identity.values()))
        records, unreadable = decode_records(list(self.contacts.values()))
        assert broken == unreadable == []
        entries = decode_entries(list(self.emitted.items()))
        return Stitcher.from_state(records, entries, components=components)


def _put(table: dict[bytes, bytes], key: bytes, value: bytes | None) -> None:
    if value is None:
        table.pop(key, None)
    else:
        table[key] = value


def partition(stitcher: Stitcher) -> set[frozenset[tuple[str, str]]]:
    """The identity graph's components as sets of nodes (whatever node each is filed under)."""
    return {frozenset(root.members) for root in stitcher.graph._roots.values()}


def batched(events: list[EventBase], size: int, rnd: random.Random) -> list[list[EventBase]]:
    """Events slightly out of order (up to 2 minutes late), 5 % duplicated, cut into batches."""
    keyed = [(to_ms(e.occurred_at) + rnd.uniform(0, 120_000), e) for e in events]
    keyed += [(to_ms(e.occurred_at) + rnd.uniform(0, 120_000), e) for e in rnd.sample(events, len(events) // 20)]
    keyed.sort(key=lambda pair: pair[0])
    ordered = [e for _, e in keyed]
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def final(emitted: list[JourneyVersion]) -> dict[str, Journey]:
    """The journeys table as FINAL shows it; versions must only grow per journey."""
    best: dict[str, JourneyVersion] = {}
    for v in emitted:
        known = best.get(v.journey.journey_id)
        assert known is None or v.version > known.version, f"{v.journey.journey_id}: version went back"
        best[v.journey.journey_id] = v
    return {j: v.journey for j, v in best.items() if not v.deleted}


def persisted(stitcher: Stitcher) -> tuple[list[ContactRecord], list[tuple[str, Emitted]]]:
    """What the stage's tables hold: records and emitted entries (copied through their wire form)."""
    records = [ContactRecord.from_json(r.to_json()) for r in stitcher.records.values()]
    emitted = [(j, Emitted.from_dict(e.to_dict())) for j, e in stitcher.store._emitted.items()]
    return records, emitted


@pytest.mark.parametrize("form", ["components", "replay"])
@pytest.mark.parametrize(
    ("seed", "days", "rate", "customers", "size"),
    [
        (9, 2, 60.0, 400, 400),  # a busy stretch, identity links and merges
        (4, 40, 20.0, 100, 200),  # weeks of returning customers: evictions and identity carriers before the cut
    ],
)
def test_restored_state_continues_exactly_like_an_uninterrupted_run(
    seed: int, days: int, rate: float, customers: int, size: int, form: str
) -> None:
    """Crash mid-run: restore from the persisted state (no event re-read), then re-read the last
    batches again (they were not acknowledged) and go on. The journeys and versions equal an
    uninterrupted run's; versions keep growing across the restore. `components`: the tables as the
    stage writes them, round by round (graph components, records with anchors: no union replayed);
    `replay`: records without anchors (state written before them), the graph rebuilt by replaying
    the unions in arrival order, and every record then due to be written again with its anchor."""
    _, events = simulated(seed, days, rate, customers)
    batches = batched(events, size, random.Random(seed))
    whole = Stitcher()
    reference = final(feed(whole, batches, 0))
    cut = len(batches) // 2
    first = Stitcher()
    tables = Tables()
    emitted = feed(first, batches[:cut], 0, tables=tables)
    if form == "components":
        restored = tables.restore()
        assert restored.record_changes == set()  # every contact hung on its anchor
        assert restored.identity_changes() == []
    else:
        records, entries = persisted(first)
        restored = Stitcher.from_state(records, entries)
        assert restored.record_changes == set(restored.records)
        # an upgrade: the tables hold records without anchors and no identity component; the next
        # rounds write every record with its anchor and every component
        tables = Tables()
        tables.contacts = {r.contact_id.encode(): r.to_json() for r in records}
        tables.emitted = {j.encode(): emitted_value(e) for j, e in entries}
    assert partition(restored) == partition(first)
    for contact_id in first.records:
        assert restored.graph.customer_of_contact(contact_id) == first.graph.customer_of_contact(contact_id)
    assert restored.as_of_ms == first.as_of_ms
    emitted += feed(restored, batches[cut - 3 :], cut - 3, tables=tables)  # three unacknowledged batches again
    assert final(emitted) == reference
    assert sorted(restored.records) == sorted(whole.records)
    assert partition(tables.restore()) == partition(restored) == partition(whole)


def combined(written: list[JourneyVersion]) -> dict[str, Journey]:
    """The journeys table as FINAL shows it when several writers wrote in any order (a killed
    worker's last round, then its successor's): highest version per journey; two writes of one
    version must say the same, or the table could keep either."""
    best: dict[str, JourneyVersion] = {}
    for v in written:
        known = best.get(v.journey.journey_id)
        if known is not None and v.version == known.version:
            assert (v.deleted, v.journey) == (known.deleted, known.journey), (
                f"{v.journey.journey_id}: version {v.version} written twice with different content"
            )
        if known is None or v.version > known.version:
            best[v.journey.journey_id] = v
    return {j: v.journey for j, v in best.items() if not v.deleted}


@pytest.mark.parametrize(("dead_take", "successor_take"), [(1, 4), (3, 5), (4, 2)])
def test_a_round_written_but_not_persisted_is_outranked_by_its_successors(dead_take: int, successor_take: int) -> None:
    """A worker writes a round down (`ROUND_KEY`), then its rows and documents, then is killed
    before persisting the round's state. Its successor restores the state before that round, reads
    that round again to the same end (`forced_end`), then reads on in rounds ending elsewhere
    (whatever is waiting). All versions ever written, combined highest-wins, equal an uninterrupted
    run's journeys, and no version is written twice with different content. (Versions counted
    `last + 1` gave the killed round's journeys and the successor's first round the same versions,
    with different content.)"""
    _, events = simulated(9, 2, 60.0, 400)
    batches = batched(events, 200, random.Random(9))
    base = version_base([], START)
    reference = final(feed(Stitcher(), batches, 0, base=base))
    tables = Tables()
    for cut in range(len(batches) // 4, len(batches) - 8, len(batches) // 5):
        dead = Stitcher()
        written = feed(dead, batches[:cut], 0, tables=tables, base=base)
        # the killed round: written down, applied and written, not persisted
        mark = round_value(cut, cut + dead_take)
        written += feed(dead, batches[cut : cut + dead_take], cut, base=base)
        restored = tables.restore()
        end = forced_end(mark, cut)
        assert end == cut + dead_take
        written += feed(restored, batches[cut:end], cut, take=dead_take, base=base)
        written += feed(restored, batches[end:], end, take=successor_take, base=base)
        assert combined(written) == reference
        tables = Tables()


def test_the_offset_entry_keeps_the_version_base() -> None:
    assert stored_offset(offset_value(1234, 1_772_000_000_000_000)) == (1234, 1_772_000_000_000_000)
    assert stored_offset(b"1234") == (1234, None)  # written before bases were kept
    assert stored_offset(None) == stored_offset(b"x") == (None, None)
    # a state without a base: above every version it holds and every first write before it
    assert version_base([5, 1_772_000_000_000_900], 1_772_000_000_000) == 1_772_000_000_000_901
    assert version_base([], 1_772_000_000_001) == 1_772_000_000_001_000
    assert round_version(1_000, 7) < round_version(1_000, 8)


def test_a_restored_state_ends_its_first_round_where_the_round_under_way_ended() -> None:
    assert forced_end(round_value(40, 56), 40) == 56  # killed after writing the round down: that round again
    assert forced_end(round_value(40, 56), 56) is None  # the round's state was persisted: read on freely
    assert forced_end(round_value(24, 40), 56) is None  # an earlier round's entry
    assert forced_end(None, 40) is None and forced_end(b"x", 40) is None and forced_end(round_value(7, 9), None) is None


@pytest.mark.parametrize(("take", "limit"), [(1, 3), (5, None), (5, 7)])
def test_rounds_of_several_messages_in_slices_give_the_same_journeys(take: int, limit: int | None) -> None:
    """Messages taken several at a time, journeys rebuilt a few customers at a time: the journeys
    (as FINAL shows them) equal those of one message at a time in one go, versions only grow, and
    fewer versions are written."""
    _, events = simulated(9, 2, 60.0, 400)
    batches = batched(events, 400, random.Random(9))
    one_by_one = feed(Stitcher(), batches, 0)
    grouped = feed(Stitcher(), batches, 0, take=take, limit=limit)
    assert final(grouped) == final(one_by_one)
    if take > 1:
        assert len(grouped) < len(one_by_one)


def test_rows_and_documents_say_what_the_journey_says() -> None:
    """The `journeys` row and the topic document of every version of a simulated half day, against
    the Journey's own properties and a plain rendering of `journey_document`."""
    versions = feed(Stitcher(), batched(DAY_EVENTS[1], 500, random.Random(3)), 0)
    assert len(versions) > 500 and any(v.deleted for v in versions)
    for version in versions:
        j, row = version.journey, journey_row(version)
        expected = {
            "contact_ids": list(j.contact_ids),
            "channel_path": list(j.channel_path),
            "contacts": j.contacts,
            "channel_switches": j.channel_switches,
            "transfers": j.transfers,
            "bot_handoffs": j.bot_handoffs,
            "bot_contained_contacts": j.bot_contained_contacts,
            "ivr_zero_outs": j.ivr_zero_outs,
            "abandoned_contacts": j.abandoned_contacts,
            "starts_with_bot": int(j.starts_with_bot),
            "time_to_first_human_s": j.time_to_first_human_s,
            "resolved": int(j.resolved),
            "resolving_channel": j.resolving_channel or "",
            "time_to_resolution_s": j.time_to_resolution_s,
            "first_contact_resolved": int(j.first_contact_resolved),
        }
        assert {key: row[key] for key in expected} == expected
        plain = {
            key: value.isoformat() if isinstance(value, datetime) else value
            for key, value in journey_document(version).items()
        }
        assert json.loads(journey_json(version)) == json.loads(json.dumps(plain))


def test_retention_keeps_results_and_bounds_the_state() -> None:
    """Forty days of few customers who come back (repeat contacts, reopened and new journeys):
    with eviction every batch the journeys equal the simulator's truth, and the state holds only
    what the retention rules keep."""
    sim, events = simulated(4, 40, 20.0, 100)
    stitcher = Stitcher(identity_retention_ms=20 * DAY)
    emitted = feed(stitcher, batched(events, 200, random.Random(4)), 0)
    emitted += stitcher.changes(sim.as_of_ms)
    table = final(emitted)
    ours = {frozenset(j.contact_ids): j for j in table.values()}
    for truth in sim.journeys:
        t = truth.as_dict()
        journey = ours.get(frozenset(t["contact_ids"]))
        assert journey is not None, f"{t['journey_id']} is not one journey"
        assert (journey.resolved, journey.reopened, journey.first_contact_resolved) == (
            t["resolved"],
            t["reopened"],
            t["first_contact_resolved"],
        )
    assert len(table) == len(sim.journeys)
    contacts = {e.contact_id for e in events}
    active = [r for r in stitcher.records.values() if r.active]
    print(f"{len(contacts)} contacts over 40 days; {len(stitcher.records)} records kept ({len(active)} with activity)")
    store, as_of = stitcher.store, stitcher.as_of_ms
    held = store.all_journeys(as_of)
    # every journey still held can be joined (or get late events) now, give or take one batch
    assert all(store.close_time(j, stitcher.keep_ms) >= as_of - 3_600_000 for j in held)
    assert sum(j.contacts for j in held) == len(active)
    assert len(stitcher.store._emitted) < len(table)
    assert len(active) < len(contacts) / 2


@pytest.mark.parametrize(
    "ids",
    [
        {("phone", ""): 1},
        {("phone", "   "): 1, ("email", "NULL"): 1},
        {("fax", "12345"): 1},
        {("phone", "+000 000"): 1, ("customer_id", "unknown"): 1},
    ],
)
def test_unusable_identifiers_are_skipped_and_counted(ids: dict[tuple[str, str], int]) -> None:
    stitcher = Stitcher()
    record = ContactRecord("c-bad", first=(START * 1000, "e1", "voice"), last_us=START * 1000, ids=ids, seq=1)
    record.links[("phone", "", "customer_id", "C1")] = 1
    resolution = stitcher.apply(record)
    assert resolution.customer == "anon:c-bad"
    assert sum(stitcher.graph.blocked.values()) >= len(ids)
    (version,) = stitcher.changes()
    assert version.journey.customer == "anon:c-bad"


def test_pseudonymised_placeholders_stay_unusable_and_pseudonyms_link() -> None:
    """Identifiers arrive pseudonymised: the hashed `0000000000` of anonymous callers must not tie
    them into one customer, while one person's hashed number still links their contacts."""
    hider = Pseudonymiser(key=b"k" * 32)
    blocked = frozenset(
        hider.value(kind.value, raw).lower() for kind, values in placeholder_values().items() for raw in values
    )
    stitcher = Stitcher(IdentityConfig(blocked_values=blocked))

    def contact(n: int, phone: str) -> ContactRecord:
        at = (START + n * 60_000) * 1000
        ids = {("phone", hider.value("phone", phone)): n}
        return ContactRecord(f"c{n}", first=(at, f"e{n}", "voice"), last_us=at, ids=ids, seq=n)

    for n, phone in enumerate(["0000000000", "+000 000 0000", "0000000000", "+44 1632 960123", "0044 1632 960123"]):
        stitcher.apply(contact(n, phone))
    keys = [stitcher.graph.customer_of_contact(f"c{n}") for n in range(5)]
    assert keys[:3] == ["anon:c0", "anon:c1", "anon:c2"]
    assert keys[3] == keys[4] and keys[3] is not None and keys[3].startswith("phone:h1:")
    assert stitcher.graph.customer_of_value("phone", hider.lookup("phone", "+441632960123")) == keys[3]
