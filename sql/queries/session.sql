-- name: register_session
SELECT dispatcher.register_session_v1(%(region)s, %(listener)s, %(user)s, %(priority)s) AS id;

-- name: end_session
SELECT dispatcher.end_session_v1(%(session)s) AS ended;
