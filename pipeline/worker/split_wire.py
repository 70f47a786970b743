"""Wire and state formats of the split journey stage (`pipeline.journeys.split`), for its Faust shell.

* **Messages** on `touchline.journey-builds`: one JSON object each, `{"v": 1, "t": <type>, "s":
  <stamp or null>, ...}`; types `f` Filed, `n` Renamed, `e` Expect, `h` HandOver, `k` TakeOver, `t`
  Tick, `x` Forget. A `Filed` carries the record line as the analytics stage forwarded it, spliced
  in unparsed (the resolver never parses records), beside its arrival seq (`with_seq` on reading).
* **Packs**: a Kafka message on that topic carries one or more messages, one per line (a message's
  JSON holds no newline): the resolver packs what one input message sends one builder, since a
  Faust agent's per-message cost made one Kafka message per contact record the builders' limit.
* **State entries**: compact JSON per entry. A builder's contact is `["<customer>", <record>]` with
  the record's JSON spliced in and sliced out again as bytes (`Builder.from_state` parses it).
* **The journal.** A checkpoint must land whole (`ResolverChanges`, `BuilderChanges`): the shell
  writes its changes first as a journal, then the offset, then the keyed entries, and a restore
  applies a whole journal tagged with the stored offset over the keyed entries. A journal is cut
  into chunks under a message's size (keys `journal_key(i)`), each a header line (offset, index,
  count, the journal's CRC-32) and one entry per line, so a reader tells a whole journal from one
  cut short, mixed with another's chunks or left over from an older one.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable
from sys import intern
from typing import Any, TypeVar, assert_never

from pydantic_core import from_json as parse_json
from pydantic_core import to_json as encode_json

from pipeline.journeys.identity import Node
from pipeline.journeys.model import Emitted
from pipeline.journeys.record import ContactRecord, Link, RecordError
from pipeline.journeys.split import (
    BuilderChanges,
    ContactEntry,
    CustomerEntry,
    Expect,
    Filed,
    FiledContact,
    Forget,
    HandOver,
    Message,
    Renamed,
    ResolverChanges,
    Stamp,
    TakeOver,
    Tick,
)

WIRE_VERSION = 1
JOURNAL_LIMIT = 900_000  # a chunk's value, under the producer's 1 MB request with its key and headers
PACK_LIMIT = 512 * 1024  # a pack of the resolver's messages to one builder (`packs`)

T = TypeVar("T")

_MALFORMED = (KeyError, TypeError, ValueError, IndexError, AttributeError)
# a JSON string literal (unrolled: matching is linear, even on garbage)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)


class WireError(ValueError):
    """An unreadable split-stage message or state entry (its reason in the text, never the value)."""


# ---------------------------------------------------------------------------------------- reading


def _str(value: Any) -> str:
    return intern(value)  # refuses anything but a str (TypeError): a malformed entry


def _int(value: Any) -> int:
    if type(value) is not int:  # not a bool either
        raise TypeError("not an integer")
    return value


def _opt_int(value: Any) -> int | None:
    return None if value is None else _int(value)


def _node(value: Any) -> Node:
    kind, node = value
    return (intern(kind), intern(node))


def _link(value: Any) -> Link:
    a, b, c, d = value
    return (intern(a), intern(b), intern(c), intern(d))


def _stamp(value: Any) -> Stamp | None:
    if value is None:
        return None
    offset, place = value
    return (_int(offset), _int(place))


def _is_version(value: Any) -> bool:
    return type(value) is int and value == WIRE_VERSION


def _decoded(what: str, value: bytes, read: Callable[[Any], T]) -> T:
    """`read` of the JSON `value`; WireError naming `what` when it is not JSON or not its shape."""
    try:
        data = parse_json(value, cache_strings=False)
    except ValueError:
        raise WireError(f"{what} is not JSON") from None
    try:
        return read(data)
    except RecordError as error:
        reason = "unsupported version" if "version" in str(error) else str(error)  # that one quotes the value
        raise WireError(f"{what} with an unreadable record: {reason}") from None
    except _MALFORMED as error:
        raise WireError(f"malformed {what}: {type(error).__name__}") from None


def _string_at(value: bytes, at: int) -> tuple[str, int]:
    """The JSON string literal starting at `value[at]`, and where it ends."""
    found = _STRING.match(value, at)
    if found is None:
        raise ValueError("no string")
    return _str(parse_json(found.group(), cache_strings=False)), found.end()


def _spliced(head: bytes, name: bytes, raw: bytes) -> bytes:
    """The JSON object `head` with the field `name` set to the JSON `raw`, not parsed."""
    return b"".join((head[:-1], b',"', name, b'":', raw, b"}"))


# --------------------------------------------------------------------------------------- messages


def _filed(stamp: Stamp | None, customer: str, line: bytes, seq: int, as_of_ms: int) -> bytes:
    head = encode_json({"v": WIRE_VERSION, "t": "f", "s": stamp, "c": customer, "a": as_of_ms, "q": seq})
    return _spliced(head, b"r", line)


def encode_filed(stamp: Stamp, customer: str, line: bytes, seq: int, as_of_ms: int) -> bytes:
    """A `Filed` of a record's JSON line as the analytics stage forwarded it (`ContactRecord.to_json`),
    spliced in unparsed; `seq`: its arrival order (`arrival_seq`), stamped on it when read."""
    return _filed(stamp, customer, line, seq, as_of_ms)


def encode_message(stamp: Stamp | None, message: Message) -> bytes:
    """Any message of the split stage; a `Filed` as `encode_filed` of its record and seq."""
    if isinstance(message, Filed):
        record = message.record
        return _filed(stamp, message.customer, record.to_json(), record.seq, message.as_of_ms)
    head: dict[str, Any] = {"v": WIRE_VERSION, "s": stamp}
    if isinstance(message, Tick):
        head.update(t="t", a=message.as_of_ms)
    elif isinstance(message, Renamed):
        head.update(t="n", ab=message.absorbed, sv=message.survivor)
    elif isinstance(message, Expect):
        head.update(t="e", c=message.customer, ref=message.ref, a=message.as_of_ms)
    elif isinstance(message, HandOver):
        head.update(t="h", ab=message.absorbed, sv=message.survivor, to=message.to, ref=message.ref)
    elif isinstance(message, Forget):
        head.update(t="x", cu=sorted(message.customers), co=sorted(message.contacts))
    elif isinstance(message, TakeOver):
        head.update(
            t="k",
            c=message.customer,
            ref=message.ref,
            ps=sorted(message.passes),
            tm=message.times,
            em=[(journey_id, entry.to_dict()) for journey_id, entry in message.emitted],
        )
        records = b",".join([record.to_json() for record in message.records])
        return _spliced(encode_json(head), b"r", b"[" + records + b"]")
    else:
        assert_never(message)
    return encode_json(head)


def _read_filed(data: dict[str, Any]) -> Message:
    record = ContactRecord.from_dict(data["r"]).with_seq(_int(data["q"]))
    return Filed(_str(data["c"]), record, _int(data["a"]))


def _read_take_over(data: dict[str, Any]) -> Message:
    return TakeOver(
        _str(data["c"]),
        tuple(ContactRecord.from_dict(record) for record in data["r"]),
        tuple((_str(journey_id), Emitted.from_dict(entry)) for journey_id, entry in data["em"]),
        _str(data["ref"]),
        frozenset(_str(ref) for ref in data["ps"]),
        tuple((_str(ref), _int(at)) for ref, at in data["tm"]),
    )


_MESSAGES: dict[str, Callable[[dict[str, Any]], Message]] = {
    "f": _read_filed,
    "t": lambda d: Tick(_int(d["a"])),
    "n": lambda d: Renamed(_str(d["ab"]), _str(d["sv"])),
    "e": lambda d: Expect(_str(d["c"]), _str(d["ref"]), _int(d["a"])),
    "h": lambda d: HandOver(_str(d["ab"]), _str(d["sv"]), _int(d["to"]), _str(d["ref"])),
    "x": lambda d: Forget(frozenset(map(_str, d["cu"])), frozenset(map(_str, d["co"]))),
    "k": _read_take_over,
}


def _message(data: Any) -> tuple[Stamp | None, Message]:
    if not isinstance(data, dict) or not _is_version(data.get("v")):
        raise ValueError("unknown version")
    tag = data.get("t")
    read = _MESSAGES.get(tag) if isinstance(tag, str) else None
    if read is None:
        raise ValueError("unknown type")
    return _stamp(data.get("s")), read(data)


def packs(frames: list[bytes], limit: int = PACK_LIMIT) -> list[bytes]:
    """`frames` (encoded messages, in order) as Kafka message values of up to `limit` bytes each
    (a frame larger than that alone); `frames_of` reads them back."""
    out: list[bytes] = []
    start = size = 0
    for i, frame in enumerate(frames):
        if i > start and size + len(frame) > limit:
            out.append(b"\n".join(frames[start:i]))
            start, size = i, 0
        size += len(frame) + 1
    if start < len(frames):
        out.append(b"\n".join(frames[start:]))
    return out


def frames_of(value: bytes) -> list[bytes]:
    """The encoded messages of one Kafka message value (`packs`)."""
    return value.split(b"\n")


def decode_message(value: bytes) -> tuple[Stamp | None, Message]:
    """A message and its stamp; a `Filed`'s record stamped with its seq. Raises WireError."""
    return _decoded("split-stage message", value, _message)


