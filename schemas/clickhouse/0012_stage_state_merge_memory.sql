-- stage_state again, with settings that bound the memory of its merges. Its rows are wide (a
-- contact's events as JSON, ~3 KB), and a merge reads a granule (up to 10 MB) and a 1 MB compressed
-- block per column from every part it merges: with the embedded engine, two merges held ~450 MB of
-- the worker's memory at once. Measured with 300 inserts of 4,000 such rows into embedded chDB
-- (peak of ClickHouse's MemoryTracking while merging): 505-543 MB with the defaults, 109 MB with
-- these settings, 103 MB with merges stopped. index_granularity_bytes cannot be altered, hence a new
-- table: the rows are copied, then the tables exchanged. Run again after a crash, each step is
-- harmless: copied rows are identical (same version), and the exchange happens once per completed run.
CREATE TABLE IF NOT EXISTS stage_state_rebuild
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
SETTINGS index_granularity_bytes = 262144, merge_max_block_size = 256, merge_max_block_size_bytes = 1048576,
    max_compress_block_size = 131072, min_compress_block_size = 16384
COMMENT 'Analytics stage state, keyed per contact; read with FINAL';

INSERT INTO stage_state_rebuild SELECT * FROM stage_state;

EXCHANGE TABLES stage_state AND stage_state_rebuild;

DROP TABLE IF EXISTS stage_state_rebuild;
