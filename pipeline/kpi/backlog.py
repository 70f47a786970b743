"""Queue legs that can still be waiting at the end of an open window, indexed so that the backlog
at an instant costs O(dimensions x log legs) rather than O(legs).

`backlog_at` in `tests/support/kpi_reference.py` is the definition; `WaitingLegs.at` returns exactly the
same mapping (a property test holds them equal). Legs still in queue sit in one sorted list per
(channel, queue, priority), so with 100,000 contacts waiting, counting those queued before an
instant is a bisection. Legs already removed from their queue are kept until no open window can
see them waiting; there can be many (a replayed day emitted at once), so `at_each` answers a whole
ascending run of instants in one sweep over them: O((legs + instants) log legs), not their product.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from sortedcontainers import SortedList

from pipeline.kpi.facts import QueueLeg
from pipeline.kpi.measures import DimKey

ContactLegs = tuple[tuple[str, QueueLeg], ...]  # ((channel, leg), ...) of one contact


class WaitingLegs:
    def __init__(self) -> None:
        self._legs: dict[str, ContactLegs] = {}
        self._waiting: dict[DimKey, SortedList[tuple[int, str, int]]] = {}  # of (queued_ms, contact_id, leg index)
        self._removed: dict[str, ContactLegs] = {}  # contacts with legs already out of their queue

    def __contains__(self, contact_id: object) -> bool:
        return contact_id in self._legs

    def __bool__(self) -> bool:
        return bool(self._legs)

    def __len__(self) -> int:
        return len(self._legs)

    def __iter__(self) -> Iterator[str]:
        return iter(self._legs)

    def set(self, contact_id: str, legs: ContactLegs) -> None:
        """Replace the contact's legs (none: forget the contact)."""
        if self._legs.get(contact_id) == legs:
            return
        self.discard(contact_id)
        if not legs:
            return
        self._legs[contact_id] = legs
        removed = []
        for index, (channel, leg) in enumerate(legs):
            if leg.removed_ms is None:
                dim = (channel, leg.queue, leg.priority)
                waiting = self._waiting.get(dim)
                if waiting is None:
                    waiting = self._waiting[dim] = SortedList()
                waiting.add((leg.queued_ms, contact_id, index))
            else:
                removed.append((channel, leg))
        if removed:
            self._removed[contact_id] = tuple(removed)

    def discard(self, contact_id: str) -> None:
        legs = self._legs.pop(contact_id, None)
        if legs is None:
            return
        self._removed.pop(contact_id, None)
        for index, (channel, leg) in enumerate(legs):
            if leg.removed_ms is None:
                dim = (channel, leg.queue, leg.priority)
                waiting = self._waiting[dim]
                waiting.remove((leg.queued_ms, contact_id, index))
                if not waiting:
                    del self._waiting[dim]

    def prune(self, horizon_ms: int) -> None:
        """Drop legs removed from their queue before `horizon_ms` (no open window can see them)."""
        for contact_id in list(self._removed):
            legs = self._legs[contact_id]
            kept = tuple(item for item in legs if item[1].removed_ms is None or item[1].removed_ms >= horizon_ms)
            if kept != legs:
                self.set(contact_id, kept)

    def earliest_queued_ms(self) -> int | None:
        """When the longest-known leg joined its queue (None: no legs): no window ending at or
        before it has a backlog."""
        firsts = [waiting[0][0] for waiting in self._waiting.values()]
        firsts += [leg.queued_ms for legs in self._removed.values() for _, leg in legs]
        return min(firsts) if firsts else None

    def at(self, end_ms: int) -> dict[DimKey, tuple[int, int]]:
        """(channel, queue, priority) -> (legs waiting at the instant `end_ms`, earliest queued_ms)."""
        return next(self.at_each([end_ms]))

    def at_each(self, ends_ms: Iterable[int]) -> Iterator[dict[DimKey, tuple[int, int]]]:
        """`at(end)` for each of the ascending instants `ends_ms`, lazily, in order."""
        # removed legs, by when they joined the queue; one that left no later than it joined never waits
        arrivals = sorted(
            (leg.queued_ms, removed, channel, leg.queue, leg.priority)
            for legs in self._removed.values()
            for channel, leg in legs
            if (removed := leg.removed_ms) is not None and removed > leg.queued_ms
        )
        next_arrival = 0
        departures: list[tuple[int, DimKey]] = []  # heap of (removed_ms, dim) of arrived legs
        oldest: dict[DimKey, list[tuple[int, int]]] = {}  # dim -> heap of (queued_ms, removed_ms)
        counts: dict[DimKey, int] = {}
        previous: int | None = None
        for end in ends_ms:
            if previous is not None and end < previous:
                raise ValueError("instants must ascend")
            previous = end
            while next_arrival < len(arrivals) and arrivals[next_arrival][0] < end:
                queued, removed, channel, queue, priority = arrivals[next_arrival]
                dim = (channel, queue, priority)
                heapq.heappush(departures, (removed, dim))
                heapq.heappush(oldest.setdefault(dim, []), (queued, removed))
                counts[dim] = counts.get(dim, 0) + 1
                next_arrival += 1
            while departures and departures[0][0] < end:  # left before the instant: not waiting at it
                _, dim = heapq.heappop(departures)
                counts[dim] -= 1
            out: dict[DimKey, tuple[int, int]] = {}
            for dim, n in counts.items():
                if n:
                    heap = oldest[dim]
                    while heap[0][1] < end:  # departed; ends ascend, so it never waits again
                        heapq.heappop(heap)
                    out[dim] = (n, heap[0][0])
            for dim, waiting in self._waiting.items():
                n = waiting.bisect_left((end, "", -1))  # sorts before every leg queued at `end`
                if n:
                    seen, first = out.get(dim, (0, waiting[0][0]))
                    out[dim] = (seen + n, min(first, waiting[0][0]))
            yield out
