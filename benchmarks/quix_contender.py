"""The quix-streams contender of `make bench`: what a user who picked quix-streams instead would get
from the same channel topics on the same broker.

    .venv-quix/bin/python -m benchmarks.quix_contender BOOTSTRAP EXPECTED

Run by `.venv-quix/bin/python` (`make bench-quix-env`), not by the project's venv: quix-streams
3.28 needs pydantic < 2.14. It imports only `pipeline.events` (pure pydantic models, which load
under pydantic 2.13), so the validation pass validates with Touchline's own event models.

Two passes, each in a fresh process with a fresh consumer group reading the topics from the
earliest offset, like the raw aiokafka and bare Faust passes of `make bench`:

- count: an Application and one StreamingDataFrame per channel topic, values left as bytes; the
  application counts the messages it has processed.
- validated_window: each event validated against Touchline's event models (pydantic-core's JSON
  parser, as the ingest stage does), timestamped with its event time, regrouped by queue
  (`group_by`, quix's repartition topic) and counted in 1-minute tumbling windows per queue
  (`tumbling_window(...).count().final()`, quix's default RocksDB state with changelog topics).

The rate is messages / seconds from the first message processed to the last (for validated_window,
the last one applied to its window). No ClickHouse sink: nothing is written anywhere but Kafka.
The figures are printed as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from quixstreams import Application  # type: ignore[import-not-found]

from pipeline.events.models import EVENT_ADAPTER
from pipeline.events.topics import INTERACTION_TOPICS

PASSES = ("count", "validated_window")
SINK = "no ClickHouse sink: it writes only quix's own repartition and changelog topics"
# Event-time windows after group_by: the repartition topic interleaves the source partitions as they
# are read, out of event-time order; with 10 minutes of grace 37,748 of 51,995 events (73 %) were
# dropped as late and never reached a window. A grace longer than the simulated history (30 days)
# puts every event into its window, as Touchline's KPI windows do.
GRACE_S = 40 * 86_400.0
NO_PROGRESS_S = 120.0  # quix's own stop condition: no message consumed for this long


class Tally:
    """Messages processed per kind of topic, and the clock of the pass."""

    def __init__(self, inputs: set[str], expected: int, through_window: bool) -> None:
        self.inputs = inputs
        self.expected = expected
        self.through_window = through_window
        self.read = 0  # messages of the channel topics processed
        self.windowed = 0  # messages of the repartition topics processed (applied to a window)
        self.invalid = 0
        self.late = 0
        self.windows_closed = 0
        self.first = 0.0
        self.last = 0.0
        self.app: Any = None

    def processed(self, topic: str, partition: int, offset: int) -> None:
        if topic in self.inputs:
            if not self.read:
                self.first = time.monotonic()
            self.read += 1
        else:
            self.windowed += 1
        if self.done():
            self.last = time.monotonic()
            self.app.stop()

    def done(self) -> bool:
        if self.read < self.expected:
            return False
        return not self.through_window or self.windowed >= self.read - self.invalid

    def on_late(self, *_: Any) -> bool:
        self.late += 1
        return False  # counted, not logged per message


def application(bootstrap: str, state_dir: Path, tally: Tally) -> Any:
    return Application(
        broker_address=bootstrap,
        consumer_group=f"touchline-bench-quix-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        state_dir=state_dir,
        loglevel="WARNING",
        on_message_processed=tally.processed,
    )


def run_pass(name: str, bootstrap: str, expected: int, grace_s: float, state_dir: Path) -> dict[str, Any]:
    tally = Tally(set(INTERACTION_TOPICS.values()), expected, through_window=name == "validated_window")
    app = tally.app = application(bootstrap, state_dir, tally)

    def validated(raw: bytes) -> dict[str, Any] | None:
        try:
            event = EVENT_ADAPTER.validate_json(raw)
        except ValidationError:
            tally.invalid += 1
            return None
        return {"queue": event.queue or "", "ts": int(event.occurred_at.timestamp() * 1000)}

    def closed(window: dict[str, Any]) -> None:
        tally.windows_closed += 1

    for topic_name in INTERACTION_TOPICS.values():
        sdf = app.dataframe(app.topic(topic_name, key_deserializer="bytes", value_deserializer="bytes"))
        if name == "count":
            continue  # nothing but the application's count (Tally.processed)
        sdf = sdf.apply(validated).filter(lambda value: value is not None)
        sdf = sdf.group_by(lambda value: value["queue"], name="queue")
        # event time only after the repartition: quix produces the repartitioned messages with the
        # current timestamp, and event times of a month ago made the broker's 7-day retention delete
        # them at once (a 1M-event run stopped with 844,604 of 1,036,334 events windowed, offsets
        # out of range on the repartition topics)
        sdf = sdf.set_timestamp(lambda value, key, timestamp, headers: value["ts"])
        sdf = sdf.tumbling_window(timedelta(minutes=1), grace_ms=timedelta(seconds=grace_s), on_late=tally.on_late)
        sdf.count().final().update(closed)

    app.run(timeout=NO_PROGRESS_S, collect=False)
    if not tally.done():
        raise SystemExit(
            f"quix-streams {name} pass stopped after {NO_PROGRESS_S:.0f} s without messages: "
            f"{tally.read:,} of {expected:,} read, {tally.windowed:,} applied to windows"
        )
    seconds = tally.last - tally.first
    return {
        "pass": name,
        "messages": tally.read,
        "seconds": seconds,
        "rate": tally.read / seconds,
        "invalid": tally.invalid,
        "late_dropped": tally.late,
        "windows_closed": tally.windows_closed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bootstrap", help="Kafka bootstrap servers (host:port)")
    parser.add_argument("expected", type=int, help="messages on the channel topics")
    parser.add_argument("--pass", dest="only", choices=PASSES, help="run this pass here (default: each in a child)")
    parser.add_argument(
        "--grace", type=float, default=GRACE_S, help="window grace in seconds (events later than that are dropped)"
    )
    args = parser.parse_args()
    if args.only:
        with tempfile.TemporaryDirectory(prefix="touchline-quix-") as tmp:
            result = run_pass(args.only, args.bootstrap, args.expected, args.grace, Path(tmp))
        print(json.dumps(result), flush=True)
        return
    command = [sys.executable, "-m", "benchmarks.quix_contender", args.bootstrap, str(args.expected)]
    passes = []
    for name in PASSES:
        child = subprocess.run(
            [*command, "--pass", name, "--grace", str(args.grace)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise SystemExit(f"quix-streams {name} pass failed (exit {child.returncode})")
        passes.append(json.loads(child.stdout.strip().splitlines()[-1]))
    summary = {
        "contender": f"quix-streams {version('quixstreams')}",
        "pydantic": version("pydantic"),
        "sink": SINK,
        "grace_s": args.grace,
        "passes": passes,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
