"""Size- and time-bounded batches of rows, with the highest source offset of each partition they
cover: those offsets may be committed once the batch is durably written. Pure: the caller supplies
the clock."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Source = tuple[str, int]  # (topic, partition)


@dataclass
class Batch:
    events: list[tuple[Any, ...]] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    offsets: dict[Source, int] = field(default_factory=dict)
    messages: int = 0
    opened_at: float | None = None

    def __len__(self) -> int:
        return self.messages


class Batcher:
    def __init__(self, max_rows: int, max_seconds: float) -> None:
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._current = Batch()

    def _add(self, source: Source, offset: int, now: float) -> bool:
        batch = self._current
        if batch.opened_at is None:
            batch.opened_at = now
        if offset > batch.offsets.get(source, -1):
            batch.offsets[source] = offset
        batch.messages += 1
        return batch.messages >= self.max_rows

    def add_event(self, row: tuple[Any, ...] | None, source: Source, offset: int, now: float) -> bool:
        """Add a row (None for a message that is only covered, e.g. a duplicate). True when full."""
        if row is not None:
            self._current.events.append(row)
        return self._add(source, offset, now)

    def add_dead_letter(self, row: tuple[Any, ...], source: Source, offset: int, now: float) -> bool:
        self._current.dead_letters.append(row)
        return self._add(source, offset, now)

    def drop(self, unwanted: Callable[[tuple[Any, ...]], bool]) -> int:
        """Remove the rows `unwanted` selects from the batch being filled (their offsets stay
        covered: they are handled, just not written). How many were removed."""
        batch = self._current
        kept = [row for row in batch.events if not unwanted(row)]
        removed = len(batch.events) - len(kept)
        batch.events = kept
        return removed

    def due(self, now: float) -> bool:
        opened = self._current.opened_at
        return opened is not None and now - opened >= self.max_seconds

    def take(self) -> Batch:
        batch, self._current = self._current, Batch()
        return batch

    def __len__(self) -> int:
        return len(self._current)
