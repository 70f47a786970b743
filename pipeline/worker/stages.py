"""Per-source-partition state of the worker: KPI windows and SLA clocks, one pair per Kafka
partition it owns. Transport-agnostic (no Faust): the Faust shell feeds events, ticks the clocks
and writes what comes out.

Recovery: a partition's state is checkpointed to `worker_state` (with the highest source offset
it reflects) every `checkpoint_seconds` and when the partition is revoked. A worker that takes a
partition over restores the checkpoint and reads the partition again from the offset after it
(the analytics consumer seeks there), so the state is complete. Replayed and redelivered events
are idempotent (both cores dedupe on event_id).
"""

from __future__ import annotations

import heapq
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.events.models import EVENT_ADAPTER, EventBase, to_json
from pipeline.kpi.definitions import PARTIAL_COLUMNS, KpiConfig, KpiRow
from pipeline.kpi.windows import KpiWindows, LateEvent
from pipeline.sla.clock import SLA_EVENT_COLUMNS, SlaEngine, SlaEvent
from pipeline.sla.policy import PolicySet

log = logging.getLogger(__name__)

PartitionKey = tuple[str, int]
COMPONENT = "partition"
STATE_COLUMNS = (
    "app_id",
    "component",
    "source_topic",
    "source_partition",
    "max_offset",
    "state",
    "saved_at",
    "version",
)


@dataclass
class PartitionState:
    key: PartitionKey
    kpi: KpiWindows
    sla: SlaEngine
    max_offset: int = -1
    raised: set[str] = field(default_factory=set)
    # event-clock mode: events wait here until the watermark passes them, so the SLA engine sees
    # every contact's events in (occurred_at, event_id) order, exactly as a replay would
    pending: list[tuple[datetime, str, EventBase]] = field(default_factory=list)

    def fresh(self, events: list[SlaEvent]) -> list[SlaEvent]:
        """Outcomes not raised before by this worker (a rebuilt contact raises its history again)."""
        new = [e for e in events if e.sla_event_id not in self.raised]
        self.raised.update(e.sla_event_id for e in new)
        return new

    def snapshot_json(self) -> str:
        """The checkpoint: {"kpi": ..., "sla": ..., "pending": [...]} as JSON text. Both cores
        cache each contact's part, so a checkpoint re-serializes only what changed since the last."""
        pending = json.dumps([to_json(event).decode() for _, _, event in sorted(self.pending, key=lambda p: p[:2])])
        return f'{{"kpi":{self.kpi.snapshot_json()},"sla":{self.sla.snapshot_json()},"pending":{pending}}}'

    def hold(self, event: EventBase) -> None:
        heapq.heappush(self.pending, (event.occurred_at, event.event_id, event))

    def release(self, until: datetime) -> list[EventBase]:
        out = []
        while self.pending and self.pending[0][0] <= until:
            out.append(heapq.heappop(self.pending)[2])
        return out


@dataclass
class Outputs:
    late: list[LateEvent] = field(default_factory=list)
    sla: list[SlaEvent] = field(default_factory=list)


