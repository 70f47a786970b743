"""The identity graph's keyed state: component entries written as they change, contacts hung on
their anchors, and a restore from them that equals the graph that wrote them (conflicts, refusals,
drops and erasures included), without replaying a union."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events.models import IdentifierKind
from pipeline.journeys.identity import CONTACT, RANK_OF_VALUE, IdentityConfig, IdentityGraph, Node

K = IdentifierKind
# small limits, so that unions are refused often
CONFIG = IdentityConfig(limits={K.PHONE: 1, K.EMAIL: 2, K.WEB_COOKIE: 2})
IDENTS = [
    *(("customer_id", f"C{n}") for n in range(3)),
    *(("phone", f"+1555{n}") for n in range(4)),
    ("phone", "+1 555 0"),  # the same phone as `+15550` once normalised
    *(("email", f"u{n}@x.org") for n in range(3)),
    ("email", "U0@X.org"),
    *(("web_cookie", f"ck{n}") for n in range(4)),
    ("phone", "0000"),  # blocked
]
CONTACTS = [f"k{n}" for n in range(8)]

operation = st.one_of(
    st.tuples(st.just("contact"), st.sampled_from(CONTACTS), st.lists(st.sampled_from(IDENTS), max_size=3)),
    st.tuples(st.just("link"), st.sampled_from(IDENTS), st.sampled_from(IDENTS)),
    st.tuples(st.just("drop"), st.sampled_from(CONTACTS), st.just(None)),
    st.tuples(st.just("forget"), st.sampled_from(CONTACTS), st.sampled_from(IDENTS)),
    st.tuples(st.just("forget_contact"), st.sampled_from(CONTACTS), st.just(None)),
    st.tuples(st.just("checkpoint"), st.just(""), st.just(None)),
    st.tuples(st.just("restore"), st.just(""), st.just(None)),
)


class Tables:
    """What the journey stage persists of the graph: component entries by key and, per contact
    whose record changed, its identifiers and anchor (written at the same checkpoint)."""

    def __init__(self) -> None:
        self.components: dict[Node, list[Node]] = {}
        self.contacts: dict[str, tuple[list[tuple[str, str]], Node | None]] = {}

    def checkpoint(self, graph: IdentityGraph, carried: dict[str, list[tuple[str, str]]], changed: set[str]) -> None:
        for key, members in graph.component_changes():
            if members is None:
                assert key in self.components, f"delete of {key} never written"
                del self.components[key]
            else:
                self.components[key] = list(members)
        for contact in changed:
            if graph.customer_of_contact(contact) is None:
                self.contacts.pop(contact, None)
            else:
                self.contacts[contact] = (carried[contact], graph.anchor_of(contact, carried[contact]))
        changed.clear()

    def restore(self) -> IdentityGraph:
        graph = IdentityGraph(CONFIG)
        graph.load_components(self.components.values())
        for contact, (_, anchor) in sorted(self.contacts.items()):
            assert graph.attach(contact, anchor), f"anchor of {contact} missing"
        assert graph.component_changes() == []  # a restore writes nothing
        return graph


def same(left: IdentityGraph, right: IdentityGraph) -> None:
    for contact in CONTACTS:
        assert left.customer_of_contact(contact) == right.customer_of_contact(contact), contact
        assert sorted(left.contacts_with(contact)) == sorted(right.contacts_with(contact)), contact
    for kind, value in IDENTS:
        assert left.customer_of_value(kind, value) == right.customer_of_value(kind, value), (kind, value)
    assert len(left) == len(right)


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_a_restore_from_the_tables_equals_the_graph_that_wrote_them(ops: list[tuple[str, str, object]]) -> None:
    live = IdentityGraph(CONFIG)
    shadow = IdentityGraph(CONFIG)  # the same operations, never restored
    tables = Tables()
    carried: dict[str, list[tuple[str, str]]] = {}  # contact -> identifiers carried so far (its record)
    changed: set[str] = set()
    for op, subject, arg in ops:
        if op == "contact":
            idents = list(arg)  # type: ignore[call-overload]
            record = carried.setdefault(subject, [])
            new = [i for i in idents if i not in record]
            record += new
            changed.add(subject)
            for graph in (live, shadow):
                graph.add_contact_values(subject, new)
        elif op == "link":
            left, right = subject, arg
            for graph in (live, shadow):
                graph.link_values(*left, *right)  # type: ignore[misc]
        elif op == "drop":
            gone = live.contacts_with(subject)
            for graph in (live, shadow):
                graph.drop(subject)
            changed.update(gone)
        elif op == "forget":
            for graph in (live, shadow):
                contacts, _ = graph.forget({subject}, [arg])  # type: ignore[list-item]
            changed.update(contacts)
        elif op == "forget_contact":
            for graph in (live, shadow):
                graph.forget_contact(subject)
            changed.add(subject)
        elif op == "checkpoint":
            tables.checkpoint(live, carried, changed)
        else:
            tables.checkpoint(live, carried, changed)
            restored = tables.restore()
            same(restored, live)
            live = restored  # and go on with it: it must behave as the graph it replaced
        for contact in list(carried):
            if live.customer_of_contact(contact) is None:
                carried.pop(contact)  # a record goes with its contact
    same(live, shadow)
    tables.checkpoint(live, carried, changed)
    assert {key: sorted(members) for key, members in tables.components.items()} == _entries(live)
    same(tables.restore(), shadow)


def _entries(graph: IdentityGraph) -> dict[Node, list[Node]]:
    out: dict[Node, list[Node]] = {}
    seen: set[Node] = set()
    for kind, value in IDENTS:
        key = graph.customer_of_value(kind, value)
        if key is None:
            continue
        members = [node for node in graph.members(key) if node[0] != CONTACT]
        best = min(members, key=lambda n: (RANK_OF_VALUE[n[0]], n[1]))
        if best not in seen:
            seen.add(best)
            out[best] = members
    return {key: sorted(members) for key, members in out.items()}


def test_entries_follow_merges_and_drops() -> None:
    graph = IdentityGraph()
    graph.add_contact_values("k1", [("phone", "+1555"), ("email", "a@x.org")])
    assert sorted(graph.component_changes()) == [(("phone", "+1555"), [("phone", "+1555"), ("email", "a@x.org")])]
    graph.add_contact_values("k2", [("customer_id", "C1")])
    graph.link_values("customer_id", "C1", "email", "a@x.org")
    # C1 is now the smallest identifier: its entry holds all three, the phone's entry goes
    changes = dict(graph.component_changes())
    assert changes[("phone", "+1555")] is None
    assert sorted(changes[("customer_id", "C1")] or []) == sorted(
        [("customer_id", "C1"), ("phone", "+1555"), ("email", "a@x.org")]
    )
    assert graph.anchor_of("k1", [("phone", "+1 555")]) == ("phone", "+1555")
    assert graph.component_changes() == []
    graph.add_contact_values("k3", [])  # alone: no entry, no anchor
    assert graph.component_changes() == [] and graph.anchor_of("k3", []) is None
    graph.drop("k2")
    assert graph.component_changes() == [(("customer_id", "C1"), None)]
    # made and dropped between two checkpoints: nothing to write or delete
    graph.add_contact_values("k4", [("web_cookie", "ck")])
    graph.drop("k4")
    assert graph.component_changes() == []
    # dropped, then made again under another component before the next checkpoint: its old entry goes
    graph.add_contact_values("k5", [("phone", "+1666")])
    assert graph.component_changes() == [(("phone", "+1666"), [("phone", "+1666")])]
    graph.drop("k5")
    graph.add_contact_values("k6", [("customer_id", "C9"), ("phone", "+1666")])
    assert sorted(graph.component_changes(), key=str) == [
        (("customer_id", "C9"), [("customer_id", "C9"), ("phone", "+1666")]),
        (("phone", "+1666"), None),
    ]
