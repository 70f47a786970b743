"""`touchline replay FILE.jsonl`: produce recorded canonical events to the channel topics.

Accepts one canonical event per line, or the `touchline simulate --out` format
(`{"topic", "key", "at", "value"}` per line; malformed messages there carry `value_b64` and are
reported and skipped like any invalid line). Every event is validated with the canonical model and
sent to `<topic prefix>.interactions.<channel>` with key = contact_id, in file order, paced by event time.
"""

from __future__ import annotations

import base64
import binascii
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import click
from pydantic import ValidationError

from pipeline.errors import fail
from pipeline.events.models import EVENT_ADAPTER, EventBase, to_json
from pipeline.events.topics import DEFAULT_TOPICS, TopicNames
from pipeline.simulator.cli import open_kafka, speed_option
from pipeline.simulator.faults import Message
from pipeline.simulator.produce import DeliveryError, Pacer, StopSignal, deliver
from pipeline.times import to_ms

MAX_REPORTED = 20


@dataclass(frozen=True, slots=True)
class BadLine:
    line: int
    reason: str


@dataclass(slots=True)
class ReplayStats:
    valid: int = 0
    bad: list[BadLine] = field(default_factory=list)
    blank: int = 0


def _reason(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "event"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"invalid event: {where}: {first['msg']}{more}"


def parse_line(raw: bytes) -> EventBase | str:
    """One line of a replay file -> the validated event, or the reason it was rejected."""
    text = raw.strip()
    try:
        document: Any = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"not JSON: {error}"
    if not isinstance(document, dict):
        return "not a JSON object"
    recorded_topic: str | None = None
    payload: Any = document
    if "topic" in document and ("value" in document or "value_b64" in document):
        recorded_topic = str(document["topic"])
        if "value_b64" in document:
            try:
                data = base64.b64decode(str(document["value_b64"]), validate=True)
            except (binascii.Error, ValueError):
                return "value_b64 is not base64"
            kind = f" ({document['bad']})" if "bad" in document else ""
            try:
                event: EventBase = EVENT_ADAPTER.validate_json(data)
            except ValidationError as error:
                return f"recorded malformed message{kind}: {_reason(error)}"
            return _check_topic(event, recorded_topic, kind)
        payload = document["value"]
    try:
        event = EVENT_ADAPTER.validate_python(payload)
    except ValidationError as error:
        return _reason(error)
    if recorded_topic is not None:
        return _check_topic(event, recorded_topic, "")
    return event


def _check_topic(event: EventBase, topic: str, kind: str) -> EventBase | str:
    # the recorded run may have used another topic prefix: the event is sent to this one's topic
    names = TopicNames.of_interaction_topic(topic)
    if names is None or names.channel_of(topic) is not event.channel:
        return f"recorded message{kind}: channel {event.channel.value!r} does not match topic {topic!r}"
    return event


def read_events(handle: IO[bytes], stats: ReplayStats) -> Iterator[tuple[int, EventBase]]:
    """Valid events of a replay file with their 1-based line numbers; bad lines go to `stats`."""
    for number, raw in enumerate(handle, start=1):
        if not raw.strip():
            stats.blank += 1
            continue
        result = parse_line(raw)
        if isinstance(result, str):
            stats.bad.append(BadLine(number, result))
            continue
        stats.valid += 1
        yield number, result


def messages_of(
    events: Iterator[tuple[int, EventBase]], stop: threading.Event | None = None, topics: TopicNames = DEFAULT_TOPICS
) -> Iterator[Message]:
    """Events as messages to their channel topics; pacing times never go backwards (an event older
    than one already sent goes at once). Ends early once `stop` is set."""
    latest: int | None = None
    for _, event in events:
        if stop is not None and stop.is_set():
            return
        at = to_ms(event.occurred_at)
        latest = at if latest is None or at > latest else latest
        yield Message(latest, topics.interactions[event.channel], event.contact_id.encode(), to_json(event), at)


@click.command(name="replay")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@speed_option(default=0.0)
@click.option("--dry-run", is_flag=True, help="Validate the file and report, without producing anything.")
def replay_command(file: Path, speed: float, dry_run: bool) -> None:
    """Replay recorded events from FILE (JSON Lines) to the Kafka channel topics.

    Each line is a canonical event, or a line of `touchline simulate --out` output (its recorded
    duplicates are replayed too). Every event is validated against the canonical event model; an
    invalid line is reported with its line number and reason, and skipped. Valid events are sent to
    <topic prefix>.interactions.<channel> with key = contact_id, in file order, paced by event time at
    --speed (late events in the file are sent as soon as their turn comes).

    Exit status: 0 when at least one event was valid (and sent), 1 when none was or Kafka failed,
    2 on a configuration error.
    """
    from pipeline.cli import settings_or_exit  # the command line imports this module

    settings = settings_or_exit()
    stats = ReplayStats()
    with file.open("rb") as handle:
        if dry_run:
            for _ in read_events(handle, stats):
                pass
            _report_bad(stats)
            click.echo(f"replay (dry run): {stats.valid:,} valid events, {len(stats.bad):,} bad lines in {file}")
            sys.exit(0 if stats.valid else 1)
        try:
            sink = open_kafka(settings, "touchline-replay")
        except DeliveryError as error:
            fail(str(error), prog="touchline replay")
        with StopSignal() as stop:
            pacer = Pacer(speed, None, stop.event)
            try:
                report = deliver(messages_of(read_events(handle, stats), stop.event, settings.topics), sink, pacer)
            except DeliveryError as error:
                fail(str(error), prog="touchline replay")
            finally:
                sink.close()
    _report_bad(stats)
    stopped = " (interrupted)" if report.interrupted else ""
    click.echo(
        f"replay{stopped}: {report.sent:,} events sent to Kafka {settings.bootstrap_servers}, "
        f"{len(stats.bad):,} bad lines skipped; {report.elapsed_s:.1f}s, {report.rate:,.0f} events/s"
    )
    if stats.valid == 0:
        fail(f"no valid event in {file}", prog="touchline replay")


def _report_bad(stats: ReplayStats) -> None:
    for bad in stats.bad[:MAX_REPORTED]:
        click.echo(f"  line {bad.line}: {bad.reason}", err=True)
    if len(stats.bad) > MAX_REPORTED:
        click.echo(f"  ... and {len(stats.bad) - MAX_REPORTED:,} more bad lines", err=True)
