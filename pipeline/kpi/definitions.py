"""Every windowed KPI, defined once: its formula (docstring), its Python evaluation and its
ClickHouse expression come from the same `Expr` tree. The views (`pipeline.kpi.ddl`) evaluate each
KPI's `sql()` over merged partial rows; `kpi_values` evaluates the same definitions in Python over a
row merged the same way, so the two can be cross-checked row for row.

Percentiles are exact: ClickHouse `quantileExact(q)` semantics on the merged multiset. With the n
values sorted ascending (0-based), the result is element `floor(q * n)` (the product computed in
IEEE double, truncated), clamped to `n - 1`; equivalently the smallest value v with
#{x <= v} > q * n (the largest value when q >= 1). For n = 4 the p50 is the 3rd value (the upper
median). NULL when there are no values.

Rates are fractions in [0, 1] except NPS (-100..100). Ratios are NULL when their denominator is 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
