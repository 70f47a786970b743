"""The Anonymous Bank converter (`tools.realdata.anonbank`): hand-made rows, then the whole real
month through the pipeline's streaming KPI core (`KpiWindows`, as the worker runs it, merged per
UTC day by `merge_partials` exactly as the `kpi_1d` view merges) compared with the independent
oracle in `tests/anonbank_oracle.py` (plain Python from the TSV rows; its docstring pins the
definitions both sides share).

Exactness: waits and handle times are whole seconds on both sides and every ratio is the correctly
rounded quotient of the same integers, so figures are compared with `==`. Each measure lands on the
day of the event that completes it (answer, abandon, end) on both sides, so per-day figures agree
exactly even for calls that cross midnight (their offer and their answer or handle time can fall on
different days).
"""

from __future__ import annotations

import io
import time
import zlib
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pipeline.events.models import EventBase, event_type
from pipeline.kpi.definitions import kpi_values
from pipeline.kpi.facts import contact_facts
from pipeline.kpi.measures import COUNT_NAMES, LIST_NAMES
from pipeline.kpi.rows import KpiRow
from pipeline.kpi.windows import KpiWindows
from pipeline.replay import ReplayStats, read_events
from tests.support.kpi_reference import merge_partials
from tools.realdata.anonbank import FIELDS, ConversionResult, convert, convert_lines, write_jsonl

from ..anonbank_oracle import ANONBANK_TSV, MALFORMED_LINES, SKIP_WITHOUT_DATA, OracleResult, Tally, compute, summary

HEADER = "\t".join(FIELDS)
BASE = {
    "vru+line": "AA0101",
    "call_id": "46087",
    "customer_id": "0",
    "priority": "0",
    "type": "PS",
    "date": "991001",
    "vru_entry": "7:15:55",
    "vru_exit": "7:16:08",
    "vru_time": "13",
    "q_start": "0:00:00",
    "q_exit": "0:00:00",
    "q_time": "0",
    "outcome": "AGENT",
    "ser_start": "7:16:08",
    "ser_exit": "7:17:10",
    "ser_time": "62",
    "server": "BASCH",
}
# the two real malformed rows: spaces where the tab before `type` should be (file lines 7315, 14247)
MALFORMED_7315 = "AA0108\t3892\t0\t0       NW\t991026\t14:07:50\t14:07:58\t8\t0:00:00\t0:00:00\t0\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER"
MALFORMED_14247 = "AA0116\t10486\t0\t0       IN\t991026\t16:00:06\t16:00:15\t9\t0:00:00\t0:00:00\t0\tHANG\t0:00:00\t0:00:00\t0\tNO_SERVER"


def row(**fields: str) -> str:
    values = dict(BASE)
    values.update({k.replace("vru_line", "vru+line"): v for k, v in fields.items()})
    return "\t".join(values[name] for name in FIELDS)


def run(*rows: str) -> ConversionResult:
    return convert_lines(io.StringIO("\n".join([HEADER, *rows]) + "\n"))


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def timeline(events: Iterable[EventBase]) -> list[tuple[str, datetime]]:
    return [(event_type(e), e.occurred_at) for e in events]


# --------------------------------------------------------------------------- hand-made rows


