"""Customer identifiers are replaced by keyed pseudonyms where events are decoded: the same person
gets the same pseudonym whatever the spelling of their phone number or e-mail, nothing clear reaches
a row, the key never shows, and lookups hash with the same key."""

from __future__ import annotations

import json
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from pipeline.config import Settings
from pipeline.events.models import EventBase, IdentityLink
from pipeline.ingest.decode import Policy, decode
from pipeline.privacy import pseudonym
from pipeline.privacy.pseudonym import Pseudonymiser, is_pseudonym, load_key, normalise
from pipeline.privacy.runtime import pseudonymiser_of
from pipeline.store.rows import event_row

KEY = b"unit-test-key-0123456789abcdef"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
WHEN = (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
CLEAR = {
    "customer_id": "C-1001",
    "phone": "+44 20 7946 0000",
    "email": "Ann.Example@Example.COM",
    "social_handle": "twitter:@AnnEx",
    "web_cookie": "ck-7f3a",
}


@pytest.fixture
def active() -> Iterator[Pseudonymiser]:
    hasher = Pseudonymiser(KEY)
    pseudonym.configure(hasher)
    yield hasher
    pseudonym.configure(None)


def decoded(body: dict[str, object]) -> EventBase:
    value = json.dumps({"event_id": "e-1", "occurred_at": WHEN, "channel": "voice", "contact_id": "c-1", **body})
    result = decode(value.encode(), "touchline.interactions.voice", 65536, b"c-1", now=NOW, policy=Policy())
    assert isinstance(result, EventBase), result
    return result


@pytest.mark.parametrize(
    ("kind", "spellings"),
    [
        ("phone", ["+442079460000", "+44 20 7946 0000", "0044 (20) 7946-0000", " +44.20.7946.0000 "]),
        ("email", ["ann@example.com", "Ann@Example.COM", " ANN@EXAMPLE.COM"]),
        ("social_handle", ["twitter:@ann", "Twitter:@Ann"]),
    ],
)
def test_spellings_of_one_identifier_share_a_pseudonym(kind: str, spellings: list[str]) -> None:
    hasher = Pseudonymiser(KEY)
    assert len({normalise(kind, s) for s in spellings}) == 1
    assert len({hasher.value(kind, s) for s in spellings}) == 1


def test_pseudonyms_depend_on_key_and_kind() -> None:
    one, other = Pseudonymiser(KEY), Pseudonymiser(b"another-key-0123456789abcdef")
    assert one.value("phone", "+442079460000") != other.value("phone", "+442079460000")
    assert one.value("web_cookie", "abc") != one.value("social_handle", "abc")
    assert is_pseudonym(one.value("phone", "+442079460000"))


def test_no_clear_identifier_reaches_a_row(active: Pseudonymiser) -> None:
    event = decoded({"type": "contact_started", "customer": CLEAR})
    row = event_row(event, "touchline.interactions.voice", 0, 1, NOW)
    text = json.dumps(row, default=str)
    for kind, value in CLEAR.items():
        if kind == "customer_id":
            assert value in text  # kept unless pseudonymise_customer_id
        else:
            assert value not in text and normalise(kind, value) not in text
            assert getattr(event.customer, kind) == active.value(kind, value)


def test_the_customer_id_is_hidden_when_asked() -> None:
    pseudonym.configure(Pseudonymiser(KEY, customer_id=True))
    try:
        event = decoded({"type": "contact_started", "customer": CLEAR})
    finally:
        pseudonym.configure(None)
    assert is_pseudonym(event.customer.customer_id or "")


def test_identity_links_are_pseudonymised_like_the_identifiers_they_join(active: Pseudonymiser) -> None:
    left, right = {"kind": "phone", "value": "0044 20 7946 0000"}, {"kind": "email", "value": "ANN@example.com"}
    event = decoded({"type": "identity_link", "left": left, "right": right})
    assert isinstance(event, IdentityLink)
    assert event.left.value == active.value("phone", "+442079460000")
    assert event.right.value == active.value("email", "ann@example.com")
    assert json.loads(event.model_dump_json())["left"]["value"].startswith("h1:")


def test_lookups_hash_with_the_same_key(active: Pseudonymiser) -> None:
    hidden = active.value("phone", "+442079460000")
    assert pseudonym.lookup_value("phone", "+44 20 7946 0000") == hidden
    assert pseudonym.lookup_value("phone", hidden) == hidden  # copied from a table


def test_turned_off_identifiers_stay_clear() -> None:
    event = decoded({"type": "contact_started", "customer": CLEAR})
    assert event.customer.phone == CLEAR["phone"]
    assert pseudonymiser_of(Settings(pseudonymise=False)) is None


def test_the_key_never_shows_and_a_generated_key_file_is_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    hasher = pseudonymiser_of(settings)
    assert hasher is not None
    key_file = tmp_path / "privacy" / "pseudonym.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert hasher.key.decode() not in repr(hasher) and hasher.key.decode() not in str(hasher)
    assert pseudonymiser_of(settings) == hasher  # read back, not regenerated
    given = Settings(data_dir=tmp_path, pseudonym_key="k" * 20)
    assert "k" * 20 not in repr(given) and "k" * 20 not in str(given.model_dump())
    assert load_key(None, key_file, tmp_path / "unused") == hasher.key
