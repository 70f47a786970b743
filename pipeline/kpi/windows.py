"""Streaming windowed KPIs per source partition: exact, order-independent, duplicate-proof.

`KpiWindows.apply(event, (topic, partition))` adds the event to its contact's event set, recomputes
the contact's facts and replaces the contact's contributions to every open window (the delta: old
contributions out, new in). A window's measures are the sum of its contacts' current contributions,
aggregated in contact-id order with sorted value lists, so any arrival order and any number of
redeliveries give identical rows.

Watermark and lateness (per partition): watermark = max event time seen - allowed lateness
(default 5 min); it never moves back. While a partition is idle (no event for `idle_timeout_seconds`
of wall-clock time), `advance_idle(now_wall)` moves its event clock on with the wall clock, keeping
the wall/event offset observed when its latest event arrived. A window [start, end) is final once
watermark >= end. An event whose window is final is late: it is not applied and `apply` returns a
`LateEvent` (send it to the late-events topic, count it).

Exactness: every measure is decided by events at or before the event that completes it (see
`pipeline.kpi.facts`), so an event that is not late can only change windows at or after its own,
which are all still open. Final windows are therefore never touched again.

`emit(now)` returns the rows of windows that changed since the last emit (provisional while open,
re-emitted with a higher `version` whenever they change) and the final row of every window the
watermark has passed, after which the window is dropped from memory. Versions are
max(previous + 1, `now` in epoch ms), so they also increase across restarts and rebalances.
Backlog and oldest wait at each window's end are computed from the queue legs of live contacts; a
window with nothing but a backlog still gets a row. Memory holds open windows and live contacts
only (contacts are forgotten `ended_retention_hours` after `ended`, see `ContactTracker`).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipeline.events.models import EventBase
from pipeline.kpi.backlog import WaitingLegs
from pipeline.kpi.contributions import contributions
from pipeline.kpi.facts import ContactTracker
from pipeline.kpi.measures import WINDOW_MS, Measures, WindowKey, window_of
from pipeline.kpi.rows import KpiRow, build_row
from pipeline.kpi.settings import KpiConfig
from pipeline.times import from_ms, to_ms

PartitionKey = tuple[str, int]  # (source topic, source partition)

SNAPSHOT_FORMAT = 1
# What one bounded worker emit does per partition at most. A jump of the event clock (a backfill, a
# ticket waiting for weeks) leaves a row per minute and queue behind it; they are produced a slice
# at a time (`behind` says more is due), so no emit holds the loop for long. Rows are what cost
# (~100 µs each, profiled in a 90-day ticket backfill): a pass ends after the window that took it
# past MAX_ROWS_PER_EMIT, ~40 ms. Windows that yield no row cost a few µs; they are capped apart.
# Capped at 60 windows (and no row cap), `make bench`'s analytics pass made 3,050 passes (counted)
# over its 24 partitions, each re-reading the partition's open windows and pruning: KPI emit held
# the consumer back 7.2 of 32.1 s (9,884 events/s); at 600 windows or 400 rows, 4.1 of 24.7 s (12,654).
MAX_WINDOWS_PER_EMIT = 600
MAX_ROWS_PER_EMIT = 400


@dataclass(frozen=True, slots=True)
class LateEvent:
    """An event whose window was already final when it arrived; it was not applied."""

    event: EventBase
    partition: PartitionKey
    window_start: datetime
    watermark: datetime


class _Partition:
    def __init__(self, key: PartitionKey, config: KpiConfig) -> None:
        self.key = key
        self.tracker = ContactTracker(
            ended_retention=timedelta(hours=config.ended_retention_hours),
            unended_retention=timedelta(days=config.unended_retention_days),
            short_abandon_seconds=config.short_abandon_seconds,
        )
        self.contribs: dict[WindowKey, dict[str, Measures]] = {}
        self.contact_keys: dict[str, set[WindowKey]] = {}
        # contacts by the start of their latest window, so a prune visits only those whose every
        # window just became final (it walked all of contact_keys: 6.7 % of a soak's CPU at speed 500)
        self.latest_window: dict[str, int] = {}
        self.closing: dict[int, set[str]] = {}
        self.closing_starts: list[int] = []  # heap of the keys of `closing`
        self.legs = WaitingLegs()
        self.max_event_ms: int | None = None
        self.watermark_ms: int | None = None
        self.next_final_ms: int | None = None  # start of the oldest window not yet finalized
        self.observed_max_ms: int | None = None
        self.observed_wall_ms: int | None = None
        self.emitted: dict[WindowKey, tuple[int, str, tuple[int, int] | None]] = {}
        self.dirty: set[WindowKey] = set()
        self.unsettled: set[str] = set()  # contacts applied with `defer`, contributions not yet recomputed
        self.behind = False  # the last emit stopped at its max_windows


_NOTHING = Measures()  # never added to: the measures of a window with no contributions


def _digest(row: KpiRow) -> str:
    return hashlib.sha1(repr(row.content()).encode(), usedforsecurity=False).hexdigest()


class KpiWindows:
    """Open KPI windows and live contacts of the source partitions this worker owns."""

    def __init__(self, config: KpiConfig | None = None) -> None:
        self.config = config or KpiConfig()
        self._lateness_ms = int(self.config.allowed_lateness_seconds * 1000)
        self._idle_ms = int(self.config.idle_timeout_seconds * 1000)
        self._partitions: dict[PartitionKey, _Partition] = {}
        self.stats: dict[str, int] = {"applied": 0, "duplicates": 0, "late": 0, "evicted": 0}
        # set while a checkpoint serializes contacts: none may disappear after its head was taken
        self.hold_evictions = False
        # the last `now_wall` given to `apply` and its epoch ms: a batch passes one instant for all
        # its events, so `to_ms` runs once per batch, not once per event
        self._wall: tuple[datetime, int] | None = None

    # ------------------------------------------------------------------ input

    def apply(
        self, event: EventBase, partition: PartitionKey, *, now_wall: datetime | None = None, defer: bool = False
    ) -> LateEvent | None:
        """Apply one event read from `partition`. Returns a `LateEvent` (not applied) when its window
        is already final, else None (applied, or a duplicate that changed nothing). `now_wall`, when
        given, is the wall-clock arrival time, used to measure the partition's wall/event offset.
        `defer`: leave the contact's contributions to `settle` (or the next `emit`), so a batch
        recomputes each contact once however many of its events it holds."""
        p = self._partition(partition)
        t = to_ms(event.occurred_at)
        window = window_of(t)
        if p.watermark_ms is not None and window + WINDOW_MS <= p.watermark_ms:
            self.stats["late"] += 1
            return LateEvent(event, partition, from_ms(window), from_ms(p.watermark_ms))
        if not p.tracker.add(event, t):
            self.stats["duplicates"] += 1
            return None
        self.stats["applied"] += 1
        p.max_event_ms = t if p.max_event_ms is None else max(p.max_event_ms, t)
        self._raise_watermark(p, p.max_event_ms - self._lateness_ms)
        p.next_final_ms = window if p.next_final_ms is None else min(p.next_final_ms, window)
        if now_wall is not None:
            wall = self._wall
            if wall is None or wall[0] is not now_wall:
                wall = self._wall = (now_wall, to_ms(now_wall))
            p.observed_max_ms = p.max_event_ms
            p.observed_wall_ms = wall[1]
        if defer:
            p.unsettled.add(event.contact_id)
        else:
            p.unsettled.discard(event.contact_id)
            self._recompute(p, event.contact_id)
        return None

    def settle(self) -> None:
        """Recompute the contributions of contacts applied with `defer`."""
        for p in self._partitions.values():
            for contact_id in p.unsettled:
                self._recompute(p, contact_id)
            p.unsettled.clear()

    def advance_idle(self, now_wall: datetime) -> None:
        """Advance the watermark of partitions idle for `idle_timeout_seconds` with the wall clock:
        event clock = latest event time + wall time elapsed since that event was observed."""
        now_ms = to_ms(now_wall)
        for p in self._partitions.values():
            if p.max_event_ms is None:
                continue
            if p.observed_max_ms != p.max_event_ms or p.observed_wall_ms is None:
                p.observed_max_ms, p.observed_wall_ms = p.max_event_ms, now_ms
                continue
            idle = now_ms - p.observed_wall_ms
            if idle >= self._idle_ms:
                self._raise_watermark(p, p.max_event_ms + idle - self._lateness_ms)

    def advance_watermark(self, partition: PartitionKey, to: datetime) -> None:
        """Move a partition's watermark forward to `to` (never back), e.g. at the end of a replay."""
        p = self._partitions.get(partition)
        if p is not None and p.max_event_ms is not None:
            self._raise_watermark(p, to_ms(to))

    def final_until(self, partition: PartitionKey) -> datetime | None:
        """Windows starting before this are final and emitted (None: no event yet)."""
        p = self._partitions.get(partition)
        return None if p is None or p.next_final_ms is None else from_ms(p.next_final_ms)

    def watermark(self, partition: PartitionKey) -> datetime | None:
        p = self._partitions.get(partition)
        return None if p is None or p.watermark_ms is None else from_ms(p.watermark_ms)

    @property
    def partitions(self) -> list[PartitionKey]:
        return sorted(self._partitions)

    def drop_partition(self, partition: PartitionKey) -> None:
        """Forget a partition (revoked in a rebalance); its new owner restores or replays it."""
        self._partitions.pop(partition, None)

    @property
    def behind(self) -> bool:
        """The last `emit` left windows due for the next one."""
        return any(p.behind for p in self._partitions.values())

    def open_windows(self, partition: PartitionKey) -> int:
        p = self._partitions.get(partition)
        return 0 if p is None else len({k[0] for k in p.contribs} | {k[0] for k in p.emitted})

    def contact_events(self, partition: PartitionKey, contact_id: str) -> list[EventBase]:
        """The contact's distinct events in event-time order (empty when unknown)."""
        p = self._partitions.get(partition)
        return [] if p is None else p.tracker.events(contact_id)

    def forget_contact(self, partition: PartitionKey, contact_id: str) -> None:
        """Drop a contact (erasure): its events and queue legs go; the open windows keep the
        contributions it already made."""
        p = self._partitions.get(partition)
        if p is not None:
            p.tracker.forget(contact_id)
            p.legs.discard(contact_id)
            p.contact_keys.pop(contact_id, None)
            self._index(p, contact_id, None)
            p.unsettled.discard(contact_id)

    def contact_ids(self, partition: PartitionKey) -> list[str]:
        p = self._partitions.get(partition)
        return [] if p is None else list(p.tracker)

    def live_contacts(self, partition: PartitionKey) -> int:
        p = self._partitions.get(partition)
        return 0 if p is None else len(p.tracker)

    # ------------------------------------------------------------------ output

    def emit(self, now: datetime, max_windows: int | None = None) -> list[KpiRow]:
        """Rows of windows changed since the last emit, plus final rows of windows the watermark
        passed. `max_windows`: visit at most this many windows per partition and end a partition's
        pass once it has MAX_ROWS_PER_EMIT rows (`behind` then says more is due; call again)."""
        self.settle()
        rows: list[KpiRow] = []
        for key in sorted(self._partitions):
            rows.extend(self._emit_partition(self._partitions[key], now, max_windows))
        return rows

    # ------------------------------------------------------------------ persistence

    def snapshot(self) -> dict[str, Any]:
        """JSON-able state: live contacts' events, clocks and what was emitted for open windows."""
        state: dict[str, Any] = json.loads(self.snapshot_json())
        return state

    def snapshot_json(self) -> str:
        """`snapshot()` as JSON text (contacts' events come cached from the tracker)."""
        parts = []
        for key in sorted(self._partitions):
            p = self._partitions[key]
            head = json.dumps(
                {
                    "topic": key[0],
                    "partition": key[1],
                    "max_event_ms": p.max_event_ms,
                    "watermark_ms": p.watermark_ms,
                    "next_final_ms": p.next_final_ms,
                    "observed_max_ms": p.observed_max_ms,
                    "observed_wall_ms": p.observed_wall_ms,
                    "emitted": [
                        [*wkey, version, digest, list(backlog) if backlog is not None else None]
                        for wkey, (version, digest, backlog) in sorted(p.emitted.items())
                    ],
                },
                separators=(",", ":"),
            )
            parts.append(f'{head[:-1]},"tracker":{p.tracker.snapshot_json()}}}')
        stats = json.dumps(dict(self.stats), separators=(",", ":"))
        return f'{{"format":{SNAPSHOT_FORMAT},"stats":{stats},"partitions":[' + ",".join(parts) + "]}"

    # -- keyed persistence: a partition's head plus one record per contact (see pipeline.worker.stages)

    def head(self, partition: PartitionKey) -> dict[str, Any] | None:
        """The partition's clocks, stats and open emitted windows, without its contacts (None: unknown).
        Small: open windows only."""
        p = self._partitions.get(partition)
        if p is None:
            return None
        return {
            "format": SNAPSHOT_FORMAT,
            "stats": dict(self.stats),
            "max_event_ms": p.max_event_ms,
            "watermark_ms": p.watermark_ms,
            "next_final_ms": p.next_final_ms,
            "emitted": [
                [*wkey, version, digest, list(backlog) if backlog is not None else None]
                for wkey, (version, digest, backlog) in sorted(p.emitted.items())
            ],
        }

    def drain_changes(self, partition: PartitionKey) -> set[str]:
        """Contacts of `partition` added, changed or evicted since the last call."""
        p = self._partitions.get(partition)
        return set() if p is None else p.tracker.drain_changes()

    def contact_wire(self, partition: PartitionKey, contact_id: str) -> str | None:
        p = self._partitions.get(partition)
        return None if p is None else p.tracker.contact_wire(contact_id)

    def contact_meta(self, partition: PartitionKey, contact_id: str) -> tuple[int | None, int, bool] | None:
        """(first `ended` ms or None, latest event ms, idle) of a held contact; idle: it has no open
        window and no queue leg, and keeps so until its next event (a restore need not parse it)."""
        p = self._partitions.get(partition)
        meta = None if p is None else p.tracker.contact_meta(contact_id)
        if p is None or meta is None:
            return None
        idle = contact_id not in p.contact_keys and contact_id not in p.legs and contact_id not in p.unsettled
        return meta[0], meta[1], idle

    def restore_partition(
        self,
        partition: PartitionKey,
        head: dict[str, Any],
        contacts: list[tuple[str, str, tuple[int | None, int, bool] | None]],
    ) -> None:
        """Rebuild `partition` from its `head` and its contacts: (contact_id, `contact_wire`, its
        (ended ms, last event ms) or None). An ended contact whose last event is before the first
        open window cannot contribute to any open window: it is restored as JSON only, unparsed.
        The wall-clock observation is not restored: the time the partition was down is not idle
        time (the idle clock starts again from the first emit after the restore)."""
        if head.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown KPI snapshot format {head.get('format')!r}")
        self._partitions.pop(partition, None)
        p = self._partition(partition)
        for name, value in head.get("stats", {}).items():
            self.stats[name] = max(self.stats.get(name, 0), int(value))
        floor = head["next_final_ms"]
        parsed: dict[str, str] = {}
        for contact_id, wire, meta in contacts:
            if meta is not None and floor is not None and meta[1] < floor and (meta[0] is not None or meta[2]):
                p.tracker.restore_frozen(contact_id, wire, meta[0], meta[1])
            else:
                p.tracker.restore_contact(wire)
                parsed[contact_id] = wire
        p.tracker.drain_changes()
        p.max_event_ms = head["max_event_ms"]
        p.watermark_ms = head["watermark_ms"]
        p.next_final_ms = head["next_final_ms"]
        for w, channel, queue, priority, version, digest, backlog in head["emitted"]:
            p.emitted[(int(w), str(channel), str(queue), int(priority))] = (
                int(version),
                str(digest),
                (int(backlog[0]), int(backlog[1])) if backlog is not None else None,
            )
        for contact_id, wire in parsed.items():
            self._recompute(p, contact_id)
            held = p.tracker.contact_meta(contact_id)
            if held is not None and contact_id not in p.contact_keys and contact_id not in p.legs:
                # an open contact no open window needs (a checkpoint written before the idle flag)
                p.tracker.restore_frozen(contact_id, wire, held[0], held[1])
        p.dirty |= p.emitted.keys()

    def adopt_written(self, partition: PartitionKey, written: list[tuple[int, str, str, int, int]]) -> None:
        """Rows already in the sink for open windows of `partition` that its restored head does not
        know: (window start ms, channel, queue, priority, version). They were written after the last
        checkpoint; each is re-checked at the next emit and replaced (by an empty row if nothing
        contributes to it any more), so no provisional row is left behind by a crash."""
        p = self._partition(partition)
        floor = p.next_final_ms if p.next_final_ms is not None else 0
        for window, channel, queue, priority, version in written:
            key = (int(window), str(channel), str(queue), int(priority))
            if key[0] >= floor and key not in p.emitted:
                p.emitted[key] = (int(version), "", (-1, -1))  # matches no digest and no backlog
                p.dirty.add(key)
                if p.next_final_ms is None:
                    p.next_final_ms = key[0]
                p.next_final_ms = min(p.next_final_ms, key[0])

    def restore(self, state: dict[str, Any]) -> None:
        """Replace this object's state with a `snapshot()`; contributions are recomputed from events."""
        if state.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown KPI snapshot format {state.get('format')!r}")
        self._partitions.clear()
        self.stats = {k: int(v) for k, v in state.get("stats", {}).items()}
        for raw in state["partitions"]:
            p = self._partition((str(raw["topic"]), int(raw["partition"])))
            p.tracker.restore(raw["tracker"])
            p.max_event_ms = raw["max_event_ms"]
            p.watermark_ms = raw["watermark_ms"]
            p.next_final_ms = raw["next_final_ms"]
            # not restored: the time the partition was down is not idle time
            for w, channel, queue, priority, version, digest, backlog in raw["emitted"]:
                p.emitted[(int(w), str(channel), str(queue), int(priority))] = (
                    int(version),
                    str(digest),
                    (int(backlog[0]), int(backlog[1])) if backlog is not None else None,
                )
            for contact_id in p.tracker:
                self._recompute(p, contact_id)
            p.dirty |= p.emitted.keys()  # re-check everything emitted against its digest

    # ------------------------------------------------------------------ internals

    def _partition(self, key: PartitionKey) -> _Partition:
        p = self._partitions.get(key)
        if p is None:
            p = self._partitions[key] = _Partition(key, self.config)
        return p

    @staticmethod
    def _index(p: _Partition, contact_id: str, latest: int | None) -> None:
        """File `contact_id` under the start of its latest open window (None: it has none)."""
        previous = p.latest_window.get(contact_id)
        if previous == latest:
            return
        if previous is not None:
            bucket = p.closing.get(previous)
            if bucket is not None:
                bucket.discard(contact_id)
        if latest is None:
            p.latest_window.pop(contact_id, None)
            return
        p.latest_window[contact_id] = latest
        bucket = p.closing.get(latest)
        if bucket is None:
            bucket = p.closing[latest] = set()
            heapq.heappush(p.closing_starts, latest)
        bucket.add(contact_id)

    @staticmethod
    def _raise_watermark(p: _Partition, candidate_ms: int) -> None:
        if p.watermark_ms is None or candidate_ms > p.watermark_ms:
            p.watermark_ms = candidate_ms

    def _recompute(self, p: _Partition, contact_id: str) -> None:
        facts = p.tracker.facts(contact_id)
        new = contributions(facts, self.config)
        floor = p.next_final_ms if p.next_final_ms is not None else min((k[0] for k in new), default=0)
        kept: set[WindowKey] = set()
        for key in p.contact_keys.get(contact_id, set()) | new.keys():
            if key[0] < floor:
                continue  # finalized and dropped; unchanged by construction
            measures = new.get(key)
            bucket = p.contribs.get(key)
            if measures is None:
                if bucket is not None and bucket.pop(contact_id, None) is not None:
                    p.dirty.add(key)
                    if not bucket:
                        del p.contribs[key]
                continue
            kept.add(key)
            if bucket is None:
                bucket = p.contribs[key] = {}
            if bucket.get(contact_id) != measures:
                bucket[contact_id] = measures
                p.dirty.add(key)
        if kept:
            p.contact_keys[contact_id] = kept
            self._index(p, contact_id, max(key[0] for key in kept))
        else:
            p.contact_keys.pop(contact_id, None)
            self._index(p, contact_id, None)
        horizon = floor + WINDOW_MS
        p.legs.set(
            contact_id,
            tuple((facts.channel, leg) for leg in facts.legs if leg.removed_ms is None or leg.removed_ms >= horizon),
        )

    def _emit_partition(self, p: _Partition, now: datetime, max_windows: int | None) -> list[KpiRow]:
        if p.next_final_ms is None or p.max_event_ms is None or p.watermark_ms is None:
            return []
        now_ms = to_ms(now)
        last_final = window_of(p.watermark_ms - WINDOW_MS)  # windows starting at or before it are final
        top = max(window_of(p.max_event_ms), last_final)
        by_window: dict[int, set[WindowKey]] = {}
        for key in p.contribs.keys() | p.emitted.keys():
            by_window.setdefault(key[0], set()).add(key)
        # only windows with contributions, earlier rows or a possible backlog: after a jump of the
        # event clock (a replayed day, then live traffic) the minutes in between are all empty
        windows = {w for w in by_window if p.next_final_ms <= w <= top}
        earliest = p.legs.earliest_queued_ms()
        if earliest is not None:
            start = max(p.next_final_ms, window_of(earliest))
            # with max_windows, a backlog range beyond its first max_windows windows cannot be
            # visited now: capped, so a ticket queued for months does not cost a set of every
            # minute since on each bounded emit (quadratic over a backfill)
            end = top if max_windows is None else min(top, start + max_windows * WINDOW_MS)
            windows.update(range(start, end + 1, WINDOW_MS))
        out: list[KpiRow] = []
        ordered = sorted(windows)
        p.behind = False
        if max_windows is not None and len(ordered) > max_windows:
            cut = ordered[max_windows]  # the first window left for the next emit
            ordered = ordered[:max_windows]
            # behind only while final windows are left: windows past the watermark are visited from
            # the oldest on by every emit, so when more of them are open than a pass visits (an
            # allowed lateness over MAX_WINDOWS_PER_EMIT minutes), the newest get their rows once
            # final. Counting them kept `behind` true for ever (the worker's emit would loop and
            # hold its consumer back): an allowed lateness of an hour or more at 60 windows a pass
            p.behind = cut <= last_final
            last_final = min(last_final, cut - WINDOW_MS)
        backlogs = p.legs.at_each(w + WINDOW_MS for w in ordered) if p.legs else None
        for window in ordered:
            if max_windows is not None and len(out) >= MAX_ROWS_PER_EMIT:
                # the rest next pass: windows from this one on are neither final nor emitted yet
                p.behind = True
                last_final = min(last_final, window - WINDOW_MS)
                break
            is_final = window <= last_final
            backlog = next(backlogs) if backlogs is not None else {}
            keys = by_window.get(window, set()) | {(window, *dim) for dim in backlog}
            for key in sorted(keys):
                dim_backlog = backlog.get(key[1:])
                previous = p.emitted.get(key)
                backlog_seen = dim_backlog is None if previous is None else previous[2] == dim_backlog
                if not is_final and key not in p.dirty and backlog_seen:
                    continue  # nothing changed since the last emit
                # built with the version it is written under (it was built with none and copied by
                # dataclasses.replace when written): rows not written are rare
                version = max((previous[0] + 1) if previous is not None else 1, now_ms)
                bucket = p.contribs.get(key)
                if bucket:
                    total = Measures()
                    for contact_id in sorted(bucket):
                        total.add(bucket[contact_id])
                    row: KpiRow | None = build_row(
                        key, total, dim_backlog, self.config, p.key, final=is_final, version=version, emitted_at=now
                    )
                    assert row is not None
                    digest, empty = _digest(row), row.is_empty()
                else:
                    # a window with nothing but a backlog (a ticket waiting for days is a row per
                    # minute): its content is the backlog alone, so digest that, and build the row
                    # only when it is written (3x fewer µs per row in a 90-day ticket backfill)
                    row, digest = None, f"backlog:{dim_backlog}"
                    empty = dim_backlog is None or dim_backlog[0] == 0
                changed = (previous is None and not empty) or (previous is not None and previous[1] != digest)
                if changed or (is_final and previous is not None):
                    if row is None:
                        row = build_row(
                            key,
                            _NOTHING,
                            dim_backlog,
                            self.config,
                            p.key,
                            final=is_final,
                            version=version,
                            emitted_at=now,
                        )
                    out.append(row)
                    p.emitted[key] = (version, digest, dim_backlog)
                p.dirty.discard(key)
                if is_final:
                    p.contribs.pop(key, None)
                    p.emitted.pop(key, None)
        if last_final >= p.next_final_ms:
            p.next_final_ms = last_final + WINDOW_MS
            self._prune(p)
        return out

    def _prune(self, p: _Partition) -> None:
        assert p.next_final_ms is not None and p.watermark_ms is not None
        horizon = p.next_final_ms + WINDOW_MS
        p.legs.prune(horizon)
        p.tracker.repack(500)
        while p.closing_starts and p.closing_starts[0] < p.next_final_ms:
            for contact_id in p.closing.pop(heapq.heappop(p.closing_starts), ()):
                # every window of the contact is final (a contact's older keys stay in its set
                # until then: `_recompute` skips keys below the floor)
                del p.contact_keys[contact_id], p.latest_window[contact_id]
                if contact_id not in p.unsettled and contact_id not in p.legs:
                    p.tracker.freeze(contact_id)  # no open window left: packed until it changes
        if self.hold_evictions:
            return  # a checkpoint is being taken: contacts are dropped at the next prune
        for contact_id in p.tracker.expired(p.watermark_ms):
            if contact_id in p.contact_keys:
                continue  # still contributes to an open window
            p.tracker.forget(contact_id)
            p.legs.discard(contact_id)
            self.stats["evicted"] += 1
