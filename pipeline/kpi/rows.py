"""The partial row of `kpi_minute_partials`.

KPIs are computed per 1-minute tumbling window of EVENT time x channel x queue x priority. The
stream worker keeps, per source partition (topic, partition), the *measures* of each window and
writes them as partial rows (columns = `KpiRow.record()`, in `PARTIAL_COLUMNS` order). ClickHouse
views merge the partial rows of all partitions (sum counts, concatenate value lists) and evaluate
each KPI's `sql()` (`pipeline.kpi.definitions`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pipeline.kpi.measures import COUNT_NAMES, LIST_NAMES, WINDOW_MS, Measures, WindowKey
from pipeline.kpi.settings import KpiConfig
from pipeline.times import from_ms

# the defaults of `counts.get(name, 0)` and `values.get(name, ())` for `map` over the names
_ZEROS = (0,) * len(COUNT_NAMES)
_EMPTIES: tuple[tuple[float, ...], ...] = ((),) * len(LIST_NAMES)


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
            tuple(map(self.counts.get, COUNT_NAMES, _ZEROS)),
            tuple(map(tuple, map(self.values.get, LIST_NAMES, _EMPTIES))),
            self.backlog_end,
            self.oldest_wait_end,
        )

    def is_empty(self) -> bool:
        return (
            not any(map(self.counts.get, COUNT_NAMES, _ZEROS))
            and not any(map(self.values.get, LIST_NAMES))
            and self.backlog_end == 0
        )

    def record(self) -> dict[str, Any]:
        """Column name -> value, in `PARTIAL_COLUMNS` order, ready for a ClickHouse insert."""
        return dict(zip(PARTIAL_COLUMNS, self.record_values(), strict=True))

    def record_values(self) -> list[Any]:
        """The values of `record()`, without the names (the rows the worker writes)."""
        return [
            self.window_start,
            self.channel,
            self.queue,
            self.priority,
            self.source_topic,
            self.source_partition,
            self.sl_threshold_seconds,
            self.short_abandon_seconds,
            self.sl_headline,
            *map(self.counts.get, COUNT_NAMES, _ZEROS),
            *map(list, map(self.values.get, LIST_NAMES, _EMPTIES)),
            self.backlog_end,
            self.oldest_wait_end,
            self.final,
            self.version,
            self.emitted_at if self.emitted_at is not None else self.window_start,
        ]


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
        counts=dict(zip(COUNT_NAMES, map(measures.counts.get, COUNT_NAMES, _ZEROS), strict=True)),
        values={n: tuple(sorted(measures.values.get(n, ()))) for n in LIST_NAMES},
        backlog_end=count,
        oldest_wait_end=(end_ms - oldest_ms) / 1000.0 if count else 0.0,
        final=final,
        version=version,
        emitted_at=emitted_at,
    )
