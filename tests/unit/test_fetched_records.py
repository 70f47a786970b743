"""The batch consumers' `FetchedRecord`s are made by aiokafka's own fetcher from real record batches
and carry what its `ConsumerRecord` carries; other consumers keep `ConsumerRecord`."""

from __future__ import annotations

import dataclasses

import pytest
from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.consumer import fetcher
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords

from pipeline.worker import fetched

MESSAGES = [
    (b"c-1", b'{"type":"contact_started"}', []),
    (None, b"not json at all", [("trace", b"abc"), ("empty", b"")]),
    (b"c-2", None, []),  # a tombstone
    (b"", b"", [("x", b"\x00\xff")]),
    (b"c-\xc3\xa9", "événement ☎".encode(), []),
]


def _batch(compression: int) -> bytes:
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=compression,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for offset, (key, value, headers) in enumerate(MESSAGES):
        builder.append(offset, 1_760_000_000_000 + offset, key, value, list(headers))
    return bytes(builder.build())


def _read(batch: bytes, deserializer: object) -> list[object]:
    records = fetcher.PartitionRecords(
        TopicPartition("touchline.interactions.chat", 3),
        MemoryRecords(batch),
        [],
        0,
        None,
        deserializer,
        True,
        fetcher.READ_UNCOMMITTED,
    )
    return list(records)


@pytest.mark.parametrize("compression", [0, 3])  # none, lz4
def test_fetched_records_carry_what_consumer_records_carry(compression: int) -> None:
    assert fetched.install()
    assert fetched.install()  # a second call changes nothing
    batch = _batch(compression)
    light = _read(batch, fetched.RAW)
    standard = _read(batch, None)
    assert len(light) == len(standard) == len(MESSAGES)
    assert all(type(r) is fetched.FetchedRecord for r in light)
    assert all(type(r) is ConsumerRecord for r in standard)  # other consumers (Faust's) untouched
    for mine, theirs in zip(light, standard, strict=True):
        assert isinstance(theirs, ConsumerRecord)
        expected = dataclasses.astuple(theirs)
        assert tuple(getattr(mine, f) for f in fetched.FetchedRecord.__struct_fields__) == expected
    assert [r.offset for r in light] == list(range(len(MESSAGES)))  # type: ignore[attr-defined]
    assert light[2].value is None and light[2].serialized_value_size == -1  # type: ignore[attr-defined]
    assert light[1].key is None and light[1].serialized_key_size == -1  # type: ignore[attr-defined]


def test_field_names_are_consumer_record_s() -> None:
    names = [f.name for f in dataclasses.fields(ConsumerRecord)]
    assert list(fetched.FetchedRecord.__struct_fields__) == names
