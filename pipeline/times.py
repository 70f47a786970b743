"""Instants as integer UTC epoch milliseconds, and back: exact integer arithmetic, never floats.

Events carry millisecond precision; the cores (facts, journeys, SLA clocks, the simulator) count in
epoch milliseconds and turn them into aware UTC `datetime`s only at their edges.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache

import msgspec

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def to_ms(moment: datetime) -> int:
    """UTC epoch milliseconds of an aware datetime (a sub-millisecond part is dropped, rounding down)."""
    try:
        delta = moment - EPOCH
    except TypeError:
        raise ValueError(f"datetime must be timezone-aware, got naive {moment.isoformat()}") from None
    # 0.33 us against 0.45 us for `delta // _MS`: this runs once per event in every core
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


# a journey's times are rendered again at each of its versions: 0.16 us a hit, 0.73 us a miss
@lru_cache(maxsize=1 << 16)
def from_ms(epoch_ms: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return EPOCH + epoch_ms * _MS


_encode_json = msgspec.json.encode


def iso(moment: datetime) -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` of an aware UTC datetime (another offset, or a naive datetime,
    as `isoformat` writes it, with milliseconds)."""
    # msgspec writes a UTC datetime as `"YYYY-MM-DDTHH:MM:SS[.ffffff]Z"` in C: cut to milliseconds,
    # 0.78 against 3.65 µs for isoformat + replace (session 31, timeit on a busy host). Every SLA
    # outcome writes three, every event's JSON (state, journey input) one
    text = _encode_json(moment)
    size = len(text)
    if size == 29:
        return text[1:24].decode() + "Z"
    if size == 22:
        return text[1:20].decode() + ".000Z"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def iso_ms(epoch_ms: int | None) -> str | None:
    """Epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (None stays None)."""
    return None if epoch_ms is None else iso(from_ms(epoch_ms))
