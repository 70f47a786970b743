-- Checkpoints of the worker's per-partition state (KPI windows, SLA clocks), so a worker that
-- takes over a partition restores it and replays only the raw events after `max_offset`
-- from interaction_events. Internal: analysts need not read it.
CREATE TABLE IF NOT EXISTS worker_state
(
    app_id       LowCardinality(String) COMMENT 'Faust app id (consumer group)',
    component    LowCardinality(String) COMMENT 'Which state: partition (KPI windows + SLA clocks)',
    source_topic LowCardinality(String) COMMENT 'Source topic the state belongs to',
    source_partition UInt16             COMMENT 'Source partition',
    max_offset   Int64                  COMMENT 'Highest source offset reflected in the state (-1: none)',
    state        String                 COMMENT 'JSON snapshot',
    saved_at     DateTime64(3, 'UTC')   COMMENT 'When it was written',
    version      UInt64                 COMMENT 'Monotonic: the latest version wins'
)
ENGINE = ReplacingMergeTree(version)
ORDER BY (app_id, component, source_topic, source_partition)
COMMENT 'Worker state checkpoints; read with FINAL';
