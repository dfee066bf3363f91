-- name: register_sep
SELECT * FROM dispatcher.register_sep_v1(%(region)s, %(host)s, %(pid)s, %(capabilities)s,
    %(standby)s, %(address)s);

-- name: claim_next
SELECT * FROM dispatcher.claim_next_v1(%(sep)s);

-- name: begin_task
SELECT * FROM dispatcher.begin_v1(%(sep)s, %(request)s);

-- name: complete
SELECT * FROM dispatcher.complete_v1(%(sep)s, %(request)s, %(attempt)s, %(ok)s, %(result)s,
    %(error)s, %(take_next)s, %(next_transid)s, %(commarea)s);

-- name: heartbeat_sep
SELECT * FROM dispatcher.heartbeat_sep_v1(%(sep)s);

-- name: leave_sep
SELECT dispatcher.leave_sep_v1(%(sep)s) AS requeued;

-- name: control_sep
SELECT * FROM dispatcher.control_sep_v1(%(sep)s, %(action)s);

-- name: list_seps
SELECT id, host, pid, state, paused, stop_requested, standby, capabilities, current_request,
    current_attempt, tasks_run, address, started_at, heartbeat_at
FROM dispatcher.sep WHERE region = %(region)s ORDER BY id;

-- name: live_sep_ids
SELECT id FROM dispatcher.sep WHERE region = %(region)s AND state <> 'dead' ORDER BY id;

-- name: session_listener_address
SELECT l.address FROM dispatcher.session s JOIN dispatcher.listener l ON l.id = s.listener_id
WHERE s.id = %(session)s;

-- name: sep_state
SELECT state, paused, stop_requested, standby FROM dispatcher.sep WHERE id = %(sep)s;

-- name: active_seps
SELECT dispatcher.active_seps(%(region)s) AS n;

-- name: sample_done_count
-- Used by the bundled sample app (dispatcher/sample/app.py): finished requests of a transaction.
SELECT count(*) AS n FROM dispatcher.request_history
WHERE region = %(region)s AND transid = %(transid)s AND state = 'done';

-- name: async_commit
-- A SEP started with --async-commit: its completions do not wait for the WAL flush.
SELECT set_config('synchronous_commit', 'off', false) AS synchronous_commit;
