-- name: may_take_role
-- May this connection's login take ROLE (SET ROLE)? False when the role does not exist
-- (a server where the migrations could not create it). PostgreSQL 16 and later keep the
-- right to SET a role apart from membership (a CREATEROLE login is an admin of the roles
-- it made, not allowed to SET them by default): ask for that right there.
SELECT CASE
    WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s) THEN false
    WHEN pg_catalog.current_setting('server_version_num')::integer >= 160000
        THEN pg_catalog.pg_has_role(session_user, %(role)s, 'SET')
    ELSE pg_catalog.pg_has_role(session_user, %(role)s, 'MEMBER')
END AS may;

-- name: current_role
-- The role this connection works with, and its login.
SELECT current_user AS role, session_user AS login;
