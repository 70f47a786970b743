"""The journey stage's input and state per contact: a compact, mergeable `ContactRecord`.

The analytics stage turns each batch of new events into one record per contact (`records_of`) and
sends it to the journey stage instead of the raw events; the journey stage keeps one merged record
per contact (`merge`). A record holds exactly what `pipeline.journeys.contact.summarise` reads, in a
form whose merge is idempotent, commutative and associative: merging the records of any split of a
contact's event set, in any order and with any duplicates, gives the record of the whole set, so
`summary()` equals `summarise(events)` (property-tested against it). Redelivered or re-forwarded
input is therefore harmless and the stage needs no set of seen event ids.

How each summary field is kept (`us` = epoch microseconds, orders ties by event id like `summarise`):

* channel: of the first activity event, min `(us, event_id)`; started_at its time; last activity:
  max `us`; intent: the max `(us, event_id)` event carrying one; ended: max `us` of `ended`.
* first human: min `us` of `agent_assigned` and, separately, of `first_agent_reply`/`agent_reply`
  (which one counts depends on the channel, known only after the merge).
* resolution: every `resolved` / `reopened` event as `event_id -> (us, kind, resolved_by)` (a few per
  contact), folded in order by `summary()`; transfers: the ids of `transferred` events.
* flags (OR): bot involved, bot handoff, routed (`queued`/`agent_assigned`), IVR zero-out, abandoned.
* surveys: per survey the max `(us, event_id)` answer.
* identity: the identifiers carried on the contact's events (`kind`, value as sent) and its
  `identity_link`s, each with the arrival `seq` at which the journey stage first saw it (min on
  merge), so the identity graph can be rebuilt in its original union order (the graph's result
  under conflicting links depends on that order).
* `seen`: max `us` of any event, links included (retention of identity-only records).

Wire/state form: `to_json` / `from_json`, a JSON object with `"v": RECORD_VERSION`. The state form
(`to_state_json`) adds `"k"`, the contact's anchor in the identity graph (`[kind, normalised value]`
of one of its identifiers in its component, or `0` when it is alone there): where a restore hangs
the contact without replaying its unions (`pipeline.journeys.identity`, "Keyed state"). A record
without it (the wire, or state written before it existed) is tied by its identifiers instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from sys import intern
from typing import Any, TypeVar

from pydantic_core import from_json as parse_json
from pydantic_core import to_json as encode_json

from pipeline.events.models import EventBase, IdentityLink, Resolved, SurveyResponse, event_type
from pipeline.frozen import builder
from pipeline.journeys.contact import EPOCH, ContactSummary, Score

RECORD_VERSION = 1

BOT = 1
HANDOFF = 2
ROUTED = 4
ZERO_OUT = 8
ABANDONED = 16

IDENTIFIER_KINDS = ("customer_id", "phone", "email", "social_handle", "web_cookie")

Stamp = tuple[int, str]  # (epoch us, event_id): the order `summarise` sorts events in
Ident = tuple[str, str]  # (kind, value as carried)
Link = tuple[str, str, str, str]  # left kind, left value, right kind, right value

_new_summary = builder(ContactSummary)
_new_score = builder(Score)


def to_us(moment: datetime) -> int:
    delta = moment - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class RecordError(ValueError):
    """A forwarded record that cannot be read (bad JSON, unknown version, wrong shape)."""


@dataclass(slots=True)
class ContactRecord:
    """What the journey stage knows about one contact (rules in the module docstring)."""

    contact_id: str
    first: tuple[int, str, str] | None = None  # (us, event_id, channel) of the first activity event
    last_us: int = 0
    intent: tuple[int, str, str] | None = None  # (us, event_id, intent)
    ended_us: int | None = None
    assigned_us: int | None = None
    reply_us: int | None = None
    marks: dict[str, tuple[int, str, str]] = field(default_factory=dict)  # event_id -> (us, "r"|"o", by)
    transfers: set[str] = field(default_factory=set)
    flags: int = 0
    surveys: dict[str, tuple[int, str, int]] = field(default_factory=dict)  # survey -> (us, event_id, score)
    ids: dict[Ident, int] = field(default_factory=dict)  # identifier -> first arrival seq
    links: dict[Link, int] = field(default_factory=dict)  # link -> first arrival seq
    seq: int = 0  # first arrival seq of the contact itself
    seen_us: int = 0
    # read from the state form, used once by a restore and then let go: (kind, value) of the
    # identity node, () for none, None when not known
    anchor: tuple[str, str] | tuple[()] | None = None

    @property
    def active(self) -> bool:
        """True when the contact has activity (it is a step of a journey), not identity only."""
        return self.first is not None

    # ------------------------------------------------------------------ building

    def add(self, event: EventBase) -> None:
        """Fold one event in (idempotent: adding an event twice changes nothing)."""
        us = to_us(event.occurred_at)
        self.seen_us = max(self.seen_us, us)
        customer = event.customer
        for kind in IDENTIFIER_KINDS:
            value = getattr(customer, kind)
            if value is not None:
                self.ids.setdefault((kind, value), self.seq)
        if isinstance(event, IdentityLink):
            link = (str(event.left.kind.value), event.left.value, str(event.right.kind.value), event.right.value)
            self.links.setdefault(link, self.seq)
            return
        eid = event.event_id
        stamp = (us, eid)
        if self.first is None or stamp < self.first[:2]:
            self.first = (us, eid, str(event.channel.value))
        self.last_us = max(self.last_us, us)
        if event.intent and (self.intent is None or stamp > self.intent[:2]):
            self.intent = (us, eid, event.intent)
        if event.bot_id:
            self.flags |= BOT
        kind = event_type(event)
        if kind == "resolved":
            assert isinstance(event, Resolved)
            self.marks[eid] = (us, "r", str(event.resolved_by.value))
        elif kind == "reopened":
            self.marks[eid] = (us, "o", "")
        elif kind == "ended":
            self.ended_us = us if self.ended_us is None else max(self.ended_us, us)
        elif kind == "transferred":
            self.transfers.add(eid)
        elif kind == "bot_turn":
            self.flags |= BOT
        elif kind == "bot_handoff":
            self.flags |= BOT | HANDOFF
        elif kind == "ivr_zero_out":
            self.flags |= ZERO_OUT
        elif kind == "abandoned":
            self.flags |= ABANDONED
        elif kind == "survey_response":
            assert isinstance(event, SurveyResponse)
            survey, score = str(event.survey), int(event.score)
            known = self.surveys.get(survey)
            if known is None or stamp > known[:2]:
                self.surveys[survey] = (us, eid, score)
        if kind == "agent_assigned":
            self.flags |= ROUTED
            self.assigned_us = us if self.assigned_us is None else min(self.assigned_us, us)
        elif kind == "queued":
            self.flags |= ROUTED
        elif kind in ("first_agent_reply", "agent_reply"):
            self.reply_us = us if self.reply_us is None else min(self.reply_us, us)

    def merge(self, other: ContactRecord) -> bool:
        """Fold another record of the same contact in. True when this record changed."""
        # each field compared as it is folded (comparing a key of the whole record before and after
        # cost as much as the rest of the merge)
        changed = False
        if other.first is not None and (self.first is None or other.first[:2] < self.first[:2]):
            self.first = other.first
            changed = True
        if other.last_us > self.last_us:
            self.last_us = other.last_us
            changed = True
        if other.intent is not None and (self.intent is None or other.intent[:2] > self.intent[:2]):
            self.intent = other.intent
            changed = True
        if other.ended_us is not None and (self.ended_us is None or other.ended_us > self.ended_us):
            self.ended_us = other.ended_us
            changed = True
        if other.assigned_us is not None and (self.assigned_us is None or other.assigned_us < self.assigned_us):
            self.assigned_us = other.assigned_us
            changed = True
        if other.reply_us is not None and (self.reply_us is None or other.reply_us < self.reply_us):
            self.reply_us = other.reply_us
            changed = True
        marks = self.marks
        for eid, mark in other.marks.items():
            if marks.get(eid) != mark:
                marks[eid] = mark
                changed = True
        if other.transfers and not other.transfers <= self.transfers:
            self.transfers |= other.transfers
            changed = True
        if other.flags | self.flags != self.flags:
            self.flags |= other.flags
            changed = True
        for survey, answer in other.surveys.items():
            known = self.surveys.get(survey)
            if known is None or answer[:2] > known[:2]:
                self.surveys[survey] = answer
                changed = True
        changed |= _keep_earliest(self.ids, other.ids)
        changed |= _keep_earliest(self.links, other.links)
        if other.seq < self.seq:
            self.seq = other.seq
            changed = True
        if other.seen_us > self.seen_us:
            self.seen_us = other.seen_us
            changed = True
        return changed

    def with_seq(self, seq: int) -> ContactRecord:
        """This record (a forwarded delta) stamped with its arrival order in the journey stage."""
        self.seq = seq
        self.ids = dict.fromkeys(self.ids, seq)
        self.links = dict.fromkeys(self.links, seq)
        return self

    def strip(self) -> None:
        """Forget the contact's activity, keep its identity (an evicted contact of a live customer)."""
        self.first = self.intent = None
        self.last_us = 0
        self.ended_us = self.assigned_us = self.reply_us = None
        self.marks, self.transfers, self.surveys = {}, set(), {}
        self.flags = 0

    # ------------------------------------------------------------------ reading

    def summary(self) -> ContactSummary:
        """The contact's summary: equal to `summarise` of the events folded in."""
        if self.first is None:
            raise ValueError("a contact needs at least one event")
        channel = self.first[2]
        resolved_us: int | None = None
        resolved_by: str | None = None
        resolutions = 0
        reopened = False
        marks = self.marks
        # in (us, event id) order; event ids are unique, so the tuples never compare past them
        for us, _, kind, by in sorted([(m[0], eid, m[1], m[2]) for eid, m in marks.items()]) if marks else ():
            if kind == "r":
                if resolved_us is None:
                    resolved_us, resolved_by = us, by
                    resolutions += 1
            else:
                reopened = True
                resolved_us = resolved_by = None
        human = self.assigned_us if channel == "voice" else self.reply_us
        flags = self.flags
        bot = bool(flags & BOT)
        handoff = bool(flags & HANDOFF)
        csat = ces = nps = None
        if self.surveys:
            csat, ces, nps = (_score(self.surveys.get(name)) for name in ("csat", "ces", "nps"))
        intent = self.intent
        ended_us = self.ended_us
        # positional, in field order (keywords through the builder cost 1.3 of its 2.0 µs)
        return _new_summary(
            self.contact_id, channel, None if intent is None else intent[2], self.first[0] // 1000,
            self.last_us // 1000, None if ended_us is None else ended_us // 1000,
            None if human is None else human // 1000, None if resolved_us is None else resolved_us // 1000,
            resolved_by, resolutions, reopened, len(self.transfers), bot, handoff,
            bot and resolved_us is not None and not handoff and not flags & ROUTED, bool(flags & ZERO_OUT),
            bool(flags & ABANDONED), csat, ces, nps,
        )  # fmt: skip

    # ------------------------------------------------------------------ wire and state form

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able form (`to_json` decoded: one place writes the fields)."""
        fields: dict[str, Any] = parse_json(self.to_json())
        return fields

    def _fields(self) -> dict[str, Any]:
        """The wire form's fields, sharing this record's containers, to be encoded at once (tuples
        encode as arrays): no copy of each field as a list, as `to_dict` made them before."""
        out: dict[str, Any] = {"v": RECORD_VERSION, "c": self.contact_id, "q": self.seq, "s": self.seen_us}
        if self.first is not None:
            out["f"] = self.first
            out["l"] = self.last_us
        if self.intent is not None:
            out["i"] = self.intent
        if self.ended_us is not None:
            out["e"] = self.ended_us
        if self.assigned_us is not None:
            out["a"] = self.assigned_us
        if self.reply_us is not None:
            out["r"] = self.reply_us
        if self.marks:
            out["m"] = self.marks
        if self.transfers:
            out["t"] = sorted(self.transfers)
        if self.flags:
            out["g"] = self.flags
        if self.surveys:
            out["u"] = self.surveys
        if self.ids:
            out["id"] = [(kind, value, seq) for (kind, value), seq in self.ids.items()]
        if self.links:
            out["ln"] = [(*link, seq) for link, seq in self.links.items()]
        return out

    def to_json(self) -> bytes:
        return encode_json(self._fields())

    def to_state_json(self, anchor: tuple[str, str] | None) -> bytes:
        """The state form: `to_json` plus the contact's anchor in the identity graph (None: alone)."""
        out = self._fields()
        out["k"] = 0 if anchor is None else anchor
        return encode_json(out)

    @classmethod
    def from_dict(cls, data: Any) -> ContactRecord:
        try:
            if not isinstance(data, dict) or data.get("v") != RECORD_VERSION:
                version = data.get("v") if isinstance(data, dict) else None
                raise RecordError(f"unsupported contact record version {version!r}")
            contact_id = data["c"]
            if not isinstance(contact_id, str) or not contact_id:
                raise RecordError("contact record without a contact id")
            get = data.get
            first, intent, marks, transfers, surveys, ids, links = (
                get("f"), get("i"), get("m"), get("t"), get("u"), get("id"), get("ln")
            )  # fmt: skip
            # shared strings (channel, intent, kinds, the contact id and identifier values repeat over
            # records and the identity graph): one object each, a third of a record's memory. Fields a
            # record does not carry are not walked (most carry no marks, transfers, surveys or links)
            return cls(
                intern(contact_id),
                None if first is None else (int(first[0]), str(first[1]), intern(str(first[2]))),
                int(get("l", 0)),
                None if intent is None else (int(intent[0]), str(intent[1]), intern(str(intent[2]))),
                _opt_int(get("e")),
                _opt_int(get("a")),
                _opt_int(get("r")),
                {str(k): (int(m[0]), intern(str(m[1])), intern(str(m[2]))) for k, m in marks.items()} if marks else {},
                {str(t) for t in transfers} if transfers else set(),
                int(get("g", 0)),
                {intern(str(k)): (int(a[0]), str(a[1]), int(a[2])) for k, a in surveys.items()} if surveys else {},
                # intern() refuses anything but a str: a wrong type is a malformed record
                {(intern(k), intern(v)): int(q) for k, v, q in ids} if ids else {},
                {(intern(a), intern(b), intern(c), intern(d)): int(q) for a, b, c, d, q in links} if links else {},
                int(get("q", 0)),
                int(get("s", 0)),
                _anchor(get("k")),
            )
        except RecordError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise RecordError(f"malformed contact record: {type(error).__name__}") from None

    @classmethod
    def from_json(cls, raw: bytes | str) -> ContactRecord:
        try:
            data = parse_json(raw, cache_strings=False)  # 1.0 s for 230k records, json.loads 1.9 s
        except ValueError:
            raise RecordError("contact record is not JSON") from None
        return cls.from_dict(data)


K = TypeVar("K")


def _keep_earliest(mine: dict[K, int], theirs: dict[K, int]) -> bool:
    """Take each entry of `theirs` that `mine` lacks or holds with a later sequence number; True if any."""
    changed = False
    for key, seq in theirs.items():
        known = mine.get(key)
        if known is None or seq < known:
            mine[key] = seq
            changed = True
    return changed


def _score(answer: tuple[int, str, int] | None) -> Score | None:
    return None if answer is None else _new_score(answer[2], answer[0] // 1000)


def _anchor(value: Any) -> tuple[str, str] | tuple[()] | None:
    if value is None:
        return None
    if value == 0:
        return ()
    kind, node = value
    return (intern(kind), intern(node))


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def records_of(events: Iterable[EventBase]) -> list[ContactRecord]:
    """One record per contact of `events`, in order of each contact's first event."""
    records: dict[str, ContactRecord] = {}
    for event in events:
        record = records.get(event.contact_id)
        if record is None:
            record = records[event.contact_id] = ContactRecord(event.contact_id)
        record.add(event)
    return list(records.values())
