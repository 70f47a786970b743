"""The journey stage's writes to its tables' RocksDB stores outside any Faust event (its timer that
reads skipped messages again persists from there)."""

from __future__ import annotations

from pathlib import Path

import faust
import pytest

from pipeline.worker.table_writes import write_partition


@pytest.fixture
def store(tmp_path: Path) -> object:
    app = faust.App("table-writes-test", broker="kafka://127.0.0.1:1", store="rocksdb://", datadir=str(tmp_path))
    return app.Table("things", partitions=1, key_type=bytes, value_type=bytes).data


def test_faust_own_write_needs_an_event(store: object) -> None:
    # why write_partition exists: the store asks `current_event()` which partition a write goes to
    with pytest.raises(AssertionError):
        store[b"a"] = b"1"  # type: ignore[index]


def test_writes_and_deletes_land_in_the_partition_outside_an_event(store: object) -> None:
    write_partition(store, 0, [(b"a", b"1"), (b"b", b"2"), (b"gone", None)])
    write_partition(store, 0, [(b"a", None), (b"c", b"3")])
    got = {key: store.get(key) for key in (b"a", b"b", b"c", b"gone")}  # type: ignore[attr-defined]
    assert got == {b"a": None, b"b": b"2", b"c": b"3", b"gone": None}
    # in partition 0's own database, where a restore of the stage reads it
    db = store._db_for_partition(0)  # type: ignore[attr-defined]
    assert db.get(b"b") == b"2" and db.get(b"a") is None
