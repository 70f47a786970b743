"""Kafka topic names. One topic per channel; every other topic is named here too.

Every name starts with a configurable prefix (setting `topic_prefix`, default `touchline`), so
several deployments can share a cluster. The running code takes its names from one `TopicNames`
value (`Settings.topics`); the module-level names below are those of the default prefix (tests,
examples)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from pipeline.events.models import Channel

DEFAULT_PREFIX = "touchline"
_INTERACTIONS = ".interactions."
# Kafka refuses topic names over 249 characters; the longest name Touchline derives from the prefix is
# a Faust changelog (`<app_id>-journey-contacts-changelog`, the app id defaulting to the prefix)
_LONGEST_SUFFIX = max(len(_INTERACTIONS) + max(len(c.value) for c in Channel), len("-journey-contacts-changelog"))
MAX_PREFIX_LENGTH = 249 - _LONGEST_SUFFIX
_LEGAL = re.compile(r"[A-Za-z0-9._-]+")
_CHANNEL_VALUES = frozenset(c.value for c in Channel)


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot start Kafka topic names, or None when it can."""
    if not prefix:
        return "must not be empty"
    if not _LEGAL.fullmatch(prefix):
        bad = "".join(sorted({c for c in prefix if not _LEGAL.fullmatch(c)}))
        return f"Kafka topic names allow only letters, digits, '.', '_' and '-' (not {bad!r})"
    if prefix.startswith(".") or prefix.endswith("."):
        return "must not start or end with '.' (Touchline adds the separator)"
    if len(prefix) > MAX_PREFIX_LENGTH:
        return f"at most {MAX_PREFIX_LENGTH} characters (Kafka topic names stop at 249)"
    return None


# the largest message on `<prefix>.journey-builds` (and of the worker's producer): one hand-over of a
# customer's book between builders. At ~0.5 kB per contact record and journey version that is
# ~30,000 contacts of one customer within the journey windows; a larger book stops the worker with a
# message saying so (`journey_split_agent`), never a hand-over retried forever.
HANDOVER_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class TopicNames:
    """The names of every topic of one deployment, derived from its prefix."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        problem = prefix_problem(self.prefix)
        if problem is not None:
            raise ValueError(f"topic prefix {self.prefix!r}: {problem}")

    @classmethod
    def of_interaction_topic(cls, topic: str) -> TopicNames | None:
        """The names a channel topic belongs to (`<prefix>.interactions.<channel>`), whatever its prefix."""
        prefix, sep, channel = topic.rpartition(_INTERACTIONS)
        if not sep or channel not in _CHANNEL_VALUES or prefix_problem(prefix) is not None:
            return None
        return cls(prefix)

    @property
    def deadletter(self) -> str:
        return f"{self.prefix}.deadletter"

    @property
    def late(self) -> str:
        return f"{self.prefix}.late"

    @property
    def sla(self) -> str:
        return f"{self.prefix}.sla"

    @property
    def journey_events(self) -> str:
        """Valid events re-published in batches (newline-separated canonical JSON) for journey stitching.
        One partition: the identity graph is global, and exactly one worker owns it at a time."""
        return f"{self.prefix}.journey-events"

    @property
    def journey_builds(self) -> str:
        """The split journey stage's builder partitions (`journey_builders` of them): contact records
        routed by the resolver, and customers' books handed over between builders."""
        return f"{self.prefix}.journey-builds"

    @property
    def journeys(self) -> str:
        return f"{self.prefix}.journeys"

    @cached_property
    def interactions(self) -> dict[Channel, str]:
        return {c: f"{self.prefix}{_INTERACTIONS}{c.value}" for c in Channel}

    @cached_property
    def _channel_of(self) -> dict[str, Channel]:
        return {topic: channel for channel, topic in self.interactions.items()}

    def interaction(self, channel: Channel | str) -> str:
        return self.interactions[Channel(channel)]

    def channel_of(self, topic: str) -> Channel | None:
        """The channel a topic carries, or None when the topic is not one of these channel topics."""
        return self._channel_of.get(topic)

    def specs(self, channel_partitions: int, journey_builders: int = 0) -> dict[str, int]:
        """Every topic Touchline needs, with its partition count. Created idempotently at start."""
        specs = {topic: channel_partitions for topic in self.interactions.values()}
        specs[self.deadletter] = 1
        specs[self.late] = 1
        specs[self.sla] = channel_partitions
        specs[self.journey_events] = 1
        specs[self.journeys] = channel_partitions
        if journey_builders:
            specs[self.journey_builds] = journey_builders
        return specs

    def configs(self, journey_builders: int = 0) -> dict[str, dict[str, str]]:
        """Topic configs applied when `specs`' topics are created: a hand-over between journey
        builders carries a customer's whole book in one message (`HANDOVER_MAX_BYTES`)."""
        if not journey_builders:
            return {}
        return {self.journey_builds: {"max.message.bytes": str(HANDOVER_MAX_BYTES)}}


DEFAULT_TOPICS = TopicNames()

# the default prefix's names
INTERACTION_TOPICS: dict[Channel, str] = DEFAULT_TOPICS.interactions
DEADLETTER_TOPIC = DEFAULT_TOPICS.deadletter
LATE_TOPIC = DEFAULT_TOPICS.late
SLA_TOPIC = DEFAULT_TOPICS.sla
JOURNEY_EVENTS_TOPIC = DEFAULT_TOPICS.journey_events
JOURNEYS_TOPIC = DEFAULT_TOPICS.journeys
interaction_topic = DEFAULT_TOPICS.interaction
channel_of_topic = DEFAULT_TOPICS.channel_of
topic_specs = DEFAULT_TOPICS.specs
