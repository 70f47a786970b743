"""Identity resolution: normalisation, guards, canonical keys, merges, order independence."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import Channel, CustomerIdentifiers, Identifier, IdentifierKind, IdentityLink
from pipeline.journeys.identity import CONTACT, IdentityConfig, IdentityGraph, Merge, customer_key, key_node, normalise

K = IdentifierKind
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ident(kind: IdentifierKind, value: str) -> Identifier:
    return Identifier(kind=kind, value=value)


def test_normalisation() -> None:
    assert normalise(K.EMAIL, "  Ann.Lee@Example.COM ") == "ann.lee@example.com"
    assert normalise(K.PHONE, " +1 (555) 000-1234 ") == "+15550001234"
    assert normalise(K.PHONE, "555.000.1234") == "5550001234"
    assert normalise(K.CUSTOMER_ID, " C1 ") == "C1"
    assert normalise(K.SOCIAL_HANDLE, " twitter:@Ann ") == "twitter:@Ann"


def test_normalised_values_are_one_identifier() -> None:
    graph = IdentityGraph()
    a = graph.resolve("c1", CustomerIdentifiers(email="Ann@Example.com"))
    b = graph.resolve("c2", CustomerIdentifiers(email=" ann@example.COM"))
    assert a == b == "email:ann@example.com"


def test_blocked_values_never_link() -> None:
    graph = IdentityGraph()
    for n, phone in enumerate(["0000000000", "+000000", "  ", "anonymous", "Unknown", "NULL", "none", "0"]):
        assert graph.resolve(f"c{n}", CustomerIdentifiers(phone=phone)) == f"anon:c{n}"
    assert graph.resolve("x", [ident(K.EMAIL, "UNKNOWN"), ident(K.CUSTOMER_ID, "null")]) == "anon:x"
    assert graph.link(ident(K.PHONE, "0000000000"), ident(K.CUSTOMER_ID, "C1")).merges == ()
    assert graph.customer_of(ident(K.CUSTOMER_ID, "C1")) is None
    assert graph.blocked["phone"] >= 8


def test_configured_blocked_values() -> None:
    graph = IdentityGraph(IdentityConfig(blocked_values=frozenset({"noreply@example.com"})))
    assert graph.resolve("c1", CustomerIdentifiers(email="NoReply@example.com")) == "anon:c1"
    assert graph.resolve("c2", CustomerIdentifiers(email="ann@example.com")) == "email:ann@example.com"


def test_contact_without_identifiers_is_its_own_customer() -> None:
    graph = IdentityGraph()
    assert graph.resolve("c1", CustomerIdentifiers()) == "anon:c1"
    assert graph.resolve("c2", CustomerIdentifiers()) == "anon:c2"
    # later events of c1 with an identifier rename it (a merge: c1 has history)
    result = graph.add_contact("c1", CustomerIdentifiers(phone="+15550001"))
    assert result.customer == "phone:+15550001"
    assert result.merges == (Merge(survivor="phone:+15550001", absorbed="anon:c1"),)


def test_canonical_key_prefers_customer_id_then_smallest_identifier() -> None:
    graph = IdentityGraph()
    assert graph.resolve("c1", CustomerIdentifiers(web_cookie="ck-1", email="b@x.com")) == "email:b@x.com"
    assert graph.resolve("c2", CustomerIdentifiers(web_cookie="ck-1", phone="+1999")) == "phone:+1999"
    result = graph.link(ident(K.WEB_COOKIE, "ck-1"), ident(K.CUSTOMER_ID, "C7"))
    assert graph.customer_of_contact("c1") == graph.customer_of_contact("c2") == "cust:C7"
    assert result.merges == (Merge(survivor="cust:C7", absorbed="phone:+1999"),)


def test_merge_of_two_customers_with_history() -> None:
    graph = IdentityGraph()
    assert graph.resolve("c1", CustomerIdentifiers(customer_id="C1", phone="+1555")) == "cust:C1"
    assert graph.resolve("c2", CustomerIdentifiers(web_cookie="ck-9")) == "web_cookie:ck-9"
    result = graph.link(ident(K.WEB_COOKIE, "ck-9"), ident(K.PHONE, "+1 555"))
    assert result.merges == (Merge(survivor="cust:C1", absorbed="web_cookie:ck-9"),)
    assert result.refusals == ()
    # a link between identifiers already together changes nothing
    assert graph.link(ident(K.CUSTOMER_ID, "C1"), ident(K.WEB_COOKIE, "ck-9")).merges == ()


def test_new_contact_joining_identifiers_is_not_a_merge() -> None:
    graph = IdentityGraph()
    graph.resolve("c1", CustomerIdentifiers(customer_id="C1"))
    result = graph.add_contact("c2", CustomerIdentifiers(customer_id="C1", phone="+1555"))
    assert result.customer == "cust:C1"
    assert result.merges == ()


def test_second_customer_id_is_refused_and_counted() -> None:
    graph = IdentityGraph()
    graph.resolve("c1", CustomerIdentifiers(customer_id="C1", phone="+1555"))
    graph.resolve("c2", CustomerIdentifiers(customer_id="C2"))
    result = graph.link(ident(K.PHONE, "+1555"), ident(K.CUSTOMER_ID, "C2"))
    assert result.merges == ()
    assert [r.reason for r in result.refusals] == ["limit:customer_id"]
    assert graph.refusals["limit:customer_id"] == 1
    assert graph.customer_of_contact("c1") == "cust:C1"
    assert graph.customer_of_contact("c2") == "cust:C2"
    # a contact carrying both stays with the first (customer id ranks first) and reports the refusal
    both = graph.add_contact("c3", CustomerIdentifiers(customer_id="C2", phone="+1555"))
    assert both.customer == "cust:C2"
    assert [r.reason for r in both.refusals] == ["limit:customer_id"]


def test_per_kind_limits_default_and_configured() -> None:
    graph = IdentityGraph()
    for n in range(3):
        assert graph.link(ident(K.CUSTOMER_ID, "C1"), ident(K.PHONE, f"+1{n}")).refusals == ()
    refused = graph.link(ident(K.CUSTOMER_ID, "C1"), ident(K.PHONE, "+19"))
    assert [r.reason for r in refused.refusals] == ["limit:phone"]
    for n in range(10):
        assert graph.link(ident(K.CUSTOMER_ID, "C1"), ident(K.WEB_COOKIE, f"ck{n}")).refusals == ()
    assert graph.link(ident(K.CUSTOMER_ID, "C1"), ident(K.WEB_COOKIE, "ck10")).refusals[0].reason == "limit:web_cookie"

    strict = IdentityGraph(IdentityConfig(limits={K.EMAIL: 1}))
    strict.link(ident(K.CUSTOMER_ID, "C1"), ident(K.EMAIL, "a@x"))
    assert strict.link(ident(K.CUSTOMER_ID, "C1"), ident(K.EMAIL, "b@x")).refusals[0].reason == "limit:email"
    assert dict(strict.refusals) == {"limit:email": 1}


def test_observe_identity_link_event() -> None:
    graph = IdentityGraph()
    graph.resolve("c0", CustomerIdentifiers(customer_id="C1"))
    event = IdentityLink(
        event_id="e1",
        occurred_at=at(0),
        channel=Channel.WEB,
        contact_id="c1",
        customer=CustomerIdentifiers(web_cookie="ck-1"),
        left=ident(K.WEB_COOKIE, "ck-1"),
        right=ident(K.CUSTOMER_ID, "C1"),
    )
    result = graph.observe(event)
    assert result.customer == "cust:C1"
    assert result.merges == (Merge(survivor="cust:C1", absorbed="web_cookie:ck-1"),)


def test_snapshot_restore_round_trip() -> None:
    graph = IdentityGraph()
    graph.resolve("c1", CustomerIdentifiers(customer_id="C1", phone="+1555"))
    graph.resolve("c2", CustomerIdentifiers(web_cookie="ck-2"))
    graph.resolve("c3", CustomerIdentifiers(phone="0000000000"))
    graph.link(ident(K.PHONE, "+1555"), ident(K.CUSTOMER_ID, "C2"))  # refused
    data = json.loads(json.dumps(graph.snapshot()))
    copy = IdentityGraph.restore(data)
    for contact in ("c1", "c2", "c3"):
        assert copy.customer_of_contact(contact) == graph.customer_of_contact(contact)
    assert copy.refusals == graph.refusals
    assert copy.snapshot() == graph.snapshot()
    # history is kept: linking c2's cookie to C1 is a merge in both
    left, right = ident(K.WEB_COOKIE, "ck-2"), ident(K.CUSTOMER_ID, "C1")
    assert copy.link(left, right).merges == graph.link(left, right).merges != ()


# -------------------------------------------------------------------------------------------------
# Order independence: a world of customers, each with a few identifiers; contacts carry some of
# them, links tie pairs of them. Whatever the order, every contact ends at the same customer key.

KINDS = [K.CUSTOMER_ID, K.PHONE, K.EMAIL, K.SOCIAL_HANDLE, K.WEB_COOKIE]


def value_of(kind: IdentifierKind, customer: int, n: int) -> str:
    return f"+1555{customer}{n}" if kind == K.PHONE else f"{kind.value[0]}{customer}-{n}"


@st.composite
def worlds(draw: st.DrawFn) -> tuple[list[tuple[str, object]], dict[str, str]]:
    customers = draw(st.integers(1, 4))
    operations: list[tuple[str, object]] = []
    expected: dict[str, str] = {}
    for c in range(customers):
        has_id = draw(st.booleans())
        ids = [ident(K.CUSTOMER_ID, f"C{c}")] if has_id else []
        ids += [ident(kind, value_of(kind, c, n)) for kind in KINDS[1:] for n in range(draw(st.integers(0, 2)))]
        if not ids:
            ids = [ident(K.WEB_COOKIE, f"ck{c}")]
        # links form a spanning chain so all identifiers belong together
        order = draw(st.permutations(ids))
        for left, right in itertools.pairwise(order):
            operations.append(("link", (left, right)))
        best = min(ids, key=lambda i: (KINDS.index(i.kind), normalise(i.kind, i.value)))
        key = f"cust:{best.value}" if best.kind == K.CUSTOMER_ID else f"{best.kind.value}:{best.value}"
        for n in range(draw(st.integers(1, 3))):
            carried = draw(st.lists(st.sampled_from(ids), max_size=2, unique=True))
            contact_id = f"k{c}-{n}"
            operations.append(("contact", (contact_id, carried)))
            expected[contact_id] = key if carried else f"anon:{contact_id}"
    return operations, expected


@settings(max_examples=150, deadline=None)
@given(worlds(), st.randoms(use_true_random=False))
def test_keys_do_not_depend_on_order(
    world: tuple[list[tuple[str, object]], dict[str, str]], rnd: random.Random
) -> None:
    operations, expected = world
    for _ in range(3):
        rnd.shuffle(operations)
        graph = IdentityGraph()
        for kind, payload in operations:
            if kind == "link":
                left, right = payload  # type: ignore[misc]
                assert graph.link(left, right).refusals == ()
            else:
                contact_id, carried = payload  # type: ignore[misc]
                graph.add_contact(contact_id, carried)
        got = {contact: graph.customer_of_contact(contact) for contact in expected}
        assert got == expected


@pytest.mark.parametrize(
    "node",
    [
        ("customer_id", "C1:7"),
        ("phone", "+15550001234"),
        ("email", "a:b@example.com"),
        (CONTACT, "c-1"),
        ("web_cookie", "ck"),
    ],
)
def test_a_customer_key_names_its_best_node(node: tuple[str, str]) -> None:
    assert key_node(customer_key(*node)) == node


def test_a_key_of_no_kind_names_no_node() -> None:
    assert key_node("fax:123") is None and key_node("nokey") is None
