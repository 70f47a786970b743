from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.ingest.batch import Batcher
from pipeline.ingest.dedup import RecentIds


def test_batch_closes_on_size_and_covers_the_highest_offset_of_each_partition() -> None:
    batcher = Batcher(max_rows=4, max_seconds=10)
    assert not batcher.add_event(("a",), ("t", 0), 7, now=0)
    assert not batcher.add_event(None, ("t", 1), 3, now=0)
    assert not batcher.add_event(("b",), ("t", 0), 5, now=0)  # redelivered: lower offset
    assert batcher.add_dead_letter(("bad",), ("t", 0), 8, now=0)
    batch = batcher.take()
    assert batch.events == [("a",), ("b",)]
    assert batch.dead_letters == [("bad",)]
    assert batch.offsets == {("t", 0): 8, ("t", 1): 3}
    assert len(batch) == 4
    assert len(batcher) == 0


def test_batch_is_due_after_max_seconds_from_first_row() -> None:
    batcher = Batcher(max_rows=100, max_seconds=1.0)
    assert not batcher.due(now=50)
    batcher.add_event(("a",), ("t", 0), 1, now=10)
    batcher.add_event(("b",), ("t", 0), 2, now=10.9)
    assert not batcher.due(now=10.99)
    assert batcher.due(now=11.0)
    batcher.take()
    assert not batcher.due(now=100)


@given(st.lists(st.text(min_size=1, max_size=3), max_size=200))
def test_recent_ids_report_each_id_once_within_capacity(ids: list[str]) -> None:
    recent = RecentIds(capacity=1000)
    firsts = [i for i in ids if not recent.seen(i)]
    assert firsts == list(dict.fromkeys(ids))


def test_recent_ids_stay_bounded() -> None:
    recent = RecentIds(capacity=100)
    for i in range(10_000):
        recent.seen(str(i))
    assert len(recent) <= 100
    assert not recent.seen("0")  # forgotten long ago: a late duplicate is left to ClickHouse
