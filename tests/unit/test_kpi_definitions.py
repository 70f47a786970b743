"""KPI definitions: every KPI on hand-built contacts, percentile semantics, merging, and the
generated ClickHouse DDL."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.kpi.ddl import DDL_PATH, render_kpi_ddl
from pipeline.kpi.definitions import KPIS, kpi_values, percentile
from pipeline.kpi.facts import ContactFacts, contact_facts
from pipeline.kpi.measures import LIST_NAMES
from pipeline.kpi.rows import PARTIAL_COLUMNS
from pipeline.kpi.settings import KpiConfig
from pipeline.store.migrations import Migration
from tests.support.kpi_reference import kpi_rows_from_facts, merge_partials
from tests.unit.test_kpi_facts import BASE, ev


def _minute(rows_kpis: list[dict[str, float | None]], index: int = 0) -> dict[str, float | None]:
    return rows_kpis[index]


def _kpis(
    facts_list: list[ContactFacts], minutes: int = 60, config: KpiConfig | None = None
) -> list[dict[str, float | None]]:
    rows = kpi_rows_from_facts(facts_list, config, until=BASE + timedelta(hours=2))
    return [kpi_values(m) for m in merge_partials(rows, minutes)]


def test_queue_kpis_service_levels_asa_and_short_abandons() -> None:
    contacts = [
        # answered in 10 s and 30 s (voice T = 20 s), abandoned after 3 s (short) and 40 s
        [ev("queued", 0, "a", queue="q"), ev("agent_assigned", 10, "a", queue="q")],
        [ev("queued", 5, "b", queue="q"), ev("agent_assigned", 35, "b", queue="q")],
        [ev("queued", 6, "c", queue="q"), ev("abandoned", 9, "c", stage="queue")],
        [ev("queued", 7, "d", queue="q"), ev("abandoned", 47, "d", stage="queue")],
        [ev("queued", 8, "e", queue="q")],  # still waiting
    ]
    k = _minute(_kpis([contact_facts(c) for c in contacts]))
    assert (k["offered"], k["answered"], k["abandoned"], k["short_abandoned"]) == (5, 2, 2, 1)
    assert k["service_level_genesys"] == 1 / 3  # 1 within T / (2 answered + 1 long abandon)
    assert k["service_level_connect"] == 2 / 5  # answered in 10 s + short abandon, of 5 queued
    assert k["service_level"] == k["service_level_genesys"]
    assert k["asa_seconds"] == 20.0
    assert k["backlog"] == 1 and k["oldest_wait_seconds"] == 3600 - 8  # at the end of the first hour


def test_headline_and_thresholds_come_from_config() -> None:
    config = KpiConfig(sl_threshold_seconds={"voice": 40.0}, sl_headline={"voice": "connect"})
    facts = [contact_facts([ev("queued", 0, "a", queue="q"), ev("agent_assigned", 30, "a", queue="q")])]
    k = _minute(_kpis(facts, config=config))
    assert k["service_level_genesys"] == 1.0 and k["service_level"] == k["service_level_connect"] == 1.0
    assert _minute(_kpis(facts))["service_level"] == 0.0  # default 20 s


def test_response_handle_bot_ivr_resolution_and_survey_kpis() -> None:
    chat = [
        ev("contact_started", 0, "a", channel="chat"),
        ev("bot_turn", 1, "a", channel="chat", author="customer"),
        ev("bot_handoff", 2, "a", channel="chat"),
        ev("queued", 2, "a", channel="chat", queue="q"),
        ev("agent_assigned", 12, "a", channel="chat", queue="q"),
        ev("first_agent_reply", 20, "a", channel="chat", queue="q"),
        ev("customer_message", 25, "a", channel="chat", queue="q"),
        ev("agent_reply", 35, "a", channel="chat", queue="q"),
        ev("customer_message", 40, "a", channel="chat", queue="q"),
        ev("agent_reply", 70, "a", channel="chat", queue="q"),
        ev("transferred", 80, "a", channel="chat", queue="q", to_queue="q"),
        ev("queued", 80, "a", channel="chat", queue="q"),
        ev("agent_assigned", 90, "a", channel="chat", queue="q"),
        ev("resolved", 100, "a", channel="chat", queue="q"),
        ev("ended", 100, "a", channel="chat", queue="q", acw_seconds=20),
        ev("survey_response", 110, "a", channel="chat", survey="csat", score=4),
        ev("survey_response", 111, "a", channel="chat", survey="ces", score=2),
        ev("survey_response", 112, "a", channel="chat", survey="nps", score=10),
    ]
    bot = [
        ev("bot_turn", 1, "b", channel="chat", author="customer"),
        ev("resolved", 3, "b", channel="chat", resolved_by="bot"),
        ev("ended", 3, "b", channel="chat"),
        ev("survey_response", 10, "b", channel="chat", survey="csat", score=2),
        ev("survey_response", 11, "b", channel="chat", survey="ces", score=5),
        ev("survey_response", 12, "b", channel="chat", survey="nps", score=5),
    ]
    rows = kpi_rows_from_facts([contact_facts(chat), contact_facts(bot)])
    merged = {m["queue"]: m for m in merge_partials(rows, 1440)}
    k, pre = kpi_values(merged["q"]), kpi_values(merged[""])  # before any queue leg: queue ""
    assert k["frt_mean_seconds"] == 20.0 and k["frt_p50_seconds"] == 20.0
    assert k["nrt_mean_seconds"] == 20.0 and k["nrt_p50_seconds"] == 30.0 and k["nrt_p99_seconds"] == 30.0
    assert k["handled"] == 1 and k["aht_seconds"] == 100 - 12 - 10 + 20
    assert k["transfers"] == 1 and pre["bot_handoffs"] == 1 and pre["bot_contained"] == 1
    assert k["resolved"] == 1 and k["first_contact_resolved"] == 1 and pre["first_contact_resolved"] == 1
    assert k["csat"] == 1.0 and k["ces"] == 2.0 and k["nps"] == 100.0
    assert pre["csat"] == 0.0 and pre["ces"] == 5.0 and pre["nps"] == -100.0
    assert k["offered"] == 2 and k["answered"] == 2 and pre["offered"] == 0
    both = kpi_values(merge_partials([replace(r, queue="") for r in rows], 1440)[0])
    assert both["csat"] == 0.5 and both["ces"] == 3.5 and both["nps"] == 0.0 and both["resolved"] == 2


def test_measures_land_in_the_window_of_the_completing_event() -> None:
    facts = contact_facts(
        [
            ev("queued", 50, "a", queue="q"),
            ev("agent_assigned", 70, "a", queue="q"),
            ev("ended", 200, "a", queue="q"),
            ev("ivr_zero_out", 30, "a", ivr_node="main"),
        ]
    )
    rows = kpi_rows_from_facts([facts])
    zero_out = next(r for r in rows if r.queue == "")  # before the first leg: the event's own queue
    assert zero_out.counts["ivr_zero_outs"] == 1 and zero_out.window_start == BASE
    by_minute = {(r.window_start - BASE) // timedelta(minutes=1): r for r in rows if r.queue == "q"}
    assert by_minute[0].counts["offered"] == 1
    assert by_minute[1].counts["answered"] == 1 and by_minute[1].values["answer_waits"] == (20.0,)
    assert by_minute[3].values["handle_times"] == (130.0,)
    assert by_minute[0].backlog_end == 1 and by_minute[1].backlog_end == 0


def test_rollup_backlog_is_the_last_minute_and_lists_concatenate() -> None:
    facts = [
        contact_facts([ev("queued", 0, "a", queue="q"), ev("agent_assigned", 61, "a", queue="q")]),
        contact_facts([ev("queued", 30, "b", queue="q"), ev("agent_assigned", 200, "b", queue="q")]),
    ]
    rows = kpi_rows_from_facts(facts, until=BASE + timedelta(minutes=15))
    minute = merge_partials(rows, 1)
    assert [m["backlog_end"] for m in minute] == [2, 1, 1, 0]  # b is answered in minute 3
    quarter = merge_partials(rows, 15)
    assert len(quarter) == 1 and quarter[0]["backlog_end"] == 0 and quarter[0]["answer_waits"] == [61.0, 170.0]
    three = merge_partials([r for r in rows if r.window_start < BASE + timedelta(minutes=3)], 3)
    assert three[0]["backlog_end"] == 1 and three[0]["oldest_wait_end"] == 150.0


def _brute_force(values: list[float], q: float) -> float:
    """The smallest value v with #{x <= v} > q * n; the largest value when there is none."""
    n = len(values)
    candidates = [v for v in values if sum(1 for x in values if x <= v) > q * n]
    return min(candidates) if candidates else max(values)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6, allow_nan=False) | st.integers(0, 5).map(float), min_size=1, max_size=40),
    st.sampled_from([0.0, 0.01, 0.25, 0.29, 0.5, 0.9, 0.95, 0.99, 0.999, 1.0]) | st.floats(0, 1),
)
def test_percentile_is_nearest_rank_quantile_exact(values: list[float], q: float) -> None:
    assert percentile(values, q) == _brute_force(values, q)


