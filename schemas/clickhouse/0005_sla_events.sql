-- SLA outcomes from the SLA engine (pipeline/sla/clock.py): one row per SlaEvent.
-- kind: at_risk (share of the target gone), breached (deadline passed unanswered), met (answered or
-- resolved, late when seconds_late > 0, which follows an earlier breached row), cancelled (contact
-- resolved or abandoned with the obligation still open). Re-emitted events carry the same
-- sla_event_id and collapse on merge, keeping the latest emitted_at: read with FINAL.
-- Durations are in seconds of the policy's time base: business seconds when business_time = 1.
CREATE TABLE IF NOT EXISTS sla_events
(
    sla_event_id    String                 COMMENT 'Deterministic id: hash of contact_id, target, opened_by and kind',
    kind            LowCardinality(String) COMMENT 'at_risk, breached, met, cancelled',
    target          LowCardinality(String) COMMENT 'first_response, next_response, resolution',
    contact_id      String                 COMMENT 'Contact the obligation belongs to',
    channel         LowCardinality(String) COMMENT 'voice, chat, email, social, sms, web',
    queue           LowCardinality(String) COMMENT 'Queue when the obligation started, empty when not routed yet',
    priority        UInt8                  COMMENT 'Highest routing priority 0-9 seen when the obligation started',
    segment         LowCardinality(String) COMMENT 'Customer segment when the obligation started, empty when unknown',
    policy          LowCardinality(String) COMMENT 'Name of the SLA policy applied (deploy/sla-policies.yaml)',
    business_time   Bool                   COMMENT 'True when the target counts business hours of the policy calendar',
    started_at      DateTime64(3, 'UTC')   COMMENT 'When the obligation started, UTC, milliseconds',
    deadline        DateTime64(3, 'UTC')   COMMENT 'When the target runs out (pauses and closed hours pushed it out), UTC',
    at              DateTime64(3, 'UTC')   COMMENT 'Event time raised: the due time for at_risk/breached, the answering or closing event time for met/cancelled, UTC',
    seconds_late    Float64                COMMENT 'Seconds past the deadline for met/cancelled (0 when on time, and for at_risk/breached)',
    target_seconds  Float64                COMMENT 'The target in seconds',
    elapsed_seconds Float64                COMMENT 'Obligation time used up at `at`, in seconds, pauses excluded',
    opened_by       String                 COMMENT 'event_id of the interaction event that started the obligation',
    emitted_at      DateTime64(3, 'UTC')   COMMENT 'When the worker wrote the row, the replacing version (latest wins)'
)
ENGINE = ReplacingMergeTree(emitted_at)
PARTITION BY toYYYYMM(at)
ORDER BY (channel, target, toDate(at), contact_id, sla_event_id)
COMMENT 'SLA at-risk, breach, met and cancelled events, deduplicated on sla_event_id at merge time (use FINAL)';
