-- name: ensure_region
SELECT * FROM dispatcher.ensure_region_v1(%(region)s);

-- name: get_region
SELECT * FROM dispatcher.get_region_v1(%(region)s);

-- name: set_region
SELECT * FROM dispatcher.set_region_v1(%(region)s, %(max_seps)s, %(state)s, %(aging_ms)s,
    %(sep_dead_after_s)s, %(history_retention_s)s);

-- name: reap
SELECT * FROM dispatcher_v2.reap(%(region)s);

-- name: region_status
SELECT r.name, r.max_seps, r.state,
    (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM
        (SELECT state, count(*) AS n FROM dispatcher.sep WHERE region = r.name GROUP BY state) s)
        AS seps,
    (SELECT coalesce(jsonb_object_agg(state, n), '{}') FROM
        (SELECT state, count(*) AS n FROM dispatcher.request WHERE region = r.name GROUP BY state) q)
        AS requests,
    (SELECT coalesce(jsonb_object_agg(band, n), '{}') FROM
        (SELECT (priority / 64) * 64 || '-' || ((priority / 64) * 64 + 63) AS band,
                count(*) AS n
         FROM dispatcher.request WHERE region = r.name AND state = 'queued' GROUP BY 1) b)
        AS queued_by_band,
    (SELECT jsonb_build_object('id', id, 'transid', transid, 'priority', priority,
                               'age_s', extract(epoch FROM clock_timestamp() - enqueued_at))
     FROM dispatcher.request WHERE region = r.name AND state = 'queued'
     ORDER BY enqueued_at LIMIT 1) AS oldest_queued,
    (SELECT count(*) FROM dispatcher.listener WHERE region = r.name) AS listeners,
    (SELECT count(*) FROM dispatcher.session WHERE region = r.name) AS sessions
FROM dispatcher.region r WHERE r.name = %(region)s;

-- name: channel_secret
-- The region's channel secret: the first frame on every connection of the internal
-- channel carries it (dispatcher/channel.py).
SELECT dispatcher_v2.channel_secret(%(region)s) AS secret;
