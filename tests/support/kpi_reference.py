"""Reference implementations the tests hold the streaming code to, written as plain batch
computations over complete data:

* `kpi_rows_from_facts`: the final partial rows of one source partition from complete contact
  facts, which `pipeline.kpi.windows.KpiWindows` must reproduce;
* `backlog_at`: the backlog at an instant, which `pipeline.kpi.backlog.WaitingLegs` must answer;
* `merge_partials`: the merge the ClickHouse views do, so that `kpi_values` of a merged row can be
  compared with the views row for row.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pipeline.kpi.contributions import contributions
from pipeline.kpi.facts import ContactFacts, QueueLeg
from pipeline.kpi.measures import COUNT_NAMES, LIST_NAMES, WINDOW_MS, DimKey, Measures, WindowKey, window_of
from pipeline.kpi.rows import KpiRow, build_row
from pipeline.kpi.settings import KpiConfig
from pipeline.times import from_ms, to_ms


def backlog_at(legs: Iterable[tuple[str, QueueLeg]], end_ms: int) -> dict[DimKey, tuple[int, int]]:
    """(channel, queue, priority) -> (legs waiting at the instant `end_ms`, earliest queued_ms among them)."""
    out: dict[DimKey, tuple[int, int]] = {}
    for channel, leg in legs:
        if leg.waiting_at(end_ms):
            key = (channel, leg.queue, leg.priority)
            n, oldest = out.get(key, (0, leg.queued_ms))
            out[key] = (n + 1, min(oldest, leg.queued_ms))
    return out


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
