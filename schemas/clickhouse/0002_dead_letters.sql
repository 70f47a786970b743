-- Messages the worker could not accept. The same message is on the Kafka topic
-- touchline.deadletter with the original bytes and the reason in its headers.
CREATE TABLE IF NOT EXISTS dead_letters
(
    received_at      DateTime64(3, 'UTC')   COMMENT 'When the worker rejected it',
    source_topic     LowCardinality(String) COMMENT 'Topic it was read from',
    source_partition UInt16                 COMMENT 'Partition',
    source_offset    UInt64                 COMMENT 'Offset',
    reason           LowCardinality(String) COMMENT 'not_json, invalid, unknown_event_type, wrong_channel, oversized, empty, unknown_topic',
    detail           String                 COMMENT 'Readable explanation of what is wrong',
    message_key      String                 COMMENT 'Original Kafka key bytes',
    raw              String                 COMMENT 'Original message bytes (first 64 KiB)',
    raw_size         UInt32                 COMMENT 'Size of the original message in bytes'
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (source_topic, source_partition, source_offset)
COMMENT 'Rejected messages with their reason; one row per source offset';
