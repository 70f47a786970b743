"""The ingest stage's fast way from a message to its ClickHouse row.

msgspec structs mirror the pydantic event models (generated from them here, so the models stay the
one source of truth); msgspec decodes and checks an event in about a fifth of pydantic-core's
time (1.8 against 8.5 µs an event in `make bench`'s step profile of 483dd59), and the row is built
from the struct. The fast way only ever says yes: whatever it does not accept at once (a type it does not
mirror, a field it finds wrong, a time outside the canonical form or the plausible window, a wrong
key) goes the pydantic way (`decode` + `event_row`), which has the last word and the error
messages. So a row from here is exactly the row the pydantic way gives
(tests/unit/test_fast_rows.py compares them on simulated, hostile and generated input).

A model's `mode="after"` validators run on the struct as they are (they read fields by name). Not
mirrored (pydantic decides): models with other validators or field validators other than the event
time's, fields with constraints other than lengths, bounds and simple anchored patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from types import NoneType, UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from pipeline.events.models import _CANONICAL_TIME, MODEL_BY_TYPE
from pipeline.ingest import decode as decoding
from pipeline.ingest.decode import Rejection, _Unkeyed, current_policy, plausible_window
from pipeline.privacy import pseudonym
from pipeline.store.rows import DETAIL_FIELDS, event_row
from pipeline.times import EPOCH

# the validator of `occurred_at` whose canonical branch the fast way repeats (`_time`)
_KNOWN_FIELD_VALIDATORS = frozenset({"_utc_millis"})


# patterns that mean the same in pydantic-core's regex engine and Python's (msgspec uses `re`):
# anchored runs of ASCII character classes with counted repeats, e.g. ^[a-z][a-z0-9_]{0,31}$
_SIMPLE_PATTERN = re.compile(r"\^(\[[A-Za-z0-9_-]+\](\{\d+(,\d+)?\})?)+\$")


class _Unmirrored(Exception):
    """A model, field or constraint the fast way leaves to pydantic."""


def _constraints(metadata: list[Any]) -> msgspec.Meta | None:
    given: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.MinLen):
            given["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            given["max_length"] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            given["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            given["le"] = item.le
        elif set(getattr(item, "__dict__", {})) == {"pattern"} and _SIMPLE_PATTERN.fullmatch(item.pattern):
            # pydantic-core's `$` is the end of the text, Python's also before a final newline
            given["pattern"] = item.pattern[:-1] + r"\Z"
        else:
            raise _Unmirrored(f"constraint {item!r}")
    return msgspec.Meta(**given) if given else None


def _mirror(annotation: Any, metadata: list[Any], structs: dict[type, type]) -> Any:
    """The msgspec type that accepts a subset of what pydantic accepts for this field, decoded to
    the same value (enums of Literal fields as their values: the row holds the values)."""
    origin = get_origin(annotation)
    if annotation is datetime:
        if metadata:
            raise _Unmirrored("constrained time")
        return str  # the canonical form is checked after decoding (`_time`)
    if annotation in (str, int, float):
        meta = _constraints(metadata)
        return Annotated[annotation, meta] if meta else annotation
    if origin is Literal:
        if metadata:
            raise _Unmirrored("constrained literal")
        values = tuple(v.value if isinstance(v, Enum) else v for v in get_args(annotation))
        if not all(type(v) in (str, int) for v in values):
            raise _Unmirrored(f"literal {annotation!r}")
        return Literal[values]
    if origin in (Union, UnionType):
        args = get_args(annotation)
        if len(args) != 2 or args[1] is not NoneType:
            raise _Unmirrored(f"union {annotation!r}")
        return _mirror(args[0], metadata, structs) | None
    if isinstance(annotation, type) and issubclass(annotation, Enum) and not metadata:
        return annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and not metadata:
        return _struct(annotation, structs)
    raise _Unmirrored(f"type {annotation!r}")


def _after_checks(model: type[BaseModel]) -> tuple[Callable[[Any], Any], ...]:
    """The model's own `mode="after"` validators, which read the fields by name and raise when
    wrong: called on the struct, they decide as on the model (one source of truth)."""
    validators = model.__pydantic_decorators__.model_validators.values()
    if any(v.info.mode != "after" for v in validators):
        raise _Unmirrored(f"{model.__name__} has a validator that runs before or around validation")
    return tuple(v.func for v in validators)


def _fields(
    model: type[BaseModel], structs: dict[type, type], skip: str | None = None, checked: bool = False
) -> list[tuple[Any, ...]]:
    """`checked`: the caller runs the model's after-validators (`_after_checks`)."""
    decorators = model.__pydantic_decorators__
    if (decorators.model_validators and not checked) or set(decorators.field_validators) - _KNOWN_FIELD_VALIDATORS:
        raise _Unmirrored(f"{model.__name__} has validators")
    fields: list[tuple[Any, ...]] = []
    for name, info in model.model_fields.items():
        if name == skip:
            continue
        kind = _mirror(info.annotation, list(info.metadata), structs)
        if info.default_factory is not None:
            factory = info.default_factory
            if not (isinstance(factory, type) and issubclass(factory, BaseModel)):
                raise _Unmirrored(f"default factory of {name}")
            fields.append((name, kind, msgspec.field(default_factory=structs[factory])))
        elif info.default is PydanticUndefined:
            fields.append((name, kind))
        else:
            default = info.default
            if isinstance(default, Enum) and get_origin(kind) is Literal:
                default = default.value
            fields.append((name, kind, default))
    return fields