# ------------------------------------------------------------------------------------ state entries


def _customer_form(entry: CustomerEntry) -> list[Any]:
    return [entry.builder, entry.newest_ms, entry.links]


def _customer(data: Any) -> CustomerEntry:
    builder, newest_ms, links = data
    return CustomerEntry(_opt_int(builder), _int(newest_ms), tuple(_link(link) for link in links))


def customer_value(entry: CustomerEntry) -> bytes:
    """`[builder or null, newest ms, [[kind, value, kind, value], ...]]`"""
    return encode_json(_customer_form(entry))


def customer_entry(value: bytes) -> CustomerEntry:
    return _decoded("customer entry", value, _customer)


def _contact_form(entry: ContactEntry) -> list[Any]:
    return [entry.newest_ms, entry.anchor]


def _contact(data: Any) -> ContactEntry:
    newest_ms, anchor = data
    return ContactEntry(_int(newest_ms), None if anchor is None else _node(anchor))


def contact_value(entry: ContactEntry) -> bytes:
    """`[newest ms, [kind, value] or null]`"""
    return encode_json(_contact_form(entry))


def contact_entry(value: bytes) -> ContactEntry:
    return _decoded("contact entry", value, _contact)


def _components(data: Any) -> list[Node]:
    return [_node(member) for member in data]


