"""Right to erasure: find one person's contacts and remove every row of theirs from ClickHouse, and
ask each stage of a running worker to drop what it holds of them in memory.

The person is found by one identifier (as the user gives it; hashed like stored identifiers when
pseudonymisation hides that kind), then widened to everything stitched to them: the contacts
carrying the identifier, the customers (journeys' `customer_key`) those contacts belong to, and
every contact of those customers.

Rule: the person's rows go, aggregates stay. KPI windows (`kpi_minute_partials`) are counts per
queue and minute with no person in them; they keep the forgotten person's contribution. Messages on
Kafka topics are not rewritten: they leave with the topics' retention.

Stage hooks: `register(name, hook)`; a hook is `async (Subject) -> int | Dropped` (the entries it
dropped), called before the tables are cleaned so a stage cannot write the person again afterwards.
With several workers every worker's hooks run (`pipeline.worker.forget_view` fans the erasure out):
a hook says in `Dropped.wanted` which holders must have answered (e.g. the journey resolver, held by
one worker), and the worker holding one says so in `Dropped.marks`; marks can also carry what the
settle step (`register_settle`) waits for on every worker before the rows are deleted (a builder
partition's offset to have applied)."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from clickhouse_connect.driver.client import Client

from pipeline.privacy.identifiers import is_placeholder
from pipeline.privacy.pseudonym import Pseudonymiser, normalise

log = logging.getLogger(__name__)

KINDS = ("customer_id", "phone", "email", "social_handle", "web_cookie")


@dataclass(frozen=True)
class Subject:
    """One person to forget, as the stores hold them."""

    kind: str  # customer_id, phone, email, social_handle or web_cookie
    value: str  # as stored: the pseudonym when pseudonymisation hides this kind
    contact_ids: frozenset[str] = frozenset()
    customer_keys: frozenset[str] = frozenset()  # journeys' customer_key of the person
    identifiers: frozenset[tuple[str, str]] = frozenset()  # (kind, stored value) found in their events
    clear: tuple[str, ...] = ()  # the value as given and normalised: dead letters hold raw messages

    def summary(self) -> dict[str, Any]:
        return {"kind": self.kind, "contacts": len(self.contact_ids), "customers": len(self.customer_keys)}

    def wire(self) -> dict[str, Any]:
        """Everything of the subject, as JSON for another worker (`from_wire`); personal data (the
        clear value): only ever sent to the workers of this deployment."""
        return {
            "kind": self.kind,
            "value": self.value,
            "contact_ids": sorted(self.contact_ids),
            "customer_keys": sorted(self.customer_keys),
            "identifiers": sorted([kind, value] for kind, value in self.identifiers),
            "clear": list(self.clear),
        }

    def union(self, other: Subject) -> Subject:
        """The person as two stores hold them (embedded stores of several workers)."""
        return Subject(
            self.kind,
            self.value,
            self.contact_ids | other.contact_ids,
            self.customer_keys | other.customer_keys,
            self.identifiers | other.identifiers,
            self.clear,
        )

    @classmethod
    def from_wire(cls, document: dict[str, Any]) -> Subject:
        """The subject `wire` gave; KeyError, TypeError or ValueError when it is not one."""
        kind, value = document["kind"], document["value"]
        if not isinstance(kind, str) or not isinstance(value, str):
            raise TypeError("kind and value must be strings")
        identifiers = frozenset((str(k), str(v)) for k, v in document["identifiers"])
        return cls(
            kind,
            value,
            frozenset(str(c) for c in document["contact_ids"]),
            frozenset(str(c) for c in document["customer_keys"]),
            identifiers,
            tuple(str(c) for c in document["clear"]),
        )


@dataclass(frozen=True)
class Dropped:
    """What a hook dropped, and what the fan-out must check (module docstring)."""

    count: int
    marks: dict[str, int] = field(default_factory=dict)  # held here: name -> offset to settle (or 0)
    wanted: frozenset[str] = frozenset()  # marks some worker must give, else the erasure is retried


@dataclass
class StateDropped:
    """The hooks' answers of one worker, or of all of them merged."""

    counts: dict[str, int] = field(default_factory=dict)
    marks: dict[str, int] = field(default_factory=dict)
    wanted: set[str] = field(default_factory=set)
    tables: dict[str, int] = field(default_factory=dict)  # rows other workers deleted in their own stores

    def merge(self, other: StateDropped) -> None:
        for name, count in other.counts.items():
            self.counts[name] = self.counts.get(name, 0) + count
        for name, offset in other.marks.items():
            self.marks[name] = max(offset, self.marks.get(name, offset))
        self.wanted |= other.wanted

    def missing(self) -> list[str]:
        """Wanted marks no worker gave: a holder is being assigned."""
        return sorted(self.wanted - set(self.marks))

    def wire(self) -> dict[str, Any]:
        return {"counts": self.counts, "marks": self.marks, "wanted": sorted(self.wanted)}

    @classmethod
    def from_wire(cls, document: dict[str, Any]) -> StateDropped:
        return cls(
            {str(k): int(v) for k, v in document["counts"].items()},
            {str(k): int(v) for k, v in document["marks"].items()},
            {str(w) for w in document["wanted"]},
        )


