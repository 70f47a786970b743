"""The channel topics' messages as the batch consumers hand them to the stages: `FetchedRecord`,
a msgspec struct with the fields of aiokafka's `ConsumerRecord`, made by aiokafka's own fetcher.

Why: aiokafka builds a `ConsumerRecord` (a Python dataclass, tracked by the cyclic collector) for
every message, and that was the largest single cost of the ingest worker's loop (16 % of its
samples in a py-spy of an ingest pass, more than decoding and checking the event). A struct
made in C and left out of the collector's reach reads the same channel topics twice as fast: a bare
consumer read 301,081-367,934 messages/s against 157,793-172,731 with `ConsumerRecord`
(300,000 simulated messages, three alternating rounds, scratch script beside a `make bench`
broker, session 31).

Only consumers created with `value_deserializer=RAW` get them (the batch consumers); every other
consumer in the process (Faust's, the journey stage's range reads) is left to aiokafka. With an
aiokafka whose fetcher this does not know, nothing is replaced and `RAW` is the identity, so the
stages get `ConsumerRecord`s, which have the same fields.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgspec
from aiokafka.consumer import fetcher

log = logging.getLogger(__name__)


class FetchedRecord(msgspec.Struct, frozen=True, gc=False):  # gc: it holds no container of its own
    """A consumed message: aiokafka's `ConsumerRecord` fields, in its order."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    timestamp_type: int
    key: bytes | None
    value: bytes | None
    checksum: int | None
    serialized_key_size: int
    serialized_value_size: int
    headers: tuple[tuple[str, bytes], ...]


def _raw(data: bytes | None) -> bytes | None:
    return data


RAW: Callable[[bytes | None], bytes | None] = _raw


def _light_records(original: Callable[..., Any]) -> Callable[..., Any]:
    def _consumer_record(self: Any, tp: Any, record: Any) -> Any:
        if self._value_deserializer is not RAW:
            return original(self, tp, record)
        key, value = record.key, record.value
        return FetchedRecord(
            tp.topic,
            tp.partition,
            record.offset,
            record.timestamp,
            record.timestamp_type,
            key,
            value,
            record.checksum,
            -1 if key is None else len(key),
            -1 if value is None else len(value),
            tuple(record.headers),
        )

    _consumer_record.touchline_original = original  # type: ignore[attr-defined]
    return _consumer_record


def install() -> bool:
    """Make consumers created with `value_deserializer=RAW` hand out `FetchedRecord`s (once per
    process; idempotent). False when this aiokafka's fetcher is not the one known here."""
    records = getattr(fetcher, "PartitionRecords", None)
    original = getattr(records, "_consumer_record", None)
    if records is None or original is None:
        log.warning("aiokafka's fetcher is not the one Touchline knows: consumed messages stay ConsumerRecords")
        return False
    if hasattr(original, "touchline_original"):
        return True
    records._consumer_record = _light_records(original)
    return True