def test_answered_after_queueing_is_on_the_queue_clock() -> None:
    result = run(
        row(
            customer_id="14312961", priority="2", vru_entry="7:47:59", vru_exit="7:48:04", vru_time="5",
            q_start="7:48:04", q_exit="7:49:11", q_time="67", ser_start="7:49:10", ser_exit="7:51:12", ser_time="122",
        )
    )  # fmt: skip
    assert result.rejected == [] and result.calls == 1
    events = result.events
    assert timeline(events) == [
        ("contact_started", at("1999-10-01T07:47:59")),
        ("ivr_step", at("1999-10-01T07:47:59")),
        ("queued", at("1999-10-01T07:48:04")),
        ("agent_assigned", at("1999-10-01T07:49:11")),  # q_exit: the wait is exactly q_time
        ("ended", at("1999-10-01T07:51:13")),  # answer + ser_time: the handle is exactly ser_time
    ]
    assert [e.event_id for e in events] == [f"anonbank-AA0101-46087-{n}" for n in range(1, 6)]
    assert {e.contact_id for e in events} == {"anonbank-AA0101-46087"}
    assert all(e.customer.customer_id == "14312961" and e.priority == 2 and e.segment == "premium" for e in events)
    assert all(e.intent == "regular" for e in events)
    assert [e.queue for e in events] == [None, None, "PS", "PS", "PS"]
    assert getattr(events[1], "ivr_node") == "AA0101"  # noqa: B009
    assert events[3].agent_id == "BASCH" and events[4].agent_id == "BASCH"
    assert getattr(events[4], "acw_seconds") == 0.0  # noqa: B009
    facts = contact_facts(events)
    assert facts.legs[0].wait_seconds == 67.0 and facts.handle_seconds == 122.0


def test_answered_without_queueing_is_offered_with_zero_wait() -> None:
    events = run(row()).events
    assert timeline(events) == [
        ("contact_started", at("1999-10-01T07:15:55")),
        ("ivr_step", at("1999-10-01T07:15:55")),
        ("queued", at("1999-10-01T07:16:08")),
        ("agent_assigned", at("1999-10-01T07:16:08")),
        ("ended", at("1999-10-01T07:17:10")),
    ]
    assert all(e.customer.customer_id is None and e.segment == "retail" for e in events)
    facts = contact_facts(events)
    assert facts.legs[0].wait_seconds == 0.0 and facts.handle_seconds == 62.0


def test_hang_in_queue_and_in_ivr() -> None:
    in_queue = row(
        call_id="1", outcome="HANG", q_start="7:16:08", q_exit="7:16:11", q_time="3",
        ser_start="7:16:10", ser_exit="7:16:15", ser_time="5", server="NO_SERVER",
    )  # fmt: skip
    in_ivr = row(call_id="2", outcome="HANG", ser_start="0:00:00", ser_exit="0:00:00", ser_time="0", server="NO_SERVER")
    result = run(in_queue, in_ivr)
    assert result.calls == 2
    by_contact: dict[str, list[EventBase]] = {}
    for e in result.events:
        by_contact.setdefault(e.contact_id, []).append(e)
    queue_events = by_contact["anonbank-AA0101-1"]
    assert timeline(queue_events)[2:] == [
        ("queued", at("1999-10-01T07:16:08")),
        ("abandoned", at("1999-10-01T07:16:11")),
        ("ended", at("1999-10-01T07:16:11")),
    ]
    assert getattr(queue_events[3], "stage") == "queue"  # noqa: B009
    assert all(e.agent_id is None for e in queue_events)  # service times of a HANG row are ignored
    ivr_events = by_contact["anonbank-AA0101-2"]
    assert timeline(ivr_events)[2:] == [("abandoned", at("1999-10-01T07:16:08")), ("ended", at("1999-10-01T07:16:08"))]
    assert getattr(ivr_events[2], "stage") == "ivr"  # noqa: B009
    assert all(e.queue is None for e in ivr_events)
    assert contact_facts(ivr_events).legs == ()


def test_phantom_has_no_queue_leg() -> None:
    events = run(
        row(outcome="PHANTOM", q_start="7:16:08", q_exit="7:17:15", q_time="67", server="NO_SERVER"),
    ).events
    assert timeline(events) == [
        ("contact_started", at("1999-10-01T07:15:55")),
        ("ivr_step", at("1999-10-01T07:15:55")),
        ("ended", at("1999-10-01T07:16:08")),
    ]
    facts = contact_facts(events)
    assert facts.legs == () and facts.handle_seconds is None


