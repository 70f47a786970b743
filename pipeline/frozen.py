"""A fast constructor for frozen value classes made on hot paths: the journey core's (summaries,
steps, journeys and what the store remembers of them, several per contact record) and the KPI
facts of a contact (recomputed on each of its changes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
T = TypeVar("T")


def builder(cls: Callable[P, T]) -> Callable[P, T]:
    """A constructor of the frozen slotted dataclass `cls` making the same instances (same class,
    equality, hash, repr, still frozen) without its `__init__`, which sets each field through
    `object.__setattr__`: 3.6 µs for `JourneyStep`'s 16 fields against 0.43 µs here. A mutable twin
    with the same slots is built and handed `cls` as its class (the layouts are the same, so
    CPython allows it)."""
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls) and "__slots__" in cls.__dict__):
        raise TypeError(f"{cls!r} is not a slotted dataclass")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__} has a __post_init__, which the builder would skip")
    fields = [
        (f.name, f.type, dataclasses.field(default=f.default, default_factory=f.default_factory))
        for f in dataclasses.fields(cls)
    ]
    twin: Any = dataclasses.make_dataclass(cls.__name__, fields, slots=True, eq=False, repr=False, match_args=False)

    def build(*args: P.args, **kwargs: P.kwargs) -> T:
        made = twin(*args, **kwargs)
        made.__class__ = cls
        return cast(T, made)

    return build
