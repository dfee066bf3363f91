-- name: transaction_stats
-- Per transaction, over requests finished since %(since)s: counts, abends, retries,
-- latency to start (queued -> running) and response time (queued -> finished).
SELECT transid,
    count(*) AS count,
    count(*) FILTER (WHERE state = 'done') AS done,
    count(*) FILTER (WHERE state = 'failed') AS abends,
    coalesce(sum(greatest(attempt - 1, 0)), 0) AS retries,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM started_at - enqueued_at) * 1000)
        FILTER (WHERE started_at IS NOT NULL) AS start_latency_ms,
    percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM finished_at - enqueued_at) * 1000) AS response_ms,
    avg(extract(epoch FROM finished_at - coalesce(started_at, finished_at)) * 1000) AS run_avg_ms
FROM dispatcher.request_history
WHERE region = %(region)s AND finished_at >= %(since)s
GROUP BY transid
ORDER BY transid;

-- name: region_stats
-- Over tasks that ran since %(since)s (finished, and still running): the peak of tasks
-- running at once, how many times and how long the region sat at max SEPs, and the
-- time requests spent queued. Computed exactly from the tasks' start and end times.
WITH tasks AS (
    SELECT started_at AS s, finished_at AS f, enqueued_at AS q
    FROM dispatcher.request_history
    WHERE region = %(region)s AND finished_at >= %(since)s AND started_at IS NOT NULL
    UNION ALL
    SELECT coalesce(started_at, dispatched_at), clock_timestamp(), enqueued_at
    FROM dispatcher.request r
    WHERE region = %(region)s AND state <> 'queued'
      -- not the rest of a SEP's batch (--batch K), which has not started
      AND NOT EXISTS (SELECT 1 FROM dispatcher.sep s WHERE s.id = r.sep_id AND r.id = ANY (s.held))
),
events AS (
    SELECT s AS at, 1 AS delta FROM tasks
    UNION ALL
    SELECT f, -1 FROM tasks
),
running AS (
    SELECT at, sum(delta) OVER (ORDER BY at, delta ROWS UNBOUNDED PRECEDING) AS n,
        lead(at) OVER (ORDER BY at, delta) AS next_at
    FROM events
),
limits AS (SELECT max_seps FROM dispatcher.region WHERE name = %(region)s),
at_max AS (
    SELECT r.*, (r.n >= l.max_seps) AS full_now,
        lag(r.n >= l.max_seps, 1, false) OVER (ORDER BY r.at) AS full_before
    FROM running r, limits l
)
SELECT
    (SELECT max_seps FROM limits) AS max_seps,
    (SELECT count(*) FROM tasks) AS tasks,
    coalesce((SELECT max(n) FROM running), 0) AS peak_running,
    (SELECT count(*) FROM at_max WHERE full_now AND NOT full_before) AS times_at_max_seps,
    coalesce((SELECT sum(extract(epoch FROM next_at - at)) FROM at_max
              WHERE full_now AND next_at IS NOT NULL), 0) AS seconds_at_max_seps,
    (SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (
        ORDER BY extract(epoch FROM s - q) * 1000) FROM tasks) AS queued_ms;
