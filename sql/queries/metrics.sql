-- name: metrics_gauges
SELECT
    (SELECT count(*) FROM dispatcher.request r
     WHERE region = %(region)s AND state <> 'queued'
       -- not the rest of a SEP's batch (--batch K), which has not started
       AND NOT EXISTS (SELECT 1 FROM dispatcher.sep s
                       WHERE s.id = r.sep_id AND r.id = ANY (s.held))) AS running,
    (SELECT coalesce(extract(epoch FROM clock_timestamp() - min(enqueued_at)), 0)
     FROM dispatcher.request WHERE region = %(region)s AND state = 'queued') AS oldest_queued_s,
    (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM
        (SELECT state, count(*) AS n FROM dispatcher.sep WHERE region = %(region)s
         GROUP BY state) s) AS seps,
    (SELECT coalesce(jsonb_object_agg(band, n), '{}') FROM
        (SELECT (priority / 64) * 64 || '-' || ((priority / 64) * 64 + 63) AS band,
                count(*) AS n
         FROM dispatcher.request WHERE region = %(region)s AND state = 'queued'
         GROUP BY 1) q) AS queued_by_band,
    (SELECT max_seps FROM dispatcher.region WHERE name = %(region)s) AS max_seps,
    (SELECT count(*) FROM dispatcher.session WHERE region = %(region)s) AS sessions;

-- name: metrics_finished
-- Requests finished by transaction and outcome, with response times counted into
-- buckets (width_bucket over the bucket bounds: bucket k holds bounds[k] <= t <
-- bounds[k+1]), over the history the region keeps.
SELECT transid, state, width_bucket(t, %(bounds)s::float8[]) AS bucket,
    count(*) AS n, sum(t) AS seconds
FROM (SELECT transid, state, extract(epoch FROM finished_at - enqueued_at)::float8 AS t
      FROM dispatcher.request_history WHERE region = %(region)s) h
GROUP BY 1, 2, 3;
