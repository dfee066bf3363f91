-- Revision 0005 down: the procedures run with their caller's rights again, every role
-- may call them (PostgreSQL's default), the roles lose their rights here (and go when no
-- other database of the server uses them), session limits and the channel secret go.
DO $$
DECLARE
    f regprocedure;
    r text;
BEGIN
    FOR f IN
        SELECT DISTINCT p.oid::regprocedure FROM pg_proc p
        JOIN dispatcher_v2.process_procedures() pp
          ON p.pronamespace = split_part(pp.proc, '.', 1)::regnamespace
         AND p.proname = split_part(pp.proc, '.', 2)
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY INVOKER RESET search_path', f);
    END LOOP;
    EXECUTE 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA dispatcher, dispatcher_v2, dispatcher_xr '
            'TO PUBLIC';
    FOREACH r IN ARRAY ARRAY['dispatcher_listener', 'dispatcher_sep', 'dispatcher_monitor',
                             'dispatcher_viewer', 'dispatcher_operator'] LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA dispatcher, dispatcher_v2, '
                       'dispatcher_xr FROM %I', r);
        EXECUTE format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA dispatcher, dispatcher_v2, '
                       'dispatcher_xr FROM %I', r);
        EXECUTE format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA dispatcher, dispatcher_v2, '
                       'dispatcher_xr FROM %I', r);
        IF to_regclass('public.dispatcher_alembic_version') IS NOT NULL THEN
            EXECUTE format('REVOKE ALL ON public.dispatcher_alembic_version FROM %I', r);
        END IF;
        EXECUTE format('REVOKE ALL ON SCHEMA dispatcher, dispatcher_v2, dispatcher_xr FROM %I',
                       r);
        BEGIN
            EXECUTE format('DROP ROLE %I', r);
        EXCEPTION
            WHEN SQLSTATE '2BP01' OR insufficient_privilege OR object_in_use THEN
                NULL;  -- another database of this server still uses it
        END;
    END LOOP;
END $$;

DROP FUNCTION dispatcher_v2.grant_roles();
DROP FUNCTION dispatcher_v2.process_procedures();
DROP FUNCTION dispatcher_v2.end_sep_backend(integer);
DROP FUNCTION dispatcher_v2.channel_secret(text);
DROP TABLE dispatcher.region_secret;
DROP FUNCTION dispatcher_v2.open_session(text, uuid, bytea);
DROP FUNCTION dispatcher_v2.check_token(text, bytea);
DROP FUNCTION dispatcher_v2.create_token(text, text, bytea, text[], integer, integer);
ALTER TABLE dispatcher.token DROP COLUMN max_sessions;

-- requeue_held as revision 0004 made it (no NOTICE per request)
CREATE OR REPLACE FUNCTION dispatcher_v2.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r dispatcher.request;
    v_max integer;
    n integer := 0;
BEGIN
    SELECT max_redispatch INTO v_max FROM dispatcher.region WHERE name = s.region;
    FOR r IN SELECT * FROM dispatcher.request
             WHERE id = ANY (s.current_request || s.held) AND sep_id = s.id
             ORDER BY id FOR UPDATE LOOP
        IF r.session_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM dispatcher.session WHERE id = r.session_id AND bound_sep = s.id
        ) THEN
            PERFORM dispatcher_v2.archive(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s during a conversation', p_why)));
            UPDATE dispatcher.session SET bound_sep = NULL WHERE id = r.session_id;
        ELSIF r.attempt >= v_max THEN
            PERFORM dispatcher_v2.archive(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s; gave up after %s attempts', p_why, r.attempt)));
        ELSE
            UPDATE dispatcher.request SET state = 'queued', sep_id = NULL,
                error = jsonb_build_object('type', 'SEPLost', 'message', p_why)
            WHERE id = r.id;
        END IF;
        n := n + 1;
    END LOOP;
    UPDATE dispatcher.sep SET held = '{}' WHERE id = s.id AND held <> '{}';
    IF n > 0 THEN
        PERFORM dispatcher_v2.wake_idle_sep(s.region, s.id);   -- for the requeued work
    END IF;
    PERFORM dispatcher_v2.wake_for_keys(s.region);   -- its keys have new owners
    RETURN n;
END $$;
