"""Every windowed KPI, defined once: its formula (docstring), its Python evaluation and its
ClickHouse expression come from the same `Expr` tree.

Windows and partial rows
------------------------
KPIs are computed per 1-minute tumbling window of EVENT time x channel x queue x priority. The
stream worker keeps, per source partition (topic, partition), the *measures* of each window - counts
and the raw value lists that exact means and percentiles need - and writes them as partial rows
(`kpi_minute_partials`, columns = `KpiRow.record()`). ClickHouse views merge the partial rows of all
partitions (sum counts, concatenate value lists) and evaluate each KPI's `sql()`. `merge_partials`
+ `kpi_values` do exactly the same in Python, so the two can be cross-checked row for row.

Attribution: each measure lands in the window of the event that completes it
    offered -> `queued`; answered, ASA, service level -> `agent_assigned`; abandoned and short
    abandons -> `abandoned`; Amazon-style "removed within T" -> the removing `agent_assigned` or
    `abandoned`; FRT -> the first agent reply; NRT -> the answering reply; AHT -> `ended`;
    surveys -> `survey_response`; resolved -> `resolved`; first-contact resolved -> `ended`;
    transfers -> `transferred`; bot contained -> first of (`resolved` by bot, `ended`);
    bot handoffs -> first `bot_handoff`; IVR zero-outs -> `ivr_zero_out`.
Backlog and oldest wait are states, not events: they are measured at the window's end instant
(legs queued before the end and not removed before it; see `QueueLeg.waiting_at`).

Percentiles are exact: ClickHouse `quantileExact(q)` semantics on the merged multiset. With the n
values sorted ascending (0-based), the result is element `floor(q * n)` (the product computed in
IEEE double, truncated), clamped to `n - 1`; equivalently the smallest value v with
#{x <= v} > q * n (the largest value when q >= 1). For n = 4 the p50 is the 3rd value (the upper
median). NULL when there are no values.

Rates are fractions in [0, 1] except NPS (-100..100). Ratios are NULL when their denominator is 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.kpi.facts import ContactFacts, QueueLeg, Stamp, from_ms, to_ms

WINDOW_MS = 60_000

SlFormula = Literal["genesys", "connect"]

DEFAULT_SL_THRESHOLDS: dict[str, float] = {
    "voice": 20.0,
    "chat": 60.0,
    "web": 60.0,
    "sms": 900.0,
    "social": 3600.0,
    "email": 86400.0,
}


class KpiConfig(BaseModel):
    """KPI settings. Thresholds are applied when measures are taken and stored on every partial
    row (`sl_threshold_seconds`, `short_abandon_seconds`, `sl_headline`), so the views need no
    configuration."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sl_threshold_seconds: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_SL_THRESHOLDS),
        description="Service-level target T per channel, seconds.",
    )
    sl_headline: dict[str, SlFormula] = Field(
        default_factory=dict, description="Headline service-level formula per channel (default genesys)."
    )
    default_sl_threshold_seconds: float = Field(60.0, gt=0, description="T for a channel not listed.")
    default_sl_headline: SlFormula = "genesys"
    short_abandon_seconds: float = Field(5.0, ge=0, description="Abandons with a shorter wait are short abandons.")
    allowed_lateness_seconds: float = Field(300.0, ge=0, description="Watermark = max event time - this.")
    idle_timeout_seconds: float = Field(
        30.0, gt=0, description="A partition without events this long (wall clock) advances with the wall clock."
    )
    ended_retention_hours: float = Field(26.0, gt=0, description="Contacts are forgotten this long after `ended`.")
    unended_retention_days: float = Field(
        0.0, ge=0, description="Contacts that never end are forgotten this long after their last event; 0: never."
    )

    def threshold(self, channel: str) -> float:
        return self.sl_threshold_seconds.get(channel, self.default_sl_threshold_seconds)

    def headline(self, channel: str) -> SlFormula:
        return self.sl_headline.get(channel, self.default_sl_headline)


# ---------------------------------------------------------------------------------------------
# Columns of a partial row (measures of one window x channel x queue x priority x partition)


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    ch_type: str
    comment: str


