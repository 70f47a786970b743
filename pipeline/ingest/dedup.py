"""A bounded memory of recently seen event ids, to drop redelivered duplicates before they are
written. ClickHouse deduplicates too (ReplacingMergeTree); this only saves work and keeps
duplicates out of the live counters."""

from __future__ import annotations

from itertools import islice


class RecentIds:
    """First in, first out, on a plain dict (insertion-ordered): 0.90 µs per offered id at 500k
    remembered, against 2.64 µs for cachetools' FIFOCache (2M ids, this machine), and this runs
    once per ingested event. It keeps each id's `hash` (a 64-bit int, 32 bytes; cached on the
    string, so free to take) rather than the id (~85 bytes): 500k ids take ~26 MB less. The cache
    lives in one process only, so the per-process hash seed does not matter; a false duplicate
    needs two ids of the last 500k with the same 64-bit hash (odds ~1e-14 per event)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, event_id: str) -> bool:
        """True when `event_id` was offered before (and is still remembered); remembers it."""
        if self._capacity == 0:
            return False
        key = hash(event_id)
        if key in self._seen:
            return True
        self._seen[key] = None
        if len(self._seen) > self._capacity:
            # the oldest tenth in one go, copying only their keys (not all of them)
            for old in list(islice(self._seen, max(1, self._capacity // 10))):
                del self._seen[old]
        return False

    def forget(self, event_id: str) -> None:
        self._seen.pop(hash(event_id), None)
