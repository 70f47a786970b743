"""Size- and time-bounded batches of rows with the acknowledgements to release once the batch is
durably written. Pure: the caller supplies the clock."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

Token = TypeVar("Token")


@dataclass
class Batch(Generic[Token]):
    events: list[tuple[Any, ...]] = field(default_factory=list)
    dead_letters: list[tuple[Any, ...]] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    opened_at: float | None = None

    def __len__(self) -> int:
        return len(self.tokens)


class Batcher(Generic[Token]):
    def __init__(self, max_rows: int, max_seconds: float) -> None:
        self.max_rows = max_rows
        self.max_seconds = max_seconds
        self._current: Batch[Token] = Batch()

    def _open(self, now: float) -> Batch[Token]:
        if self._current.opened_at is None:
            self._current.opened_at = now
        return self._current

    def add_event(self, row: tuple[Any, ...] | None, token: Token, now: float) -> bool:
        """Add a row (None for a message that only needs acknowledging). True when the batch is full."""
        batch = self._open(now)
        if row is not None:
            batch.events.append(row)
        batch.tokens.append(token)
        return len(batch) >= self.max_rows

    def add_dead_letter(self, row: tuple[Any, ...], token: Token, now: float) -> bool:
        batch = self._open(now)
        batch.dead_letters.append(row)
        batch.tokens.append(token)
        return len(batch) >= self.max_rows

    def due(self, now: float) -> bool:
        opened = self._current.opened_at
        return opened is not None and now - opened >= self.max_seconds

    def take(self) -> Batch[Token]:
        batch, self._current = self._current, Batch()
        return batch

    def __len__(self) -> int:
        return len(self._current)