COUNT_COLUMNS: tuple[Column, ...] = (
    Column("offered", "UInt32", "Queue legs started (`queued`) in the window, legs"),
    Column("answered", "UInt32", "Queue legs answered (`agent_assigned` while waiting), legs"),
    Column("answered_within_sl", "UInt32", "Answered legs with wait <= sl_threshold_seconds, legs"),
    Column("abandoned", "UInt32", "Queue legs abandoned while waiting, short abandons included, legs"),
    Column("short_abandoned", "UInt32", "Queue abandons with wait < short_abandon_seconds, legs"),
    Column("removed_within_sl", "UInt32", "Legs answered or abandoned with wait <= sl_threshold_seconds, legs"),
    Column("transfers", "UInt32", "`transferred` events, count"),
    Column("bot_contained", "UInt32", "Contacts contained by the bot (contact level), contacts"),
    Column("bot_handoffs", "UInt32", "Contacts the bot handed to a human queue, contacts"),
    Column("ivr_zero_outs", "UInt32", "`ivr_zero_out` events, count"),
    Column("resolved", "UInt32", "Resolutions (`resolved` of a contact not already resolved), count"),
    Column("first_contact_resolved", "UInt32", "Contacts ended resolved with no reopen, at `ended`, contacts"),
    Column("csat_responses", "UInt32", "CSAT answers, count"),
    Column("csat_satisfied", "UInt32", "CSAT answers scoring 4 or 5, count"),
    Column("ces_responses", "UInt32", "CES answers, count"),
    Column("ces_score_sum", "UInt32", "Sum of CES scores (1-7), points"),
    Column("nps_responses", "UInt32", "NPS answers, count"),
    Column("nps_promoters", "UInt32", "NPS answers scoring 9-10, count"),
    Column("nps_detractors", "UInt32", "NPS answers scoring 0-6, count"),
)
LIST_COLUMNS: tuple[Column, ...] = (
    Column("answer_waits", "Array(Float64)", "Wait of each answered leg (queued -> agent_assigned), seconds"),
    Column("first_response_times", "Array(Float64)", "First response time of each contact, seconds"),
    Column("next_response_times", "Array(Float64)", "Each next response time, seconds"),
    Column("handle_times", "Array(Float64)", "Handle time (talk incl. hold + ACW) of each ended contact, seconds"),
)
COUNT_NAMES: tuple[str, ...] = tuple(c.name for c in COUNT_COLUMNS)
LIST_NAMES: tuple[str, ...] = tuple(c.name for c in LIST_COLUMNS)

WindowKey = tuple[int, str, str, int]  # (window start ms, channel, queue, priority)


def window_of(epoch_ms: int) -> int:
    """Start (epoch ms) of the 1-minute window holding `epoch_ms`."""
    return epoch_ms - epoch_ms % WINDOW_MS


@dataclass(slots=True)
class Measures:
    """Counts and value lists of one window key (one contact's contribution, or a window's total)."""

    counts: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)

    def count(self, name: str, n: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + n

    def value(self, name: str, v: float) -> None:
        self.values.setdefault(name, []).append(v)

    def add(self, other: Measures) -> None:
        for name, n in other.counts.items():
            self.count(name, n)
        for name, vs in other.values.items():
            self.values.setdefault(name, []).extend(vs)

    def is_empty(self) -> bool:
        return not any(self.counts.values()) and not any(self.values.values())

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "values": {k: list(v) for k, v in self.values.items()}}


