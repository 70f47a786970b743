"""Placeholder identifiers (`0000000000`, `anonymous`, `noreply@…`) are recognised by one definition
(`pipeline.privacy.identifiers`), stored as absent rather than as a pseudonym that looks like a
person, and never link two customers, whether or not identifiers are pseudonymised."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner
from clickhouse_connect.driver.client import Client
from hypothesis import assume, given
from hypothesis import strategies as st

from pipeline.events.models import EventBase, IdentifierKind, IdentityLink
from pipeline.ingest.decode import Policy, decode
from pipeline.journeys.identity import IdentityConfig, IdentityGraph
from pipeline.journeys.identity import normalise as journeys_normalise
from pipeline.privacy import erasure, pseudonym
from pipeline.privacy.forget_cli import forget_command
from pipeline.privacy.identifiers import PLACEHOLDER, PLACEHOLDER_WORDS, is_placeholder, normalise
from pipeline.privacy.pseudonym import Pseudonymiser, is_pseudonym
from pipeline.store.rows import EVENT_COLUMNS, event_row

KEY = b"unit-test-key-0123456789abcdef"
NOW = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
WHEN = (NOW - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
KINDS = [kind.value for kind in IdentifierKind]


@pytest.fixture(params=[True, False], ids=["pseudonymised", "clear"])
def hashing(request: pytest.FixtureRequest) -> Iterator[bool]:
    pseudonym.configure(Pseudonymiser(KEY) if request.param else None)
    yield request.param
    pseudonym.configure(None)


def decoded(body: dict[str, object], contact: str = "c-1") -> EventBase:
    value = json.dumps({"event_id": f"e-{contact}", "occurred_at": WHEN, "channel": "voice", "contact_id": contact})
    message = json.dumps({**json.loads(value), **body}).encode()
    result = decode(message, "touchline.interactions.voice", 65536, contact.encode(), now=NOW, policy=Policy())
    assert isinstance(result, EventBase), result
    return result


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("phone", "0000000000"),
        ("phone", "+0"),
        ("phone", "+000 000 0000"),
        ("phone", "00"),
        ("phone", "anonymous"),
        ("phone", "Withheld"),
        ("phone", "Private Number"),
        ("phone", " - "),
        ("phone", "+"),
        ("email", "noreply@shop.example"),
        ("email", "No-Reply@Shop.Example"),
        ("email", "unknown@example.com"),
        ("email", "someone@example.invalid"),
        ("email", "N/A"),
        ("customer_id", "NULL"),
        ("customer_id", "unknown"),
        ("social_handle", "..."),
        ("web_cookie", "undefined"),
        ("web_cookie", "not  available"),
    ],
)
def test_placeholders_are_recognised(kind: str, value: str) -> None:
    assert is_placeholder(kind, value)


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("phone", "+44 20 7946 0000"),
        ("phone", "0044 1632 960123"),
        ("phone", "+10"),
        ("email", "ann@example.com"),
        ("email", "noreply.ann@example.com"),
        ("customer_id", "C-1001"),
        ("customer_id", "00"),
        ("social_handle", "twitter:@ann"),
        ("web_cookie", "ck-7f3a"),
    ],
)
def test_real_identifiers_are_not_placeholders(kind: str, value: str) -> None:
    assert not is_placeholder(kind, value)


noise = st.sampled_from(["", " ", "-", ".", "(", ")", "/"])
zero_phones = st.builds(
    lambda prefix, parts: prefix + "".join(parts),
    st.sampled_from(["", "+", "00", " +"]),
    st.lists(st.tuples(st.just("0"), noise).map("".join), min_size=1, max_size=20),
)
words = st.builds(
    lambda word, flips, pad: pad + "".join(c.upper() if f else c for c, f in zip(word, flips, strict=False)) + pad,
    st.sampled_from(sorted(PLACEHOLDER_WORDS)),
    st.lists(st.booleans(), min_size=20, max_size=20),
    st.sampled_from(["", " ", "  ", "\t"]),
)
placeholder_phones = st.one_of(zero_phones, words)
real_phones = st.builds(
    lambda digits, nonzero: "+" + digits + nonzero,
    st.text("0123456789", max_size=12),
    st.sampled_from("123456789"),
)


@given(words, st.sampled_from(KINDS))
def test_placeholder_words_are_placeholders_of_every_kind_in_any_case(value: str, kind: str) -> None:
    assert is_placeholder(kind, value)


@given(st.one_of(placeholder_phones, real_phones, st.text(max_size=12)), st.sampled_from(KINDS))
def test_recognition_is_invariant_under_normalisation(value: str, kind: str) -> None:
    assert is_placeholder(kind, value) == is_placeholder(kind, normalise(kind, value))


@given(st.one_of(placeholder_phones, real_phones, st.text(max_size=12)), st.sampled_from(list(IdentifierKind)))
def test_every_value_the_journey_stage_blocks_is_a_placeholder(value: str, kind: IdentifierKind) -> None:
    # the journey stage keeps its own blocklist for now: it must never refuse what this lets through
    if IdentityConfig().is_blocked(kind, journeys_normalise(kind, value)):
        assert is_placeholder(kind.value, value)


@given(placeholder_phones)
def test_a_placeholder_phone_is_stored_empty_not_as_a_pseudonym(phone: str) -> None:
    for hasher in (Pseudonymiser(KEY), None):
        pseudonym.configure(hasher)
        try:
            event = decoded({"type": "contact_started", "customer": {"phone": phone, "email": "ann@example.com"}})
        finally:
            pseudonym.configure(None)
        assert event.customer.phone is None
        row = event_row(event, "touchline.interactions.voice", 0, 1, NOW)
        assert row[EVENT_COLUMNS.index("phone")] == ""
        assert (event.customer.email or "").startswith("h1:") == (hasher is not None)


@given(real_phones)
def test_a_real_phone_still_gets_its_pseudonym(phone: str) -> None:
    assume(not is_placeholder("phone", phone))
    hasher = Pseudonymiser(KEY)
    pseudonym.configure(hasher)
    try:
        event = decoded({"type": "contact_started", "customer": {"phone": phone}})
    finally:
        pseudonym.configure(None)
    assert event.customer.phone == hasher.value("phone", phone) and is_pseudonym(event.customer.phone)


def test_placeholders_never_link_two_customers(hashing: bool) -> None:
    graph = IdentityGraph()  # the journey stage's graph, without its pseudonym workaround
    for n, (phone, email) in enumerate([("withheld", "ann@example.com"), ("Withheld", "bob@example.com")]):
        contact = f"c-{n}"
        started = decoded({"type": "contact_started", "customer": {"phone": phone, "email": email}}, contact)
        graph.resolve(contact, started.customer)
        link = decoded(
            {
                "type": "identity_link",
                "left": {"kind": "phone", "value": "+0"},
                "right": {"kind": "email", "value": email},
            },
            contact,
        )
        assert isinstance(link, IdentityLink)
        assert link.left.value == PLACEHOLDER and (link.right.value.startswith("h1:") == hashing)
        graph.link(link.left, link.right)
        graph.resolve(contact, [link.left, link.right])
    assert graph.resolve("c-0", []) != graph.resolve("c-1", [])


@pytest.mark.parametrize(("kind", "value"), [("phone", "0000000000"), ("email", "noreply@shop.example")])
def test_forgetting_by_a_placeholder_is_refused(clickhouse: Client, kind: str, value: str) -> None:
    # a dead letter keeps its raw message: forgetting `0000000000` would remove everyone who sent it
    with pytest.raises(ValueError, match="placeholder"):
        erasure.resolve(clickhouse, kind, value, Pseudonymiser(KEY))
    result = CliRunner().invoke(forget_command, ["--kind", kind, "--value", value])
    assert result.exit_code == 2 and "placeholder" in result.output and "Traceback" not in result.output