ForgetHook = Callable[[Subject], Awaitable["int | Dropped"]]
SettleHook = Callable[[dict[str, int]], Awaitable[None]]
_hooks: dict[str, tuple[int, ForgetHook]] = {}
_settles: dict[str, SettleHook] = {}
# The hooks run tier by tier on every worker: the stages that feed the journey stage drop the
# person (and their outputs not yet written) everywhere before the journey stage does, so no record
# of theirs reaches it after it forgot them.
FEEDING, JOURNEYS = 0, 1
TIERS = (FEEDING, JOURNEYS)


def register(name: str, hook: ForgetHook, tier: int = FEEDING) -> None:
    """Have `hook` called with each Subject forgotten (replaces one of that name), in its tier."""
    _hooks[name] = (tier, hook)


def hooks() -> dict[str, ForgetHook]:
    return {name: hook for name, (_, hook) in _hooks.items()}


def register_settle(name: str, hook: SettleHook) -> None:
    """Have `hook` called with the merged marks of every worker, before the rows are deleted."""
    _settles[name] = hook


async def run_hooks(subject: Subject, tier: int | None = None) -> StateDropped:
    """The hooks of `tier` (None: every tier, in order)."""
    dropped = StateDropped()
    for name, (at, hook) in sorted(_hooks.items(), key=lambda item: item[1][0]):
        if tier is not None and at != tier:
            continue
        answer = await hook(subject)
        if isinstance(answer, Dropped):
            dropped.counts[name] = answer.count
            dropped.marks.update(answer.marks)
            dropped.wanted |= answer.wanted
        else:
            dropped.counts[name] = answer
    return dropped


async def run_settles(marks: dict[str, int]) -> None:
    for hook in list(_settles.values()):
        await hook(marks)


@dataclass
class Erased:
    subject: Subject
    tables: dict[str, int] = field(default_factory=dict)
    state: dict[str, int] = field(default_factory=dict)

    def document(self) -> dict[str, Any]:
        return {"subject": self.subject.summary(), "tables": self.tables, "state": self.state}


def _rows(client: Client, sql: str, **parameters: Any) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in client.query(sql, parameters=parameters).result_rows]


def placeholder_refusal(kind: str) -> str:
    return (
        f"that {kind} is a placeholder (such as 0000000000, anonymous, noreply@...), not a person's: "
        "Touchline stores none, and forgetting by it would remove everyone who sent it"
    )


