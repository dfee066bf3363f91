-- name: set_timer
SELECT * FROM dispatcher_xr.set_timer_v1(%(region)s, %(reqid)s, %(transid)s, %(payload)s,
    %(priority)s, %(due_at)s, %(cron)s, %(tz)s);

-- name: cancel_timer
SELECT dispatcher_xr.cancel_timer_v1(%(region)s, %(reqid)s) AS cancelled;

-- name: list_timers
SELECT reqid, transid, payload, priority, due_at, cron, tz, fired, created_at
FROM dispatcher_xr.timer WHERE region = %(region)s ORDER BY due_at, id;

-- name: claim_due_timers
-- Due timers of a region, locked so that each fires in exactly one monitor.
SELECT id, region, reqid, transid, payload, priority, due_at, cron, tz
FROM dispatcher_xr.timer
WHERE region = %(region)s AND due_at <= clock_timestamp()
ORDER BY due_at, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: timer_fired_once
DELETE FROM dispatcher_xr.timer WHERE id = %(id)s;

-- name: timer_fired_schedule
UPDATE dispatcher_xr.timer SET due_at = %(next_due)s, fired = fired + 1 WHERE id = %(id)s;

-- name: record_firing
INSERT INTO dispatcher_xr.firing (firing_id, region, reqid, due_at, request_id)
VALUES (%(firing_id)s, %(region)s, %(reqid)s, %(due_at)s, %(request_id)s)
ON CONFLICT (firing_id) DO NOTHING;

-- name: next_due
SELECT extract(epoch FROM min(due_at) - clock_timestamp()) AS in_s
FROM dispatcher_xr.timer WHERE region = %(region)s;

-- name: purge_firings
DELETE FROM dispatcher_xr.firing
WHERE region = %(region)s AND fired_at < clock_timestamp() - interval '7 days';

-- name: timer_status
SELECT
    (SELECT count(*) FROM dispatcher_xr.timer WHERE region = %(region)s) AS pending,
    (SELECT min(due_at) FROM dispatcher_xr.timer WHERE region = %(region)s) AS next_due,
    (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM fired_at - due_at) * 1000)
     FROM dispatcher_xr.firing
     WHERE region = %(region)s AND fired_at > clock_timestamp() - interval '1 hour')
        AS lag_ms_p50_p99,
    (SELECT count(*) FROM dispatcher_xr.firing
     WHERE region = %(region)s AND fired_at > clock_timestamp() - interval '1 hour')
        AS fired_last_hour;

-- name: record_firings
INSERT INTO dispatcher_xr.firing (firing_id, region, reqid, due_at, request_id)
SELECT f, %(region)s, r, d, q
FROM unnest(%(firing_ids)s::text[], %(reqids)s::text[], %(due_ats)s::timestamptz[],
            %(request_ids)s::bigint[]) AS x(f, r, d, q)
ON CONFLICT (firing_id) DO NOTHING;

-- name: timers_fired_once
DELETE FROM dispatcher_xr.timer WHERE id = ANY(%(ids)s);
