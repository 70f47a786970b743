"""Keyed state of a stage in ClickHouse (`stage_state`): one row per key (contact) and one head row
per source partition, written incrementally.

A checkpoint is two inserts: first the keys that changed since the previous checkpoint, then the
head (with the source offset the state reflects) together with a tombstone for every key dropped
since. A crash between them leaves key rows newer than the head; that is safe because the worker
then reads the partition again from the head's offset and both cores ignore events a contact
already holds (its state is a function of its set of events). Tombstones travel with the head, so
a contact is never deleted ahead of the offset that dropped it. The same rows and queries work on
embedded chDB and on a ClickHouse server; several workers can share the table (a partition has one
owner at a time, which restores the latest version of each key).

Versions are the wall clock in microseconds, kept strictly increasing per partition, so a later
checkpoint (by this worker or the next owner) always wins.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.store.clickhouse import insert_rows

TABLE = "stage_state"
COLUMNS = (
    "app_id",
    "stage",
    "source_topic",
    "source_partition",
    "key",
    "max_offset",
    "head",
    "kpi",
    "sla",
    "raised",
    "version",
    "is_deleted",
    "saved_at",
)
HEAD_KEY = ""


@dataclass
class ContactRecord:
    key: str
    kpi: str  # "" when the KPI stage does not hold the contact
    sla: str  # "" when the SLA engine does not hold it
    raised: list[str]
    meta: str = ""  # [first ended ms or null, last event ms] of the KPI part (JSON), in the head column


@dataclass
class Loaded:
    """What a partition's restore reads: its head (None: never checkpointed) and its contacts."""

    head: str | None = None
    max_offset: int = -1
    version: int = 0
    contacts: list[ContactRecord] = field(default_factory=list)


@dataclass
class Checkpoint:
    """The rows of one partition's checkpoint, built on the loop, written off it."""

    changed: list[tuple[Any, ...]]
    head_and_tombstones: list[tuple[Any, ...]]
    max_offset: int

    @property
    def rows(self) -> int:
        return len(self.changed) + len(self.head_and_tombstones)

    @property
    def bytes(self) -> int:
        return sum(len(r[6]) + len(r[7]) + len(r[8]) for r in (*self.changed, *self.head_and_tombstones))


class StateStore:
    def __init__(self, app_id: str, stage: str) -> None:
        self.app_id = app_id
        self.stage = stage

    @staticmethod
    def next_version(previous: int) -> int:
        return max(previous + 1, time.time_ns() // 1000)

    def checkpoint(
        self,
        source: tuple[str, int],
        version: int,
        max_offset: int,
        head: str,
        changed: Sequence[ContactRecord],
        dropped: Sequence[str],
    ) -> Checkpoint:
        topic, partition = source
        now = datetime.now(UTC)
        base = (self.app_id, self.stage, topic, partition)
        changed_rows = [(*base, c.key, -1, c.meta, c.kpi, c.sla, c.raised, version, 0, now) for c in changed]
        tail: list[tuple[Any, ...]] = [(*base, key, -1, "", "", "", [], version, 1, now) for key in dropped]
        tail.append((*base, HEAD_KEY, max_offset, head, "", "", [], version, 0, now))
        return Checkpoint(changed_rows, tail, max_offset)

    # -- blocking: run these off the event loop

    def write(self, client: Client, checkpoints: Checkpoint | Sequence[Checkpoint]) -> None:
        """Checkpoints of one or more partitions: all changed keys in one insert, then all heads and
        tombstones in another (a crash between them leaves keys newer than their head: safe)."""
        batch = [checkpoints] if isinstance(checkpoints, Checkpoint) else list(checkpoints)
        changed = [row for c in batch for row in c.changed]
        insert_rows(client, TABLE, COLUMNS, changed)
        insert_rows(client, TABLE, COLUMNS, [row for c in batch for row in c.head_and_tombstones])

    def load_many(self, client: Client, sources: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Loaded]:
        """The latest checkpoint of each source partition (one query for all)."""
        out = {source: Loaded() for source in sources}
        rows = self._select(client, "key, max_offset, head, kpi, sla, raised, version", "FINAL", "", out)
        for topic, partition, key, max_offset, head, kpi, sla, raised, version in rows:
            loaded = out.get((topic, int(partition)))
            if loaded is None:
                continue  # another topic's partition of the same number
            if key == HEAD_KEY:
                loaded.head, loaded.max_offset, loaded.version = head, int(max_offset), int(version)
            else:
                loaded.contacts.append(ContactRecord(key, kpi, sla, list(raised), head))
        for loaded in out.values():
            if loaded.head is None:
                loaded.contacts = []  # keys without a head: a first checkpoint that never finished
        return out

    def head_versions(self, client: Client, sources: Sequence[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Version of each partition's latest checkpoint (absent: none), in one query."""
        wanted = set(sources)
        rows = self._select(client, "max(version)", "", "AND key = '' GROUP BY source_topic, source_partition", wanted)
        return {(str(t), int(p)): int(v) for t, p, v in rows if (str(t), int(p)) in wanted}

    def _select(
        self, client: Client, columns: str, final: str, tail: str, sources: Iterable[tuple[str, int]]
    ) -> Sequence[Sequence[Any]]:
        """(source_topic, source_partition, *columns) of this stage's rows for `sources`' topics and
        partition numbers (a superset: callers keep the pairs they asked for)."""
        sources = list(sources)
        result = client.query(
            f"SELECT source_topic, source_partition, {columns} FROM {TABLE} {final} WHERE app_id = {{a:String}}"
            " AND stage = {s:String} AND source_topic IN {t:Array(String)} AND source_partition IN {p:Array(UInt16)}"
            f" {tail}",
            parameters={
                "a": self.app_id,
                "s": self.stage,
                "t": sorted({t for t, _ in sources}),
                "p": sorted({p for _, p in sources}),
            },
        )
        rows: Sequence[Sequence[Any]] = result.result_rows
        return rows

    def forget(self, client: Client, contact_ids: Sequence[str]) -> None:
        """Delete keys outright (erasure), whatever their partition."""
        if contact_ids:
            client.command(
                f"DELETE FROM {TABLE} WHERE app_id = {{a:String}} AND stage = {{s:String}} AND key IN {{k:Array(String)}}",
                parameters={"a": self.app_id, "s": self.stage, "k": list(contact_ids)},
            )
