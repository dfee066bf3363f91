-- name: register_sep
SELECT * FROM dispatcher_v2.register_sep(%(region)s, %(host)s, %(pid)s, %(capabilities)s,
    %(standby)s, %(address)s);

-- name: claim_next
SELECT * FROM dispatcher_v2.claim(%(sep)s, 1);

-- name: begin_task
SELECT * FROM dispatcher_v2.begin(%(sep)s, %(request)s);

-- name: complete
SELECT * FROM dispatcher_v2.complete(%(sep)s, %(request)s, %(attempt)s, %(ok)s, %(result)s,
    %(error)s, %(take_next)s, %(next_transid)s, %(commarea)s);

-- name: heartbeat_sep
SELECT * FROM dispatcher_v2.heartbeat_sep(%(sep)s);

-- name: leave_sep
SELECT dispatcher_v2.leave_sep(%(sep)s) AS requeued;

-- name: control_sep
SELECT * FROM dispatcher_v2.control_sep(%(sep)s, %(action)s);

-- name: list_seps
SELECT s.id, s.host, s.pid, s.state, s.paused, s.stop_requested, s.standby, s.capabilities,
    s.current_request, s.current_attempt, s.held, s.tasks_run, s.address, s.started_at,
    s.heartbeat_at,
    round(extract(epoch FROM clock_timestamp() - s.heartbeat_at)::numeric, 1)::float8
        AS heartbeat_age_s,
    (s.state <> 'dead' AND s.heartbeat_at < clock_timestamp() - r.sep_dead_after) AS silent
FROM dispatcher.sep s JOIN dispatcher.region r ON r.name = s.region
WHERE s.region = %(region)s ORDER BY s.id;

-- name: session_listener_address
SELECT l.address FROM dispatcher.session s JOIN dispatcher.listener l ON l.id = s.listener_id
WHERE s.id = %(session)s;

-- name: sep_state
SELECT state, paused, stop_requested, standby FROM dispatcher.sep WHERE id = %(sep)s;

-- name: active_seps
SELECT dispatcher_v2.active_seps(%(region)s) AS n;

-- name: sample_done_count
-- Used by the bundled sample app (examples/sample.py): finished requests of a transaction.
SELECT count(*) AS n FROM dispatcher.request_history
WHERE region = %(region)s AND transid = %(transid)s AND state = 'done';

-- name: async_commit
-- A SEP started with --async-commit: its completions do not wait for the WAL flush.
SELECT set_config('synchronous_commit', 'off', false) AS synchronous_commit;

-- name: claim_batch
SELECT * FROM dispatcher_v2.claim(%(sep)s, %(take)s);

-- name: complete_many
SELECT * FROM dispatcher_v2.complete_many(%(sep)s, %(report)s::jsonb, %(clock)s,
    %(release)s::bigint[], %(take)s, %(running)s);

-- name: sep_of_process
-- The live SEP that a supervisor's child process registered (sep/supervisor.py).
SELECT id FROM dispatcher.sep
WHERE region = %(region)s AND host = %(host)s AND pid = %(pid)s AND state <> 'dead';

-- name: overdue_seps
-- The supervisor's watchdog: SEPs among its children (host, pids) whose current task
-- has run longer than its transaction's timeout plus GRACE seconds (a task handed over
-- by a listener runs while still 'dispatched': it counts from its dispatch).
SELECT s.id AS sep_id, s.pid, r.id AS request_id, r.attempt, x.timeout_s
FROM dispatcher.sep s
JOIN dispatcher.request r ON r.id = s.current_request AND r.sep_id = s.id
JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
WHERE s.region = %(region)s AND s.host = %(host)s AND s.pid = ANY (%(pids)s::integer[])
  AND s.state <> 'dead' AND r.state IN ('dispatched', 'running') AND x.timeout_s IS NOT NULL
  AND coalesce(r.started_at, r.dispatched_at)
      < clock_timestamp() - make_interval(secs => x.timeout_s + %(grace)s);

-- name: bound_waits
-- The watchdog's connection: no lock or statement of its fence waits longer than this.
SELECT set_config('lock_timeout', %(ms)s, false) AS lock_timeout,
       set_config('statement_timeout', %(ms)s, false) AS statement_timeout;

-- name: end_backend
-- A SEP whose task overran: end the backend of its task's connection (its transaction
-- rolls back and its locks go at once, even while a statement runs).
SELECT dispatcher_v2.end_sep_backend(%(pid)s) AS ended;
