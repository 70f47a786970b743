"""The journey core's fast constructor of frozen value classes makes the instances the classes do."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from pipeline.journeys.contact import ContactSummary
from pipeline.journeys.effort import EffortInputs, effort_of, effort_score
from pipeline.journeys.frozen import builder
from pipeline.journeys.model import Emitted, JourneyStep


def test_builder_makes_equal_frozen_instances() -> None:
    args = (2, "c-1", "voice", 10, 20, None, 15, 18, "agent", True, False, False, 1, False, True, False)
    made, plain = builder(JourneyStep)(*args), JourneyStep(*args)
    assert type(made) is JourneyStep
    assert made == plain and hash(made) == hash(plain) and repr(made) == repr(plain)
    assert pickle.loads(pickle.dumps(made)) == plain
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.step = 3  # type: ignore[misc]


def test_builder_keeps_defaults_and_keywords() -> None:
    made = builder(ContactSummary)(contact_id="c-1", channel="chat", intent=None, started_at=1, last_activity_at=2)
    assert made == ContactSummary(contact_id="c-1", channel="chat", intent=None, started_at=1, last_activity_at=2)
    assert builder(Emitted)(3, False, "k", ("c-1",), "d") == Emitted(3, False, "k", ("c-1",), "d")


def test_builder_refuses_classes_it_cannot_make() -> None:
    @dataclasses.dataclass(frozen=True)
    class NoSlots:
        a: int

    with pytest.raises(TypeError):
        builder(NoSlots)


@pytest.mark.parametrize(
    "inputs",
    [
        EffortInputs(1, resolved=True),
        EffortInputs(3, 2, 1, 1, 1, 1, 90_000.5, False, None),
        EffortInputs(9, 7, 6, 5, 6, 5, 400_000.0, True, 6),
        EffortInputs(2, ces=0, elapsed_seconds=-5.0),
    ],
)
def test_effort_of_is_effort_score(inputs: EffortInputs) -> None:
    assert effort_of(*(getattr(inputs, f.name) for f in dataclasses.fields(inputs))) == effort_score(inputs)
