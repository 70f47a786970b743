"""Pseudonymous customer identifiers: keyed HMAC-SHA256 of the normalised value, so the same person
gets the same pseudonym on every channel and in every store, nobody without the key can reverse it
or test a guess, and stitching works unchanged (equal values stay equal, different stay different).

Applied once, where events are decoded (`pipeline.ingest.decode`), so nothing after it (ClickHouse
rows, stage state and checkpoints, output topics, logs) sees a clear identifier.

A pseudonym is `h1:` and 32 hex digits (128 bits of the HMAC: collisions need ~2^64 people). The
prefix says which key generation made it and lets a lookup by a value copied from a table work."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.events.models import CustomerIdentifiers, EventBase, Identifier, IdentifierKind

PREFIX = "h1:"
_PSEUDONYM = re.compile(r"^h1:[0-9a-f]{32}$")
_PHONE_NOISE = re.compile(r"[\s\-.()/]")
KINDS = tuple(kind.value for kind in IdentifierKind)


def normalise(kind: str, value: str) -> str:
    """The form that is hashed: phone numbers in E.164 (`+` and digits; a leading 00 is the
    international prefix), e-mail addresses and social handles lower-cased, others as given."""
    value = value.strip()
    if kind == "phone":
        digits = _PHONE_NOISE.sub("", value)
        if digits.startswith("00"):
            digits = "+" + digits[2:]
        return digits
    if kind in ("email", "social_handle"):
        return value.lower()
    return value


def is_pseudonym(value: str) -> bool:
    return bool(_PSEUDONYM.match(value))


@dataclass(frozen=True)
class Pseudonymiser:
    key: bytes
    customer_id: bool = False  # the company's own id is often needed in clear by its other systems

    def __repr__(self) -> str:  # never show the key
        return f"Pseudonymiser(customer_id={self.customer_id})"

    def hides(self, kind: str) -> bool:
        return kind != "customer_id" or self.customer_id

    def value(self, kind: str, value: str) -> str:
        if not self.hides(kind):
            return value
        message = f"{kind}\x00{normalise(kind, value)}".encode()
        return PREFIX + hmac.new(self.key, message, hashlib.sha256).hexdigest()[:32]

    def lookup(self, kind: str, value: str) -> str:
        """What to look up for a value an agent types in (or copies from a table: kept)."""
        return value if is_pseudonym(value) else self.value(kind, value)

    def event(self, event: EventBase) -> EventBase:
        ids: dict[str, Any] = event.customer.__dict__
        update: dict[str, Any] = {}
        if any(v is not None for v in ids.values()):
            hidden: dict[str, Any] = {k: (self.value(k, v) if v is not None else None) for k, v in ids.items()}
            update["customer"] = CustomerIdentifiers.model_construct(**hidden)
        if getattr(event, "type", None) == "identity_link":
            for side in ("left", "right"):
                ident: Identifier = getattr(event, side)
                update[side] = Identifier.model_construct(
                    kind=ident.kind, value=self.value(ident.kind.value, ident.value)
                )
        return event.model_copy(update=update) if update else event


_active: Pseudonymiser | None = None


def configure(pseudonymiser: Pseudonymiser | None) -> None:
    global _active
    _active = pseudonymiser


def active() -> Pseudonymiser | None:
    return _active


def apply(event: EventBase) -> EventBase:
    current = _active
    return current.event(event) if current is not None else event


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
