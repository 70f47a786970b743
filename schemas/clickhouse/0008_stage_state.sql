-- Keyed, incremental state of the analytics stage (KPI windows + SLA clocks), per source partition:
-- one row per live contact (its KPI events, its SLA clocks, the SLA outcomes raised for it) and one
-- head row (key '') with the partition's clocks, open emitted windows and the highest source offset
-- the state reflects. A checkpoint writes only the contacts that changed since the previous one,
-- then the head together with a tombstone (is_deleted = 1) for every contact dropped by retention.
-- A worker that takes a partition over reads these rows and the topic after `max_offset`.
-- Internal: analysts need not read it. Read with FINAL (deleted rows are then left out).
CREATE TABLE IF NOT EXISTS stage_state
(
    app_id           LowCardinality(String) COMMENT 'Faust app id (consumer groups are named after it)',
    stage            LowCardinality(String) COMMENT 'Which stage the state belongs to: analytics',
    source_topic     LowCardinality(String) COMMENT 'Source topic the state belongs to',
    source_partition UInt16                 COMMENT 'Source partition',
    key              String                 COMMENT 'contact_id, or empty for the partition head',
    max_offset       Int64                  COMMENT 'Head: highest source offset reflected (-1: none)',
    head             String                 COMMENT 'Head: clocks, stats and open emitted windows (JSON)',
    kpi              String                 COMMENT 'Contact: its distinct events (JSON array), empty when not held',
    sla              String                 COMMENT 'Contact: its SLA clocks (JSON), empty when not held',
    raised           Array(String)          COMMENT 'Contact: sla_event_ids already raised',
    version          UInt64                 COMMENT 'Monotonic per partition: the latest version wins',
    is_deleted       UInt8                  COMMENT '1: the contact was dropped by retention',
    saved_at         DateTime64(3, 'UTC')   COMMENT 'When it was written'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (app_id, stage, source_topic, source_partition, key)
-- tombstones are needed only until merges have collapsed the rows they delete
TTL toDateTime(saved_at) + INTERVAL 30 DAY DELETE WHERE is_deleted = 1
COMMENT 'Analytics stage state, keyed per contact; read with FINAL';
