"""Per-source-partition state of the worker: KPI windows and SLA clocks, one pair per Kafka
partition it owns. Transport-agnostic (no Faust, no Kafka): the shell feeds events, ticks the
clocks, writes what comes out and checkpoints.

State is keyed by contact. `checkpoint(state, store)` collects only the contacts that changed since
the previous checkpoint (their KPI events, SLA clocks and raised outcomes) plus tombstones for those
dropped by retention and the partition's small head (clocks, open emitted windows, the highest
source offset applied); `restore(key, loaded)` rebuilds a partition from those rows, and the worker
reads the partition again from the offset after the head's. Replayed and redelivered events are
idempotent: both cores ignore an event_id a contact already holds.

Retention (event time, so replays and live runs drop the same contacts): the KPI stage keeps a
contact `ended_retention_hours` after its first `ended` and the SLA engine `sla_closed_retention`
after it closes; a contact that is still open is kept however long it stays silent (unless a
retention for open contacts is set, which trades exactness for memory). The SLA outcomes raised for
a contact are kept while the SLA engine holds it.
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.events.models import EventBase
from pipeline.kpi.rows import PARTIAL_COLUMNS, KpiRow
from pipeline.kpi.settings import KpiConfig
from pipeline.kpi.windows import KpiWindows, LateEvent
from pipeline.sla.clock import SLA_EVENT_COLUMNS, SlaEngine, SlaEvent
from pipeline.sla.policy import PolicySet
from pipeline.times import to_ms
from pipeline.worker.state_store import Checkpoint, ContactRecord, Loaded, StateStore

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
HEAD_FORMAT = 1


@dataclass
class PartitionState:
    key: PartitionKey
    kpi: KpiWindows
    sla: SlaEngine
    max_offset: int = -1
    version: int = 0  # of the last checkpoint written or restored
    raised: dict[str, set[str]] = field(default_factory=dict)  # contact -> sla_event_ids raised
    # event-clock mode: events wait here until the watermark passes them, so the SLA engine sees
    # every contact's events in (occurred_at, event_id) order, exactly as a replay would
    pending: list[tuple[datetime, str, EventBase]] = field(default_factory=list)
    released_ms: int | None = None  # event-clock mode: events at or before this went to the SLA engine
    raised_changed: set[str] = field(default_factory=set)

    def fresh(self, events: list[SlaEvent]) -> list[SlaEvent]:
        """Outcomes not raised before for their contact (a rebuilt contact raises its history again)."""
        if not events:  # most events raise nothing
            return []
        new = []
        for event in events:
            seen = self.raised.setdefault(event.contact_id, set())
            if event.sla_event_id not in seen:
                seen.add(event.sla_event_id)
                self.raised_changed.add(event.contact_id)
                new.append(event)
        return new

    def hold(self, event: EventBase) -> None:
        heapq.heappush(self.pending, (event.occurred_at, event.event_id, event))

    def release(self, until: datetime, limit: int | None = None) -> tuple[list[EventBase], datetime]:
        """Held events up to `until` in event-time order, at most `limit`; and the instant up to
        which everything is now released (just before the first event left held, else `until`)."""
        out: list[EventBase] = []
        while self.pending and self.pending[0][0] <= until and (limit is None or len(out) < limit):
            out.append(heapq.heappop(self.pending)[2])
        mark = until
        if self.pending and self.pending[0][0] <= until:  # stopped by the limit
            mark = self.pending[0][0] - timedelta(milliseconds=1)
        self.released_ms = to_ms(mark) if self.released_ms is None else max(self.released_ms, to_ms(mark))
        return out, mark

    def contacts(self) -> int:
        return self.kpi.live_contacts(self.key) + len(self.sla)


@dataclass(frozen=True)
class CheckpointStart:
    contacts: list[str]  # changed since the previous checkpoint (present or dropped)
    head: str
    max_offset: int


@dataclass
class Outputs:
    late: list[LateEvent] = field(default_factory=list)
    sla: list[SlaEvent] = field(default_factory=list)


class Stages:
    def __init__(
        self,
        kpi_config: KpiConfig,
        policies: PolicySet,
        *,
        app_id: str,
        sla_clock: str,
        sla_closed_retention: timedelta = timedelta(days=1),
        sla_open_retention: timedelta = timedelta(0),
    ) -> None:
        self.kpi_config = kpi_config
        self.policies = policies
        self.app_id = app_id
        self.sla_clock = sla_clock
        self.sla_closed_retention = sla_closed_retention
        self.sla_open_retention = sla_open_retention
        self.partitions: dict[PartitionKey, PartitionState] = {}
        # event-clock mode: events released to the SLA engine per partition and tick at most
        # (~50 µs each: a tick stays near 100 ms; None: all that are due)
        self.release_limit: int | None = None

    def new_state(self, key: PartitionKey) -> PartitionState:
        sla = SlaEngine(self.policies, closed_retention=self.sla_closed_retention, idle_timeout=self.sla_open_retention)
        return PartitionState(key, KpiWindows(self.kpi_config), sla)

    # ------------------------------------------------------------------ keyed checkpoints

    def checkpoint(self, state: PartitionState, store: StateStore) -> Checkpoint:
        """The rows of `state`'s checkpoint: contacts changed since the last one, tombstones for
        contacts no core holds any more, the head. Cost: proportional to the changes."""
        started = self.begin_checkpoint(state)
        records, dropped = self.contact_records(state, started.contacts)
        return self.end_checkpoint(state, store, started, records, dropped)

    # The three steps of `checkpoint`, for a shell that yields the loop between slices of contacts:
    # the head and the offset are taken first, so a contact serialized later can only be newer than
    # the head, which a restore tolerates (its re-read events are duplicates to it).

    def begin_checkpoint(self, state: PartitionState) -> CheckpointStart:
        touched = state.kpi.drain_changes(state.key) | state.sla.drain_changes() | state.raised_changed
        state.raised_changed = set()
        head = json.dumps(
            {"format": HEAD_FORMAT, "kpi": state.kpi.head(state.key), "released_ms": state.released_ms},
            separators=(",", ":"),
        )
        return CheckpointStart(sorted(touched), head, state.max_offset)

    def contact_records(self, state: PartitionState, contact_ids: list[str]) -> tuple[list[ContactRecord], list[str]]:
        changed: list[ContactRecord] = []
        dropped: list[str] = []
        for contact_id in contact_ids:
            kpi = state.kpi.contact_wire(state.key, contact_id)
            sla = state.sla.contact_wire(contact_id)
            if sla is None:
                state.raised.pop(contact_id, None)  # its obligations are gone: nothing can raise again
            if kpi is None and sla is None:
                dropped.append(contact_id)
                continue
            raised = sorted(state.raised.get(contact_id, ()))
            meta = state.kpi.contact_meta(state.key, contact_id)
            changed.append(
                ContactRecord(contact_id, kpi or "", sla or "", raised, json.dumps(meta) if meta is not None else "")
            )
        return changed, dropped

    def end_checkpoint(
        self,
        state: PartitionState,
        store: StateStore,
        started: CheckpointStart,
        changed: list[ContactRecord],
        dropped: list[str],
    ) -> Checkpoint:
        state.version = store.next_version(state.version)
        return store.checkpoint(state.key, state.version, started.max_offset, started.head, changed, dropped)

    def restore(self, key: PartitionKey, loaded: Loaded) -> PartitionState:
        """A partition's state from its checkpoint rows (a fresh state when there are none). Blocking
        (one pydantic-core parse per contact): run it off the event loop."""
        state = self.new_state(key)
        if loaded.head is None:
            return state
        head = json.loads(loaded.head)
        if head.get("format") != HEAD_FORMAT:
            raise ValueError(f"unknown checkpoint format {head.get('format')!r} for {key}")
        if head["kpi"] is not None:
            contacts = [(c.key, c.kpi, _meta(c.meta)) for c in loaded.contacts if c.kpi]
            state.kpi.restore_partition(key, head["kpi"], contacts)
        for contact in loaded.contacts:
            if contact.sla:
                state.sla.restore_wire(contact.key, contact.sla)
            if contact.raised:
                state.raised[contact.key] = set(contact.raised)
        state.sla.drain_changes()
        state.max_offset, state.version = loaded.max_offset, loaded.version
        state.released_ms = head.get("released_ms")
        if self.sla_clock == "event":
            # events not yet released to the SLA engine are the KPI events after the released
            # watermark (an event at or before it was released before the checkpoint was taken)
            released = state.released_ms
            for contact_id in state.kpi.contact_ids(key):
                meta = state.kpi.contact_meta(key, contact_id)
                if released is not None and meta is not None and meta[1] <= released:
                    continue  # nothing of it is held (and a frozen contact stays unparsed)
                for event in state.kpi.contact_events(key, contact_id):
                    if released is None or to_ms(event.occurred_at) > released:
                        state.hold(event)
        log.info("restored %s[%d] at offset %d: %d contacts", key[0], key[1], state.max_offset, len(loaded.contacts))
        return state

    # ------------------------------------------------------------------ streaming

    def apply(
        self, state: PartitionState, event: EventBase, offset: int, now_wall: datetime, *, defer: bool = False
    ) -> Outputs:
        """Feed one event of `state`'s partition; returns what it raises. `defer`: the KPI
        contributions of its contact wait for `state.kpi.settle()` (call it after a batch)."""
        outputs = Outputs()
        self.apply_into(state, event, offset, now_wall, outputs.late, outputs.sla, defer=defer)
        return outputs

    def apply_into(
        self,
        state: PartitionState,
        event: EventBase,
        offset: int,
        now_wall: datetime,
        late: list[LateEvent],
        sla: list[SlaEvent],
        *,
        defer: bool = False,
    ) -> None:
        """`apply`, appending what it raises to `late` and `sla` (a batch's lists: no `Outputs`
        made per event, 1.6 % of the analytics loop under load)."""
        too_late = state.kpi.apply(event, state.key, now_wall=now_wall, defer=defer)
        if too_late is not None:
            # too late for the KPI windows, not for the contact's SLA clocks
            late.append(too_late)
        if self.sla_clock == "event":
            state.hold(event)
        else:
            raised = self._sla_apply(state, event)
            if raised:
                sla += raised
        if offset > state.max_offset:
            state.max_offset = offset

    def _sla_apply(self, state: PartitionState, event: EventBase) -> list[SlaEvent]:
        # Wall-clock (live) mode applies events at once so deadlines fire on time. The SLA engine
        # needs a contact's events in event-time order, so a contact whose event arrives out of
        # order is rebuilt from its full event set, which the KPI tracker keeps; outcomes raised
        # before are filtered by id. (A breach raised at its deadline stays raised even if an
        # answer stamped before the deadline arrives later: live mode cannot know the future.)
        raised = state.sla.apply_in_order(event)
        if raised is None:
            state.sla.forget(event.contact_id)
            raised = []
            for earlier in state.kpi.contact_events(state.key, event.contact_id):
                raised.extend(state.sla.apply(earlier))
        return state.fresh(raised)

    def tick_sla(self, now_wall: datetime) -> list[SlaEvent]:
        """Raise every at-risk and breach now due: by the wall clock (live) or by each partition's
        event-time watermark (replay of history)."""
        due: list[SlaEvent] = []
        for state in self.partitions.values():
            due.extend(self.tick_partition(state, now_wall))
        return due

    def tick_partition(self, state: PartitionState, now_wall: datetime) -> list[SlaEvent]:
        if self.sla_clock == "wall":
            return state.fresh(state.sla.advance(now_wall))
        due: list[SlaEvent] = []
        watermark = state.kpi.watermark(state.key)
        if watermark is not None:
            # a backfill moves the watermark by days per batch: released a bounded number at a time
            released, mark = state.release(watermark, self.release_limit)
            for event in released:
                due.extend(state.fresh(state.sla.apply(event)))
            due.extend(state.fresh(state.sla.advance(mark)))
        return due

    def open_obligations(self) -> dict[tuple[str, str], int]:
        """(channel, target) -> SLA obligations being timed across this worker's partitions."""
        total: dict[tuple[str, str], int] = {}
        for state in self.partitions.values():
            for key, n in state.sla.open_counts().items():
                total[key] = total.get(key, 0) + n
        return total

    def emit_kpis(
        self, now_wall: datetime, keys: Iterable[PartitionKey] | None = None, max_windows: int | None = None
    ) -> list[KpiRow]:
        """KPI rows due from the partitions `keys` (all when None), at most `max_windows` windows
        of each (see `KpiWindows.emit`)."""
        rows: list[KpiRow] = []
        for key in self.partitions if keys is None else keys:
            state = self.partitions.get(key)
            if state is None:
                continue
            state.kpi.advance_idle(now_wall)
            rows.extend(state.kpi.emit(now_wall, max_windows))
        return rows

    def lowest_watermark(self) -> datetime | None:
        marks = [m for s in self.partitions.values() if (m := s.kpi.watermark(s.key)) is not None]
        return min(marks) if marks else None

    def lowest_final(self) -> datetime | None:
        """Event time up to which every partition's KPI windows are final and emitted: the
        watermark, or behind it while emitting catches up (a backfill)."""
        marks = [
            min(m, f)
            for s in self.partitions.values()
            if (m := s.kpi.watermark(s.key)) is not None and (f := s.kpi.final_until(s.key)) is not None
        ]
        return min(marks) if marks else None


def _meta(text: str) -> tuple[int | None, int, bool] | None:
    if not text:
        return None
    ended, last, *idle = json.loads(text)  # checkpoints written before the idle flag have two
    return (None if ended is None else int(ended)), int(last), bool(idle and idle[0])


def kpi_records(rows: Iterable[KpiRow]) -> list[list[Any]]:
    return [row.record_values() for row in rows]


def sla_records(events: Iterable[SlaEvent], emitted_at: datetime) -> list[tuple[Any, ...]]:
    return [event.to_row(emitted_at) for event in events]


__all__ = [
    "PARTIAL_COLUMNS",
    "SLA_EVENT_COLUMNS",
    "Outputs",
    "PartitionState",
    "Stages",
    "kpi_records",
    "sla_records",
]
