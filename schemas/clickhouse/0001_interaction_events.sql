-- Raw, validated interaction events: one row per event, exactly as received.
-- Redelivered duplicates share event_id and collapse on merge (ReplacingMergeTree):
-- read with FINAL (or count(DISTINCT event_id)) for exact counts.
CREATE TABLE IF NOT EXISTS interaction_events
(
    event_id        String                 COMMENT 'Producer-assigned event id (unique per event)',
    event_type      LowCardinality(String) COMMENT 'contact_started, queued, agent_assigned, ... (see schemas/events)',
    schema_version  UInt8                  COMMENT 'Event schema version',
    occurred_at     DateTime64(3, 'UTC')   COMMENT 'Event time, UTC, milliseconds',
    channel         LowCardinality(String) COMMENT 'voice, chat, email, social, sms, web',
    contact_id      String                 COMMENT 'One conversation or call on one channel',
    customer_id     String                 COMMENT 'Known customer id, empty when unknown',
    phone           String                 COMMENT 'Phone identifier, empty when absent',
    email           String                 COMMENT 'E-mail identifier, empty when absent',
    social_handle   String                 COMMENT 'Social handle, empty when absent',
    web_cookie      String                 COMMENT 'Web cookie id, empty when absent',
    queue           LowCardinality(String) COMMENT 'Queue, empty when not routed',
    priority        UInt8                  COMMENT 'Routing priority 0-9',
    segment         LowCardinality(String) COMMENT 'Customer segment',
    intent          LowCardinality(String) COMMENT 'Reason for contact',
    agent_id        String                 COMMENT 'Agent involved, empty when none',
    bot_id          String                 COMMENT 'Bot involved, empty when none',
    author          LowCardinality(String) COMMENT 'customer, bot, agent for message events; empty otherwise',
    details         String                 COMMENT 'Type-specific fields as JSON, e.g. {"survey":"csat","score":5}',
    source_topic    LowCardinality(String) COMMENT 'Kafka topic it was read from',
    source_partition UInt16                COMMENT 'Kafka partition',
    source_offset   UInt64                 COMMENT 'Kafka offset',
    ingested_at     DateTime64(3, 'UTC')   COMMENT 'When the worker wrote it (ingested_at - occurred_at is the end-to-end latency)'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (channel, toDate(occurred_at), contact_id, event_id)
COMMENT 'Validated interaction events, deduplicated on event_id at merge time (use FINAL)';