def filed_value(entry: FiledContact) -> bytes:
    """`["<customer>", <record>]`, the record's bytes (`ContactRecord.to_json`) spliced in."""
    return b"".join((encode_json([entry.customer])[:-1], b",", entry.record, b"]"))


def filed_entry(value: bytes) -> FiledContact:
    """A builder's contact; its record's bytes sliced out, not parsed (`Builder.from_state` does)."""
    try:
        if value[:1] != b"[":
            raise ValueError("not a list")
        customer, end = _string_at(value, 1)
        record = value[end + 1 : -1]
        if value[end : end + 1] != b"," or value[-1:] != b"]" or record[:1] != b"{" or record[-1:] != b"}":
            raise ValueError("no record")
    except ValueError:
        raise WireError("malformed filed contact entry") from None
    return FiledContact(customer, record)


def meta_value(offset: int, version_base: int, meta: dict[str, Any]) -> bytes:
    """A builder's offset entry: the input offset its state has applied, its version base and its
    `BuilderChanges.meta`, written whole."""
    return encode_json({"o": offset, "b": version_base, "m": meta})


def _meta(data: Any) -> tuple[int, int, dict[str, Any]]:
    meta = data["m"]
    if not isinstance(meta, dict):
        raise TypeError("meta is not an object")
    return _int(data["o"]), _int(data["b"]), meta


