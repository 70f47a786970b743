"""What Grafana does to a ClickHouse panel's SQL before ClickHouse sees it, so the queries can be run
and tested outside Grafana (tests, `touchline sql`).

Two steps, in Grafana's order:
1. Template variables (Grafana's frontend): `$var`, `${var}`, `${var:format}` and `[[var]]`, with
   the formats `singlequote`, `doublequote`, `csv`, `raw`, `regex`, `pipe`. A multi-value variable
   set to "All" with a custom all value is inserted raw, unformatted (as Grafana does).
2. Macros of the grafana-clickhouse-datasource plugin (its pkg/macros): `$__timeFilter(col)`,
   `$__timeFilter_ms(col)`, `$__dateFilter(col)`, `$__dateTimeFilter(date, time)` / `$__dt`,
   `$__timeInterval(col)`, `$__timeInterval_ms(col)`, `$__interval_s`, `$__fromTime`, `$__toTime`,
   `$__fromTime_ms`, `$__toTime_ms`, with the same SQL the plugin writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

ALL = "$__all"
"""The value Grafana stores for a variable set to "All"."""


class MacroError(ValueError):
    """A macro or variable could not be expanded."""


@dataclass(frozen=True)
class Variable:
    """A template variable's current selection. `values = [ALL]` selects "All"."""

    values: Sequence[str]
    all_value: str | None = None
    options: Sequence[str] = field(default=())

    def selected(self) -> list[str]:
        if list(self.values) == [ALL] and self.all_value is None:
            return list(self.options)
        return list(self.values)


def _quote(value: str, quote: str) -> str:
    return quote + value.replace(quote, "\\" + quote) + quote


