"""Events held in memory for a long time share their equal parts.

The analytics stage holds the parsed events of every live contact (`kpi/facts.py`). Two parts of a
parsed event are the same for most of them yet each event had its own:

- its `customer` identifiers: the same for every event of a contact until a new identifier is
  learnt. A `CustomerIdentifiers` model is three objects (the model, its `__dict__`, its
  fields-set) and ~450 bytes;
- pydantic's fields-set (`__pydantic_fields_set__`: which fields the JSON carried), a `set` of about
  ten names: ~730 bytes an event, and the same for every event of one type and shape.

Sharing them took a held event from 2,008 to 826 bytes (tracemalloc, 172,792 simulated events held)
and from 6 to 2 objects the cyclic collector scans. In `make bench`'s analytics pass the collector
then took 10.2-11.8 s instead of 15.5-16.8 s, with no full collection instead of eight of about
0.45 s each (every thread waits through them), and peak RSS fell from 1,181-1,221 to 1,038-1,050 MB
(two alternating runs each; README, "Operating the worker").

Both parts are frozen values: events are frozen models, and nothing changes a fields-set after
validation (`model_copy` copies it first). Pseudonymisation rewrites the identifiers in place, so
sharing comes after it (it runs in `decode`), never before.
"""

from __future__ import annotations

from typing import Any

from pipeline.events.models import EventBase

# One set per combination of fields present in an event or identifiers model: a few dozen in
# practice, bounded by the schemas; past the bound (a producer sending every optional field in every
# combination) new shapes simply keep their own sets.
MAX_FIELD_SETS = 4_096
_FIELD_SETS: dict[frozenset[str], set[str]] = {}


def share_parts(event: EventBase, previous: EventBase | None) -> EventBase:
    """`event` (in place) sharing its fields-set with equal ones and its customer identifiers with
    `previous` (the contact's event before it) when they are equal, fields-set included."""
    fields = event.__dict__
    customer = fields["customer"]
    before = previous.__dict__["customer"] if previous is not None else None
    if before is not None and _equal(before, customer):
        fields["customer"] = before
    else:
        _share_field_set(customer)
    _share_field_set(event)
    return event


def _equal(one: Any, other: Any) -> bool:
    # the fields-sets too: `{"email": null}` and `{}` give equal values (`exclude_unset` tells them apart)
    return bool(one.__dict__ == other.__dict__ and one.__pydantic_fields_set__ == other.__pydantic_fields_set__)


def _share_field_set(model: Any) -> None:
    own: set[str] = model.__pydantic_fields_set__
    key = frozenset(own)
    shared = _FIELD_SETS.get(key)
    if shared is None:
        if len(_FIELD_SETS) >= MAX_FIELD_SETS:
            return
        shared = _FIELD_SETS[key] = own
    if shared is not own:
        object.__setattr__(model, "__pydantic_fields_set__", shared)
