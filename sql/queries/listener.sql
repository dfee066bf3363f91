-- name: create_token
SELECT * FROM dispatcher_v2.create_token(%(region)s, %(name)s, %(hash)s, %(allow)s, %(priority)s,
    %(max_sessions)s);

-- name: find_token
SELECT name, allow, priority FROM dispatcher_v2.check_token(%(region)s, %(hash)s);

-- name: revoke_token
-- Delete token NAME: no new session may use it (sessions already open go on).
DELETE FROM dispatcher.token WHERE region = %(region)s AND name = %(name)s RETURNING name;

-- name: list_tokens
SELECT name, allow, priority, max_sessions, created_at FROM dispatcher.token
WHERE region = %(region)s ORDER BY name;

-- name: register_listener
SELECT dispatcher.register_listener_v1(%(region)s, %(host)s, %(port)s, %(pid)s, %(address)s) AS id;

-- name: heartbeat_listener
SELECT dispatcher.heartbeat_listener_v1(%(listener)s) AS alive;

-- name: leave_listener
SELECT dispatcher.leave_listener_v1(%(listener)s) AS sessions;

-- name: reap_listeners
SELECT dispatcher.reap_listeners_v1(%(region)s, %(dead_after_s)s) AS reaped;

-- name: sep_address
SELECT address FROM dispatcher.sep WHERE id = %(sep)s AND state <> 'dead';

-- name: notify_sep_dispatch
SELECT pg_notify(dispatcher.sep_channel(%(sep)s), 'dispatch ' || %(request)s);

-- name: session_next
SELECT next_transid, commarea FROM dispatcher.session WHERE id = %(session)s;

-- name: outcomes
SELECT id, state, result, error FROM dispatcher.request_history WHERE id = ANY(%(ids)s);

-- name: bind_session
-- The session's task is in a conversation with this SEP: if the SEP dies, the request
-- fails (SEPLost) instead of running again from its start.
UPDATE dispatcher.session SET bound_sep = %(sep)s WHERE id = %(session)s;

-- name: listener_ping
-- The listener's probe while the database is away: does a query get through?
SELECT 1 AS ok;