def _format(values: list[str], fmt: str | None) -> str:
    if fmt in (None, "", "raw"):
        return ",".join(values) if len(values) != 1 else values[0]
    if fmt == "singlequote":
        return ",".join(_quote(v, "'") for v in values)
    if fmt == "doublequote":
        return ",".join(_quote(v, '"') for v in values)
    if fmt == "csv":
        return ",".join(values)
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "regex":
        escaped = [re.sub(r"[\\^$.|?*+()\[\]{}/]", lambda m: "\\" + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    raise MacroError(f"unsupported variable format {fmt!r}")


_VARIABLE = re.compile(
    r"\$\{(?P<braced>\w+)(?::(?P<fmt>\w+))?\}|\[\[(?P<old>\w+)(?::(?P<oldfmt>\w+))?\]\]|\$(?P<plain>(?!__)\w+)"
)


def interpolate(sql: str, variables: Mapping[str, Variable]) -> str:
    """Step 1: replace template variables. Unknown names are left as they are (Grafana does too)."""

    def replace(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("old") or match.group("plain")
        fmt = match.group("fmt") or match.group("oldfmt")
        variable = variables.get(name)
        if variable is None:
            return match.group(0)
        if list(variable.values) == [ALL] and variable.all_value is not None:
            return variable.all_value
        return _format(variable.selected(), fmt)

    return _VARIABLE.sub(replace, sql)


def _date_time(moment: datetime) -> str:
    return f"toDateTime({int(moment.timestamp())})"


def _date_time64(moment: datetime) -> str:
    return f"fromUnixTimestamp64Milli({int(moment.timestamp() * 1000)})"


def _date(moment: datetime) -> str:
    return f"toDate('{moment.astimezone(UTC).strftime('%Y-%m-%d')}')"


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime
    interval_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise MacroError("time range bounds must be timezone-aware")


def _macros(tr: TimeRange) -> dict[str, tuple[int, Callable[[list[str]], str]]]:
    seconds = max(int(tr.interval_seconds), 1)
    millis = max(int(tr.interval_seconds * 1000), 1)
    return {
        "fromTime": (0, lambda a: _date_time(tr.start)),
        "toTime": (0, lambda a: _date_time(tr.end)),
        "fromTime_ms": (0, lambda a: _date_time64(tr.start)),
        "toTime_ms": (0, lambda a: _date_time64(tr.end)),
        "timeFilter": (1, lambda a: f"{a[0]} >= {_date_time(tr.start)} AND {a[0]} <= {_date_time(tr.end)}"),
        "timeFilter_ms": (
            1,
            lambda a: f"{a[0]} >= {_date_time64(tr.start)} AND {a[0]} <= {_date_time64(tr.end)}",
        ),
        "dateFilter": (1, lambda a: f"{a[0]} >= {_date(tr.start)} AND {a[0]} <= {_date(tr.end)}"),
        "dateTimeFilter": (
            2,
            lambda a: (
                f"({a[0]} >= {_date(tr.start)} AND {a[0]} <= {_date(tr.end)}) AND "
                f"({a[1]} >= {_date_time(tr.start)} AND {a[1]} <= {_date_time(tr.end)})"
            ),
        ),
        "timeInterval": (1, lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {seconds} second)"),
        "timeInterval_ms": (
            1,
            lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {millis} millisecond)",
        ),
        "interval_s": (0, lambda a: str(seconds)),
    }


_MACRO = re.compile(r"\$__(\w+)")


def _arguments(sql: str, open_at: int) -> tuple[list[str], int]:
    """Top-level comma-separated arguments of the parenthesis at `open_at`, and the index after ')'."""
    depth, current, args = 0, [], []
    quote: str | None = None
    for i in range(open_at, len(sql)):
        char = sql[i]
        if quote:
            current.append(char)
            if char == quote and sql[i - 1] != "\\":
                quote = None
            continue
        if char in "'\"`":
            quote = char
            current.append(char)
        elif char == "(":
            depth += 1
            if depth > 1:
                current.append(char)
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append("".join(current).strip())
                return [a for a in args if a], i + 1
            current.append(char)
        elif char == "," and depth == 1:
            args.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    raise MacroError(f"unbalanced parentheses after position {open_at}")


def expand_macros(sql: str, time_range: TimeRange) -> str:
    """Step 2: replace the ClickHouse plugin's macros."""
    macros = _macros(time_range)
    macros["dt"] = macros["dateTimeFilter"]
    out: list[str] = []
    pos = 0
    while True:
        match = _MACRO.search(sql, pos)
        if match is None:
            out.append(sql[pos:])
            return "".join(out)
        name = match.group(1)
        if name not in macros:
            raise MacroError(f"unknown macro $__{name}")
        arity, render = macros[name]
        out.append(sql[pos : match.start()])
        end = match.end()
        args: list[str] = []
        if arity:
            if end >= len(sql) or sql[end] != "(":
                raise MacroError(f"$__{name} needs {arity} argument(s)")
            args, end = _arguments(sql, end)
            if len(args) != arity:
                raise MacroError(f"$__{name} expects {arity} argument(s), got {len(args)}")
        out.append(render(args))
        pos = end


def expand(sql: str, time_range: TimeRange, variables: Mapping[str, Variable] | None = None) -> str:
    """Template variables, then macros: the SQL Grafana's ClickHouse plugin sends to ClickHouse."""
    expanded = expand_macros(interpolate(sql, variables or {}), time_range)
    leftover = re.search(r"\$\{?\w+", expanded)
    if leftover:
        raise MacroError(f"unexpanded variable {leftover.group(0)!r} in:\n{expanded}")
    return expanded


def column_kind(clickhouse_type: str) -> str:
    """What a panel sees in a column of this ClickHouse type: `time`, `number`, `string` (else the type)."""
    base = clickhouse_type
    for wrapper in ("Nullable(", "LowCardinality("):
        while base.startswith(wrapper):
            base = base[len(wrapper) : -1]
    if base.startswith(("DateTime", "Date")):
        return "time"
    if base.startswith(("UInt", "Int", "Float", "Decimal", "Bool")):
        return "number"
    if base.startswith(("String", "FixedString", "Enum")):
        return "string"
    return base
