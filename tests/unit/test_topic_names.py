"""The topic prefix setting: Kafka-legal prefixes only, with a readable error; every name derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings
from pipeline.events.models import Channel
from pipeline.events.topics import MAX_PREFIX_LENGTH, TopicNames


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no touchline.toml
    monkeypatch.delenv("TOUCHLINE_CONFIG", raising=False)
    monkeypatch.delenv("TOUCHLINE_TOPIC_PREFIX", raising=False)
    monkeypatch.delenv("TOUCHLINE_APP_ID", raising=False)


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("acme touchline", "only letters, digits, '.', '_' and '-' (not ' ')"),
        ("acme/tl", "(not '/')"),
        ("bäckerei", "(not 'ä')"),
        ("", "must not be empty"),
        ("acme.", "must not start or end with '.'"),
        (".acme", "must not start or end with '.'"),
        ("a" * (MAX_PREFIX_LENGTH + 1), f"at most {MAX_PREFIX_LENGTH} characters"),
    ],
)
def test_an_illegal_prefix_is_refused_readably(monkeypatch: pytest.MonkeyPatch, prefix: str, says: str) -> None:
    monkeypatch.setenv("TOUCHLINE_TOPIC_PREFIX", prefix)
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    assert "topic_prefix / TOUCHLINE_TOPIC_PREFIX" in message
    assert says in message


def test_the_longest_name_of_the_longest_prefix_is_legal() -> None:
    names = TopicNames("a" * MAX_PREFIX_LENGTH)
    longest = max([*names.specs(1), f"{names.prefix}-journey-contacts-changelog"], key=len)
    assert len(longest) <= 249


def test_every_name_carries_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOUCHLINE_TOPIC_PREFIX", "acme.cc-1")
    settings = load_settings()
    names = settings.topics
    assert names.interaction(Channel.VOICE) == "acme.cc-1.interactions.voice"
    assert (names.deadletter, names.late, names.sla) == ("acme.cc-1.deadletter", "acme.cc-1.late", "acme.cc-1.sla")
    assert (names.journey_events, names.journeys) == ("acme.cc-1.journey-events", "acme.cc-1.journeys")
    specs = names.specs(3)
    assert len(specs) == len(Channel) + 5
    assert all(topic.startswith("acme.cc-1.") for topic in specs)
    assert names.channel_of("acme.cc-1.interactions.chat") is Channel.CHAT
    assert names.channel_of("touchline.interactions.chat") is None  # another deployment's topic
    # consumer groups and Faust's internal topics follow the prefix unless the app id is set
    assert settings.app_id == "acme.cc-1"
    monkeypatch.setenv("TOUCHLINE_APP_ID", "cc-workers")
    assert load_settings().app_id == "cc-workers"


def test_defaults_are_unchanged() -> None:
    settings = load_settings()
    assert settings.topic_prefix == "touchline" and settings.app_id == "touchline"
    assert settings.topics.interaction("sms") == "touchline.interactions.sms"


def test_a_recorded_topic_names_its_own_prefix() -> None:
    assert TopicNames.of_interaction_topic("acme.interactions.web") == TopicNames("acme")
    assert TopicNames.of_interaction_topic("acme.interactions.fax") is None
    assert TopicNames.of_interaction_topic("acme.sla") is None
