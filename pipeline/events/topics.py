"""Kafka topic names. One topic per channel; every other topic is named here too."""

from __future__ import annotations

from pipeline.events.models import Channel

INTERACTIONS_PREFIX = "touchline.interactions."
DEADLETTER_TOPIC = "touchline.deadletter"
LATE_TOPIC = "touchline.late"
SLA_TOPIC = "touchline.sla"
# Valid events re-published in batches (newline-separated canonical JSON) for journey stitching.
# One partition: the identity graph is global, and exactly one worker owns it at a time.
JOURNEY_EVENTS_TOPIC = "touchline.journey-events"
JOURNEYS_TOPIC = "touchline.journeys"


def interaction_topic(channel: Channel | str) -> str:
    return f"{INTERACTIONS_PREFIX}{Channel(channel).value}"


INTERACTION_TOPICS: dict[Channel, str] = {c: interaction_topic(c) for c in Channel}


_CHANNEL_OF_TOPIC: dict[str, Channel] = {topic: channel for channel, topic in INTERACTION_TOPICS.items()}


def channel_of_topic(topic: str) -> Channel | None:
    """The channel a topic carries, or None when the topic is not a channel topic."""
    return _CHANNEL_OF_TOPIC.get(topic)


def topic_specs(channel_partitions: int) -> dict[str, int]:
    """Every topic Touchline needs, with its partition count. Created idempotently at start."""
    specs = {topic: channel_partitions for topic in INTERACTION_TOPICS.values()}
    specs[DEADLETTER_TOPIC] = 1
    specs[LATE_TOPIC] = 1
    specs[SLA_TOPIC] = channel_partitions
    specs[JOURNEY_EVENTS_TOPIC] = 1
    specs[JOURNEYS_TOPIC] = channel_partitions
    return specs
