"""`touchline simulate`: run the contact-centre simulator and deliver its events to Kafka or a file."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click

from pipeline.config import Settings
from pipeline.errors import fail
from pipeline.events.topics import TopicNames
from pipeline.simulator import BackgroundRun, delivered, summary_of, tickets
from pipeline.simulator.faults import FaultConfig, FaultInjector, Message
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.simulator.produce import (
    DeliveryError,
    FileSink,
    KafkaSink,
    Pacer,
    Sink,
    StopSignal,
    deliver,
)
from pipeline.simulator.truth import write_truth
from pipeline.times import iso_ms, to_ms

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(d|h|m|s|ms)?", re.IGNORECASE)
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1, None: 1000}
DEFAULT_DURATION_MS = 3_600_000


def parse_duration(text: str) -> int:
    """`2h`, `90m`, `3600s`, `1d`, `1h30m`, `45` (seconds) -> milliseconds."""
    cleaned = text.strip().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    total = 0.0
    position = 0
    while position < len(cleaned):
        match = _DURATION.match(cleaned, position)
        if match is None or match.end() == position:
            raise ValueError(f"cannot read duration {text!r} (use e.g. 2h, 90m, 3600s, 1d, 1h30m)")
        unit = match.group(2).lower() if match.group(2) else None
        total += float(match.group(1)) * _UNIT_MS[unit]
        position = match.end()
    if total <= 0:
        raise ValueError("duration must be positive")
    return int(total)


def parse_start(text: str | None) -> datetime:
    """ISO-8601 start (`2026-03-02T09:00Z`, `2026-03-02 09:00:00+01:00`; naive = UTC); None = now, to the minute."""
    if text is None:
        return datetime.now(UTC).replace(second=0, microsecond=0)
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class _Duration(click.ParamType):
    name = "DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as error:
            self.fail(str(error), param, ctx)


def open_kafka(settings: Settings, client_id: str) -> KafkaSink:
    """Check the broker answers, create the topics, return a producer; DeliveryError otherwise."""
    from pipeline.kafka_security import client_options
    from pipeline.topics import KafkaAuthenticationError, ensure_topics, probe_broker

    bootstrap = settings.bootstrap_servers
    security = client_options(settings)
    hint = (
        " (start it with `make run`, or `python -m tools.broker start` in a checkout)"
        if settings.uses_local_broker
        else " (check KAFKA_BOOTSTRAP_SERVERS)"
    )
    try:
        answered = probe_broker(bootstrap, timeout=5.0, options=security)
    except KafkaAuthenticationError as error:
        raise DeliveryError(str(error)) from None
    if not answered:
        raise DeliveryError(f"cannot reach Kafka at {bootstrap}{hint}")
    try:
        ensure_topics(
            bootstrap, settings.topics.specs(settings.topic_partitions, settings.journey_builders), options=security
        )
    except Exception as error:
        raise DeliveryError(f"cannot create topics on Kafka at {bootstrap}: {error}{hint}") from None
    return KafkaSink(bootstrap, client_id=client_id, security=security)


F = TypeVar("F", bound=Callable[..., Any])


def speed_option(default: float) -> Callable[[F], F]:
    """`--speed` of a command that paces its messages by event time (`Pacer`)."""
    return click.option(
        "--speed",
        type=click.FloatRange(min=0),
        default=default,
        show_default=True,
        help="Pacing by event time: 1 = real time, N = N times faster, 0 = as fast as possible.",
    )


def _progress_printer(enabled: bool) -> Any:
    last = [time.monotonic()]

    def progress(count: int, message: Message) -> None:
        now = time.monotonic()
        if enabled and now - last[0] >= 10:
            last[0] = now
            click.echo(f"  ... {count:,} messages sent, simulated time {iso_ms(message.deliver_ms)}", err=True)

    return progress


@click.command(name="simulate")
@click.option(
    "--start",
    "start",
    metavar="ISO",
    default=None,
    help="Simulated UTC start, e.g. 2026-03-02T08:00Z (naive = UTC). Default: now, to the minute.",
)
@click.option(
    "--duration",
    type=_Duration(),
    default=None,
    help="Simulated time to run: 2h, 90m, 3600s, 1d, 1h30m. Default 1h unless --contacts is given.",
)
@click.option(
    "--contacts",
    type=click.IntRange(min=1),
    default=None,
    help="Stop starting contacts after N (returns included); the last ones run to completion "
    "unless --duration ends the run first.",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0.001),
    default=None,
    help="New issues per hour at the daily peak, all channels together (quiet at night). "
    "Default 1000; 6 with --profile tickets.",
)
@click.option(
    "--customers",
    type=click.IntRange(min=1),
    default=20_000,
    show_default=True,
    help="Size of the known-customer population (plus anonymous one-off callers).",
)
@click.option(
    "--profile",
    type=click.Choice(["daily", "flat", "tickets"]),
    default="daily",
    show_default=True,
    help="Arrival curve: 'daily' (hour-of-day and weekday shape, UTC) or 'flat' (peak rate all day); "
    "'tickets': a back-office ticket desk instead (long e-mail/social threads, waits on customer, vendor "
    "or team, transfers, reopens, quiet weekends; default duration 90d).",
)
@click.option(
    "--seed",
    type=int,
    default=1,
    show_default=True,
    help="Random seed. Same seed and options give a byte-identical stream and truth.",
)
@speed_option(default=1.0)
@click.option(
    "--duplicate-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of valid events delivered twice (identical bytes and key), the copy shortly after.",
)
@click.option(
    "--late-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of events delivered late, out of order (event time unchanged).",
)
@click.option(
    "--max-lateness",
    type=click.FloatRange(min=0),
    default=120.0,
    show_default=True,
    metavar="SECONDS",
    help="Upper bound of the delivery delay of late events, in simulated seconds.",
)
@click.option(
    "--bad-rate",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Extra malformed messages per valid event: not JSON, missing event_id, survey score out of "
    "range, naive timestamp, unknown type, channel not matching topic, oversized (>64 KiB).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the delivered stream to this JSONL file instead of Kafka "
    '({"topic","key","at","value"} per line; malformed messages as {"bad","value_b64"}).',
)
@click.option(
    "--truth",
    "truth",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the ground truth (contacts, journeys, bad messages, summary) to this JSONL file.",
)
@click.option(
    "--allow-future",
    is_flag=True,
    help="Let simulated time run ahead of the wall clock. Default (with --speed > 0): no event is sent "
    "before its time, and without --start a run faster than real time starts in the past so that it "
    "ends at about now.",
)
@click.option("--quiet", is_flag=True, help="No progress lines, only the final summary.")
def simulate_command(
    start: str | None,
    duration: int | None,
    contacts: int | None,
    rate: float | None,
    customers: int,
    profile: str,
    seed: int,
    speed: float,
    duplicate_rate: float,
    late_rate: float,
    max_lateness: float,
    bad_rate: float,
    out: Path | None,
    truth: Path | None,
    allow_future: bool,
    quiet: bool,
) -> None:
    """Simulate a contact centre and stream its interaction events.

    A discrete-event model: customers with issues (intents) contact the centre on voice (IVR, then
    queues), chat and web (a bot first, then maybe a human), SMS, e-mail and social (asynchronous
    threads). Agents are staffed per queue and hour; waits, abandonment and SLA breaches emerge from
    staffing and customer patience. Unresolved issues come back, often on another channel.

    Each event goes to <topic prefix>.interactions.<channel> with key = contact_id and the canonical JSON
    as value, in event-time order except for injected faults. With --out the stream goes to a file
    instead (replay it later with `touchline replay`). Ctrl-C stops cleanly: what was generated is
    flushed and the truth describes the run up to that moment.

    \b
    Examples:
      touchline simulate --duration 30m --speed 30
      touchline simulate --start 2026-03-02T08:00Z --duration 1d --speed 0 --truth truth.jsonl
      touchline simulate --contacts 150000 --speed 0 --out events.jsonl --truth truth.jsonl \\
          --duplicate-rate 0.01 --late-rate 0.02 --bad-rate 0.001
    """
    from pipeline.cli import settings_or_exit  # the command line imports this module

    settings = settings_or_exit()
    try:
        start_at = parse_start(start)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--start") from None
    if duration is None and contacts is None:
        duration = tickets.DEFAULT_DURATION_MS if profile == "tickets" else DEFAULT_DURATION_MS
    if rate is None:
        rate = tickets.DEFAULT_RATE if profile == "tickets" else 1000.0
    if start is None and speed > 1 and duration is not None and not allow_future:
        # faster than real time from "now" would date events in the future: start in the past instead,
        # so the simulated clock reaches the wall clock as the run ends
        start_at -= timedelta(milliseconds=duration * (1 - 1 / speed))
        start_at = start_at.replace(microsecond=0)
    config = SimConfig(
        seed=seed,
        start_ms=to_ms(start_at),
        duration_ms=duration,
        max_contacts=contacts,
        rate=rate,
        customers=customers,
        profile="tickets" if profile == "tickets" else "flat" if profile == "flat" else "daily",
    )
    faults = FaultConfig(duplicate_rate, late_rate, max_lateness, bad_rate)
    # At full speed the model runs in its own process (started before Kafka's client threads exist).
    background = BackgroundRun(config, faults, truth, settings.topics) if speed == 0 else None
    sink: Sink
    if out is not None:
        target = str(out)
        sink = FileSink(out)
    else:
        try:
            sink = open_kafka(settings, "touchline-simulator")
        except DeliveryError as error:
            if background is not None:
                background.close()
            fail(str(error), prog="touchline simulate")
        target = f"Kafka {settings.bootstrap_servers}"
    if not quiet:
        bound = []
        if duration is not None:
            bound.append(f"{duration / 1000:g}s simulated")
        if contacts is not None:
            bound.append(f"{contacts:,} contacts")
        click.echo(
            f"simulating from {iso_ms(config.start_ms)} ({', '.join(bound)}) at speed "
            f"{'max' if speed == 0 else f'{speed:g}x'} -> {target}; Ctrl-C stops",
            err=True,
        )
    summary = _run(
        config, faults, truth, sink, speed, quiet, background, not_ahead=not allow_future, topics=settings.topics
    )
    _print_summary(summary, target)


def _run(
    config: SimConfig,
    faults: FaultConfig,
    truth: Path | None,
    sink: Sink,
    speed: float,
    quiet: bool,
    background: BackgroundRun | None,
    *,
    not_ahead: bool = True,
    topics: TopicNames,
) -> dict[str, Any]:
    """Generate and deliver; returns the summary (plus the delivery report's numbers)."""
    sim: Simulation | None = None
    injector: FaultInjector | None = None
    with StopSignal() as stop:
        pacer = Pacer(speed, config.start_ms, stop.event, not_ahead=not_ahead)
        if background is not None:
            messages, on_stop = background.messages(), background.stop
        else:
            sim = Simulation(config)
            injector = FaultInjector(faults, config.seed, sim.tag)
            messages, on_stop = delivered(sim, injector, topics), sim.stop
        try:
            report = deliver(
                messages, sink, pacer, on_stop=on_stop, progress=_progress_printer(not quiet), progress_every=1000
            )
        except (DeliveryError, RuntimeError) as error:
            fail(str(error), prog="touchline simulate")
        finally:
            sink.close()
            if background is not None:
                background.close()
    if background is not None:
        summary = background.summary
    else:
        assert sim is not None and injector is not None
        summary = summary_of(sim, injector, interrupted=report.interrupted)
        if truth is not None:
            write_truth(truth, sim.contacts, sim.journeys, injector.bad_messages, summary)
    return {**summary, "sent": report.sent, "elapsed": report.elapsed_s, "rate": report.rate}


def _print_summary(summary: dict[str, Any], target: str) -> None:
    stopped = " (interrupted)" if summary["interrupted"] else ""
    click.echo(
        f"simulate{stopped}: {summary['sent']:,} messages -> {target}: {summary['distinct_valid_events']:,} events, "
        f"{summary['duplicates']:,} duplicates, {summary['late']:,} late, {summary['bad']:,} bad; "
        f"{summary['contacts']:,} contacts, {summary['journeys']:,} journeys; "
        f"{summary['elapsed']:.1f}s, {summary['rate']:,.0f} msg/s"
    )
