"""Metrics of the journey stage (kept apart from `pipeline.worker.metrics`, which the other stages
own)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

JOURNEY_RECORDS = Counter(
    "touchline_journey_records_total",
    "Contact records read by the journey stage: applied, or skipped because unreadable or failing",
    ["outcome"],
)
JOURNEY_IDENTIFIERS_SKIPPED = Counter(
    "touchline_journey_identifiers_skipped_total",
    "Identifiers the identity graph refused to use (empty, placeholder or unknown kind), by kind",
    ["kind"],
)
JOURNEY_STATE = Gauge(
    "touchline_journey_state", "What the journey stage holds: contacts, customers, identity nodes, journeys", ["what"]
)
JOURNEY_EVENT_TIME = Gauge(
    "touchline_journey_event_time_seconds",
    "Newest event time (Unix seconds) in the journey state (0: none yet): time() minus this is how far the "
    "journeys lag the contact centre",
)
JOURNEY_EVICTED = Counter(
    "touchline_journey_evicted_total",
    "Journey state released by retention: journeys evicted, contacts stripped to identity, contacts dropped",
    ["what"],
)
JOURNEY_FLUSH_RETRIES = Counter(
    "touchline_journey_flush_retries_total",
    "Journey outputs (ClickHouse rows, topic messages, state changelog) retried",
    ["output"],
)
JOURNEY_RESTORE_SECONDS = Gauge(
    "touchline_journey_restore_seconds", "How long the last restore of the journey state took"
)
JOURNEY_RESTORED_CONTACTS = Gauge(
    "touchline_journey_restored_contacts", "Contact records read by the last restore of the journey state"
)
JOURNEY_RESTORE_RETIED = Gauge(
    "touchline_journey_restore_retied_contacts",
    "Contacts the last restore tied again from their identifiers instead of their stored anchor (state "
    "written before anchors, or a crash between the writes of the identity and contact tables)",
)
JOURNEY_BATCHES = Counter(
    "touchline_journey_batches_total", "Messages of contact records the journey stage finished (outputs and state)"
)
JOURNEY_ROUND_SECONDS = Counter(
    "touchline_journey_round_seconds_total",
    "Wall time the journey stage spent in rounds (applying records, writing outputs, persisting state; with "
    "TOUCHLINE_JOURNEY_BUILDERS, the resolver's rounds, which every record passes): records / this = the "
    "contacts/s it handles while busy",
)
JOURNEY_RESOLVER_LOOP_SECONDS = Counter(
    "touchline_journey_resolver_loop_seconds_total",
    "Time the split journey stage's resolver rounds held the event loop themselves (their own steps, not the "
    "builders' or other tasks' run while they waited): records / this = the contacts/s its partition handles "
    "with a core of its own",
)
JOURNEY_BUILDER_ROUND_SECONDS = Counter(
    "touchline_journey_builder_round_seconds_total",
    "Wall time the split journey stage's builders held here spent in rounds (receiving routed records, writing "
    "journeys, persisting state)",
)
JOURNEY_OFFSET = Gauge(
    "touchline_journey_offset", "Offset of the last message of contact records the journey stage finished (-1: none)"
)
JOURNEY_FIRST_OFFSET = Gauge(
    "touchline_journey_first_offset",
    "Offset of the first message this process was handed (-1: none yet); at or below the previous process's "
    "last finished offset after a crash, the message was read again",
)
JOURNEY_INPUT = Counter(
    "touchline_journey_input_messages_total",
    "Messages of contact records handed to the journey stage that it did not apply as they came: "
    "already_applied (below the offset its state holds: a redelivery after a crash), read_again (skipped by "
    "its consumer group's offset and read again from the topic), round_again (the round under way when the state's last "
    "owner stopped, read again whole after a restore)",
    ["outcome"],
)
JOURNEY_HANDOVER_BYTES = Gauge(
    "touchline_journey_handover_bytes_max",
    "Largest hand-over of a customer's book between journey builders this process sent (bytes; the bound "
    "is 16 MiB, pipeline.events.topics.HANDOVER_MAX_BYTES)",
)
JOURNEY_PARTITIONS = Gauge(
    "touchline_journey_partitions", "Partitions of the journey state this worker owns (restored and served here)"
)
JOURNEY_OFFSET.set(-1)
JOURNEY_FIRST_OFFSET.set(-1)