def test_percentile_examples() -> None:
    assert percentile([], 0.5) is None
    assert percentile([4.0, 1.0, 3.0, 2.0], 0.5) == 3.0  # upper median, like quantileExact
    assert percentile([float(i) for i in range(100)], 0.29) == 28.0  # 0.29 * 100 == 28.999...
    assert percentile([1.0, 2.0], 1.0) == 2.0


def test_every_kpi_has_a_doc_and_sql() -> None:
    names = [k.name for k in KPIS]
    assert len(names) == len(set(names))
    for kpi in KPIS:
        assert kpi.doc and kpi.sql() and kpi.unit
    required = {
        *("offered", "answered", "abandoned", "short_abandoned", "asa_seconds", "aht_seconds", "transfers"),
        *("service_level_genesys", "service_level_connect", "service_level", "frt_p90_seconds", "nrt_p99_seconds"),
        *("bot_contained", "bot_handoffs", "ivr_zero_outs", "resolved", "first_contact_resolved", "csat", "ces"),
        *("nps", "backlog", "oldest_wait_seconds"),
    }
    assert required <= set(names)


def test_committed_ddl_matches_the_generator() -> None:
    assert DDL_PATH.read_text() == render_kpi_ddl(), "run `touchline generate`"


def test_ddl_splits_into_table_and_four_views_with_every_column() -> None:
    statements = Migration(DDL_PATH.name, render_kpi_ddl()).statements()
    assert len(statements) == 5
    table = statements[0]
    for column in PARTIAL_COLUMNS:
        assert f"`{column}`" in table
    for view in ("kpi_minute", "kpi_15m", "kpi_1h", "kpi_1d"):
        body = next(s for s in statements if f"VIEW IF NOT EXISTS {view} AS" in s)
        for kpi in KPIS:
            assert f"AS {kpi.name}" in body or f"    {kpi.name},\n" in body
        for name in LIST_NAMES:
            assert f"groupArrayArray({name})" in body
