-- name: may_take_role
-- May this connection's login take ROLE (SET ROLE)? False when the role does not exist
-- (a server where the migrations could not create it).
SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s)
    THEN pg_catalog.pg_has_role(session_user, %(role)s, 'MEMBER') ELSE false END AS may;

-- name: current_role
-- The role this connection works with, and its login.
SELECT current_user AS role, session_user AS login;