def contributions(facts: ContactFacts, config: KpiConfig) -> dict[WindowKey, Measures]:
    """One contact's measures per window key, each in the window of the event that completes it."""
    out: dict[WindowKey, Measures] = {}
    channel = facts.channel
    threshold = config.threshold(channel)

    def at(stamp: Stamp) -> Measures:
        key = (window_of(stamp.at_ms), channel, stamp.queue, stamp.priority)
        found = out.get(key)
        if found is None:
            found = out[key] = Measures()
        return found

    for leg in facts.legs:
        at(Stamp(leg.queued_ms, leg.queue, leg.priority)).count("offered")
        wait = leg.wait_seconds
        if leg.answered_ms is not None and wait is not None:
            m = at(Stamp(leg.answered_ms, leg.queue, leg.priority))
            m.count("answered")
            m.value("answer_waits", wait)
            if wait <= threshold:
                m.count("answered_within_sl")
                m.count("removed_within_sl")
        abandon_wait = leg.abandon_wait_seconds
        if leg.abandoned_ms is not None and abandon_wait is not None:
            m = at(Stamp(leg.abandoned_ms, leg.queue, leg.priority))
            m.count("abandoned")
            if abandon_wait < config.short_abandon_seconds:
                m.count("short_abandoned")
            if abandon_wait <= threshold:
                m.count("removed_within_sl")
    if facts.first_reply is not None:
        at(facts.first_reply.stamp).value("first_response_times", facts.first_reply.value)
    for nrt in facts.next_responses:
        at(nrt.stamp).value("next_response_times", nrt.value)
    if facts.ended is not None and facts.handle_seconds is not None:
        at(facts.ended).value("handle_times", facts.handle_seconds)
    for stamp in facts.transfers:
        at(stamp).count("transfers")
    if facts.bot_contained is not None:
        at(facts.bot_contained).count("bot_contained")
    if facts.bot_handoff is not None:
        at(facts.bot_handoff).count("bot_handoffs")
    for stamp in facts.ivr_zero_outs:
        at(stamp).count("ivr_zero_outs")
    for stamp in facts.resolutions:
        at(stamp).count("resolved")
    if facts.first_contact_resolved is not None:
        at(facts.first_contact_resolved).count("first_contact_resolved")
    for answer in facts.surveys:
        m = at(answer.stamp)
        if answer.survey == "csat":
            m.count("csat_responses")
            if answer.score >= 4:
                m.count("csat_satisfied")
        elif answer.survey == "ces":
            m.count("ces_responses")
            m.count("ces_score_sum", answer.score)
        elif answer.survey == "nps":
            m.count("nps_responses")
            if answer.score >= 9:
                m.count("nps_promoters")
            elif answer.score <= 6:
                m.count("nps_detractors")
    return {k: v for k, v in out.items() if not v.is_empty()}


DimKey = tuple[str, str, int]  # (channel, queue, priority)


def backlog_at(legs: Iterable[tuple[str, QueueLeg]], end_ms: int) -> dict[DimKey, tuple[int, int]]:
    """(channel, queue, priority) -> (legs waiting at the instant `end_ms`, earliest queued_ms among them)."""
    out: dict[DimKey, tuple[int, int]] = {}
    for channel, leg in legs:
        if leg.waiting_at(end_ms):
            key = (channel, leg.queue, leg.priority)
            n, oldest = out.get(key, (0, leg.queued_ms))
            out[key] = (n + 1, min(oldest, leg.queued_ms))
    return out


# ---------------------------------------------------------------------------------------------
# The partial row


