"""The live view of `make run` (tools/run.py) for on-call: per channel and queue, the last 15 minutes of event
time (service level, offered/answered/abandoned, ASA, waiting and the oldest wait, open at-risk
obligations and breaches by target), the event-time clock, watermark and consumer lag, and how many
events came too late for the KPIs. Built from the worker's /metrics and the rows in ClickHouse;
laid out to be read at 100 columns."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime

from prometheus_client.parser import text_string_to_metric_families
from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from pipeline.events.models import Channel

WINDOW_MINUTES = 15


@dataclass
class Snapshot:
    at: float
    consumed: dict[str, float] = field(default_factory=dict)
    valid: dict[str, float] = field(default_factory=dict)
    written: dict[str, float] = field(default_factory=dict)
    dead: dict[str, float] = field(default_factory=dict)
    duplicates: dict[str, float] = field(default_factory=dict)
    late: dict[str, float] = field(default_factory=dict)
    lag: float = 0.0  # of the stage furthest behind
    pending: float = 0.0
    watermark_lag: float | None = None

    @property
    def late_total(self) -> int:
        return int(sum(self.late.values()))


def scrape(url: str) -> Snapshot:
    with urllib.request.urlopen(f"{url}/metrics", timeout=2) as response:
        text = response.read().decode()
    snap = Snapshot(at=time.monotonic())
    per_channel = {
        "touchline_events_consumed": snap.consumed,
        "touchline_events_valid": snap.valid,
        "touchline_events_written": snap.written,
        "touchline_events_deadlettered": snap.dead,
        "touchline_events_duplicate": snap.duplicates,
        "touchline_events_late": snap.late,
    }
    lags: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            target = per_channel.get(family.name)
            if target is not None and sample.name.endswith("_total"):
                channel = sample.labels.get("channel", "?")
                target[channel] = target.get(channel, 0.0) + sample.value
            elif family.name == "touchline_consumer_lag_messages":
                stage = sample.labels.get("stage", "")
                lags[stage] = lags.get(stage, 0.0) + sample.value
            elif family.name == "touchline_pending_rows":
                snap.pending = sample.value
            elif family.name == "touchline_kpi_watermark_lag_seconds":
                snap.watermark_lag = sample.value
    snap.lag = max(lags.values(), default=0.0)
    return snap


def query(url: str, sql: str) -> list[list[object]]:
    request = urllib.request.Request(f"{url}/sql?format=json", data=sql.encode(), method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        rows: list[list[object]] = json.loads(response.read())["rows"]
    return rows


# Per channel and queue over the last 15 minutes of event time. Waiting and oldest wait are those
# at the newest window of that queue (summed / maxed over priorities).
QUEUE_QUERY = f"""
SELECT channel, queue, sum(o), sum(a), sum(ab),
       sum(win) / nullIf(sum(a) + sum(ab) - sum(sab), 0) AS sl,
       sum(waits) / nullIf(sum(a), 0) AS asa,
       argMax(bl, ws) AS waiting, argMax(ow, ws) AS oldest
FROM (
    SELECT channel, queue, window_start AS ws, sum(offered) AS o, sum(answered) AS a, sum(abandoned) AS ab,
           sum(short_abandoned) AS sab, sum(answered_within_sl) AS win, sum(arraySum(answer_waits)) AS waits,
           sum(backlog) AS bl, max(oldest_wait_seconds) AS ow
    FROM kpi_minute
    WHERE window_start >= (SELECT max(window_start) FROM kpi_minute) - INTERVAL {WINDOW_MINUTES - 1} MINUTE
    GROUP BY channel, queue, window_start
)
GROUP BY channel, queue ORDER BY channel, queue
"""

# Open at-risk obligations (an at_risk outcome and nothing after it yet) and breaches by target.
SLA_QUERY = f"""
SELECT channel, queue,
       countIf(kinds = ['at_risk']) AS at_risk,
       countIf(has(kinds, 'breached') AND target = 'first_response') AS fr,
       countIf(has(kinds, 'breached') AND target = 'next_response') AS nr,
       countIf(has(kinds, 'breached') AND target = 'resolution') AS res
