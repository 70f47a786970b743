"""The backlog index answers exactly what the definition (`backlog_at`) answers."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.kpi.backlog import WaitingLegs
from pipeline.kpi.facts import QueueLeg
from tests.support.kpi_reference import backlog_at

CHANNELS = ("voice", "chat")
QUEUES = ("q1", "q2")


@st.composite
def contact_legs(draw: st.DrawFn) -> tuple[tuple[str, QueueLeg], ...]:
    channel = draw(st.sampled_from(CHANNELS))
    legs = []
    for _ in range(draw(st.integers(0, 3))):
        queued = draw(st.integers(0, 600))
        removed = draw(st.none() | st.integers(max(0, queued - 50), 700))  # out-of-order stamps too
        how = draw(st.sampled_from(["answered_ms", "abandoned_ms", "transferred_ms", "closed_ms"]))
        fields = {how: removed} if removed is not None else {}
        legs.append((channel, QueueLeg(draw(st.sampled_from(QUEUES)), draw(st.integers(0, 1)), queued, **fields)))
    return tuple(legs)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["set", "discard", "prune"]), st.integers(0, 8), contact_legs(), st.integers(0, 700))
    ),
    st.lists(st.integers(0, 750), min_size=1, max_size=10),
)
def test_index_equals_the_definition_after_any_updates(
    steps: list[tuple[str, int, tuple[tuple[str, QueueLeg], ...], int]], instants: list[int]
) -> None:
    index = WaitingLegs()
    model: dict[str, tuple[tuple[str, QueueLeg], ...]] = {}
    for action, n, legs, horizon in steps:
        contact = f"c{n}"
        if action == "set":
            index.set(contact, legs)
            if legs:
                model[contact] = legs
            else:
                model.pop(contact, None)
        elif action == "discard":
            index.discard(contact)
            model.pop(contact, None)
        else:
            index.prune(horizon)
            for cid, kept in list(model.items()):
                kept = tuple(x for x in kept if x[1].removed_ms is None or x[1].removed_ms >= horizon)
                if kept:
                    model[cid] = kept
                else:
                    del model[cid]
    assert set(index) == set(model)
    everything = [leg for legs in model.values() for leg in legs]
    assert index.earliest_queued_ms() == min((leg.queued_ms for _, leg in everything), default=None)
    for instant in instants:
        assert index.at(instant) == backlog_at(everything, instant)
    ascending = sorted(instants)
    assert list(index.at_each(ascending)) == [backlog_at(everything, instant) for instant in ascending]


def test_a_hundred_thousand_waiting_contacts_are_counted_by_when_they_queued() -> None:
    index = WaitingLegs()
    for n in range(100_000):
        index.set(f"c{n}", (("email", QueueLeg("email.general", 0, n)),))
    assert index.at(50_000) == {("email", "email.general", 0): (50_000, 0)}
    assert index.at(0) == {}