@dataclass(frozen=True, slots=True)
class KpiRow:
    """One partial row of `kpi_minute_partials`: the measures of one 1-minute window x channel x
    queue x priority from one source partition. Value lists are sorted ascending."""

    window_start: datetime
    channel: str
    queue: str
    priority: int
    source_topic: str
    source_partition: int
    sl_threshold_seconds: float
    short_abandon_seconds: float
    sl_headline: str
    counts: Mapping[str, int]
    values: Mapping[str, tuple[float, ...]]
    backlog_end: int = 0
    oldest_wait_end: float = 0.0
    final: bool = False
    version: int = 0
    emitted_at: datetime | None = None

    @property
    def key(self) -> tuple[datetime, str, str, int, str, int]:
        """The table's ORDER BY key."""
        return (self.window_start, self.channel, self.queue, self.priority, self.source_topic, self.source_partition)

    def content(self) -> tuple[Any, ...]:
        """Everything but final/version/emitted_at, for equality of window contents."""
        return (
            self.key,
            self.sl_threshold_seconds,
            self.short_abandon_seconds,
            self.sl_headline,
            tuple(self.counts.get(n, 0) for n in COUNT_NAMES),
            tuple(tuple(self.values.get(n, ())) for n in LIST_NAMES),
            self.backlog_end,
            self.oldest_wait_end,
        )

    def is_empty(self) -> bool:
        return (
            not any(self.counts.get(n, 0) for n in COUNT_NAMES)
            and not any(self.values.get(n) for n in LIST_NAMES)
            and self.backlog_end == 0
        )

    def record(self) -> dict[str, Any]:
        """Column name -> value, in `PARTIAL_COLUMNS` order, ready for a ClickHouse insert."""
        rec: dict[str, Any] = {
            "window_start": self.window_start,
            "channel": self.channel,
            "queue": self.queue,
            "priority": self.priority,
            "source_topic": self.source_topic,
            "source_partition": self.source_partition,
            "sl_threshold_seconds": self.sl_threshold_seconds,
            "short_abandon_seconds": self.short_abandon_seconds,
            "sl_headline": self.sl_headline,
        }
        for name in COUNT_NAMES:
            rec[name] = self.counts.get(name, 0)
        for name in LIST_NAMES:
            rec[name] = list(self.values.get(name, ()))
        rec["backlog_end"] = self.backlog_end
        rec["oldest_wait_end"] = self.oldest_wait_end
        rec["final"] = self.final
        rec["version"] = self.version
        rec["emitted_at"] = self.emitted_at if self.emitted_at is not None else self.window_start
        return rec


PARTIAL_COLUMNS: tuple[str, ...] = tuple(
    [
        "window_start",
        "channel",
        "queue",
        "priority",
        "source_topic",
        "source_partition",
        "sl_threshold_seconds",
        "short_abandon_seconds",
        "sl_headline",
        *COUNT_NAMES,
        *LIST_NAMES,
        "backlog_end",
        "oldest_wait_end",
        "final",
        "version",
        "emitted_at",
    ]
)


def build_row(
    key: WindowKey,
    measures: Measures,
    backlog: tuple[int, int] | None,
    config: KpiConfig,
    source: tuple[str, int],
    *,
    final: bool = False,
    version: int = 0,
    emitted_at: datetime | None = None,
) -> KpiRow:
    window_ms, channel, queue, priority = key
    count, oldest_ms = backlog if backlog is not None else (0, 0)
    end_ms = window_ms + WINDOW_MS
    return KpiRow(
        window_start=from_ms(window_ms),
        channel=channel,
        queue=queue,
        priority=priority,
        source_topic=source[0],
        source_partition=source[1],
        sl_threshold_seconds=config.threshold(channel),
        short_abandon_seconds=config.short_abandon_seconds,
        sl_headline=config.headline(channel),
        counts={n: measures.counts.get(n, 0) for n in COUNT_NAMES},
        values={n: tuple(sorted(measures.values.get(n, ()))) for n in LIST_NAMES},
        backlog_end=count,
        oldest_wait_end=(end_ms - oldest_ms) / 1000.0 if count else 0.0,
        final=final,
        version=version,
        emitted_at=emitted_at,
    )


def kpi_rows_from_facts(
    facts: Iterable[ContactFacts],
    config: KpiConfig | None = None,
    *,
    source: tuple[str, int] = ("", 0),
    until: datetime | None = None,
) -> list[KpiRow]:
    """Batch computation of the final partial rows of one source partition from complete contact
    facts - the reference the streaming `KpiWindows` must reproduce. Windows with measures are all
    returned; backlog rows are produced for every window from the first one that has anything up to
    the last window ending at or before `until` (default: the window of the latest measured or queued
    instant). Rows with nothing in them are left out. Sorted by key."""
    config = config or KpiConfig()
    all_facts = list(facts)
    totals: dict[WindowKey, Measures] = {}
    for f in sorted(all_facts, key=lambda f: f.contact_id):
        for key, m in contributions(f, config).items():
            totals.setdefault(key, Measures()).add(m)
    legs = [(f.channel, leg) for f in all_facts for leg in f.legs]
    windows = [k[0] for k in totals] + [window_of(leg.queued_ms) for _, leg in legs]
    rows: dict[WindowKey, KpiRow] = {}
    if windows:
        first = min(windows)
        last = window_of(to_ms(until)) - WINDOW_MS if until is not None else max(windows)
        for window_ms in range(first, max(last, first - WINDOW_MS) + 1, WINDOW_MS):
            for dim, backlog in backlog_at(legs, window_ms + WINDOW_MS).items():
                key = (window_ms, *dim)
                rows[key] = build_row(key, totals.get(key, Measures()), backlog, config, source, final=True)
        for key, m in totals.items():
            if key not in rows and (until is None or key[0] + WINDOW_MS <= to_ms(until)):
                rows[key] = build_row(key, m, None, config, source, final=True)
    return [rows[k] for k in sorted(rows) if not rows[k].is_empty()]


