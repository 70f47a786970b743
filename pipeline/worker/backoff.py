"""Pauses between the attempts of a retried write, for plain `while` loops.

The stages retried with tenacity's `AsyncRetrying` before; each use of it builds a reference cycle
(the retrying object, its thread-local iteration state and the bound methods in that state), with
whatever its callbacks close over: an ingest batch's rows, through the sink's log callback. Only the
cyclic collector frees such objects, and the worker freezes its long-lived objects out of the
collector's reach every 10 s, so a retry caught in flight by a freeze was never freed. Measured in a
worker fed at 4,000 events/s (`gc.DEBUG_SAVEALL`): 393 retrying objects and 120 insert contexts
became cyclic garbage every 20 s, holding 34,288 lists (rows). A loop over these pauses makes no
cycle."""

from __future__ import annotations

from collections.abc import Iterator, Sequence


def exponential(first: float, most: float, *, least: float = 0.0) -> Iterator[float]:
    """`first`, doubling each time, never above `most` nor below `least`, forever."""
    pause = first
    while True:
        yield min(most, max(least, pause))
        pause = min(pause * 2, most)


def steps(pauses: Sequence[float]) -> Iterator[float]:
    """The given pauses in turn, then the last one forever."""
    yield from pauses
    while True:
        yield pauses[-1]
