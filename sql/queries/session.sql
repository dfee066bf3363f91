-- name: register_session
-- A session of USER (a listener that was declared dead registers its open sessions
-- again; tests).
SELECT dispatcher.register_session_v1(%(region)s, %(listener)s, %(user)s, %(priority)s) AS id;

-- name: open_session
-- A hello: the token whose hash is given opens a session (DP011: unknown token; DP012:
-- the token's max sessions are open).
SELECT id, name, allow, priority FROM dispatcher_v2.open_session(%(region)s, %(listener)s,
    %(hash)s);

-- name: end_session
SELECT dispatcher.end_session_v1(%(session)s) AS ended;
