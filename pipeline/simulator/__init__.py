"""The contact-centre simulator behind `touchline simulate`.

- `model`: the discrete-event model (pure) producing canonical events and recording ground truth.
- `profiles`: arrival curves, channels, intents, queues, staffing plan.
- `tickets`: the ticket-desk profile (`--profile tickets`): teams, business hours, ticket behaviour.
- `faults`: duplicates, late delivery and malformed messages (pure, streaming).
- `truth`: ground-truth records and the truth JSONL writer.
- `produce`: the paced Kafka / JSONL delivery (the only Kafka-touching module).

`delivered(sim, injector)` chains them: the delivered stream of a run, in delivery order.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

from pipeline.events.models import EventBase, to_json
from pipeline.events.topics import DEFAULT_TOPICS, TopicNames
from pipeline.simulator.faults import Delivery, FaultConfig, FaultInjector, Message
from pipeline.simulator.model import SimConfig, Simulation
from pipeline.simulator.truth import write_truth
from pipeline.times import iso_ms

__all__ = ["BackgroundRun", "delivered", "delivery_of", "summary_of"]


def delivery_of(event: EventBase, event_ms: int, topics: TopicNames = DEFAULT_TOPICS) -> Delivery:
    """A valid event as a Kafka message: its channel's topic, key = contact_id, canonical JSON value."""
    return Delivery(topics.interactions[event.channel], event.contact_id.encode(), to_json(event), event_ms)


def delivered(sim: Simulation, injector: FaultInjector, topics: TopicNames = DEFAULT_TOPICS) -> Iterator[Message]:
    """Run the model and the fault injector: every message to deliver, in delivery order."""
    feed = injector.feed
    for event_ms, event in sim.run():
        yield from feed(delivery_of(event, event_ms, topics))
    yield from injector.flush()


def summary_of(sim: Simulation, injector: FaultInjector, *, interrupted: bool = False) -> dict[str, Any]:
    """The truth file's `summary` record (without its `kind`)."""
    config = sim.config
    stats = injector.stats.as_dict()
    return {
        **stats,
        "contacts": len(sim.contacts),
        "journeys": len(sim.journeys),
        "events_by_type": dict(sorted(sim.events_by_type().items())),
        "seed": config.seed,
        "run_tag": sim.tag,
        "start": iso_ms(config.start_ms),
        "as_of": iso_ms(sim.as_of_ms),
        "duration_seconds": None if config.duration_ms is None else config.duration_ms / 1000,
        "max_contacts": config.max_contacts,
        "rate": config.rate,
        "customers": config.customers,
        "profile": config.profile,
        "duplicate_rate": injector.config.duplicate_rate,
        "late_rate": injector.config.late_rate,
        "max_lateness_seconds": injector.config.max_lateness_s,
        "bad_rate": injector.config.bad_rate,
        "interrupted": interrupted,
    }


_BATCH = 4000


def _generate(
    conn: Connection, stop: MpEvent, config: SimConfig, faults: FaultConfig, truth: Path | None, topics: TopicNames
) -> None:
    """Child process: run the model and the injector, send message batches, write the truth."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        sim = Simulation(config)
        injector = FaultInjector(faults, config.seed, sim.tag)
        batch: list[tuple[Any, ...]] = []
        for m in delivered(sim, injector, topics):
            batch.append((m.deliver_ms, m.topic, m.key, m.value, m.event_ms, m.kind, m.late, m.bad_kind))
            if len(batch) >= _BATCH:
                conn.send(batch)
                batch = []
                if stop.is_set():
                    sim.stop()
        conn.send(batch)
        summary = summary_of(sim, injector, interrupted=stop.is_set())
        if truth is not None:
            write_truth(truth, sim.contacts, sim.journeys, injector.bad_messages, summary)
        conn.send(("done", summary))
    except BaseException as error:  # report anything to the parent, which exits readably
        conn.send(("error", f"{type(error).__name__}: {error}"))
    finally:
        conn.close()


class BackgroundRun:
    """Generation in a separate process (the model and Kafka's client each get a core): iterate
    `messages()`, then read `summary`. `stop()` asks the generator to wind down (the truth then
    describes the run up to that moment); everything generated is still yielded."""

    def __init__(
        self, config: SimConfig, faults: FaultConfig, truth: Path | None, topics: TopicNames = DEFAULT_TOPICS
    ) -> None:
        # fork: nothing to re-import and no `__main__` guard needed; callers start this before any
        # thread (e.g. Kafka's client) exists.
        context: Any = multiprocessing.get_context(
            "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        )
        self._stop = context.Event()
        receiver, sender = context.Pipe(duplex=False)
        self._conn = receiver
        self._process = context.Process(
            target=_generate,
            args=(sender, self._stop, config, faults, truth, topics),
            name="touchline-simulator",
            daemon=True,
        )
        self._process.start()
        sender.close()
        self.summary: dict[str, Any] = {}

    def stop(self) -> None:
        self._stop.set()

    def messages(self) -> Iterator[Message]:
        while True:
            try:
                item = self._conn.recv()
            except EOFError:
                raise RuntimeError("the simulator process ended unexpectedly") from None
            if isinstance(item, tuple):
                if item[0] == "error":
                    raise RuntimeError(f"simulator failed: {item[1]}")
                self.summary = item[1]
                break
            for fields in item:
                yield Message(*fields)
        self._process.join(timeout=30)

    def close(self) -> None:
        if self._process.is_alive():
            self._stop.set()
            self._process.terminate()
            self._process.join(timeout=5)
