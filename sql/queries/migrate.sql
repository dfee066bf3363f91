-- name: version_table_present
SELECT to_regclass('dispatcher_alembic_version') IS NOT NULL AS present;

-- name: alembic_revision
SELECT version_num FROM dispatcher_alembic_version;