def resolve(client: Client, kind: str, value: str, hasher: Pseudonymiser | None) -> Subject:
    """Who `kind`=`value` is, in the store (blocking)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if is_placeholder(kind, value):  # dead letters keep raw messages: it would match every one sent with it
        raise ValueError(placeholder_refusal(kind))
    stored = hasher.value(kind, value) if hasher is not None else value
    clear = tuple(dict.fromkeys(v for v in (value, normalise(kind, value)) if v))
    return resolve_stored(client, kind, stored, clear)


def resolve_stored(client: Client, kind: str, stored: str, clear: tuple[str, ...] = ()) -> Subject:
    """Who the stored `kind`=`stored` (hashed already when pseudonymised) is, in the store (blocking)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    contacts = {
        str(r[0])
        for r in _rows(
            client,
            f"SELECT DISTINCT contact_id FROM interaction_events WHERE {kind} = {{v:String}}"
            " OR (event_type = 'identity_link' AND position(details, {q:String}) > 0)",
            v=stored,
            q=f'"{stored}"',
        )
    }
    customers: set[str] = set()
    if contacts:
        customers = {
            str(r[0])
            for r in _rows(
                client,
                "SELECT DISTINCT customer_key FROM journeys WHERE hasAny(contact_ids, {c:Array(String)})",
                c=sorted(contacts),
            )
        }
    if customers:
        for (journey_contacts,) in _rows(
            client, "SELECT contact_ids FROM journeys WHERE customer_key IN {k:Array(String)}", k=sorted(customers)
        ):
            contacts.update(str(c) for c in journey_contacts)
    identifiers: set[tuple[str, str]] = {(kind, stored)}
    if contacts:
        for row in _rows(
            client,
            "SELECT DISTINCT customer_id, phone, email, social_handle, web_cookie FROM interaction_events"
            " WHERE contact_id IN {c:Array(String)}",
            c=sorted(contacts),
        ):
            identifiers.update((k, str(v)) for k, v in zip(KINDS, row, strict=True) if v)
    return Subject(kind, stored, frozenset(contacts), frozenset(customers), frozenset(identifiers), clear)


def _conditions(subject: Subject) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per table: the WHERE clause selecting the person's rows, and its parameters."""
    contacts = sorted(subject.contact_ids)
    people = sorted(subject.customer_keys)
    by_kind = " OR ".join(f"{k} = {{i_{n}:String}}" for n, (k, _) in enumerate(sorted(subject.identifiers)))
    kind_params = {f"i_{n}": v for n, (_, v) in enumerate(sorted(subject.identifiers))}
    raw_terms = [*subject.clear, subject.value]
    raw_match = " OR ".join(f"positionCaseInsensitive(raw, {{r_{n}:String}}) > 0" for n in range(len(raw_terms)))
    raw_params: dict[str, Any] = {f"r_{n}": t for n, t in enumerate(raw_terms)}
    digits = (
        "".join(ch for ch in subject.clear[-1] if ch.isdigit()) if subject.kind == "phone" and subject.clear else ""
    )
    if len(digits) >= 7:  # a raw message may spell the number any way: compare its digits
        raw_match += " OR position(replaceRegexpAll(raw, '[^0-9]', ''), {digits:String}) > 0"
        raw_params["digits"] = digits.removeprefix("00")
    return {
        "interaction_events": (f"contact_id IN {{c:Array(String)}} OR {by_kind}", {"c": contacts, **kind_params}),
        "sla_events": ("contact_id IN {c:Array(String)}", {"c": contacts}),
        "journey_steps": (
            "contact_id IN {c:Array(String)} OR journey_id IN (SELECT journey_id FROM journeys"
            " WHERE customer_key IN {k:Array(String)} OR hasAny(contact_ids, {c:Array(String)}))",
            {"c": contacts, "k": people},
        ),
        "journeys": (
            "customer_key IN {k:Array(String)} OR hasAny(contact_ids, {c:Array(String)})",
            {"c": contacts, "k": people},
        ),
        "stage_state": ("key != '' AND key IN {c:Array(String)}", {"c": contacts}),
        "dead_letters": (f"message_key IN {{c:Array(String)}} OR {raw_match}", {"c": contacts, **raw_params}),
    }


def delete_rows(client: Client, subject: Subject) -> dict[str, int]:
    """Remove the person's rows from every table that holds them (blocking); rows removed per table.
    Mutations, waited for: when this returns, no query sees the rows."""
    existing = {str(r[0]) for r in _rows(client, "SELECT name FROM system.tables WHERE database = currentDatabase()")}
    removed: dict[str, int] = {}
    # journey_steps before journeys: its condition reads the journeys it removes
    for table, (where, parameters) in _conditions(subject).items():
        if table not in existing:
            continue
        count = int(_rows(client, f"SELECT count() FROM {table} WHERE {where}", **parameters)[0][0])
        if count:
            client.command(
                f"ALTER TABLE {table} DELETE WHERE {where}", parameters=parameters, settings={"mutations_sync": 2}
            )
        removed[table] = count
    return removed
