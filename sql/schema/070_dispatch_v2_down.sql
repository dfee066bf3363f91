-- Revision 0004 down: the dispatch procedures of version 2 go; version 1 (in the
-- dispatcher schema) was never changed by 0004; the routing key column goes too.
DROP SCHEMA dispatcher_v2 CASCADE;
ALTER TABLE dispatcher.request DROP COLUMN routing_key;