def meta_entry(value: bytes) -> tuple[int, int, dict[str, Any]]:
    """(offset, version base, meta); the meta as `Builder.from_state` takes it."""
    return _decoded("builder offset entry", value, _meta)


def resolver_offset_value(offset: int, as_of_ms: int, hand_overs: int) -> bytes:
    """The resolver's offset entry: `[offset, as_of ms, hand-overs named]`."""
    return encode_json([offset, as_of_ms, hand_overs])


def _resolver_offset(data: Any) -> tuple[int, int, int]:
    offset, as_of_ms, hand_overs = data
    return _int(offset), _int(as_of_ms), _int(hand_overs)


def resolver_offset_entry(value: bytes) -> tuple[int, int, int]:
    """(offset, as_of ms, hand-overs named)"""
    return _decoded("resolver offset entry", value, _resolver_offset)


# ----------------------------------------------------------------------------------------- journal


def journal_key(index: int) -> bytes:
    """The key of a journal's chunk `index` (no id starts with a NUL)."""
    return b"\x00journal/%d" % index


def _header(kind: str, offset: int, index: int, count: int, digest: int, fixed: dict[str, int]) -> bytes:
    return encode_json({"v": WIRE_VERSION, "j": kind, "o": offset, "i": index, "n": count, "d": digest, **fixed})


def _fixed_digest(kind: str, offset: int, fixed: dict[str, int]) -> int:
    return zlib.crc32(encode_json([kind, offset, sorted(fixed.items())]))


def _journal(kind: str, offset: int, fixed: dict[str, int], lines: list[bytes], limit: int) -> list[bytes]:
    """`lines` (no newline in any) cut into chunks of at most `limit` bytes, each behind a header."""
    most = max(len(lines), 1)  # a header's index and count have at most this many digits
    room = len(_header(kind, offset, most, most, 0xFFFFFFFF, fixed))
    runs: list[list[bytes]] = []
    run: list[bytes] = []
    size = room
    for line in lines:
        if run and size + 1 + len(line) > limit:
            runs.append(run)
            run, size = [], room
        run.append(line)
        size += 1 + len(line)
    if run or not runs:
        runs.append(run)
    bodies = [b"\n".join(run) for run in runs]
    digest = _fixed_digest(kind, offset, fixed)
    for body in bodies:
        digest = zlib.crc32(body, digest)
    return [
        _header(kind, offset, index, len(bodies), digest, fixed) + (b"\n" + body if body else b"")
        for index, body in enumerate(bodies)
    ]


def _journal_lines(values: list[bytes], kind: str) -> tuple[dict[str, Any], list[bytes]] | None:
    """The header of a whole journal's first chunk and its entry lines, None if `values` (chunks in
    index order) hold no whole journal: one cut short, or chunks of two journals. Chunks past the
    journal's count are left over from an older, longer one, and ignored."""
    first: dict[str, Any] | None = None
    lines: list[bytes] = []
    digest = 0
    for index, value in enumerate(values):
        head, _, body = value.partition(b"\n")
        header = parse_json(head, cache_strings=False)
        if not isinstance(header, dict) or not _is_version(header.get("v")) or header.get("j") != kind:
            return None
        if header.get("i") != index:
            return None
        if first is None:
            first = header
            fixed = {name: _int(n) for name, n in header.items() if name not in ("v", "j", "o", "i", "n", "d")}
            digest = _fixed_digest(kind, _int(header["o"]), fixed)
        elif {**header, "i": 0} != first:
            return None
        digest = zlib.crc32(body, digest)
        if body:
            lines += body.split(b"\n")
        if index + 1 == _int(first["n"]):
            return (first, lines) if digest == first["d"] else None
    return None


def _resolver_line(kind: str, key: str | Node, value: Any) -> bytes:
    return encode_json([kind, key, value])


