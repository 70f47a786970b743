"""The fast constructor of frozen value classes makes the instances the classes do."""

from __future__ import annotations

import dataclasses
import pickle

import pytest

from pipeline.frozen import builder
from pipeline.journeys.contact import ContactSummary
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