# ---------------------------------------------------------------------------------------------
# Percentiles


def percentile(values: Sequence[float], q: float) -> float | None:
    """Exact percentile with ClickHouse `quantileExact(q)` semantics: the sorted values' element at
    0-based index `int(q * n)` (IEEE double product, truncated), clamped to n - 1; None when empty."""
    n = len(values)
    if n == 0:
        return None
    ordered = sorted(values)
    index = int(q * n) if q < 1 else n - 1
    return ordered[min(max(index, 0), n - 1)]


# ---------------------------------------------------------------------------------------------
# One definition, two readings: Expr.sql() for ClickHouse, Expr.eval() for Python


class Expr:
    """A KPI formula over merged partial-row columns."""

    def sql(self) -> str:
        raise NotImplementedError

    def eval(self, row: Mapping[str, Any]) -> float | None:
        raise NotImplementedError


@dataclass(frozen=True)
class Col(Expr):
    """A merged count or state column."""

    name: str

    def sql(self) -> str:
        return self.name

    def eval(self, row: Mapping[str, Any]) -> float | None:
        value = row[self.name]
        return None if value is None else float(value)


@dataclass(frozen=True)
class Signed(Expr):
    """Sum of columns with signs, e.g. answered + abandoned - short_abandoned."""

    terms: tuple[tuple[int, str], ...]

    def sql(self) -> str:
        parts = []
        for i, (sign, name) in enumerate(self.terms):
            op = ("-" if sign < 0 else "") if i == 0 else (" - " if sign < 0 else " + ")
            parts.append(f"{op}{name}")
        return "(" + "".join(parts) + ")"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        return sum(sign * int(row[name]) for sign, name in self.terms)


@dataclass(frozen=True)
class Ratio(Expr):
    """scale * numerator / denominator; NULL when the denominator is 0."""

    numerator: Expr
    denominator: Expr
    scale: float = 1.0

    def sql(self) -> str:
        num = self.numerator.sql()
        body = (
            f"{num} / {self.denominator.sql()}"
            if self.scale == 1.0
            else f"{self.scale!r} * {num} / {self.denominator.sql()}"
        )
        return f"if({self.denominator.sql()} = 0, NULL, {body})"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        num, den = self.numerator.eval(row), self.denominator.eval(row)
        if den is None or num is None or den == 0:
            return None
        return float(num) / den if self.scale == 1.0 else self.scale * num / den


@dataclass(frozen=True)
class Mean(Expr):
    """Mean of a merged value list; NULL when empty."""

    name: str

    def sql(self) -> str:
        return f"if(empty({self.name}), NULL, arraySum({self.name}) / length({self.name}))"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        values: Sequence[float] = row[self.name]
        return sum(sorted(values)) / len(values) if values else None


@dataclass(frozen=True)
class Length(Expr):
    """Number of values in a merged value list."""

    name: str

    def sql(self) -> str:
        return f"length({self.name})"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        return len(row[self.name])


@dataclass(frozen=True)
class Quantile(Expr):
    """Exact percentile (`percentile`, ClickHouse quantileExact) of a merged value list; NULL when empty."""

    name: str
    level: float

    def sql(self) -> str:
        return f"if(empty({self.name}), NULL, arrayReduce('quantileExact({self.level!r})', {self.name}))"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        return percentile(row[self.name], self.level)