def _struct(model: type[BaseModel], structs: dict[type, type]) -> type:
    if model not in structs:
        if model.model_config.get("extra") != "forbid":
            raise _Unmirrored(f"{model.__name__} allows extra fields")
        structs[model] = msgspec.defstruct(
            model.__name__, _fields(model, structs), forbid_unknown_fields=True, kw_only=True
        )
    return structs[model]


@dataclass(frozen=True, slots=True)
class _Shape:
    """What building a row needs to know of one mirrored event type."""

    kind: str
    details: tuple[str, ...]
    author: bool
    link: bool  # an identity link: its two identifiers are pseudonymised too
    checks: tuple[Callable[[Any], Any], ...]  # the model's after-validators


def _event_structs() -> tuple[msgspec.json.Decoder[Any], dict[type, _Shape], list[str]]:
    structs: dict[type, type] = {}
    mirrored: list[type] = []
    shapes: dict[type, _Shape] = {}
    left_out: list[str] = []
    for kind, model in MODEL_BY_TYPE.items():
        try:
            checks = _after_checks(model)
            struct = msgspec.defstruct(
                model.__name__,
                _fields(model, structs, skip="type", checked=True),
                tag_field="type",
                tag=kind,
                forbid_unknown_fields=True,
                kw_only=True,
            )
        except _Unmirrored:
            left_out.append(kind)
            continue
        mirrored.append(struct)
        fields = model.model_fields
        shapes[struct] = _Shape(kind, DETAIL_FIELDS[kind], "author" in fields, kind == "identity_link", checks)
    decoder = msgspec.json.Decoder(Union[tuple(mirrored)])  # noqa: UP007 (a runtime union of classes)
    return decoder, shapes, left_out


_DECODER, _SHAPES, LEFT_TO_PYDANTIC = _event_structs()
_DETAILS = msgspec.json.Encoder()
_FAILED = (msgspec.MsgspecError, RecursionError)  # RecursionError: deeply nested JSON
_fromisoformat: Callable[[str], datetime] = datetime.fromisoformat
_canonical = _CANONICAL_TIME.fullmatch


def _time(text: str) -> datetime | None:
    if _canonical(text) is None:
        return None
    try:
        return _fromisoformat(text)
    except ValueError:
        return None


def row(
    value: bytes | None,
    topic: str,
    partition: int,
    offset: int,
    max_bytes: int,
    key: bytes | _Unkeyed | None,
    window: tuple[datetime, datetime] | None = None,
) -> tuple[Any, ...] | Rejection:
    """The event's ClickHouse row (`ingested_at` left at the epoch: set at write), or why not.
    `window`: the plausible times (`plausible_window`), when the caller took it for a run of
    messages (0.8 µs an event when taken per event)."""
    if value and len(value) <= max_bytes:
        made = _fast_row(value, topic, partition, offset, key, window)
        if made is not None:
            return made
    event = decoding.decode(value, topic, max_bytes, key)
    if isinstance(event, Rejection):
        return event
    return event_row(event, topic, partition, offset, EPOCH)


def _fast_row(
    value: bytes,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | _Unkeyed | None,
    window: tuple[datetime, datetime] | None = None,
) -> tuple[Any, ...] | None:
    try:
        event = _DECODER.decode(value)
    except _FAILED:
        return None
    rules = current_policy()
    channel = rules.topics.channel_of(topic)
    if channel is None or channel is not event.channel:
        return None
    occurred = _time(event.occurred_at)
    if occurred is None:
        return None
    earliest, latest = window or plausible_window(rules)
    if occurred < earliest or occurred > latest:
        return None
    contact_id = event.contact_id
    if not isinstance(key, _Unkeyed) and rules.check_key and key != contact_id.encode():
        return None
    shape = _SHAPES[type(event)]
    for check in shape.checks:
        try:
            check(event)
        except Exception:  # whatever a validator raises, pydantic says what is wrong
            return None
    if shape.link:
        link = pseudonym.link_identifier
        for side in (event.left, event.right):
            side.value = link(side.kind.value, side.value)
    details = shape.details
    hide = pseudonym.customer_identifier
    ids = event.customer
    customer_id, phone, email, social_handle, web_cookie = (
        ids.customer_id,
        ids.phone,
        ids.email,
        ids.social_handle,
        ids.web_cookie,
    )
    return (
        event.event_id,
        shape.kind,
        event.schema_version,
        occurred,
        channel.value,
        contact_id,
        "" if customer_id is None else hide("customer_id", customer_id) or "",
        "" if phone is None else hide("phone", phone) or "",
        "" if email is None else hide("email", email) or "",
        "" if social_handle is None else hide("social_handle", social_handle) or "",
        "" if web_cookie is None else hide("web_cookie", web_cookie) or "",
        event.queue or "",
        event.priority,
        event.segment or "",
        event.intent or "",
        event.agent_id or "",
        event.bot_id or "",
        event.author if shape.author else "",
        _DETAILS.encode({name: getattr(event, name) for name in details}).decode() if details else "",
        topic,
        partition,
        offset,
        EPOCH,
    )
