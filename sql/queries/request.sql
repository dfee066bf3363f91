-- name: enqueue
SELECT * FROM dispatcher_v2.enqueue(%(region)s, %(transid)s, %(payload)s, %(session)s,
    %(user_priority)s, %(idempotency_key)s, %(deadline)s, %(commarea)s, %(origin)s, %(notify)s,
    %(routing_key)s);

-- name: enqueue_many
SELECT * FROM dispatcher_v2.enqueue_many(%(region)s, %(transids)s, %(payloads)s, %(sessions)s,
    %(user_priorities)s, %(idempotency_keys)s, %(origin)s, %(notify)s, %(routing_keys)s);

-- name: show_request
SELECT id, region, transid, state, attempt, sep_id, payload, NULL::jsonb AS result, error,
    priority, session_id, origin, enqueued_at, dispatched_at, started_at,
    NULL::timestamptz AS finished_at
FROM dispatcher.request WHERE id = %(id)s AND region = %(region)s
UNION ALL
SELECT id, region, transid, state, attempt, sep_id, payload, result, error,
    priority, session_id, origin, enqueued_at, dispatched_at, started_at, finished_at
FROM dispatcher.request_history WHERE id = %(id)s AND region = %(region)s;


-- name: cancel_request
-- Cancel a queued request: 'cancelled', 'running' (too late) or 'finished'.
SELECT dispatcher_v2.cancel_request(%(region)s, %(id)s) AS outcome;

-- name: list_requests
-- The region's requests, newest first, queued/running ones and finished ones alike;
-- STATE, TRANSID, SINCE (enqueued at or after) and BEFORE (ids below it: the next page)
-- filter when given (NULL: any).
SELECT id, transid, state, attempt, sep_id, origin, error ->> 'type' AS error_type,
    error ->> 'message' AS error_message, enqueued_at, finished_at
FROM (
    SELECT id, transid, state, attempt, sep_id, origin, error, enqueued_at,
        NULL::timestamptz AS finished_at
    FROM dispatcher.request WHERE region = %(region)s
    UNION ALL
    SELECT id, transid, state, attempt, sep_id, origin, error, enqueued_at, finished_at
    FROM dispatcher.request_history WHERE region = %(region)s
) r
WHERE (%(state)s::text IS NULL OR state = %(state)s::text)
  AND (%(transid)s::text IS NULL OR transid = %(transid)s::text)
  AND (%(since)s::timestamptz IS NULL OR enqueued_at >= %(since)s::timestamptz)
  AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: request_by_key
-- The newest request of the region whose START reqid (idempotency key) is KEY, queued,
-- running or finished; no row: none.
SELECT id FROM (
    SELECT id FROM dispatcher.request WHERE region = %(region)s AND idempotency_key = %(key)s
    UNION ALL
    SELECT id FROM dispatcher.request_history
    WHERE region = %(region)s AND idempotency_key = %(key)s
) r
ORDER BY id DESC LIMIT 1;

-- name: retry_of
-- A request that abended and waits to run again: its next attempt and the seconds
-- until it may (no row: it is not waiting to be retried).
SELECT attempt + 1 AS next_attempt,
    greatest(extract(epoch FROM not_before - clock_timestamp()), 0)::float8 AS retry_in_s
FROM dispatcher.request
WHERE id = %(id)s AND state = 'queued' AND not_before IS NOT NULL;