def test_midnight_crossing_goes_to_the_next_day() -> None:
    # real rows (file lines 26134 and 9641): queued before midnight, left the queue after it
    answered = row(
        vru_line="AA0209", call_id="48034", customer_id="23022833", priority="1", date="991004",
        vru_entry="23:59:46", vru_exit="23:59:46", vru_time="0", q_start="23:59:51", q_exit="0:00:06", q_time="15",
        ser_start="0:00:05", ser_exit="0:00:06", ser_time="1", server="GILI",
    )  # fmt: skip
    abandoned = row(
        vru_line="AA0110", call_id="41392", date="991018", vru_entry="23:59:20", vru_exit="23:59:20", vru_time="0",
        q_start="23:59:25", q_exit="0:06:59", q_time="454", outcome="HANG",
        ser_start="0:00:00", ser_exit="0:00:00", ser_time="0", server="NO_SERVER",
    )  # fmt: skip
    result = run(answered, abandoned)
    assert result.rejected == []
    first = [e for e in result.events if e.contact_id == "anonbank-AA0209-48034"]
    assert timeline(first)[2:] == [
        ("queued", at("1999-10-04T23:59:51")),
        ("agent_assigned", at("1999-10-05T00:00:06")),
        ("ended", at("1999-10-05T00:00:07")),
    ]
    second = [e for e in result.events if e.contact_id == "anonbank-AA0110-41392"]
    assert timeline(second)[2:] == [
        ("queued", at("1999-10-18T23:59:25")),
        ("abandoned", at("1999-10-19T00:06:59")),
        ("ended", at("1999-10-19T00:06:59")),
    ]
    assert contact_facts(second).legs[0].abandon_wait_seconds == 454.0


def test_ivr_clock_skew_keeps_causal_order() -> None:
    # real row (file line 4982): the IVR clock puts the exit 16 s before the entry
    events = run(
        row(
            vru_line="AA0105", call_id="47153", vru_entry="8:50:18", vru_exit="8:50:02", vru_time="-16",
            q_start="8:50:02", q_exit="8:50:25", q_time="23", outcome="HANG",
            ser_start="0:00:00", ser_exit="0:00:00", ser_time="0", server="NO_SERVER",
        )
    ).events  # fmt: skip
    assert timeline(events) == [
        ("contact_started", at("1999-10-01T08:50:02")),
        ("ivr_step", at("1999-10-01T08:50:02")),
        ("queued", at("1999-10-01T08:50:02")),
        ("abandoned", at("1999-10-01T08:50:25")),
        ("ended", at("1999-10-01T08:50:25")),
    ]


def test_spreadsheet_mangled_customer_id_is_unidentified() -> None:
    result = run(row(customer_id="6.02082E+11"))
    assert result.rejected == [] and result.calls == 1
    assert all(e.customer.customer_id is None for e in result.events)


def test_malformed_rows_are_rejected_with_line_numbers_and_the_rest_converted() -> None:
    result = run(
        row(call_id="1"),  # line 2
        MALFORMED_7315,  # line 3
        row(call_id="2", vru_entry="25:00:00"),  # line 4
        "",  # line 5: blank
        row(call_id="3", outcome="TRANSFER"),  # line 6
        MALFORMED_14247,  # line 7
        row(call_id="4", q_start="7:16:08", q_exit="7:16:20", q_time="99"),  # line 8
        row(call_id="1"),  # line 9: the call of line 2 again
        row(call_id="5", priority="x"),  # line 10
        row(call_id="6"),  # line 11
    )
    assert [(r.line, r.reason) for r in result.rejected] == [
        (3, "expected 17 tab-separated fields, got 16"),
        (4, "vru_entry: '25:00:00' is out of range"),
        (6, "outcome: 'TRANSFER' is not one of AGENT, HANG, PHANTOM"),
        (7, "expected 17 tab-separated fields, got 16"),
        (8, "q_time 99 disagrees with q_exit - q_start = 12 s"),
        (9, "repeated call (vru+line AA0101, call_id 1) of line 2"),
        (10, "priority: 'x' is not a non-negative integer"),
    ]
    assert result.rejected[0].raw == MALFORMED_7315 and result.rejected[3].raw == MALFORMED_14247
    assert result.calls == 2 and result.blank_lines == 1
    assert {e.contact_id for e in result.events} == {"anonbank-AA0101-1", "anonbank-AA0101-6"}


