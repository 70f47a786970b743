-- Analyst views over journeys (schemas/clickhouse/0004_journeys.sql). Each reads the latest version
-- of every journey (FINAL) and leaves out retracted ones (is_deleted = 1).

-- The most common channel paths, e.g. `web>voice>email`: how many journeys took each path, their
-- share of all journeys, and how many of them were resolved on the first contact.
CREATE VIEW IF NOT EXISTS journey_top_paths AS
SELECT
    arrayStringConcat(channel_path, '>')                     AS path,
    count()                                                  AS journeys,
    count() / sum(count()) OVER ()                           AS share,
    countIf(resolved = 1)                                    AS resolved_journeys,
    countIf(first_contact_resolved = 1)                      AS fcr_journeys,
    countIf(first_contact_resolved = 1) / count()            AS fcr_rate,
    avg(contacts)                                            AS avg_contacts,
    avg(effort_score)                                        AS avg_effort
FROM journeys FINAL
WHERE is_deleted = 0
GROUP BY path
ORDER BY journeys DESC, path;

-- First-contact resolution by the channel the journey started on. fcr_rate is over all journeys;
-- fcr_rate_of_resolved only over resolved ones.
CREATE VIEW IF NOT EXISTS journey_fcr_by_first_channel AS
SELECT
    channel_path[1]                                          AS first_channel,
    count()                                                  AS journeys,
    countIf(resolved = 1)                                    AS resolved_journeys,
    countIf(first_contact_resolved = 1)                      AS fcr_journeys,
    countIf(first_contact_resolved = 1) / count()            AS fcr_rate,
    if(countIf(resolved = 1) = 0, NULL,
       countIf(first_contact_resolved = 1) / countIf(resolved = 1)) AS fcr_rate_of_resolved,
    avgIf(time_to_resolution_s, resolved = 1)                AS avg_time_to_resolution_s,
    avg(contacts)                                            AS avg_contacts
FROM journeys FINAL
WHERE is_deleted = 0
GROUP BY first_channel
ORDER BY journeys DESC, first_channel;

-- Per day of journey start (UTC): the share of journeys that changed channel at least once.
CREATE VIEW IF NOT EXISTS journey_channel_switch_rate AS
SELECT
    toDate(started_at)                                       AS day,
    count()                                                  AS journeys,
    countIf(contacts > 1)                                    AS multi_contact_journeys,
    countIf(channel_switches > 0)                            AS switching_journeys,
    countIf(channel_switches > 0) / count()                  AS switch_rate,
    sum(channel_switches)                                    AS total_switches,
    avg(channel_switches)                                    AS avg_switches
FROM journeys FINAL
WHERE is_deleted = 0
GROUP BY day
ORDER BY day;

-- Journeys whose first contact involved a bot and that reached a human later (on the same or
-- another contact), by the channel of the first human response and the path taken.
CREATE VIEW IF NOT EXISTS journey_bot_escalation_paths AS
SELECT
    first_human_channel,
    arrayStringConcat(channel_path, '>')                     AS path,
    count()                                                  AS journeys,
    count() / sum(count()) OVER (PARTITION BY first_human_channel) AS share_of_channel,
    avg(time_to_first_human_s)                               AS avg_time_to_first_human_s,
    countIf(resolved = 1) / count()                          AS resolved_rate,
    avg(bot_handoffs)                                        AS avg_bot_handoffs
FROM journeys FINAL
WHERE is_deleted = 0 AND starts_with_bot = 1 AND first_human_at IS NOT NULL
GROUP BY first_human_channel, path
ORDER BY journeys DESC, first_human_channel, path;
