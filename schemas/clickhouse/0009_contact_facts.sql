-- Per-contact (per-ticket) facts, computed from the raw events by the rules of
-- pipeline/kpi/facts.py (`contact_facts`): one row per contact, as of the events stored now.
-- Group by first_queue / resolution_queue, priority and segment for ticket reporting; the windowed
-- ticket KPIs (ticket_kpi_hour, ticket_kpi_day) are built on it.
--
-- Events are deduplicated on event_id (FINAL) and ordered by (occurred_at, event_id). The queue and
-- priority "at" an event are those of the latest `queued` at or before it (the event's own before
-- any `queued`); the segment at an event is the latest non-empty one at or before it (else the
-- contact's first non-empty one). Resolutions: a `resolved` while not resolved counts, a `reopened`
-- while resolved reopens. Waits: `waiting_on_customer` opens a wait with its reason (`customer`
-- when absent), another reason switches it, `waiting_ended` closes it; closed waits are summed.
CREATE VIEW IF NOT EXISTS contact_facts AS
SELECT
    contact_id,
    e[1].8                                                                 AS channel,
    fromUnixTimestamp64Milli(e[1].1, 'UTC')                                AS started_at,
    if(ended_i = 0, NULL, fromUnixTimestamp64Milli(e[ended_i].1, 'UTC'))   AS ended_at,
    fromUnixTimestamp64Milli(e[-1].1, 'UTC')                               AS last_event_at,
    length(e)                                                              AS events,
    toUInt8(e[1].5)                                                        AS priority,
    first_segment                                                          AS segment,
    if(first_leg = 0, '', e[first_leg].4)                                  AS first_queue,
    if(last_leg = 0, '', e[last_leg].4)                                    AS current_queue,
    toUInt32(countEqual(arrayMap(x -> x.3, e), 'transferred'))             AS transfers,
    if(reply_i = 0, NULL, fromUnixTimestamp64Milli(e[reply_i].1, 'UTC'))   AS first_response_at,
    if(reply_i = 0, '', queue_at[reply_i])                                 AS first_response_queue,
    if(reply_i = 0, NULL, priority_at[reply_i])                            AS first_response_priority,
    if(reply_i = 0, '', segment_at[reply_i])                               AS first_response_segment,
    toUInt8(final_i != 0)                                                  AS resolved,
    toUInt32(length(resolutions))                                          AS resolution_count,
    toUInt32(length(changes) - length(resolutions))                        AS reopen_count,
    arrayMap(i -> e[i].1, resolutions)                                     AS resolved_ms,
    arrayMap(i -> e[i].1, arrayFilter(i -> e[i].3 = 'reopened', changes))  AS reopened_ms,
    if(first_i = 0, NULL, fromUnixTimestamp64Milli(e[first_i].1, 'UTC'))   AS first_resolved_at,
    if(final_i = 0, NULL, fromUnixTimestamp64Milli(e[final_i].1, 'UTC'))   AS final_resolved_at,
    if(first_i = 0, NULL, (e[first_i].1 - e[1].1) / 1000)                  AS ttr_first_seconds,
    if(final_i = 0, NULL, (e[final_i].1 - e[1].1) / 1000)                  AS ttr_final_seconds,
    if(first_i = 0, '', queue_at[first_i])                                 AS first_resolution_queue,
    if(first_i = 0, NULL, priority_at[first_i])                            AS first_resolution_priority,
    if(first_i = 0, '', segment_at[first_i])                               AS first_resolution_segment,
    if(final_i = 0, '', queue_at[final_i])                                 AS resolution_queue,
    if(final_i = 0, NULL, priority_at[final_i])                            AS resolution_priority,
    if(final_i = 0, '', segment_at[final_i])                               AS resolution_segment,
    CAST((wait_reasons, arrayMap(r -> arraySum(arrayMap(k -> if(states[k] = r AND k < length(waits),
            e[waits[k + 1]].1 - e[waits[k]].1, 0), arrayEnumerate(waits))), wait_reasons)),
         'Map(String, Int64)')                                             AS waiting_ms_by_reason,
    waiting_ms_by_reason['customer'] / 1000                                AS waiting_customer_seconds,
    waiting_ms_by_reason['vendor'] / 1000                                  AS waiting_vendor_seconds,
    waiting_ms_by_reason['internal'] / 1000                                AS waiting_internal_seconds,
    (arraySum(mapValues(waiting_ms_by_reason)) - waiting_ms_by_reason['customer']
        - waiting_ms_by_reason['vendor'] - waiting_ms_by_reason['internal']) / 1000
                                                                           AS waiting_other_seconds,
    if(length(waits) = 0, '', states[-1])                                  AS waiting_now,
    arrayMap(i -> tuple(e[i].1, e[i].4, toUInt8(e[i].5)),
             arrayFilter(i -> e[i].3 = 'queued', arrayEnumerate(e)))      AS legs
FROM
(
    SELECT
        contact_id,
        e,
        arrayFirstIndex(x -> x.3 = 'ended', e)                                       AS ended_i,
        arrayFirstIndex(x -> x.3 = 'queued', e)                                      AS first_leg,
        arrayLastIndex(x -> x.3 = 'queued', e)                                       AS last_leg,
        arrayFirstIndex(x -> x.3 IN ('first_agent_reply', 'agent_reply'), e)         AS reply_i,
        arrayFirst(x -> x.6 != '', e).6                                              AS first_segment,
        arrayFill(l -> l != 0, arrayMap((x, i) -> if(x.3 = 'queued', i, 0), e, arrayEnumerate(e))) AS leg_at,
        arrayMap((x, l) -> if(l = 0, x.4, e[l].4), e, leg_at)                        AS queue_at,
        arrayMap((x, l) -> toUInt8(if(l = 0, x.5, e[l].5)), e, leg_at)               AS priority_at,
        arrayMap(s -> if(s = '', first_segment, s), arrayFill(s -> s != '', arrayMap(x -> x.6, e))) AS segment_at,
        -- resolution changes: collapse repeats, drop a leading reopen
        arrayFilter(i -> e[i].3 IN ('resolved', 'reopened'), arrayEnumerate(e))     AS rr,
        arrayFilter((i, k) -> k = 1 OR e[i].3 != e[rr[k - 1]].3, rr, arrayEnumerate(rr)) AS rc,
        if(length(rc) > 0 AND e[rc[1]].3 = 'reopened', arraySlice(rc, 2), rc)        AS changes,
        arrayFilter(i -> e[i].3 = 'resolved', changes)                               AS resolutions,
        if(length(resolutions) = 0, 0, resolutions[1])                               AS first_i,
        if(length(changes) > 0 AND e[changes[-1]].3 = 'resolved', changes[-1], 0)   AS final_i,
        -- waits: state after each waiting event (its reason, '' after waiting_ended); collapse repeats
        arrayFilter(i -> e[i].3 IN ('waiting_on_customer', 'waiting_ended'), arrayEnumerate(e)) AS ww,
        arrayFilter((i, k) -> if(k = 1, e[i].7 != '', e[i].7 != e[ww[k - 1]].7), ww, arrayEnumerate(ww)) AS waits,
        arrayMap(i -> e[i].7, waits)                                                 AS states,
        arraySort(arrayDistinct(arrayFilter((s, k) -> s != '' AND k < length(states), states, arrayEnumerate(states)))) AS wait_reasons
    FROM
    (
        SELECT
            contact_id,
            arraySort(x -> (x.1, x.2), groupArray((
                toUnixTimestamp64Milli(occurred_at), event_id, toString(event_type), toString(queue), priority,
                toString(segment),
                if(event_type = 'waiting_on_customer',
                   if(JSONExtractString(details, 'reason') = '', 'customer', JSONExtractString(details, 'reason')), ''),
                toString(channel)))) AS e
        FROM interaction_events FINAL
        GROUP BY contact_id
    )
);