def resolver_journal(offset: int, changes: ResolverChanges, limit: int = JOURNAL_LIMIT) -> list[bytes]:
    """The values of the journal chunks of the resolver's checkpoint at `offset` (keys `journal_key`),
    each at most `limit` bytes unless it holds a single larger entry."""
    lines = [_resolver_line("u", k, None if e is None else _customer_form(e)) for k, e in changes.customers]
    lines += [_resolver_line("p", node, members) for node, members in changes.components]
    lines += [_resolver_line("c", k, None if e is None else _contact_form(e)) for k, e in changes.contacts]
    fixed = {"a": changes.as_of_ms, "h": changes.hand_overs}
    return _journal("r", offset, fixed, lines, limit)


def read_resolver_journal(values: list[bytes]) -> tuple[int, ResolverChanges] | None:
    """(offset, changes) of the resolver journal whose chunks `values` are (in index order), None
    when they are not one whole journal."""
    try:
        found = _journal_lines(values, "r")
        if found is None:
            return None
        header, lines = found
        changes = ResolverChanges([], [], [], _int(header["a"]), _int(header["h"]))
        for line in lines:
            kind, key, value = parse_json(line, cache_strings=False)
            if kind == "u":
                changes.customers.append((_str(key), None if value is None else _customer(value)))
            elif kind == "p":
                changes.components.append((_node(key), None if value is None else _components(value)))
            elif kind == "c":
                changes.contacts.append((_str(key), None if value is None else _contact(value)))
            else:
                return None
        return _int(header["o"]), changes
    except _MALFORMED:  # WireError and RecordError among them
        return None


def _contact_line(contact_id: str, entry: FiledContact | None) -> bytes:
    if entry is None:
        return encode_json(["c", contact_id, None])
    filed = filed_value(entry)
    if b"\n" in filed:  # outside JSON strings (where it is invalid), a newline is whitespace
        filed = filed.replace(b"\n", b" ")
    return b"".join((encode_json(["c", contact_id])[:-1], b",", filed, b"]"))


def _read_contact_line(line: bytes) -> tuple[str, FiledContact | None]:
    contact_id, end = _string_at(line, 5)
    if line[end : end + 1] != b"," or line[-1:] != b"]":
        raise ValueError("malformed contact line")
    rest = line[end + 1 : -1]
    return contact_id, None if rest == b"null" else filed_entry(rest)


def builder_journal(offset: int, version_base: int, changes: BuilderChanges, limit: int = JOURNAL_LIMIT) -> list[bytes]:
    """The values of the journal chunks of a builder's checkpoint at `offset` (keys `journal_key`),
    each at most `limit` bytes unless it holds a single larger entry; records spliced, not parsed."""
    lines = [_contact_line(contact_id, entry) for contact_id, entry in changes.contacts]
    lines += [encode_json(["e", k, None if e is None else e.to_dict()]) for k, e in changes.emitted]
    lines.append(encode_json(["m", changes.meta]))
    return _journal("b", offset, {"b": version_base}, lines, limit)


def read_builder_journal(values: list[bytes]) -> tuple[int, int, BuilderChanges] | None:
    """(offset, version base, changes) of the builder journal whose chunks `values` are (in index
    order), None when they are not one whole journal."""
    try:
        found = _journal_lines(values, "b")
        if found is None:
            return None
        header, lines = found
        contacts: list[tuple[str, FiledContact | None]] = []
        emitted: list[tuple[str, Emitted | None]] = []
        meta: dict[str, Any] | None = None
        for line in lines:
            if line.startswith(b'["c",'):
                contacts.append(_read_contact_line(line))
                continue
            kind, *rest = parse_json(line, cache_strings=False)
            if kind == "e":
                journey_id, entry = rest
                emitted.append((_str(journey_id), None if entry is None else Emitted.from_dict(entry)))
            elif kind == "m" and meta is None and isinstance(rest[0], dict):
                (meta,) = rest
            else:
                return None
        if meta is None:
            return None
        return _int(header["o"]), _int(header["b"]), BuilderChanges(contacts, emitted, meta)
    except _MALFORMED:
        return None