FROM (
    SELECT channel, queue, target, contact_id, opened_by, groupUniqArray(kind) AS kinds
    FROM sla_events FINAL
    WHERE at >= (SELECT max(at) FROM sla_events) - INTERVAL {WINDOW_MINUTES} MINUTE
    GROUP BY channel, queue, target, contact_id, opened_by
)
GROUP BY channel, queue
"""

CLOCK_QUERY = "SELECT max(occurred_at), count() FROM interaction_events"


@dataclass
class Board:
    """What the queries returned, per (channel, queue)."""

    queues: dict[tuple[str, str], list[object]] = field(default_factory=dict)
    sla: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    stored: dict[str, int] = field(default_factory=dict)
    event_time: datetime | None = None


def read_board(url: str) -> Board:
    board = Board()
    for channel, queue, *values in query(url, QUEUE_QUERY):
        board.queues[(str(channel), str(queue))] = values
    for channel, queue, *counts in query(url, SLA_QUERY):
        board.sla[(str(channel), str(queue))] = [int(str(c)) for c in counts]
    for channel, count in query(url, "SELECT channel, count() FROM interaction_events GROUP BY channel"):
        board.stored[str(channel)] = int(str(count))
    (newest, _), *_ = query(url, CLOCK_QUERY) or [[None, 0]]
    if newest:
        board.event_time = datetime.fromisoformat(str(newest).replace("Z", "+00:00"))
    return board


def _number(value: object) -> float | None:
    try:
        number = float(str(value))
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: nothing to average


def _duration(seconds: float | None, zero: str = "-") -> str:
    if seconds is None:
        return "-"
    if seconds < 0.5:
        return zero
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def queue_table(board: Board) -> Table:
    table = Table(
        title=f"SLA by channel and queue, last {WINDOW_MINUTES} min of event time",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        show_edge=False,
        title_justify="left",
    )
    headers = ["channel", "queue", "SL", "off", "ans", "aband", "ASA", "wait", "oldest", "risk", "breach FR/NR/RES"]
    for header in headers:
        table.add_column(header, justify="left" if header in ("channel", "queue") else "right", no_wrap=True)
    for key in sorted(set(board.queues) | set(board.sla)):
        channel, queue = key
        offered, answered, abandoned, sl, asa, waiting, oldest = board.queues.get(key, [0, 0, 0, None, None, 0, 0])
        at_risk, fr, nr, res = board.sla.get(key, [0, 0, 0, 0])
        sl_value, asa_value = _number(sl), _number(asa)
        breaches = f"{fr}/{nr}/{res}"
        table.add_row(
            channel,
            queue or "-",
            "-" if sl_value is None else f"{sl_value:.1%}",
            str(offered),
            str(answered),
            str(abandoned),
            "-" if asa_value is None else f"{asa_value:.1f}s",
            str(waiting),
            _duration(_number(oldest)),
            Text(str(at_risk), style="yellow" if at_risk else ""),
            Text(breaches, style="red" if fr or nr or res else ""),
        )
    return table


def channel_table(prev: Snapshot, now: Snapshot, board: Board) -> Table:
    table = Table(
        title="Events by channel", box=box.SIMPLE_HEAD, padding=(0, 1, 0, 0), show_edge=False, title_justify="left"
    )
    for header in ("channel", "read", "written/s", "in ClickHouse", "duplicates", "dead-lettered", "late"):
        table.add_column(header, justify="left" if header == "channel" else "right", no_wrap=True)
    span = max(now.at - prev.at, 1e-6)
    for channel in [c.value for c in Channel]:
        rate = (now.written.get(channel, 0) - prev.written.get(channel, 0)) / span
        table.add_row(
            channel,
            f"{now.consumed.get(channel, 0):,.0f}",
            f"{rate:,.1f}",
            f"{board.stored.get(channel, 0):,}",
            f"{now.duplicates.get(channel, 0):,.0f}",
            f"{now.dead.get(channel, 0):,.0f}",
            f"{now.late.get(channel, 0):,.0f}",
        )
    return table


def status_lines(first: Snapshot, prev: Snapshot, now: Snapshot, board: Board, status: str) -> Text:
    clock = board.event_time.strftime("%Y-%m-%d %H:%M:%S UTC") if board.event_time else "-"
    watermark = _duration(now.watermark_lag, zero="0s")
    span = max(now.at - prev.at, 1e-6)
    rate = (sum(now.written.values()) - sum(prev.written.values())) / span
    average = (sum(now.written.values()) - sum(first.written.values())) / max(now.at - first.at, 1e-6)
    text = Text()
    text.append(f"event time {clock}   watermark lag {watermark}   consumer lag {now.lag:,.0f} messages\n")
    text.append(f"throughput {rate:,.0f} events/s now, {average:,.0f} on average   {status}\n")
    late = now.late_total
    text.append(
        f"late events {late:,} (arrived behind the watermark: stored, left out of the KPIs)",
        style="bold red" if late else "",
    )
    return text


LEGEND = (
    "SL answered within the channel's target / (answered + abandoned - short abandons); off/ans/aband queue "
    "legs; ASA mean wait of answered legs; wait legs waiting now, oldest the longest of their waits; risk "
    "obligations past 80 % of their target, not yet met; breach by target: first response / next response "
    "/ resolution."
)


def render(first: Snapshot, prev: Snapshot, now: Snapshot, board: Board, status: str) -> Group:
    return Group(
        Text("Touchline live", style="bold"),
        status_lines(first, prev, now, board, status),
        queue_table(board),
        Text(LEGEND, style="dim"),
        channel_table(prev, now, board),
    )
