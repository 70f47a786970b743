"""Pseudonymous customer identifiers: keyed HMAC-SHA256 of the normalised value, so the same person
gets the same pseudonym on every channel and in every store, nobody without the key can reverse it
or test a guess, and stitching works unchanged (equal values stay equal, different stay different).

Applied once, where events are decoded (`pipeline.ingest.decode`), so nothing after it (ClickHouse
rows, stage state and checkpoints, output topics, logs) sees a clear identifier.

A pseudonym is `h1:` and 32 hex digits (128 bits of the HMAC: collisions need ~2^64 people). The
prefix says which key generation made it and lets a lookup by a value copied from a table work."""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path
from typing import Any

from pipeline.events.models import EventBase, IdentifierKind
from pipeline.privacy.identifiers import PLACEHOLDER, is_placeholder, normalise

__all__ = ["normalise"]  # where the stages and tests have always found it

PREFIX = "h1:"
_PSEUDONYM = re.compile(r"^h1:[0-9a-f]{32}$")
KINDS = tuple(kind.value for kind in IdentifierKind)


def is_pseudonym(value: str) -> bool:
    return bool(_PSEUDONYM.match(value))


class Pseudonymiser:
    """Hashes identifiers with one key. Recent results are cached (identifiers repeat: a customer's
    every event carries them), at most CACHE_SIZE of them."""

    CACHE_SIZE = 200_000

    def __init__(self, key: bytes, customer_id: bool = False) -> None:
        self.key = key
        self.customer_id = customer_id  # the company's own id is often needed in clear by its other systems
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.value = functools.lru_cache(maxsize=self.CACHE_SIZE)(self._value)  # type: ignore[method-assign]

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymiser(customer_id={self.customer_id})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pseudonymiser) and (other.key, other.customer_id) == (self.key, self.customer_id)

    def __hash__(self) -> int:
        return hash((self.key, self.customer_id))

    def hides(self, kind: str) -> bool:
        return kind != "customer_id" or self.customer_id

    def value(self, kind: str, value: str) -> str:
        return self._value(kind, value)

    def _value(self, kind: str, value: str) -> str:
        if not self.hides(kind):
            return value
        mac = self._mac.copy()
        mac.update(f"{kind}\x00{normalise(kind, value)}".encode())
        return PREFIX + mac.hexdigest()[:32]

    def lookup(self, kind: str, value: str) -> str:
        """What to look up for a value an agent types in (or copies from a table: kept)."""
        return value if is_pseudonym(value) else self.value(kind, value)

    def event(self, event: EventBase) -> EventBase:
        """The event with its identifiers hashed and placeholders dropped (see `without_placeholders`),
        in place: a freshly decoded event and its parts are nobody else's yet, and building new
        models would cost more than the hashing (8 us for a CustomerIdentifiers by model_construct,
        0.3 us for a cached hash)."""
        fields = event.__dict__
        ids: dict[str, Any] = fields["customer"].__dict__
        for kind, given in ids.items():
            if given is not None:
                ids[kind] = self.customer_identifier(kind, given)
        if fields.get("type") == "identity_link":
            for side in ("left", "right"):
                ident: dict[str, Any] = fields[side].__dict__
                ident["value"] = self.link_identifier(ident["kind"].value, ident["value"])
        return event

    def customer_identifier(self, kind: str, given: str) -> str | None:
        """A customer identifier as stored: None for a placeholder, else hashed."""
        return None if is_placeholder(kind, given) else self.value(kind, given)

    def link_identifier(self, kind: str, given: str) -> str:
        """A side of an identity link as stored: `PLACEHOLDER` for a placeholder, else hashed."""
        return PLACEHOLDER if is_placeholder(kind, given) else self.value(kind, given)


def without_placeholders(event: EventBase) -> EventBase:
    """The event with its placeholder identifiers dropped, in place (see `pipeline.privacy.identifiers`):
    an absent customer identifier, `PLACEHOLDER` on a side of an identity link."""
    fields = event.__dict__
    ids: dict[str, Any] = fields["customer"].__dict__
    for kind, given in ids.items():
        if given is not None:
            ids[kind] = _clear_customer_identifier(kind, given)
    if fields.get("type") == "identity_link":
        for side in ("left", "right"):
            ident: dict[str, Any] = fields[side].__dict__
            ident["value"] = _clear_link_identifier(ident["kind"].value, ident["value"])
    return event


def _clear_customer_identifier(kind: str, given: str) -> str | None:
    return None if is_placeholder(kind, given) else given


def _clear_link_identifier(kind: str, given: str) -> str:
    return PLACEHOLDER if is_placeholder(kind, given) else given


_active: Pseudonymiser | None = None


def configure(pseudonymiser: Pseudonymiser | None) -> None:
    global _active
    _active = pseudonymiser


def active() -> Pseudonymiser | None:
    return _active


def apply(event: EventBase) -> EventBase:
    """Placeholders dropped, and identifiers hashed when pseudonymisation is on."""
    current = _active
    return current.event(event) if current is not None else without_placeholders(event)


def customer_identifier(kind: str, given: str | None) -> str | None:
    """A decoded event's customer identifier as stored (what `apply` makes of it), None if absent."""
    if given is None:
        return None
    current = _active
    return current.customer_identifier(kind, given) if current is not None else _clear_customer_identifier(kind, given)


def link_identifier(kind: str, given: str) -> str:
    """A side of a decoded identity link as stored (what `apply` makes of it)."""
    current = _active
    return current.link_identifier(kind, given) if current is not None else _clear_link_identifier(kind, given)


def lookup_value(kind: str, value: str) -> str:
    current = _active
    return current.lookup(kind, value) if current is not None else value


def load_key(key: str | None, key_file: Path | None, default_file: Path) -> bytes:
    """The key: given, else read from `key_file`, else from `default_file`, created (32 random
    bytes, hex, mode 0600) when missing. Workers that share topics must share the key."""
    if key is not None:
        return key.encode()
    path = key_file or default_file
    if key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write(secrets.token_hex(32) + "\n")
    text = path.read_text().strip()
    if len(text) < 16:
        raise ValueError(f"the pseudonymisation key in {path} is shorter than 16 characters")
    return text.encode()