@dataclass(frozen=True)
class Headline(Expr):
    """The service level the row's channel reports as headline (`sl_headline`)."""

    genesys: Expr
    connect: Expr

    def sql(self) -> str:
        return f"if(sl_headline = 'connect', {self.connect.sql()}, {self.genesys.sql()})"

    def eval(self, row: Mapping[str, Any]) -> float | None:
        return self.connect.eval(row) if row["sl_headline"] == "connect" else self.genesys.eval(row)


@dataclass(frozen=True)
class Kpi:
    """A KPI: `name` (the view column), `unit`, `doc` (formula and attribution), `expr`."""

    name: str
    unit: str
    doc: str
    expr: Expr

    @property
    def is_column(self) -> bool:
        """A KPI that is just a merged column of the same name (a count)."""
        return isinstance(self.expr, Col) and self.expr.name == self.name

    def sql(self) -> str:
        return self.expr.sql()

    def eval(self, row: Mapping[str, Any]) -> float | None:
        return self.expr.eval(row)


_SL_GENESYS = Ratio(Col("answered_within_sl"), Signed(((1, "answered"), (1, "abandoned"), (-1, "short_abandoned"))))
_SL_CONNECT = Ratio(Col("removed_within_sl"), Col("offered"))


def _pct(prefix: str, column: str, what: str) -> tuple[Kpi, ...]:
    return (
        Kpi(f"{prefix}_mean_seconds", "s", f"Mean {what} = sum({column}) / count({column}).", Mean(column)),
        Kpi(f"{prefix}_p50_seconds", "s", f"Median {what}: quantileExact(0.5) of {column}.", Quantile(column, 0.5)),
        Kpi(f"{prefix}_p90_seconds", "s", f"90th percentile {what}: quantileExact(0.9).", Quantile(column, 0.9)),
        Kpi(f"{prefix}_p99_seconds", "s", f"99th percentile {what}: quantileExact(0.99).", Quantile(column, 0.99)),
    )


KPIS: tuple[Kpi, ...] = (
    Kpi("offered", "legs", "Offered = queue legs started (`queued`), at queued time.", Col("offered")),
    Kpi(
        "answered",
        "legs",
        "Answered = legs answered while waiting (`agent_assigned`), at answer time.",
        Col("answered"),
    ),
    Kpi(
        "abandoned",
        "legs",
        "Abandoned in queue = legs abandoned while waiting (short ones included), at abandon time.",
        Col("abandoned"),
    ),
    Kpi(
        "short_abandoned",
        "legs",
        "Short abandons = queue abandons with wait < short_abandon_seconds (default 5 s), at abandon time.",
        Col("short_abandoned"),
    ),
    Kpi(
        "service_level_genesys",
        "fraction",
        "Service level (Genesys style) = answered with wait <= T / (answered + abandoned - short abandons); "
        "T per channel (sl_threshold_seconds); numerator and answered at answer time, abandons at abandon time.",
        _SL_GENESYS,
    ),
    Kpi(
        "service_level_connect",
        "fraction",
        "Service level (Amazon Connect style) = legs removed from queue (answered or abandoned) with wait <= T / "
        "offered; numerator at removal time, offered at queued time (so a single minute can exceed 1).",
        _SL_CONNECT,
    ),
    Kpi(
        "service_level",
        "fraction",
        "Headline service level: the channel's configured formula (sl_headline: genesys or connect).",
        Headline(_SL_GENESYS, _SL_CONNECT),
    ),
    Kpi(
        "asa_seconds",
        "s",
        "ASA = mean wait of answered legs = sum(answer_waits) / answered, at answer time.",
        Mean("answer_waits"),
    ),
    *_pct("frt", "first_response_times", "first response time (at the first agent reply)"),
    *_pct("nrt", "next_response_times", "next response time (at the answering agent reply)"),
    Kpi(
        "handled",
        "contacts",
        "Handled = ended contacts with a handle time (answered by an agent), at ended time.",
        Length("handle_times"),
    ),
    Kpi(
        "aht_seconds",
        "s",
        "AHT = mean handle time (talk incl. hold + ACW) of contacts ended in the window.",
        Mean("handle_times"),
    ),
    Kpi("transfers", "count", "Transfers = `transferred` events, at transfer time.", Col("transfers")),
    Kpi(
        "bot_contained",
        "contacts",
        "Bot-contained contacts (contact level, see facts), at completion time.",
        Col("bot_contained"),
    ),
    Kpi(
        "bot_handoffs",
        "contacts",
        "Contacts handed from bot to a human queue, at the first handoff.",
        Col("bot_handoffs"),
    ),
    Kpi("ivr_zero_outs", "count", "IVR zero-outs = `ivr_zero_out` events, at their time.", Col("ivr_zero_outs")),
    Kpi("resolved", "count", "Resolutions (resolved while not already resolved), at resolved time.", Col("resolved")),
    Kpi(
        "first_contact_resolved",
        "contacts",
        "First-contact resolved (contact level) = contacts ended resolved with no reopen before the end, at ended time.",
        Col("first_contact_resolved"),
    ),
    Kpi(
        "csat",
        "fraction",
        "CSAT = CSAT answers scoring 4-5 / CSAT answers, at response time.",
        Ratio(Col("csat_satisfied"), Col("csat_responses")),
    ),
    Kpi(
        "ces",
        "points",
        "CES = mean CES score (1-7, lower is easier), at response time.",
        Ratio(Col("ces_score_sum"), Col("ces_responses")),
    ),
    Kpi(
        "nps",
        "points",
        "NPS = 100 * (promoters 9-10 - detractors 0-6) / NPS answers, at response time.",
        Ratio(Signed(((1, "nps_promoters"), (-1, "nps_detractors"))), Col("nps_responses"), 100.0),
    ),
    Kpi(
        "backlog",
        "legs",
        "Backlog at window end = legs queued before the end instant and not answered, abandoned, transferred out "
        "or closed before it.",
        Col("backlog_end"),
    ),
    Kpi(
        "oldest_wait_seconds",
        "s",
        "Oldest waiting age at window end = end - earliest queued time of the backlog (0 when empty).",
        Col("oldest_wait_end"),
    ),
)
KPI_BY_NAME: dict[str, Kpi] = {k.name: k for k in KPIS}


