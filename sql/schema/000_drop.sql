-- Downgrade of revision 0001: removes everything the region database holds.
DROP SCHEMA IF EXISTS dispatcher CASCADE;
DROP SCHEMA IF EXISTS dispatcher_xr CASCADE;
