-- Operating a region (revision 0005): session limits, the secret of the internal
-- channel, and least-privilege roles for the region's processes.
--
-- Roles (cluster-wide, created once, NOLOGIN): each process of a region works with the
-- rights of its kind and no more. A login role is made a member of one of them by the
-- operator (docs/operations.md, "Database roles"); `dispatcher up` and the process
-- commands take the role of their kind themselves when the login user may (SET ROLE).
--   dispatcher_listener  listener and HTTP front: sessions, enqueue, results, timers
--   dispatcher_sep       SEPs and their supervisor: register, claim, complete, heartbeat
--   dispatcher_monitor   the event monitor: timers, and enqueue what fires
--   dispatcher_viewer    the status page: reads the region's state, changes nothing
--   dispatcher_operator  the CLI: everything in the region's schemas
-- The processes' roles change rows only through the procedures granted to them, which
-- run with the rights of their owner (SECURITY DEFINER, search_path pinned); they may
-- read what the region's status and metrics need, and never the token table.

-- ------------------------------------------------------------------ session limits
ALTER TABLE dispatcher.token
    ADD COLUMN max_sessions integer CHECK (max_sessions IS NULL OR max_sessions > 0);

CREATE FUNCTION dispatcher_v2.create_token(
    p_region text, p_name text, p_hash bytea, p_allow text[], p_priority integer,
    p_max_sessions integer
) RETURNS dispatcher.token
LANGUAGE plpgsql AS $$
DECLARE
    t dispatcher.token;
BEGIN
    IF p_max_sessions IS NOT NULL AND p_max_sessions < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('max sessions must be 1 or more, not %s', p_max_sessions);
    END IF;
    t := dispatcher.create_token_v1(p_region, p_name, p_hash, p_allow, p_priority);
    UPDATE dispatcher.token SET max_sessions = p_max_sessions
    WHERE region = p_region AND name = p_name
    RETURNING * INTO t;
    RETURN t;
END $$;

-- The token whose hash is P_HASH (no row: none). For the HTTP front, whose role may not
-- read the token table.
CREATE FUNCTION dispatcher_v2.check_token(p_region text, p_hash bytea)
RETURNS TABLE (name text, allow text[], priority integer)
LANGUAGE sql STABLE AS $$
    SELECT t.name, t.allow, t.priority FROM dispatcher.token t
    WHERE t.region = p_region AND t.hash = p_hash
$$;

-- A client's hello: the token whose hash is P_HASH opens a session on listener
-- P_LISTENER. Refused with DP011 (unknown token) or DP012 (the token's max sessions are
-- open, in all the region's listeners). The token's row lock orders concurrent hellos
-- of one token, so the limit holds under a race.
CREATE FUNCTION dispatcher_v2.open_session(p_region text, p_listener uuid, p_hash bytea)
RETURNS TABLE (id uuid, name text, allow text[], priority integer)
LANGUAGE plpgsql AS $$
DECLARE
    t dispatcher.token;
    v_open integer;
    v_id uuid;
BEGIN
    SELECT * INTO t FROM dispatcher.token tk
    WHERE tk.region = p_region AND tk.hash = p_hash
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP011', MESSAGE = 'unknown token';
    END IF;
    IF t.max_sessions IS NOT NULL THEN
        SELECT count(*) INTO v_open FROM dispatcher.session s
        WHERE s.region = p_region AND s.user_name = t.name;
        IF v_open >= t.max_sessions THEN
            RAISE EXCEPTION USING ERRCODE = 'DP012',
                MESSAGE = format('token %s has its %s sessions open (its max sessions)',
                                 t.name, t.max_sessions),
                HINT = 'end a session of this token first, or raise its limit: '
                       'dispatcher token create NAME --max-sessions N';
        END IF;
    END IF;
    v_id := dispatcher.register_session_v1(p_region, p_listener, t.name, t.priority);
    RETURN QUERY SELECT v_id, t.name, t.allow, t.priority;
END $$;

-- --------------------------------------------------------- the internal channel
-- The region's channel secret: the first frame on every connection to a listener's or
-- a SEP's channel socket must carry it (dispatcher/channel.py). Only the processes'
-- roles and the operator read it, through channel_secret().
CREATE TABLE dispatcher.region_secret (
    region          text PRIMARY KEY REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    channel_secret  text NOT NULL
        DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '')
);