def kpi_values(merged: Mapping[str, Any]) -> dict[str, float | None]:
    """Every KPI of one merged row (as produced by `merge_partials` or read from a view)."""
    return {k.name: k.eval(merged) for k in KPIS}


def merge_partials(rows: Iterable[KpiRow], minutes: int = 1) -> list[dict[str, Any]]:
    """Merge partial rows exactly as the views do: group by bucket (`minutes` wide, aligned to
    the epoch; 1440 = UTC day) x channel x queue x priority; sum counts; concatenate value lists
    (sorted); backlog = sum over partitions of the backlog of the bucket's last minute; oldest wait =
    the max over partitions of that minute; final = all merged rows final. Callers pass each
    partial row once (the highest version per key, as FINAL does)."""
    width = minutes * WINDOW_MS
    groups: dict[tuple[int, str, str, int], list[KpiRow]] = {}
    for row in rows:
        start = to_ms(row.window_start)
        groups.setdefault((start - start % width, row.channel, row.queue, row.priority), []).append(row)
    out = []
    for (bucket, channel, queue, priority), members in sorted(groups.items()):
        last_minute = bucket + width - WINDOW_MS
        merged: dict[str, Any] = {
            "window_start": from_ms(bucket),
            "window_end": from_ms(bucket + width),
            "channel": channel,
            "queue": queue,
            "priority": priority,
            "partial_rows": len(members),
            "final": all(r.final for r in members),
            "sl_threshold_seconds": max(r.sl_threshold_seconds for r in members),
            "short_abandon_seconds": max(r.short_abandon_seconds for r in members),
            "sl_headline": max(r.sl_headline for r in members),
        }
        for name in COUNT_NAMES:
            merged[name] = sum(r.counts.get(name, 0) for r in members)
        for name in LIST_NAMES:
            merged[name] = sorted(v for r in members for v in r.values.get(name, ()))
        at_end = [r for r in members if to_ms(r.window_start) == last_minute]
        merged["backlog_end"] = sum(r.backlog_end for r in at_end)
        merged["oldest_wait_end"] = max((r.oldest_wait_end for r in at_end), default=0.0)
        out.append(merged)
    return out
