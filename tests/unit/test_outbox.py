"""The outbox writes rows in inserts of at most `insert_rows`, retries a transient failure, and a
stop in the middle puts back exactly the rows not yet written."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from pipeline.sla.clock import SLA_EVENT_COLUMNS
from pipeline.worker.health import Health
from pipeline.worker.outbox import Outbox


class RecordingOutbox(Outbox):
    def __init__(self, fail: list[BaseException | None], block_on: int | None = None) -> None:
        async def nothing(*_: Any) -> None:
            return None

        super().__init__(None, None, nothing, nothing, Health(), max_backoff_seconds=0.01, insert_rows=3)  # type: ignore[arg-type]
        self.inserts: list[tuple[str, list[Any]]] = []
        self.fail = fail
        self.block_on = block_on
        self.blocked = asyncio.Event()

    async def _insert(self, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.block_on is not None and len(self.inserts) == self.block_on:
            self.blocked.set()
            await asyncio.Event().wait()  # until cancelled
        error = self.fail.pop(0) if self.fail else None
        if error is not None:
            raise error
        self.inserts.append((table, list(rows)))


def test_rows_go_in_chunks_sla_first_and_a_transient_failure_is_retried() -> None:
    outbox = RecordingOutbox(fail=[None, ConnectionError("restarting")])
    outbox.sla_rows([("s", i) for i in range(4)])
    outbox.kpi_rows([["k", i] for i in range(5)])
    asyncio.run(outbox.flush())
    assert [(table, [row[1] for row in rows]) for table, rows in outbox.inserts] == [
        ("sla_events", [0, 1, 2]),
        ("sla_events", [3]),  # written at the second attempt
        ("kpi_minute_partials", [0, 1, 2]),
        ("kpi_minute_partials", [3, 4]),
    ]
    assert len(outbox) == 0


def test_a_stop_mid_flush_puts_back_only_what_was_not_written() -> None:
    async def scenario() -> RecordingOutbox:
        outbox = RecordingOutbox(fail=[], block_on=2)  # the third insert never returns
        outbox.sla_rows([("s", i) for i in range(4)])
        outbox.kpi_rows([["k", i] for i in range(5)])
        flush = asyncio.ensure_future(outbox.flush())
        await outbox.blocked.wait()
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        return outbox

    outbox = asyncio.run(scenario())
    written = [row for _, rows in outbox.inserts for row in rows]
    assert written == [("s", 0), ("s", 1), ("s", 2), ("s", 3)]
    assert outbox._kpi_rows == [["k", i] for i in range(5)]  # the interrupted chunk is back, in order
    assert outbox._sla_rows == []


def test_an_erasure_drops_the_persons_unwritten_outputs_and_nobody_elses() -> None:
    at = SLA_EVENT_COLUMNS.index("contact_id")

    def sla_row(contact: str) -> tuple[Any, ...]:
        row: list[Any] = [None] * len(SLA_EVENT_COLUMNS)
        row[at] = contact
        return tuple(row)

    outbox = RecordingOutbox(fail=[])
    outbox.sla_rows([sla_row("gone"), sla_row("kept")])
    outbox.kpi_rows([["k", 1]])  # counts of a queue and minute: no person in them
    outbox.messages("touchline.sla", [(b"gone", b"{}", None), (b"kept", b"{}", None)])
    outbox.forward([(0, b"{...}", ("gone", 1, [], [])), (1, b"{...}", ("kept", 2, [], []))])
    assert asyncio.run(outbox.drop({"gone"})) == 3
    assert [row[at] for row in outbox._sla_rows] == ["kept"] and outbox._kpi_rows == [["k", 1]]
    assert outbox._messages == {"touchline.sla": [(b"kept", b"{}", None)]}
    assert [item[2][0] for item in outbox._forwards] == ["kept"]
