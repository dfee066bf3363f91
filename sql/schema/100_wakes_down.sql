-- Revision 0007 down: leave_listener_v1 as revision 0001 made it (SECURITY DEFINER as
-- revision 0005 set it) and wake_idle_sep as revision 0004 made it.

CREATE OR REPLACE FUNCTION dispatcher.leave_listener_v1(p_listener uuid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM dispatcher.session WHERE listener_id = p_listener;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM dispatcher.listener WHERE id = p_listener;
    RETURN n;
END $$;

CREATE OR REPLACE FUNCTION dispatcher_v2.wake_idle_sep(p_region text, p_except bigint)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT id FROM dispatcher.sep
          WHERE region = p_region AND state = 'idle' AND id <> p_except
          ORDER BY idle_since LIMIT 1) w
$$;
