"""Prometheus metrics of the pipeline's own health, served on the worker's `/metrics`."""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector


class BatchHistogram(Collector):
    """A labelled histogram observed a batch of values at a time. prometheus_client's Histogram
    takes a lock per observation (about 2.5 µs), which at ingest rates is a noticeable share of a
    core; this one takes it once per batch. Exposed exactly like a Histogram (`_bucket`, `_sum`,
    `_count`)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self._name, self._documentation, self._labelnames = name, documentation, list(labelnames)
        self._bounds = [float(b) for b in sorted(buckets)]
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}  # counts (+Inf last), [sum]
        REGISTRY.register(self)

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * (len(bounds) + 1)
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1  # a value equal to a bound is in that bucket
            total += value
        with self._lock:
            known, sums = self._series.setdefault(labels, ([0] * (len(bounds) + 1), [0.0]))
            for i, n in enumerate(counts):
                known[i] += n
            sums[0] += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)
        with self._lock:
            series = {labels: (list(counts), sums[0]) for labels, (counts, sums) in self._series.items()}
        for labels, (counts, total) in sorted(series.items()):
            cumulative, running = [], 0
            for bound, n in zip([*self._bounds, float("inf")], counts, strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            family.add_metric(list(labels), cumulative, total)
        yield family


# Histogram bucket bounds, seconds unless named otherwise. They are the exposed `le` labels, which
# alert rules and their tests (deploy/prometheus) and the soak report read.
_INSERT_ROWS = (1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000, 50000)  # rows
_FLUSH = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_END_TO_END = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_SLA_DETECTION = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10)
_SLA_TICK = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
_CHECKPOINT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_STALL = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)  # event-loop stalls and partition restores
_GC_PAUSE = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

EVENTS_CONSUMED = Counter("touchline_events_consumed_total", "Messages read from the channel topics", ["channel"])
EVENTS_VALID = Counter("touchline_events_valid_total", "Messages that validated as events", ["channel"])
EVENTS_DUPLICATE = Counter(
    "touchline_events_duplicate_total",
    "Valid events dropped as redelivered duplicates (same event_id)",
    ["channel"],
)
EVENTS_DEADLETTERED = Counter(
    "touchline_events_deadlettered_total", "Messages sent to the dead-letter topic", ["channel", "reason"]
)
EVENTS_WRITTEN = Counter("touchline_events_written_total", "Events written to ClickHouse", ["channel"])
BATCH_ROWS = Histogram("touchline_batch_rows", "Rows per ClickHouse insert", buckets=_INSERT_ROWS)
FLUSH_SECONDS = Histogram(
    "touchline_flush_seconds", "Time to write one batch to ClickHouse and release its offsets", buckets=_FLUSH
)
FLUSH_FAILURES = Counter("touchline_flush_failures_total", "Batches that failed to write and were retried")
PRODUCER_HANDOVER_RETRIES = Counter(
    "touchline_producer_handover_retries_total",
    "Record batches the producer did not take in time and that were handed to it again (it is behind)",
    ["topic"],
)
E2E_SECONDS = BatchHistogram(
    "touchline_end_to_end_seconds", "Event time to written in ClickHouse, in seconds", ["channel"], buckets=_END_TO_END
)
CONSUMER_LAG = Gauge(
    "touchline_consumer_lag_messages",
    "Messages in the partition not yet read by this worker's stage (ingest or analytics)",
    ["stage", "topic", "partition"],
)
CONSUMER_WAIT = Counter(
    "touchline_consumer_wait_seconds_total",
    "Wall time a stage's consumer spent between batches: fetch (in aiokafka's getmany: waiting for records "
    "and unpacking those that came), or held back by the stage: outputs (to write), windows (KPI windows to "
    "emit), checkpoint (overdue)",
    ["stage", "reason"],
)
PENDING_ROWS = Gauge("touchline_pending_rows", "Messages read but not yet written and acknowledged")

# Stateful stages: KPI windows, SLA clocks, journeys
EVENTS_ANALYSED = Counter(
    "touchline_events_analysed_total",
    "Valid events applied to the KPI windows and SLA clocks (the analytics stage; redeliveries count again)",
    ["channel"],
)
EVENTS_LATE = Counter(
    "touchline_events_late_total",
    "Events later than the allowed lateness: stored raw and sent to the late-events topic, not counted in KPIs",
    ["channel"],
)
KPI_ROWS = Counter("touchline_kpi_rows_total", "KPI window rows written (each re-emission counts)", ["final"])
KPI_WATERMARK_LAG = Gauge(
    "touchline_kpi_watermark_lag_seconds",
    "Wall clock minus the event time up to which every partition's KPI windows are final (the watermark, or behind it while emitting catches up)",
)
SLA_EVENTS = Counter(
    "touchline_sla_events_total",
    "SLA outcomes raised: at_risk, breached, met, cancelled",
    ["channel", "target", "kind", "policy"],
)
SLA_OPEN = Gauge("touchline_sla_open_obligations", "Response/resolution obligations being timed", ["channel", "target"])
SLA_DETECTION_SECONDS = Histogram(
    "touchline_sla_detection_delay_seconds",
    "Wall-clock delay between an SLA deadline and the worker raising its breach (live mode)",
    buckets=_SLA_DETECTION,
)
SLA_TICK_SECONDS = Histogram(
    "touchline_sla_tick_seconds",
    "Time one pass of the SLA deadline check takes (it runs every sla_tick_seconds)",
    buckets=_SLA_TICK,
)
JOURNEY_UPDATES = Counter("touchline_journey_updates_total", "Journey snapshots emitted", ["status"])
IDENTITY_REFUSALS = Counter(
    "touchline_identity_link_refusals_total", "Identity links refused by the guards", ["reason"]
)

# -- the analytics stage's state, checkpoints and outputs (pipeline.worker.analytics)
DEPENDENCY_UP = Gauge(
    "touchline_dependency_up", "1 while the dependency answers, 0 while it is failing (retried)", ["dependency"]
)
DEPENDENCY_ERRORS = Counter(
    "touchline_dependency_errors_total", "Failed attempts to use a dependency (each is retried)", ["dependency"]
)
OUTBOX_PENDING = Gauge(
    "touchline_outbox_pending", "Outputs computed but not yet written (KPI rows, SLA rows and messages)"
)
CHECKPOINT_SECONDS = Histogram(
    "touchline_checkpoint_seconds",
    "One checkpoint of the partitions: outputs flushed, changed state written, offsets marked",
    buckets=_CHECKPOINT,
)
CHECKPOINT_ROWS = Counter(
    "touchline_checkpoint_rows_total", "State rows written by checkpoints (changed contacts, tombstones, heads)"
)
CHECKPOINT_BYTES = Counter("touchline_checkpoint_bytes_total", "State bytes written by checkpoints")
CLICKHOUSE_MEMORY = Gauge(
    "touchline_clickhouse_memory_bytes",
    "Memory ClickHouse tracks (system.metrics MemoryTracking): with embedded chDB, part of this process's RSS",
)
CLICKHOUSE_RESIDENT = Gauge(
    "touchline_clickhouse_resident_bytes",
    "Memory the embedded ClickHouse's allocator holds resident (jemalloc): part of this process's RSS; 0 with a server",
)
STATE_CONTACTS = Gauge("touchline_state_contacts", "Contacts held by the analytics stage (KPI + SLA)", ["core"])
LOOP_STALL_SECONDS = Histogram(
    "touchline_loop_stall_seconds",
    "How late the event loop ran a 100 ms timer (time the loop was blocked)",
    buckets=_STALL,
)
LOOP_STALL_MAX = Gauge("touchline_loop_stall_max_seconds", "Longest event-loop stall since the worker started")
LOOP_CPU_WAIT = Counter(
    "touchline_loop_cpu_wait_seconds_total",
    "Time the event loop's thread was ready to run but waited for a CPU (Linux schedstat): rising by more "
    "than a few ms a second, the machine is busier than its cores and stalls are not the worker's own",
)
GC_PAUSE_SECONDS = Histogram(
    "touchline_gc_pause_seconds",
    "Python's cyclic garbage collector pauses (every thread waits), by generation",
    ["generation"],
    buckets=_GC_PAUSE,
)
RESTORE_SECONDS = Histogram(
    "touchline_restore_seconds", "Restoring one partition's state on assignment", buckets=_STALL
)