def test_wrong_header_is_an_error() -> None:
    with pytest.raises(ValueError, match="not an Anonymous Bank call log"):
        convert_lines(io.StringIO(row() + "\n"))


def test_jsonl_is_deterministic_and_replayable(tmp_path: Path) -> None:
    text = "\n".join([HEADER, row(call_id="1"), row(call_id="2", outcome="HANG", server="NO_SERVER")]) + "\n"
    source = tmp_path / "calls.tsv"
    source.write_text(text)
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert write_jsonl(convert(source).events, first) == 9
    write_jsonl(convert(source).events, second)
    assert first.read_bytes() == second.read_bytes()
    stats = ReplayStats()
    with first.open("rb") as handle:
        replayed = [event for _, event in read_events(handle, stats)]
    assert stats.bad == [] and len(replayed) == 9
    assert replayed == convert(source).events
    times = [e.occurred_at for e in replayed]
    assert times == sorted(times)


# --------------------------------------------------------------------------- the real month

TOPIC = "touchline.interactions.voice"
PARTITIONS = 4
FIGURES = ("service_level", "asa_seconds", "abandonment_rate", "aht_seconds")

needs_real_data = pytest.mark.skipif(
    SKIP_WITHOUT_DATA, reason=f"real data not present: {ANONBANK_TSV} (set TOUCHLINE_SHARED_DIR)"
)


@pytest.fixture(scope="module")
def converted() -> ConversionResult:
    started = time.perf_counter()
    result = convert(ANONBANK_TSV)
    print(
        f"\nconverted {result.calls:,} calls to {len(result.events):,} events in {time.perf_counter() - started:.1f} s"
    )
    return result


@pytest.fixture(scope="module")
def oracle() -> OracleResult:
    return compute(ANONBANK_TSV)


def final_rows(events: Iterable[EventBase]) -> list[KpiRow]:
    """The events through `KpiWindows` as the worker runs it (several source partitions, periodic
    emits), then the watermark pushed past the end; the highest version of every row, all final."""
    windows = KpiWindows()
    now = datetime.now(UTC)
    latest: dict[Any, KpiRow] = {}

    def keep(rows: list[KpiRow]) -> None:
        for r in rows:
            seen = latest.get(r.key)
            if seen is None or r.version > seen.version:
                latest[r.key] = r

    last: datetime | None = None
    for n, event in enumerate(events):
        partition = zlib.crc32(event.contact_id.encode()) % PARTITIONS
        # deferred, as the worker applies a batch: the contact's contributions are settled by the emit
        assert windows.apply(event, (TOPIC, partition), defer=True) is None, f"late event {event.event_id}"
        last = event.occurred_at
        if n % 2000 == 0:
            keep(windows.emit(now))
    assert last is not None
    for key in windows.partitions:
        windows.advance_watermark(key, last + timedelta(days=1))
    keep(windows.emit(now))
    rows = list(latest.values())
    assert all(r.final for r in rows)
    assert {(r.sl_threshold_seconds, r.short_abandon_seconds, r.sl_headline) for r in rows} == {(20.0, 5.0, "genesys")}
    return rows


