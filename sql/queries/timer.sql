-- Timers (schema dispatcher_xr). Every time is on the clock of the database holding
-- the timers, dispatcher_xr.clock(), never on a process's clock (sql/schema/061_timers.sql).

-- name: set_timer
-- START at %(due_at)s, or (due_at NULL) %(delay)s from now on the database clock. A due
-- time in the past is now.
SELECT * FROM dispatcher_xr.set_timer_v1(%(region)s, %(reqid)s, %(transid)s, %(payload)s,
    %(priority)s,
    coalesce(%(due_at)s::timestamptz, dispatcher_xr.clock() + %(delay)s::interval),
    %(cron)s, %(tz)s);

-- name: timer_clock
-- The timers' clock: now on the database holding the timers.
SELECT dispatcher_xr.clock() AS now;

-- name: cancel_timer
SELECT dispatcher_xr.cancel_timer_v1(%(region)s, %(reqid)s) AS cancelled;

-- name: list_timers
SELECT reqid, transid, payload, priority, due_at, cron, tz, fired, created_at
FROM dispatcher_xr.timer WHERE region = %(region)s ORDER BY due_at, id;

-- name: claim_due_timers
-- Due timers of a region, locked so that each fires in exactly one monitor; with the
-- database clock's time of the claim (now) and each timer's lag in ms.
WITH c AS MATERIALIZED (SELECT dispatcher_xr.clock() AS now)
SELECT t.id, t.region, t.reqid, t.transid, t.payload, t.priority, t.due_at, t.cron, t.tz,
    c.now, extract(epoch FROM c.now - t.due_at) * 1000 AS lag_ms
FROM dispatcher_xr.timer t, c
WHERE t.region = %(region)s AND t.due_at <= (SELECT now FROM c)
ORDER BY t.due_at, t.id
LIMIT %(limit)s
FOR UPDATE OF t SKIP LOCKED;

-- name: timer_fired_schedule
-- A cron schedule fired: its next slot (computed by the monitor on the database clock).
UPDATE dispatcher_xr.timer SET due_at = %(next_due)s, fired = fired + 1 WHERE id = %(id)s;

-- name: next_due
SELECT extract(epoch FROM min(due_at) - dispatcher_xr.clock()) AS in_s
FROM dispatcher_xr.timer WHERE region = %(region)s;

-- name: purge_firings
-- Forget firings older than the retention (%(keep_s)s seconds), at most %(limit)s rows
-- per call (the monitor calls it periodically); returns how many went.
WITH old AS (
    SELECT firing_id FROM dispatcher_xr.firing
    WHERE region = %(region)s
      AND fired_at < (SELECT dispatcher_xr.clock()) - make_interval(secs => %(keep_s)s)
    ORDER BY fired_at
    LIMIT %(limit)s
)
DELETE FROM dispatcher_xr.firing f USING old
WHERE f.firing_id = old.firing_id AND f.region = %(region)s;

-- name: timer_status
SELECT
    (SELECT count(*) FROM dispatcher_xr.timer WHERE region = %(region)s) AS pending,
    (SELECT min(due_at) FROM dispatcher_xr.timer WHERE region = %(region)s) AS next_due,
    (SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM fired_at - due_at) * 1000)
     FROM dispatcher_xr.firing
     WHERE region = %(region)s AND fired_at > dispatcher_xr.clock() - interval '1 hour')
        AS lag_ms_p50_p99,
    (SELECT count(*) FROM dispatcher_xr.firing
     WHERE region = %(region)s AND fired_at > dispatcher_xr.clock() - interval '1 hour')
        AS fired_last_hour;

-- name: record_firings
-- The firings of a batch (fired_at: now on the database clock, once they are queued).
INSERT INTO dispatcher_xr.firing (firing_id, region, reqid, due_at, fired_at, request_id)
SELECT f, %(region)s, r, d, dispatcher_xr.clock(), q
FROM unnest(%(firing_ids)s::text[], %(reqids)s::text[], %(due_ats)s::timestamptz[],
            %(request_ids)s::bigint[]) AS x(f, r, d, q)
ON CONFLICT (firing_id) DO NOTHING;

-- name: timers_fired_once
DELETE FROM dispatcher_xr.timer WHERE id = ANY(%(ids)s);

-- name: reqid_request
-- A START reqid of a timer: the request its last firing queued (NULL: none kept) and,
-- while it is pending, when it is due next (NULL: no pending timer of that reqid).
SELECT
    (SELECT request_id FROM dispatcher_xr.firing
     WHERE region = %(region)s AND reqid = %(reqid)s AND request_id IS NOT NULL
     ORDER BY fired_at DESC LIMIT 1) AS request_id,
    (SELECT due_at FROM dispatcher_xr.timer WHERE region = %(region)s AND reqid = %(reqid)s)
        AS due_at;