CREATE FUNCTION dispatcher_v2.channel_secret(p_region text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v text;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    INSERT INTO dispatcher.region_secret (region) VALUES (p_region)
    ON CONFLICT (region) DO NOTHING;
    SELECT channel_secret INTO v FROM dispatcher.region_secret WHERE region = p_region;
    RETURN v;
END $$;

-- A SEP's watchdog ends the backend of its own overrunning task: only a backend of this
-- database, of the same login, whose application is a SEP's task connection.
CREATE FUNCTION dispatcher_v2.end_sep_backend(p_pid integer) RETURNS boolean
LANGUAGE sql AS $$
    SELECT coalesce(bool_or(pg_terminate_backend(a.pid)), false)
    FROM pg_stat_activity a
    WHERE a.pid = p_pid AND a.datname = current_database()
      AND a.usename = session_user AND a.application_name = 'dispatcher-sep'
$$;

-- ------------------------------------------------------------- forced requeues
-- Every request taken back from a SEP that died or was declared dead is said, one
-- NOTICE per request (request_requeued, or request_failed_sep_lost when it may not run
-- again), with a JSON detail: the process that reaped logs each one
-- (dispatcher/database.py).
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
            RAISE NOTICE USING MESSAGE = 'request_failed_sep_lost', DETAIL = json_build_object(
                'request_id', r.id, 'sep', s.id, 'attempt', r.attempt, 'why', p_why,
                'conversation', true)::text;
        ELSIF r.attempt >= v_max THEN
            PERFORM dispatcher_v2.archive(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s; gave up after %s attempts', p_why, r.attempt)));
            RAISE NOTICE USING MESSAGE = 'request_failed_sep_lost', DETAIL = json_build_object(
                'request_id', r.id, 'sep', s.id, 'attempt', r.attempt, 'why', p_why,
                'conversation', false)::text;
        ELSE
            UPDATE dispatcher.request SET state = 'queued', sep_id = NULL,
                error = jsonb_build_object('type', 'SEPLost', 'message', p_why)
            WHERE id = r.id;
            RAISE NOTICE USING MESSAGE = 'request_requeued', DETAIL = json_build_object(
                'request_id', r.id, 'sep', s.id, 'attempt', r.attempt, 'why', p_why)::text;
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

-- ------------------------------------------------------------------------ roles
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['dispatcher_listener', 'dispatcher_sep', 'dispatcher_monitor',
                             'dispatcher_viewer', 'dispatcher_operator'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION
                WHEN duplicate_object OR unique_violation THEN
                    NULL;  -- another database of this server created it meanwhile
                WHEN insufficient_privilege THEN
                    RAISE NOTICE 'role % not created (no CREATEROLE): the region''s '
                        'processes will work with the rights of their login', r;
            END;
        END IF;
    END LOOP;
END $$;

-- The procedures the processes call run with their owner's rights, on a pinned path;
-- the rest of the region's procedures may be called by their owner and the operator only.
CREATE FUNCTION dispatcher_v2.process_procedures()
RETURNS TABLE (role text, proc text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r, p FROM (VALUES
        ('dispatcher_listener', 'dispatcher_v2.open_session'),
        ('dispatcher_listener', 'dispatcher_v2.check_token'),
        ('dispatcher_listener', 'dispatcher_v2.channel_secret'),
        ('dispatcher_listener', 'dispatcher.register_listener_v1'),
        ('dispatcher_listener', 'dispatcher.heartbeat_listener_v1'),
        ('dispatcher_listener', 'dispatcher.leave_listener_v1'),
        ('dispatcher_listener', 'dispatcher.reap_listeners_v1'),
        ('dispatcher_listener', 'dispatcher.register_session_v1'),
        ('dispatcher_listener', 'dispatcher.end_session_v1'),
        ('dispatcher_listener', 'dispatcher_v2.enqueue'),
        ('dispatcher_listener', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_listener', 'dispatcher_v2.cancel_request'),
        ('dispatcher_listener', 'dispatcher.get_region_v1'),
        ('dispatcher_listener', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_listener', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_sep', 'dispatcher_v2.channel_secret'),
        ('dispatcher_sep', 'dispatcher_v2.register_sep'),
        ('dispatcher_sep', 'dispatcher_v2.claim'),
        ('dispatcher_sep', 'dispatcher_v2.begin'),
        ('dispatcher_sep', 'dispatcher_v2.complete'),
        ('dispatcher_sep', 'dispatcher_v2.complete_many'),
        ('dispatcher_sep', 'dispatcher_v2.heartbeat_sep'),
        ('dispatcher_sep', 'dispatcher_v2.leave_sep'),
        ('dispatcher_sep', 'dispatcher_v2.control_sep'),
        ('dispatcher_sep', 'dispatcher_v2.active_seps'),
        ('dispatcher_sep', 'dispatcher_v2.reap'),
        ('dispatcher_sep', 'dispatcher_v2.end_sep_backend'),
        ('dispatcher_sep', 'dispatcher.define_transaction_v2'),
        ('dispatcher_sep', 'dispatcher.get_region_v1'),
        ('dispatcher_sep', 'dispatcher_v2.enqueue'),
        ('dispatcher_sep', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_sep', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_sep', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_monitor', 'dispatcher.get_region_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_viewer', 'dispatcher.get_region_v1')
    ) AS t (r, p)
$$;

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT DISTINCT p.oid::regprocedure FROM pg_proc p
        JOIN dispatcher_v2.process_procedures() pp
          ON p.pronamespace = split_part(pp.proc, '.', 1)::regnamespace
         AND p.proname = split_part(pp.proc, '.', 2)
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp',
                       f);
    END LOOP;
END $$;

-- Grant each role its rights (again after a migration that adds procedures).
CREATE FUNCTION dispatcher_v2.grant_roles() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r text;
    f record;
    processes text[] := ARRAY['dispatcher_listener', 'dispatcher_sep', 'dispatcher_monitor',
                              'dispatcher_viewer'];
BEGIN
    IF (SELECT count(*) FROM pg_roles
        WHERE rolname IN ('dispatcher_listener', 'dispatcher_sep', 'dispatcher_monitor',
                          'dispatcher_viewer', 'dispatcher_operator')) < 5 THEN
        -- no roles to give the rights to (a login without CREATEROLE ran the migration):
        -- every login keeps calling the procedures as before
        RAISE NOTICE 'the dispatcher roles do not exist: procedures stay callable by PUBLIC';
        RETURN;
    END IF;
    EXECUTE 'REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA dispatcher, dispatcher_v2, dispatcher_xr '
            'FROM PUBLIC';
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dispatcher_operator') THEN
        EXECUTE 'GRANT USAGE ON SCHEMA dispatcher, dispatcher_v2, dispatcher_xr '
                'TO dispatcher_operator';
        EXECUTE 'GRANT ALL ON ALL TABLES IN SCHEMA dispatcher, dispatcher_v2, dispatcher_xr '
                'TO dispatcher_operator';
        EXECUTE 'GRANT ALL ON ALL SEQUENCES IN SCHEMA dispatcher, dispatcher_v2, dispatcher_xr '
                'TO dispatcher_operator';
        EXECUTE 'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA dispatcher, dispatcher_v2, '
                'dispatcher_xr TO dispatcher_operator';
        IF to_regclass('public.dispatcher_alembic_version') IS NOT NULL THEN
            EXECUTE 'GRANT SELECT ON public.dispatcher_alembic_version TO dispatcher_operator';
        END IF;
    END IF;
    FOREACH r IN ARRAY processes LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r);
        EXECUTE format('GRANT USAGE ON SCHEMA dispatcher, dispatcher_v2, dispatcher_xr TO %I', r);
        -- what status, metrics and the processes' own queries read; never the tokens
        EXECUTE format('GRANT SELECT ON dispatcher.region, dispatcher.sep, dispatcher.listener, '
                       'dispatcher.session, dispatcher.request, dispatcher.request_history, '
                       'dispatcher.transaction, dispatcher.tx_class, dispatcher_xr.timer, '
                       'dispatcher_xr.firing TO %I', r);
        IF to_regclass('public.dispatcher_alembic_version') IS NOT NULL THEN
            -- a process checks the database's revision when it starts
            EXECUTE format('GRANT SELECT ON public.dispatcher_alembic_version TO %I', r);
        END IF;
        EXECUTE format('GRANT EXECUTE ON FUNCTION dispatcher.sep_channel(bigint), '
                       'dispatcher_xr.clock(), dispatcher_xr.channel() TO %I', r);
        FOR f IN
            SELECT DISTINCT p.oid::regprocedure AS proc FROM pg_proc p
            JOIN dispatcher_v2.process_procedures() pp
              ON p.pronamespace = split_part(pp.proc, '.', 1)::regnamespace
             AND p.proname = split_part(pp.proc, '.', 2)
            WHERE pp.role = r
        LOOP
            EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', f.proc, r);
        END LOOP;
    END LOOP;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dispatcher_listener') THEN
        -- a conversation's session is bound to its SEP (listener/routing.py)
        EXECUTE 'GRANT UPDATE (bound_sep) ON dispatcher.session TO dispatcher_listener';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dispatcher_monitor') THEN
        -- the monitor owns the timers' life: claim, reschedule, record firings, purge
        EXECUTE 'GRANT SELECT, INSERT, UPDATE, DELETE ON dispatcher_xr.timer, '
                'dispatcher_xr.firing TO dispatcher_monitor';
        EXECUTE 'GRANT USAGE ON ALL SEQUENCES IN SCHEMA dispatcher_xr TO dispatcher_monitor';
    END IF;
END $$;

SELECT dispatcher_v2.grant_roles();