def combine(merged: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Merged rows of several (queue, priority) keys as one row: counts summed, lists concatenated."""
    out: dict[str, Any] = {name: 0 for name in COUNT_NAMES}
    out.update({name: [] for name in LIST_NAMES})
    out.update({"sl_headline": "genesys", "backlog_end": 0, "oldest_wait_end": 0.0})
    for m in merged:
        for name in COUNT_NAMES:
            out[name] += m[name]
        for name in LIST_NAMES:
            out[name].extend(m[name])
    for name in LIST_NAMES:
        out[name].sort()
    return out


def pipeline_figures(merged: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The oracle's figures from a merged row, with the pipeline's own KPI definitions."""
    values = kpi_values(merged)
    offered, abandoned = merged["offered"], merged["abandoned"]
    return {
        "offered": offered,
        "answered": merged["answered"],
        "answered_within_sl": merged["answered_within_sl"],
        "abandoned": abandoned,
        "short_abandoned": merged["short_abandoned"],
        "handled": values["handled"],
        "wait_sum": sum(merged["answer_waits"]),
        "handle_sum": sum(merged["handle_times"]),
        "service_level": values["service_level"],
        "asa_seconds": values["asa_seconds"],
        "abandonment_rate": abandoned / offered if offered else None,
        "aht_seconds": values["aht_seconds"],
    }


def describe(figures: Mapping[str, float | int | None]) -> str:
    return ", ".join(f"{k} {v:.6g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items())


@needs_real_data
def test_real_file_converts_every_row_but_the_two_malformed(converted: ConversionResult, oracle: OracleResult) -> None:
    assert [r.line for r in converted.rejected] == list(MALFORMED_LINES)
    assert all(r.reason == "expected 17 tab-separated fields, got 16" for r in converted.rejected)
    assert oracle.malformed == list(MALFORMED_LINES)
    assert converted.calls == oracle.rows == 34_623
    lines = ANONBANK_TSV.read_text().count("\n")
    assert converted.calls + len(converted.rejected) + converted.blank_lines == lines - 1  # minus the header
    by_contact: dict[str, list[EventBase]] = {}
    for e in converted.events:
        by_contact.setdefault(e.contact_id, []).append(e)
    assert len(by_contact) == converted.calls
    for events in by_contact.values():  # well-formed: started first, ended last, in causal order
        kinds = [event_type(e) for e in events]
        assert kinds[:2] == ["contact_started", "ivr_step"] and kinds[-1] == "ended", kinds
        assert kinds.count("ended") == 1
        assert [e.event_id for e in events] == sorted(e.event_id for e in events)


@needs_real_data
def test_real_file_kpis_match_the_independent_computation(converted: ConversionResult, oracle: OracleResult) -> None:
    started = time.perf_counter()
    rows = final_rows(converted.events)
    days = merge_partials(rows, minutes=1440)  # what the kpi_1d view computes
    print(f"KpiWindows: {len(rows):,} final minute rows, {len(days)} day rows in {time.perf_counter() - started:.1f} s")

    by_key = {(m["window_start"].date(), m["queue"], m["priority"]): m for m in days}
    assert all(m["channel"] == "voice" for m in days)
    empty = pipeline_figures(combine([]))
    for key in sorted(by_key.keys() | oracle.by_key.keys()):
        ours = pipeline_figures(by_key[key]) if key in by_key else empty
        theirs = oracle.by_key.get(key, Tally()).figures()
        assert ours == theirs, f"{key}: pipeline {describe(ours)}\n  oracle {describe(theirs)}"

    per_day: dict[date, list[Mapping[str, Any]]] = {}
    for (day, _, _), m in by_key.items():
        per_day.setdefault(day, []).append(m)
    assert sorted(per_day) == sorted(oracle.by_day) and len(per_day) == 31
    for day, tally in oracle.by_day.items():
        ours = pipeline_figures(combine(per_day[day]))
        assert ours == tally.figures(), f"{day}: pipeline {describe(ours)}\n  oracle {describe(tally.figures())}"

    month = pipeline_figures(combine(days))
    print("oracle  :", summary(oracle))
    print("pipeline:", describe(month))
    assert month == oracle.month.figures()
    for name in FIGURES:
        assert month[name] is not None