class Stages:
    def __init__(self, kpi_config: KpiConfig, policies: PolicySet, *, app_id: str, sla_clock: str) -> None:
        self.kpi_config = kpi_config
        self.policies = policies
        self.app_id = app_id
        self.sla_clock = sla_clock
        self.partitions: dict[PartitionKey, PartitionState] = {}

    def new_state(self, key: PartitionKey) -> PartitionState:
        return PartitionState(key, KpiWindows(self.kpi_config), SlaEngine(self.policies))

    # ------------------------------------------------------------------ recovery (blocking: run off the loop)

    def load(self, client: Client, key: PartitionKey) -> PartitionState:
        """Restore `key` from its checkpoint (a fresh state when there is none); the caller reads
        the partition from `max_offset + 1` on."""
        state = self.new_state(key)
        topic, partition = key
        rows = client.query(
            "SELECT max_offset, state FROM worker_state FINAL WHERE app_id = {a:String} AND component = {c:String}"
            " AND source_topic = {t:String} AND source_partition = {p:UInt16}",
            parameters={"a": self.app_id, "c": COMPONENT, "t": topic, "p": partition},
        ).result_rows
        if rows:
            max_offset, raw = rows[0]
            saved = json.loads(raw)
            state.kpi.restore(saved["kpi"])
            state.sla.restore(saved["sla"])
            for raw_event in saved.get("pending", []):
                state.hold(EVENT_ADAPTER.validate_json(raw_event))
            state.max_offset = int(max_offset)
            log.info("restored %s[%d] from its checkpoint at offset %d", topic, partition, state.max_offset)
        return state

    def checkpoint_rows(self, keys: Iterable[PartitionKey]) -> list[tuple[Any, ...]]:
        now = datetime.now(UTC)
        version = int(now.timestamp() * 1000)
        rows = []
        for key in keys:
            state = self.partitions.get(key)
            if state is not None:
                snapshot = state.snapshot_json()
                rows.append((self.app_id, COMPONENT, key[0], key[1], state.max_offset, snapshot, now, version))
        return rows

    # ------------------------------------------------------------------ streaming

    def apply(
        self, state: PartitionState, event: EventBase, offset: int, now_wall: datetime, *, defer: bool = False
    ) -> Outputs:
        """Feed one event of `state`'s partition; returns what it raises. `defer`: the KPI
        contributions of its contact wait for `state.kpi.settle()` (call it after a batch)."""
        outputs = Outputs()
        late = state.kpi.apply(event, state.key, now_wall=now_wall, defer=defer)
        if late is not None:
            # too late for the KPI windows, not for the contact's SLA clocks
            outputs.late.append(late)
        if self.sla_clock == "event":
            state.hold(event)
        else:
            outputs.sla.extend(self._sla_apply(state, event))
        state.max_offset = max(state.max_offset, offset)
        return outputs

    def _sla_apply(self, state: PartitionState, event: EventBase) -> list[SlaEvent]:
        # Wall-clock (live) mode applies events at once so deadlines fire on time. The SLA engine
        # needs a contact's events in event-time order, so a contact whose event arrives out of
        # order is rebuilt from its full event set, which the KPI tracker keeps; outcomes raised
        # before are filtered by id. (A breach raised at its deadline stays raised even if an
        # answer stamped before the deadline arrives later: live mode cannot know the future.)
        last = state.sla.last_event_at(event.contact_id)
        if last is None or event.occurred_at >= last:
            raised = state.sla.apply(event)
        else:
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
            if self.sla_clock == "wall":
                due.extend(state.fresh(state.sla.advance(now_wall)))
            else:
                watermark = state.kpi.watermark(state.key)
                if watermark is not None:
                    for event in state.release(watermark):
                        due.extend(state.fresh(state.sla.apply(event)))
                    due.extend(state.fresh(state.sla.advance(watermark)))
        return due

    def open_obligations(self) -> dict[tuple[str, str], int]:
        """(channel, target) -> SLA obligations being timed across this worker's partitions."""
        total: dict[tuple[str, str], int] = {}
        for state in self.partitions.values():
            for key, n in state.sla.open_counts().items():
                total[key] = total.get(key, 0) + n
        return total

    def emit_kpis(self, now_wall: datetime, keys: Iterable[PartitionKey] | None = None) -> list[KpiRow]:
        """KPI rows due from the partitions `keys` (all when None)."""
        rows: list[KpiRow] = []
        for key in self.partitions if keys is None else keys:
            state = self.partitions.get(key)
            if state is None:
                continue
            state.kpi.advance_idle(now_wall)
            rows.extend(state.kpi.emit(now_wall))
        return rows

    def lowest_watermark(self) -> datetime | None:
        marks = [m for s in self.partitions.values() if (m := s.kpi.watermark(s.key)) is not None]
        return min(marks) if marks else None


def kpi_records(rows: Iterable[KpiRow]) -> list[list[Any]]:
    return [list(row.record().values()) for row in rows]


def sla_records(events: Iterable[SlaEvent], emitted_at: datetime) -> list[tuple[Any, ...]]:
    return [event.to_row(emitted_at) for event in events]


__all__ = [
    "PARTIAL_COLUMNS",
    "SLA_EVENT_COLUMNS",
    "STATE_COLUMNS",
    "Outputs",
    "PartitionState",
    "Stages",
    "kpi_records",
    "sla_records",
]
