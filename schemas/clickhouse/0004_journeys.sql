-- Customer journeys: one customer issue (customer x intent) and the contacts it took, as stitched by
-- pipeline.journeys (rules in pipeline/journeys/lifecycle.py). The worker re-inserts a journey with
-- a higher `version` whenever it changes; `is_deleted = 1` retracts a journey that no longer exists
-- (its contacts were regrouped after an identity merge). Read with FINAL for the latest version.
-- Times are UTC with milliseconds; durations are seconds with millisecond precision.
-- Not partitioned: FINAL only collapses versions within a partition, and a journey's start (hence
-- any time-based partition) can move when a late event arrives.
CREATE TABLE IF NOT EXISTS journeys
(
    journey_id             String                         COMMENT 'j-<first contact id>: stable under recomputation',
    customer_key           String                         COMMENT 'Canonical customer: cust:<customer_id>, <kind>:<identifier> or anon:<contact_id>',
    intent                 LowCardinality(String)         COMMENT 'Reason for contact, empty when unknown',
    status                 LowCardinality(String)         COMMENT 'open, resolved or dormant (no activity for the dormancy period) when written',
    started_at             DateTime64(3, 'UTC')           COMMENT 'Start of the first contact',
    last_activity_at       DateTime64(3, 'UTC')           COMMENT 'Latest event of any contact of the journey',
    contact_ids            Array(String)                  COMMENT 'Contacts in start order',
    channel_path           Array(LowCardinality(String))  COMMENT 'Channel of each contact, in start order',
    contacts               UInt16                         COMMENT 'Number of contacts',
    channel_switches       UInt16                         COMMENT 'Adjacent contacts on different channels',
    transfers              UInt16                         COMMENT 'Transfers over all contacts',
    bot_handoffs           UInt16                         COMMENT 'Contacts a bot handed to a human',
    bot_contained_contacts UInt16                         COMMENT 'Contacts resolved by bot or self-service without a human',
    ivr_zero_outs          UInt16                         COMMENT 'Contacts where the caller zeroed out of the IVR',
    abandoned_contacts     UInt16                         COMMENT 'Contacts the customer abandoned',
    starts_with_bot        UInt8                          COMMENT '1 when the first contact involved a bot',
    first_human_at         Nullable(DateTime64(3, 'UTC')) COMMENT 'First human response in any contact (voice: answered; else first agent reply)',
    first_human_channel    LowCardinality(String)         COMMENT 'Channel of that first human response, empty when none',
    time_to_first_human_s  Nullable(Float64)              COMMENT 'Seconds from journey start to first human response',
    resolved               UInt8                          COMMENT '1 when the latest contact is resolved',
    resolved_at            Nullable(DateTime64(3, 'UTC')) COMMENT 'Resolution of the latest contact, NULL when unresolved',
    resolved_by            LowCardinality(String)         COMMENT 'agent, bot or customer (self-service); empty when unresolved',
    resolving_channel      LowCardinality(String)         COMMENT 'Channel of the resolving contact, empty when unresolved',
    time_to_resolution_s   Nullable(Float64)              COMMENT 'Seconds from journey start to resolution (ms precision)',
    first_contact_resolved UInt8                          COMMENT '1 when one contact, resolved, never reopened',
    reopened               UInt8                          COMMENT '1 when a contact was reopened or a repeat contact followed a resolution',
    last_csat              Nullable(UInt8)                COMMENT 'Latest CSAT answer (1-5) of the journey',
    last_ces               Nullable(UInt8)                COMMENT 'Latest CES answer (1-7, 1 = very easy)',
    last_nps               Nullable(UInt8)                COMMENT 'Latest NPS answer (0-10)',
    effort_score           Float32                        COMMENT 'Customer effort 0-100, higher = more effort (pipeline/journeys/effort.py)',
    version                UInt64                         COMMENT 'Grows with every change of the journey; the highest wins',
    is_deleted             UInt8                          COMMENT '1 retracts the journey (it no longer exists)',
    updated_at             DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When this version was written'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY journey_id
COMMENT 'Latest snapshot per customer journey (read with FINAL)';

-- One row per contact of a journey. A contact that leaves a journey (regrouping after a merge) is
-- retracted with `is_deleted = 1` at the journey's new version.
CREATE TABLE IF NOT EXISTS journey_steps
(
    journey_id       String                         COMMENT 'Journey the contact belongs to',
    contact_id       String                         COMMENT 'The contact',
    step             UInt16                         COMMENT 'Position in the journey, 1 = first contact (0 on retractions)',
    customer_key     String                         COMMENT 'Canonical customer key',
    intent           LowCardinality(String)         COMMENT 'Journey intent, empty when unknown',
    channel          LowCardinality(String)         COMMENT 'voice, chat, email, social, sms, web',
    started_at       DateTime64(3, 'UTC')           COMMENT 'Contact start',
    ended_at         Nullable(DateTime64(3, 'UTC')) COMMENT 'Contact end, NULL while in progress',
    first_human_at   Nullable(DateTime64(3, 'UTC')) COMMENT 'First human response on this contact',
    resolved_at      Nullable(DateTime64(3, 'UTC')) COMMENT 'Current resolution of this contact, NULL when not resolved',
    resolved_by      LowCardinality(String)         COMMENT 'agent, bot or customer; empty when not resolved',
    was_bot          UInt8                          COMMENT '1 when a bot was involved',
    handed_off       UInt8                          COMMENT '1 when the bot handed the contact to a human',
    bot_contained    UInt8                          COMMENT '1 when resolved by bot or self-service without a human',
    transfers        UInt16                         COMMENT 'Transfers on this contact',
    ivr_zero_out     UInt8                          COMMENT '1 when the caller zeroed out of the IVR',
    abandoned        UInt8                          COMMENT '1 when the customer abandoned the contact',
    reopened         UInt8                          COMMENT '1 when the contact was reopened',
    version          UInt64                         COMMENT 'Version of the journey this row was written with',
    is_deleted       UInt8                          COMMENT '1 retracts the row (the contact left the journey)',
    updated_at       DateTime64(3, 'UTC') DEFAULT now64(3) COMMENT 'When this version was written'
)
ENGINE = ReplacingMergeTree(version, is_deleted)
ORDER BY (journey_id, contact_id)
COMMENT 'Contacts of each journey, latest version per (journey, contact) (read with FINAL)';
