-- The read-only status page (dispatcher/status_page.py, docs/status-page.md): what the
-- other listings do not give, each bounded by an index so that a page open all day
-- costs little.

-- name: status_page_finished
-- Requests finished in the last %(window_s)s seconds, by state (done, failed, cancelled):
-- a range of request_history_finished_idx.
SELECT state, count(*) AS n
FROM dispatcher.request_history
WHERE region = %(region)s
  AND finished_at > clock_timestamp() - make_interval(secs => %(window_s)s)
GROUP BY state;

-- name: status_page_failures
-- The last %(limit)s failed requests finished within %(within_s)s seconds, newest first
-- (request_history_finished_idx read backwards); a message cut to 1000 characters.
SELECT id, transid, attempt, error ->> 'type' AS error_type,
    left(error ->> 'message', 1000) AS error_message, finished_at
FROM dispatcher.request_history
WHERE region = %(region)s AND state = 'failed'
  AND finished_at > clock_timestamp() - make_interval(secs => %(within_s)s)
ORDER BY finished_at DESC, id DESC
LIMIT %(limit)s;

-- name: status_page_next_timers
-- The region's next %(limit)s timers (timer_due_idx), in the database holding the timers.
SELECT reqid, transid, due_at, cron, tz, fired
FROM dispatcher_xr.timer
WHERE region = %(region)s
ORDER BY due_at, id
LIMIT %(limit)s;
