"""Paced delivery of messages to Kafka (or to a JSONL file). The only module here that talks to Kafka;
`touchline simulate` and `touchline replay` both use it.

- `KafkaSink`: a kafka-python producer tuned for throughput. `acks="all"` with idempotence on
  (the default; no duplicates from producer retries), `linger_ms=20`, 512 KiB batches, lz4.
- `FileSink`: the `--out` format, one JSON object per line:
  `{"topic": ..., "key": ..., "at": <delivery time>, "value": <the canonical event object>}`, or for a
  malformed message `{"topic": ..., "key": ..., "at": ..., "bad": <kind>, "value_b64": <base64 bytes>}`.
- `Pacer`: sends each message when the wall clock reaches its delivery time scaled by `speed`.
- `StopSignal`: turns the first Ctrl-C (SIGINT) into a flag for a clean stop; a second one aborts.
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Protocol

from pipeline.simulator.faults import Message
from pipeline.times import iso_ms


class DeliveryError(Exception):
    """Kafka cannot be reached or refused messages; the message is one readable line."""


class Sink(Protocol):
    def send(self, message: Message) -> None: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Writes the delivered stream to a JSONL file (`--out`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: IO[bytes] = path.open("wb")

    def send(self, message: Message) -> None:
        self._handle.write(out_line(message))

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def out_line(message: Message) -> bytes:
    """One line of the `--out` format (with the trailing newline)."""
    head = (
        b'{"topic":' + json.dumps(message.topic).encode()
        + b',"key":' + (json.dumps(message.key.decode()).encode() if message.key is not None else b"null")
        + b',"at":"' + str(iso_ms(message.deliver_ms)).encode() + b'"'
    )  # fmt: skip
    if message.kind == "bad":
        return (
            head
            + b',"bad":"' + str(message.bad_kind).encode()
            + b'","value_b64":"' + base64.b64encode(message.value) + b'"}\n'
        )  # fmt: skip
    return head + b',"value":' + message.value + b"}\n"


class KafkaSink:
    """A throughput-tuned kafka-python producer. Failed sends are counted, not raised per message;
    `flush()` raises `DeliveryError` when any send failed."""

    def __init__(
        self,
        bootstrap: str,
        *,
        client_id: str = "touchline-simulator",
        acks: str | int = "all",
        idempotent: bool = True,
        linger_ms: int = 20,
        batch_size: int = 512 * 1024,
        compression: str | None = "lz4",
        max_request_size: int = 2 * 1024 * 1024,
        connect_timeout_s: float = 10.0,
        security: Mapping[str, Any] | None = None,
    ) -> None:
        from kafka import KafkaProducer
        from kafka.errors import KafkaError
        from kafka.partitioner.default import murmur2

        self.bootstrap = bootstrap
        self.failures = 0
        self.first_error: str | None = None
        options: dict[str, Any] = {
            "bootstrap_servers": bootstrap,
            "client_id": client_id,
            "acks": acks,
            "linger_ms": linger_ms,
            "batch_size": batch_size,
            "compression_type": compression,
            "max_request_size": max_request_size,
            "max_in_flight_requests_per_connection": 5,
            "request_timeout_ms": 30_000,
            "retries": 5,
            **(security or {}),  # TLS / SASL: pipeline.kafka_security.client_options
        }
        if idempotent:
            options["enable_idempotence"] = True
            options["acks"] = "all"
        try:
            self._producer = KafkaProducer(**options)
        except KafkaError as error:
            raise DeliveryError(f"cannot reach Kafka at {bootstrap}: {error}") from None
        except (OSError, ValueError) as error:
            raise DeliveryError(f"cannot connect to Kafka at {bootstrap}: {error}") from None
        self._send = self._producer.send
        self.acks = options["acks"]
        self.idempotent = idempotent
        # The default partitioner (murmur2 of the key, as Java clients do), cached per key: a contact
        # has a dozen events and kafka-python's pure-Python murmur2 is a fifth of its send cost.
        self._murmur2: Callable[[bytes], int] = murmur2
        self._partitions: dict[str, int] = {}
        self._partition_of: dict[tuple[str, bytes], int] = {}

    def _failed(self, error: BaseException) -> None:
        self.failures += 1
        if self.first_error is None:
            self.first_error = f"{type(error).__name__}: {error}"

    def _partition(self, topic: str, key: bytes) -> int:
        count = self._partitions.get(topic)
        if count is None:
            partitions = self._producer.partitions_for(topic)
            count = len(partitions) if partitions else 1
            self._partitions[topic] = count
        partition = (self._murmur2(key) & 0x7FFFFFFF) % count
        cache = self._partition_of
        if len(cache) > 200_000:
            cache.clear()
        cache[(topic, key)] = partition
        return partition

    def send(self, message: Message) -> None:
        key = message.key
        partition = None
        if key is not None:
            partition = self._partition_of.get((message.topic, key))
            if partition is None:
                partition = self._partition(message.topic, key)
        future = self._send(message.topic, key=key, value=message.value, partition=partition)
        future.add_errback(self._failed)

    def flush(self, timeout: float | None = 60.0) -> None:
        self._producer.flush(timeout=timeout)
        if self.failures:
            raise DeliveryError(f"{self.failures} message(s) were not delivered to Kafka ({self.first_error})")

    def close(self) -> None:
        self._producer.close(timeout=10)


class Pacer:
    """Maps delivery times (epoch ms of the simulated clock) to the wall clock.

    speed 1 = real time, N = N times faster, 0 = as fast as possible. The simulated `origin_ms` maps
    to the moment of the first `wait` call. A message whose time has passed goes at once. With
    `not_ahead` (and speed > 0) a message also waits until the wall clock reaches its time, so event
    time never runs ahead of the wall clock: a later run's events are then never behind the watermark
    an earlier run left in the future.
    """

    def __init__(
        self, speed: float, origin_ms: int | None, stop: threading.Event | None = None, *, not_ahead: bool = False
    ) -> None:
        if speed < 0:
            raise ValueError("speed must not be negative")
        self.speed = speed
        self.origin_ms = origin_ms
        self.stop = stop or threading.Event()
        self.not_ahead = not_ahead
        self._wall_origin: float | None = None

    def wait(self, at_ms: int) -> None:
        if self.speed == 0 or self.stop.is_set():
            return
        if self._wall_origin is None:
            self._wall_origin = time.monotonic()
            if self.origin_ms is None:
                self.origin_ms = at_ms
        assert self.origin_ms is not None
        due = self._wall_origin + (at_ms - self.origin_ms) / 1000.0 / self.speed
        delay = due - time.monotonic()
        if self.not_ahead:
            delay = max(delay, at_ms / 1000.0 - time.time())
        if delay > 0.0005:
            self.stop.wait(delay)


class StopSignal:
    """Context manager: the first SIGINT/SIGTERM sets `event` (a clean stop); a second SIGINT raises
    KeyboardInterrupt as usual."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set() and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        self.event.set()

    def __enter__(self) -> StopSignal:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@dataclass(slots=True)
class DeliveryReport:
    sent: int = 0
    elapsed_s: float = 0.0
    interrupted: bool = False

    @property
    def rate(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def deliver(
    messages: Iterable[Message],
    sink: Sink,
    pacer: Pacer,
    *,
    on_stop: Callable[[], None] | None = None,
    progress: Callable[[int, Message], None] | None = None,
    progress_every: int = 50_000,
) -> DeliveryReport:
    """Send every message in order, paced. When `pacer.stop` is set, `on_stop` is called once (the
    producer of `messages` should then wind down quickly) and the remaining messages are sent
    without pacing. Flushes the sink at the end (but does not close it)."""
    report = DeliveryReport()
    started = time.perf_counter()
    stopping = False
    send = sink.send
    wait = pacer.wait
    stop = pacer.stop
    count = 0
    for message in messages:
        if not stopping and stop.is_set():
            stopping = True
            report.interrupted = True
            if on_stop is not None:
                on_stop()
        if not stopping:
            wait(message.deliver_ms)
        send(message)
        count += 1
        if progress is not None and count % progress_every == 0:
            progress(count, message)
    report.sent = count
    sink.flush()
    report.elapsed_s = time.perf_counter() - started
    if stop.is_set():
        report.interrupted = True
    return report
