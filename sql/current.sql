-- The current schema of the region database: what `alembic upgrade head` builds.
-- Written by `python -m dispatcher.current_schema --write URL`; do not edit
-- (tests/test_migrations.py checks it against the migrations).
--
-- PostgreSQL database dump
--

--
-- Name: dispatcher; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA dispatcher;

--
-- Name: dispatcher_v2; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA dispatcher_v2;

--
-- Name: dispatcher_xr; Type: SCHEMA; Schema: -; Owner: -
--

CREATE SCHEMA dispatcher_xr;

--
-- Name: enqueued; Type: TYPE; Schema: dispatcher; Owner: -
--

CREATE TYPE dispatcher.enqueued AS (
	request_id bigint,
	sep_id bigint,
	reason text,
	duplicate boolean
);

--
-- Name: task; Type: TYPE; Schema: dispatcher; Owner: -
--

CREATE TYPE dispatcher.task AS (
	request_id bigint,
	attempt integer,
	transid text,
	program text,
	payload jsonb,
	session_id uuid,
	commarea jsonb,
	timeout_s double precision,
	enqueued_at timestamp with time zone
);

--
-- Name: enqueued; Type: TYPE; Schema: dispatcher_v2; Owner: -
--

CREATE TYPE dispatcher_v2.enqueued AS (
	request_id bigint,
	sep_id bigint,
	reason text,
	duplicate boolean,
	task jsonb,
	sep_address text
);

--
-- Name: active_seps(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.active_seps(p_region text) RETURNS integer
    LANGUAGE sql STABLE
    AS $$
    SELECT count(*)::integer FROM dispatcher.sep
    WHERE region = p_region AND state <> 'dead' AND NOT standby
$$;

--
-- Name: begin_v1(bigint, bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.begin_v1(p_sep bigint, p_request bigint) RETURNS dispatcher.task
    LANGUAGE plpgsql
    AS $$
BEGIN
    UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
    WHERE id = p_request AND sep_id = p_sep AND state IN ('dispatched', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('request %s is not dispatched to SEP %s', p_request, p_sep);
    END IF;
    RETURN dispatcher.task_of(p_request);
END $$;

--
-- Name: claim_batch_v1(bigint, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.claim_batch_v1(p_sep bigint, p_take integer) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    s := dispatcher.lock_sep(p_sep);
    UPDATE dispatcher.sep SET heartbeat_at = clock_timestamp() WHERE id = p_sep;
    IF s.state = 'busy' THEN
        UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
        WHERE id = s.current_request AND sep_id = p_sep AND state = 'dispatched';
        RETURN QUERY
            SELECT (dispatcher.task_of(r.id)).*
            FROM dispatcher.request r
            WHERE r.id = ANY (s.current_request || s.held) AND r.sep_id = p_sep
            ORDER BY r.id = s.current_request DESC, array_position(s.held, r.id);
        RETURN;
    END IF;
    IF s.state <> 'idle' THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM dispatcher.next_batch(s, 0, p_take);
END $$;

--
-- Name: claim_next_v1(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.claim_next_v1(p_sep bigint) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
    t dispatcher.task;
BEGIN
    s := dispatcher.lock_sep(p_sep);
    UPDATE dispatcher.sep SET heartbeat_at = clock_timestamp() WHERE id = p_sep;
    IF s.state = 'busy' THEN
        IF s.current_request IS NOT NULL THEN
            UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
            WHERE id = s.current_request AND state = 'dispatched';
            RETURN NEXT dispatcher.task_of(s.current_request);
        END IF;
        RETURN;
    END IF;
    IF s.state <> 'idle' THEN
        RETURN;
    END IF;
    t := dispatcher.next_or_rest(s, 0);
    IF t.request_id IS NOT NULL THEN
        RETURN NEXT t;
    END IF;
END $$;

--
-- Name: class_room(text, text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.class_room(p_region text, p_class text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_max integer;
    v_running integer;
BEGIN
    SELECT max_active INTO v_max FROM dispatcher.tx_class
    WHERE region = p_region AND name = p_class
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM dispatcher.tx_class WHERE region = p_region AND name = p_class) THEN
            RETURN -1;
        END IF;
        RETURN 1;   -- a class that was never sized has no limit
    END IF;
    SELECT count(*) INTO v_running FROM dispatcher.request
    WHERE region = p_region AND class = p_class AND state <> 'queued' AND class IS NOT NULL;
    RETURN CASE WHEN v_running < v_max THEN 1 ELSE 0 END;
END $$;

--
-- Name: complete_many_v1(bigint, jsonb, double precision, bigint[], integer, bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.complete_many_v1(p_sep bigint, p_report jsonb, p_clock double precision, p_release bigint[] DEFAULT '{}'::bigint[], p_take integer DEFAULT 0, p_running bigint DEFAULT NULL::bigint) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
    v_now timestamptz := clock_timestamp();
    v_ok integer;
    v_done integer;
    v_classes text[];
    v_left bigint[];
    v_released integer := 0;
    a record;
BEGIN
    IF p_report IS NULL OR jsonb_typeof(p_report) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'complete_many: the report must be a JSON array of outcomes';
    END IF;
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND OR s.state = 'dead' THEN
        s := dispatcher.lock_sep(p_sep);   -- raises the right error
    END IF;

    -- the tasks that ended well: to the history, set-based
    WITH item AS (
        SELECT u.* FROM jsonb_to_recordset(p_report)
            AS u(id bigint, attempt integer, ok boolean, result jsonb, next_transid text,
                 commarea jsonb, started double precision, ended double precision)
        WHERE u.ok
    ), gone AS (
        DELETE FROM dispatcher.request r USING item i
        WHERE r.id = i.id AND r.sep_id = p_sep AND r.attempt = i.attempt AND r.state <> 'queued'
        RETURNING r.*
    ), hist AS (
        INSERT INTO dispatcher.request_history
            (id, region, transid, payload, session_id, priority, state, attempt, sep_id, class,
             idempotency_key, origin, result, error, enqueued_at, dispatched_at, started_at,
             finished_at)
        SELECT g.id, g.region, g.transid, g.payload, g.session_id, g.priority, 'done', g.attempt,
               g.sep_id, g.class, g.idempotency_key, g.origin, coalesce(i.result, 'null'), NULL,
               g.enqueued_at, g.dispatched_at,
               greatest(coalesce(g.dispatched_at, g.enqueued_at),
                        v_now - make_interval(secs => greatest(p_clock - i.started, 0))),
               greatest(coalesce(g.dispatched_at, g.enqueued_at),
                        v_now - make_interval(secs => greatest(p_clock - i.ended, 0)))
        FROM gone g JOIN item i ON i.id = g.id
        RETURNING id, session_id, class
    ), sess AS (
        UPDATE dispatcher.session x SET
            next_transid = i.next_transid, commarea = i.commarea, bound_sep = NULL,
            last_active = v_now
        FROM hist h JOIN item i ON i.id = h.id
        WHERE x.id = h.session_id
        RETURNING 1
    )
    SELECT count(*), array_agg(DISTINCT h.class) FILTER (WHERE h.class IS NOT NULL)
    INTO v_done, v_classes
    FROM hist h;
    SELECT count(*) INTO v_ok FROM jsonb_array_elements(p_report) e
    WHERE (e ->> 'ok')::boolean;
    IF v_done <> v_ok THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('completion refused: SEP %s no longer holds %s of the %s requests it reported',
                             p_sep, v_ok - v_done, v_ok);
    END IF;

    -- abends: one by one, through the same rules as complete_v1 (retry or fail);
    -- complete_v1 counts each in sep.tasks_run
    FOR a IN SELECT u.* FROM jsonb_to_recordset(p_report)
                 AS u(id bigint, attempt integer, ok boolean, error jsonb)
             WHERE NOT coalesce(u.ok, false) LOOP
        PERFORM dispatcher.complete_v1(p_sep, a.id, a.attempt, false, NULL, a.error,
                                       false, NULL, NULL);
    END LOOP;

    -- requests never started: back in their old place, the attempt not counted
    IF coalesce(cardinality(p_release), 0) > 0 THEN
        UPDATE dispatcher.request SET state = 'queued', sep_id = NULL,
            attempt = greatest(attempt - 1, 0), dispatched_at = NULL
        WHERE id = ANY (p_release) AND sep_id = p_sep AND state = 'dispatched';
        GET DIAGNOSTICS v_released = ROW_COUNT;
    END IF;

    SELECT array_agg(r.id ORDER BY array_position(s.held, r.id)) INTO v_left
    FROM dispatcher.request r
    WHERE r.id = ANY (s.current_request || s.held) AND r.sep_id = p_sep;

    IF v_left IS NOT NULL THEN
        -- still holding prefetched requests: stay busy with them
        IF p_running = ANY (v_left) THEN
            UPDATE dispatcher.request SET state = 'running', started_at = v_now
            WHERE id = p_running AND state = 'dispatched';
        END IF;
        UPDATE dispatcher.sep SET
            state = 'busy', held = v_left, tasks_run = tasks_run + v_done,
            current_request = CASE WHEN p_running = ANY (v_left) THEN p_running
                                   WHEN current_request = ANY (v_left) THEN current_request END,
            current_attempt = CASE WHEN p_running = ANY (v_left)
                                   THEN (SELECT attempt FROM dispatcher.request WHERE id = p_running)
                                   WHEN current_request = ANY (v_left) THEN current_attempt END,
            heartbeat_at = v_now
        WHERE id = p_sep;
    ELSE
        SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep;
        UPDATE dispatcher.sep SET held = '{}' WHERE id = p_sep AND held <> '{}';
        IF coalesce(p_take, 0) > 0 THEN
            RETURN QUERY SELECT * FROM dispatcher.next_batch(s, v_done, p_take);
        ELSE
            UPDATE dispatcher.sep SET
                state = dispatcher.rest_state(s), current_request = NULL, current_attempt = NULL,
                idle_since = clock_timestamp(), tasks_run = tasks_run + v_done,
                heartbeat_at = clock_timestamp()
            WHERE id = p_sep;
        END IF;
    END IF;

    -- class slots or released requests this SEP did not take: wake an idle SEP to look
    IF v_released > 0 OR (v_classes IS NOT NULL AND EXISTS (
            SELECT 1 FROM dispatcher.request q
            WHERE q.region = s.region AND q.class = ANY (v_classes) AND q.state = 'queued')) THEN
        PERFORM dispatcher.wake_idle_sep(s.region, p_sep);
    END IF;
END $$;

--
-- Name: complete_v1(bigint, bigint, integer, boolean, jsonb, jsonb, boolean, text, jsonb); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.complete_v1(p_sep bigint, p_request bigint, p_attempt integer, p_ok boolean, p_result jsonb DEFAULT NULL::jsonb, p_error jsonb DEFAULT NULL::jsonb, p_take_next boolean DEFAULT true, p_next_transid text DEFAULT NULL::text, p_commarea jsonb DEFAULT NULL::jsonb) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
    r dispatcher.request;
    v_session uuid;
    v_class text;
    v_region text;
    t dispatcher.task;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND OR s.state = 'dead' THEN
        s := dispatcher.lock_sep(p_sep);   -- raises the right error
    END IF;

    IF p_ok THEN
        WITH gone AS (
            DELETE FROM dispatcher.request
            WHERE id = p_request AND sep_id = p_sep AND attempt = p_attempt AND state <> 'queued'
            RETURNING *
        )
        INSERT INTO dispatcher.request_history
            (id, region, transid, payload, session_id, priority, state, attempt, sep_id, class,
             idempotency_key, origin, result, error, enqueued_at, dispatched_at, started_at)
        SELECT id, region, transid, payload, session_id, priority, 'done', attempt, sep_id, class,
               idempotency_key, origin, p_result, p_error, enqueued_at, dispatched_at,
               coalesce(started_at, dispatched_at)
        FROM gone
        RETURNING session_id, class, region INTO v_session, v_class, v_region;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'DP004',
                MESSAGE = format('completion refused: SEP %s no longer holds attempt %s of request %s',
                                 p_sep, p_attempt, p_request);
        END IF;
        IF v_session IS NOT NULL THEN
            UPDATE dispatcher.session SET
                next_transid = p_next_transid, commarea = p_commarea, bound_sep = NULL,
                last_active = clock_timestamp()
            WHERE id = v_session;
        END IF;
    ELSE
        SELECT * INTO r FROM dispatcher.request WHERE id = p_request FOR UPDATE;
        IF NOT FOUND OR r.sep_id IS DISTINCT FROM p_sep OR r.attempt <> p_attempt
           OR r.state = 'queued' THEN
            RAISE EXCEPTION USING ERRCODE = 'DP004',
                MESSAGE = format('completion refused: SEP %s no longer holds attempt %s of request %s',
                                 p_sep, p_attempt, p_request);
        END IF;
        v_class := r.class;
        v_region := r.region;
        IF r.attempt >= r.max_attempts OR p_error->>'type' = 'SessionEnded' THEN
            -- (a conversation whose session ended is never run again: nobody is there
            -- to talk to, and it would start the dialogue from its beginning)
            PERFORM dispatcher.finish_request(r, 'failed', p_result, p_error);
        ELSE
            -- abend with attempts left: back in the queue, in its old place, after a
            -- backoff of retry_backoff_s * 2^(attempt - 1), at most max_backoff_s (and
            -- never over 7 days, whatever a row holds), then +-10% jitter. Each factor
            -- is bounded first: no attempt count or stored value can overflow (NaN and
            -- Infinity sort above every number, so least() passes them over).
            UPDATE dispatcher.request SET
                state = 'queued', sep_id = NULL, error = p_error,
                not_before = clock_timestamp() + make_interval(secs =>
                    coalesce((SELECT least(x.max_backoff_s, 604800,
                                           least(greatest(x.retry_backoff_s, 0), 604800)
                                           * power(2::float8, least(greatest(r.attempt - 1, 0), 60)))
                              FROM dispatcher.transaction x
                              WHERE x.region = r.region AND x.transid = r.transid), 0)
                    * (0.9 + 0.2 * random()))
            WHERE id = r.id;
        END IF;
    END IF;

    IF p_take_next THEN
        t := dispatcher.next_or_rest(s, 1);
    ELSE
        UPDATE dispatcher.sep SET state = dispatcher.rest_state(s), idle_since = clock_timestamp(),
            current_request = NULL, current_attempt = NULL, tasks_run = tasks_run + 1,
            heartbeat_at = clock_timestamp()
        WHERE id = p_sep;
    END IF;

    -- a class slot came free and this SEP did not use it: wake an idle SEP to look
    IF v_class IS NOT NULL THEN
        IF (t.request_id IS NULL OR
            (SELECT class FROM dispatcher.request WHERE id = t.request_id) IS DISTINCT FROM v_class)
           AND EXISTS (SELECT 1 FROM dispatcher.request q
                       WHERE q.region = v_region AND q.class = v_class AND q.state = 'queued') THEN
            PERFORM dispatcher.wake_idle_sep(v_region, p_sep);
        END IF;
    END IF;

    IF t.request_id IS NOT NULL THEN
        RETURN NEXT t;
    END IF;
END $$;

--
-- Name: sep; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.sep (
    id bigint NOT NULL,
    region text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    capabilities text[] DEFAULT '{}'::text[] NOT NULL,
    standby boolean DEFAULT false NOT NULL,
    state text DEFAULT 'idle'::text NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    stop_requested boolean DEFAULT false NOT NULL,
    current_request bigint,
    current_attempt integer,
    tasks_run bigint DEFAULT 0 NOT NULL,
    address text,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL,
    idle_since timestamp with time zone DEFAULT now() NOT NULL,
    held bigint[] DEFAULT '{}'::bigint[] NOT NULL,
    CONSTRAINT sep_state_check CHECK ((state = ANY (ARRAY['idle'::text, 'busy'::text, 'unavailable'::text, 'draining'::text, 'dead'::text])))
);

--
-- Name: control_sep_v1(bigint, text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.control_sep_v1(p_sep bigint, p_action text) RETURNS dispatcher.sep
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP005', MESSAGE = format('unknown SEP %s', p_sep);
    END IF;
    IF p_action = 'pause' THEN
        UPDATE dispatcher.sep SET paused = true,
            state = CASE WHEN state = 'idle' THEN 'unavailable' ELSE state END
        WHERE id = p_sep RETURNING * INTO s;
    ELSIF p_action = 'resume' THEN
        UPDATE dispatcher.sep SET paused = false,
            state = CASE WHEN state = 'unavailable' THEN 'idle' ELSE state END,
            idle_since = clock_timestamp()
        WHERE id = p_sep RETURNING * INTO s;
    ELSIF p_action = 'stop' THEN
        UPDATE dispatcher.sep SET stop_requested = true,
            state = CASE WHEN state IN ('idle', 'unavailable') THEN 'draining' ELSE state END
        WHERE id = p_sep RETURNING * INTO s;
    ELSIF p_action = 'kill' THEN
        IF s.state <> 'dead' THEN
            PERFORM dispatcher.requeue_held(s, format('SEP %s was stopped by force', p_sep));
        END IF;
        UPDATE dispatcher.sep SET state = 'dead', stop_requested = true,
            current_request = NULL, current_attempt = NULL
        WHERE id = p_sep RETURNING * INTO s;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('unknown SEP action %L: pause, resume, stop or kill', p_action);
    END IF;
    PERFORM pg_notify(dispatcher.sep_channel(p_sep), p_action);
    RETURN s;
END $$;

--
-- Name: token; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.token (
    region text NOT NULL,
    name text NOT NULL,
    hash bytea NOT NULL,
    allow text[],
    priority integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    max_sessions integer,
    CONSTRAINT token_max_sessions_check CHECK (((max_sessions IS NULL) OR (max_sessions > 0))),
    CONSTRAINT token_name_check CHECK ((name ~ '^[A-Za-z0-9_.@-]{1,64}$'::text)),
    CONSTRAINT token_priority_check CHECK (((priority >= 0) AND (priority <= 255)))
);

--
-- Name: create_token_v1(text, text, bytea, text[], integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.create_token_v1(p_region text, p_name text, p_hash bytea, p_allow text[], p_priority integer) RETURNS dispatcher.token
    LANGUAGE plpgsql
    AS $_$
DECLARE
    t dispatcher.token;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9_.@-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid token name %L: 1-64 letters, digits or _.@-', p_name);
    END IF;
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    INSERT INTO dispatcher.token (region, name, hash, allow, priority)
    VALUES (p_region, p_name, p_hash, p_allow, coalesce(p_priority, 0))
    ON CONFLICT (region, name) DO UPDATE SET
        hash = excluded.hash, allow = excluded.allow, priority = excluded.priority,
        created_at = now()
    RETURNING * INTO t;
    RETURN t;
END $_$;

--
-- Name: transaction; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.transaction (
    region text NOT NULL,
    transid text NOT NULL,
    program text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    class text,
    timeout_s double precision,
    max_attempts integer DEFAULT 1 NOT NULL,
    retry_backoff_s double precision DEFAULT 2 NOT NULL,
    requires text[] DEFAULT '{}'::text[] NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    max_backoff_s double precision DEFAULT 3600 NOT NULL,
    operator_set text[] DEFAULT '{}'::text[] NOT NULL,
    CONSTRAINT transaction_max_attempts_check CHECK ((max_attempts >= 1)),
    CONSTRAINT transaction_max_backoff_s_check CHECK (((max_backoff_s >= (0)::double precision) AND (max_backoff_s <= (604800)::double precision))),
    CONSTRAINT transaction_priority_check CHECK (((priority >= 0) AND (priority <= 255))),
    CONSTRAINT transaction_program_check CHECK ((program ~ '^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$'::text)),
    CONSTRAINT transaction_retry_backoff_s_check CHECK ((retry_backoff_s >= (0)::double precision)),
    CONSTRAINT transaction_timeout_s_check CHECK (((timeout_s IS NULL) OR (timeout_s > (0)::double precision))),
    CONSTRAINT transaction_transid_check CHECK ((transid ~ '^[A-Za-z0-9_.$#@-]{1,32}$'::text))
);

--
-- Name: define_transaction_v1(text, text, text, integer, text, double precision, integer, text[], text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.define_transaction_v1(p_region text, p_transid text, p_program text, p_priority integer, p_class text, p_timeout_s double precision, p_max_attempts integer, p_requires text[], p_description text) RETURNS dispatcher.transaction
    LANGUAGE plpgsql
    AS $_$
DECLARE
    t dispatcher.transaction;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF p_transid IS NULL OR p_transid !~ '^[A-Za-z0-9_.$#@-]{1,32}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid transaction id %L: 1-32 letters, digits or _.$#@-', p_transid);
    END IF;
    IF p_program IS NULL
       OR p_program !~ '^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid program %L: expected module.path:function', p_program);
    END IF;
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    IF p_timeout_s IS NOT NULL AND p_timeout_s <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'timeout must be positive';
    END IF;
    IF coalesce(p_max_attempts, 1) < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'max attempts must be at least 1';
    END IF;
    IF p_class IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM dispatcher.tx_class WHERE region = p_region AND name = p_class
    ) THEN
        -- a class named before it is sized is unlimited until it is set
        INSERT INTO dispatcher.tx_class (region, name, max_active)
        VALUES (p_region, p_class, 2147483647)
        ON CONFLICT DO NOTHING;
    END IF;
    INSERT INTO dispatcher.transaction AS x
        (region, transid, program, priority, class, timeout_s, max_attempts, requires, description)
    VALUES (p_region, p_transid, p_program, coalesce(p_priority, 0), p_class, p_timeout_s,
            coalesce(p_max_attempts, 1), coalesce(p_requires, '{}'), coalesce(p_description, ''))
    ON CONFLICT (region, transid) DO UPDATE SET
        program = excluded.program, priority = excluded.priority, class = excluded.class,
        timeout_s = excluded.timeout_s, max_attempts = excluded.max_attempts,
        requires = excluded.requires, description = excluded.description, updated_at = now()
    RETURNING * INTO t;
    RETURN t;
END $_$;

--
-- Name: define_transaction_v2(text, text, text[], text, text, integer, text, double precision, integer, double precision, double precision, text[], text, text, text[]); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.define_transaction_v2(p_region text, p_transid text, p_given text[], p_by text, p_program text DEFAULT NULL::text, p_priority integer DEFAULT NULL::integer, p_class text DEFAULT NULL::text, p_timeout_s double precision DEFAULT NULL::double precision, p_max_attempts integer DEFAULT NULL::integer, p_retry_backoff_s double precision DEFAULT NULL::double precision, p_max_backoff_s double precision DEFAULT NULL::double precision, p_requires text[] DEFAULT NULL::text[], p_description text DEFAULT NULL::text, p_app text DEFAULT NULL::text, p_release text[] DEFAULT '{}'::text[]) RETURNS dispatcher.transaction
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    v_fields constant text[] := ARRAY['program', 'priority', 'class', 'timeout', 'max_attempts',
                                      'retry_backoff', 'max_backoff', 'requires', 'description'];
    v_given text[] := coalesce(p_given, '{}');
    v_release text[] := coalesce(p_release, '{}');
    v_bad text;
    v_new boolean;
    v_take text[];
    v_requires text[];
    v_class text;
    cur dispatcher.transaction;
    t dispatcher.transaction;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF p_transid IS NULL OR p_transid !~ '^[A-Za-z0-9_.$#@-]{1,32}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid transaction id %L: 1-32 letters, digits or _.$#@-', p_transid);
    END IF;
    IF p_by IS NULL OR p_by NOT IN ('operator', 'app') THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('a definition is by operator or app, not %L', p_by);
    END IF;
    SELECT f INTO v_bad FROM unnest(v_given || v_release) f
    WHERE f IS NULL OR f <> ALL (v_fields) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('unknown transaction field %L: one of %s', v_bad,
                             array_to_string(v_fields, ', '));
    END IF;
    IF p_by = 'app' AND v_release <> '{}' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'only an operator hands fields back to the app';
    END IF;
    IF p_app IS NOT NULL AND p_app !~ '^[A-Za-z_][A-Za-z0-9_.]*$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid app module %L', p_app);
    END IF;

    -- the values given, checked (NaN and Infinity fail every range check below)
    IF 'program' = ANY (v_given) AND (p_program IS NULL
       OR p_program !~ '^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$') THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid program %L: expected module.path:function', p_program);
    END IF;
    IF 'priority' = ANY (v_given) AND coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    IF 'class' = ANY (v_given) AND p_class IS NOT NULL AND p_class !~ '^[A-Za-z0-9_.-]{1,40}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid class name %L', p_class);
    END IF;
    IF 'timeout' = ANY (v_given) AND p_timeout_s IS NOT NULL
       AND NOT (p_timeout_s > 0 AND p_timeout_s <= 2592000) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('timeout must be more than 0 and at most 2592000 s (30 days), not %s',
                             p_timeout_s);
    END IF;
    IF 'max_attempts' = ANY (v_given) AND coalesce(p_max_attempts, 1) NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('max attempts must be between 1 and 100000, not %s', p_max_attempts);
    END IF;
    IF 'retry_backoff' = ANY (v_given) AND p_retry_backoff_s IS NOT NULL
       AND NOT (p_retry_backoff_s >= 0 AND p_retry_backoff_s <= 86400) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('retry backoff must be between 0 and 86400 s (1 day), not %s',
                             p_retry_backoff_s);
    END IF;
    IF 'max_backoff' = ANY (v_given) AND p_max_backoff_s IS NOT NULL
       AND NOT (p_max_backoff_s >= 0 AND p_max_backoff_s <= 604800) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('max backoff must be between 0 and 604800 s (7 days), not %s',
                             p_max_backoff_s);
    END IF;
    IF 'requires' = ANY (v_given) AND EXISTS (
        SELECT 1 FROM unnest(p_requires) c WHERE c IS NULL OR c = '') THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'a required capability cannot be empty';
    END IF;

    SELECT * INTO cur FROM dispatcher.transaction
    WHERE region = p_region AND transid = p_transid FOR UPDATE;
    v_new := NOT FOUND;
    -- what this call changes: an app's sync leaves what an operator set
    v_take := ARRAY(SELECT f FROM unnest(v_given) f
                    WHERE p_by = 'operator' OR v_new OR f <> ALL (cur.operator_set));
    IF v_new AND NOT ('program' = ANY (v_take)) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('transaction %s is not defined yet: give its program', p_transid);
    END IF;

    v_requires := CASE WHEN 'requires' = ANY (v_take) THEN coalesce(p_requires, '{}')
                       ELSE coalesce(cur.requires, '{}') END;
    IF p_by = 'app' AND p_app IS NOT NULL THEN
        v_requires := ARRAY(SELECT c FROM unnest(v_requires) c WHERE c NOT LIKE 'app:%')
                      || ('app:' || p_app);
    ELSIF 'requires' = ANY (v_take) THEN
        -- the app capability belongs to the app that declares the transaction
        v_requires := v_requires
                      || ARRAY(SELECT c FROM unnest(cur.requires) c WHERE c LIKE 'app:%');
    END IF;
    v_requires := ARRAY(SELECT DISTINCT c FROM unnest(v_requires) c ORDER BY c);

    v_class := CASE WHEN 'class' = ANY (v_take) THEN p_class ELSE cur.class END;
    IF v_class IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM dispatcher.tx_class WHERE region = p_region AND name = v_class
    ) THEN
        -- a class named before it is sized is unlimited until it is set
        INSERT INTO dispatcher.tx_class (region, name, max_active)
        VALUES (p_region, v_class, 2147483647)
        ON CONFLICT DO NOTHING;
    END IF;

    INSERT INTO dispatcher.transaction AS x
        (region, transid, program, priority, class, timeout_s, max_attempts, retry_backoff_s,
         max_backoff_s, requires, description, operator_set)
    VALUES (
        p_region, p_transid,
        CASE WHEN 'program' = ANY (v_take) THEN p_program ELSE cur.program END,
        CASE WHEN 'priority' = ANY (v_take) THEN coalesce(p_priority, 0)
             ELSE coalesce(cur.priority, 0) END,
        v_class,
        CASE WHEN 'timeout' = ANY (v_take) THEN p_timeout_s ELSE cur.timeout_s END,
        CASE WHEN 'max_attempts' = ANY (v_take) THEN coalesce(p_max_attempts, 1)
             ELSE coalesce(cur.max_attempts, 1) END,
        CASE WHEN 'retry_backoff' = ANY (v_take) THEN coalesce(p_retry_backoff_s, 2)
             ELSE coalesce(cur.retry_backoff_s, 2) END,
        CASE WHEN 'max_backoff' = ANY (v_take) THEN coalesce(p_max_backoff_s, 3600)
             ELSE coalesce(cur.max_backoff_s, 3600) END,
        v_requires,
        CASE WHEN 'description' = ANY (v_take) THEN coalesce(p_description, '')
             ELSE coalesce(cur.description, '') END,
        CASE WHEN p_by = 'operator'
             THEN ARRAY(SELECT DISTINCT f FROM unnest(
                            ARRAY(SELECT f FROM unnest(coalesce(cur.operator_set, '{}')) f
                                  WHERE f <> ALL (v_release)) || v_given) f
                        ORDER BY f)
             ELSE coalesce(cur.operator_set, '{}') END)
    ON CONFLICT (region, transid) DO UPDATE SET
        program = excluded.program, priority = excluded.priority, class = excluded.class,
        timeout_s = excluded.timeout_s, max_attempts = excluded.max_attempts,
        retry_backoff_s = excluded.retry_backoff_s, max_backoff_s = excluded.max_backoff_s,
        requires = excluded.requires, description = excluded.description,
        operator_set = excluded.operator_set, updated_at = now()
    RETURNING * INTO t;
    RETURN t;
END $_$;

--
-- Name: end_session_v1(uuid); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.end_session_v1(p_session uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    DELETE FROM dispatcher.session WHERE id = p_session;
    RETURN FOUND;
END $$;

--
-- Name: enqueue_many_v1(text, text[], jsonb[], uuid[], integer[], text[], text, boolean); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.enqueue_many_v1(p_region text, p_transids text[], p_payloads jsonb[], p_sessions uuid[] DEFAULT NULL::uuid[], p_user_priorities integer[] DEFAULT NULL::integer[], p_idempotency_keys text[] DEFAULT NULL::text[], p_origin text DEFAULT 'api'::text, p_notify boolean DEFAULT true) RETURNS TABLE(ordinal integer, request_id bigint, sep_id bigint, reason text, duplicate boolean)
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    e dispatcher.enqueued;
    v_n integer := coalesce(cardinality(p_transids), 0);
    v_bad text;
    v_ids bigint[];
    v_sep bigint;
    v_fenced boolean := false;
    v_assigned jsonb := '{}';
    p record;
BEGIN
    IF v_n IS DISTINCT FROM coalesce(cardinality(p_payloads), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'enqueue_many: transids and payloads differ in length';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_idempotency_keys) k WHERE k IS NOT NULL) THEN
        FOR i IN 1..v_n LOOP
            e := dispatcher.enqueue_v1(
                p_region, p_transids[i], p_payloads[i], p_sessions[i],
                coalesce(p_user_priorities[i], 0), p_idempotency_keys[i], NULL, NULL,
                p_origin, p_notify);
            ordinal := i; request_id := e.request_id; sep_id := e.sep_id;
            reason := e.reason; duplicate := e.duplicate;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    SELECT t INTO v_bad FROM unnest(p_transids) t
    WHERE t IS NULL OR NOT EXISTS (
        SELECT 1 FROM dispatcher.transaction x WHERE x.region = p_region AND x.transid = t)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP002',
            MESSAGE = format('unknown transaction %L in region %L', v_bad, p_region),
            HINT = 'define it with: dispatcher tx define, or dispatcher tx sync --app MODULE';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_user_priorities) u WHERE u NOT BETWEEN 0 AND 255) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'priority must be between 0 and 255';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_sessions) sid
               WHERE sid IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.session s WHERE s.id = sid AND s.region = p_region)) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP007', MESSAGE = 'unknown session in the batch';
    END IF;

    WITH ins AS (
        INSERT INTO dispatcher.request
            (region, transid, payload, session_id, priority, dispatch_key, max_attempts,
             class, requires, origin)
        SELECT p_region, x.transid, coalesce(p_payloads[i], 'null'::jsonb), p_sessions[i],
               pr.prio, clock_timestamp() - make_interval(secs => pr.prio * reg.aging_ms / 1000.0),
               x.max_attempts, x.class, x.requires, coalesce(p_origin, 'api')
        FROM generate_subscripts(p_transids, 1) AS i
        JOIN dispatcher.transaction x ON x.region = p_region AND x.transid = p_transids[i]
        LEFT JOIN dispatcher.session s ON s.id = p_sessions[i]
        CROSS JOIN LATERAL (SELECT least(255, x.priority + coalesce(s.priority, 0)
                                              + coalesce(p_user_priorities[i], 0)) AS prio) pr
        ORDER BY i
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO v_ids FROM ins;   -- ids follow the batch order

    IF reg.state = 'running' THEN
        FOR k IN 1..v_n LOOP
            v_sep := dispatcher.find_idle_sep(p_region, '{}');
            IF v_sep IS NULL AND NOT v_fenced THEN
                -- the last look, fenced against SEPs going idle (see the top of this file)
                PERFORM pg_advisory_xact_lock_shared(dispatcher.region_lock_key(p_region));
                v_fenced := true;
                v_sep := dispatcher.find_idle_sep(p_region, '{}');
            END IF;
            EXIT WHEN v_sep IS NULL;
            p := dispatcher.pick_request(p_region,
                                         (SELECT capabilities FROM dispatcher.sep WHERE id = v_sep));
            IF p.request_id IS NULL THEN
                IF p.contended THEN
                    PERFORM pg_notify(dispatcher.sep_channel(v_sep), 'wake');
                END IF;
                EXIT;
            END IF;
            UPDATE dispatcher.request r SET
                state = 'dispatched', sep_id = v_sep, attempt = r.attempt + 1,
                dispatched_at = clock_timestamp()
            WHERE r.id = p.request_id;
            UPDATE dispatcher.sep SET state = 'busy', current_request = p.request_id,
                current_attempt = (SELECT attempt FROM dispatcher.request WHERE id = p.request_id)
            WHERE id = v_sep;
            -- a request of this batch is handed over by the caller (p_notify false);
            -- an older one that this SEP took instead must be announced
            IF p_notify OR NOT (p.request_id = ANY (v_ids)) THEN
                PERFORM pg_notify(dispatcher.sep_channel(v_sep), 'dispatch ' || p.request_id);
            END IF;
            v_assigned := v_assigned || jsonb_build_object(p.request_id::text, v_sep);
        END LOOP;
    END IF;

    RETURN QUERY
    SELECT i, v_ids[i], (v_assigned ->> v_ids[i]::text)::bigint,
           CASE WHEN v_assigned ? v_ids[i]::text THEN 'dispatched'
                WHEN reg.state <> 'running' THEN 'region_stopping'
                ELSE 'no_idle_sep' END,
           false
    FROM generate_subscripts(p_transids, 1) AS i;
END $$;

--
-- Name: enqueue_v1(text, text, jsonb, uuid, integer, text, timestamp with time zone, jsonb, text, boolean); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.enqueue_v1(p_region text, p_transid text, p_payload jsonb DEFAULT 'null'::jsonb, p_session uuid DEFAULT NULL::uuid, p_user_priority integer DEFAULT 0, p_idempotency_key text DEFAULT NULL::text, p_deadline timestamp with time zone DEFAULT NULL::timestamp with time zone, p_commarea jsonb DEFAULT NULL::jsonb, p_origin text DEFAULT 'api'::text, p_notify boolean DEFAULT true) RETURNS dispatcher.enqueued
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    tx dispatcher.transaction;
    v_session_priority integer := 0;
    v_priority integer;
    v_id bigint;
    v_sep bigint;
    v_room integer;
    res dispatcher.enqueued;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    SELECT * INTO tx FROM dispatcher.transaction WHERE region = p_region AND transid = p_transid;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP002',
            MESSAGE = format('unknown transaction %L in region %L', p_transid, p_region),
            HINT = 'define it with: dispatcher tx define, or dispatcher tx sync --app MODULE';
    END IF;
    IF coalesce(p_user_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_user_priority);
    END IF;
    IF p_session IS NOT NULL THEN
        SELECT priority INTO v_session_priority FROM dispatcher.session
        WHERE id = p_session AND region = p_region;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'DP007', MESSAGE = format('unknown session %s', p_session);
        END IF;
    END IF;
    v_priority := least(255, tx.priority + v_session_priority + coalesce(p_user_priority, 0));

    IF p_idempotency_key IS NOT NULL THEN
        SELECT id INTO v_id FROM dispatcher.request
        WHERE region = p_region AND idempotency_key = p_idempotency_key;
        IF NOT FOUND THEN
            SELECT id INTO v_id FROM dispatcher.request_history
            WHERE region = p_region AND idempotency_key = p_idempotency_key;
        END IF;
        IF v_id IS NOT NULL THEN
            res := (v_id, NULL, 'duplicate', true);
            RETURN res;
        END IF;
    END IF;

    INSERT INTO dispatcher.request
        (region, transid, payload, session_id, priority, dispatch_key, max_attempts, class,
         requires, idempotency_key, deadline, commarea, origin)
    VALUES
        (p_region, p_transid, coalesce(p_payload, 'null'::jsonb), p_session, v_priority,
         clock_timestamp() - make_interval(secs => v_priority * reg.aging_ms / 1000.0),
         tx.max_attempts, tx.class, tx.requires, p_idempotency_key, p_deadline, p_commarea,
         coalesce(p_origin, 'api'))
    ON CONFLICT (region, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM dispatcher.request
        WHERE region = p_region AND idempotency_key = p_idempotency_key;
        res := (v_id, NULL, 'duplicate', true);
        RETURN res;
    END IF;

    IF reg.state <> 'running' THEN
        res := (v_id, NULL, 'region_stopping', false);
        RETURN res;
    END IF;

    v_sep := dispatcher.find_idle_sep(p_region, tx.requires);
    IF v_sep IS NULL THEN
        -- the last look, fenced against SEPs going idle (see the top of this file)
        PERFORM pg_advisory_xact_lock_shared(dispatcher.region_lock_key(p_region));
        v_sep := dispatcher.find_idle_sep(p_region, tx.requires);
        IF v_sep IS NULL THEN
            res := (v_id, NULL, 'no_idle_sep', false);
            RETURN res;
        END IF;
    END IF;

    IF tx.class IS NOT NULL THEN
        v_room := dispatcher.class_room(p_region, tx.class);
        IF v_room = 0 THEN
            res := (v_id, NULL, 'class_full', false);
            RETURN res;
        ELSIF v_room = -1 THEN
            -- the class is being dispatched to right now: let the idle SEP look itself
            PERFORM pg_notify(dispatcher.sep_channel(v_sep), 'wake');
            res := (v_id, NULL, 'class_busy', false);
            RETURN res;
        END IF;
    END IF;

    UPDATE dispatcher.request SET
        state = 'dispatched', sep_id = v_sep, attempt = attempt + 1,
        dispatched_at = clock_timestamp()
    WHERE id = v_id;
    UPDATE dispatcher.sep SET state = 'busy', current_request = v_id, current_attempt = 1
    WHERE id = v_sep;
    IF p_notify THEN
        PERFORM pg_notify(dispatcher.sep_channel(v_sep), 'dispatch ' || v_id);
    END IF;
    res := (v_id, v_sep, 'dispatched', false);
    RETURN res;
END $$;

--
-- Name: region; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.region (
    name text NOT NULL,
    max_seps integer DEFAULT 8 NOT NULL,
    state text DEFAULT 'running'::text NOT NULL,
    aging_ms integer DEFAULT 32768 NOT NULL,
    sep_dead_after interval DEFAULT '00:00:15'::interval NOT NULL,
    max_redispatch integer DEFAULT 5 NOT NULL,
    history_retention interval DEFAULT '7 days'::interval NOT NULL,
    properties jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT region_aging_ms_check CHECK ((aging_ms > 0)),
    CONSTRAINT region_aging_ms_max CHECK ((aging_ms <= 3600000)),
    CONSTRAINT region_max_redispatch_check CHECK ((max_redispatch >= 1)),
    CONSTRAINT region_max_seps_check CHECK (((max_seps >= 0) AND (max_seps <= 100000))),
    CONSTRAINT region_name_check CHECK ((name ~ '^[A-Za-z0-9_.-]{1,40}$'::text)),
    CONSTRAINT region_state_check CHECK ((state = ANY (ARRAY['running'::text, 'stopping'::text])))
);

--
-- Name: ensure_region_v1(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.ensure_region_v1(p_region text) RETURNS dispatcher.region
    LANGUAGE plpgsql
    AS $_$
DECLARE
    r dispatcher.region;
BEGIN
    IF p_region IS NULL OR p_region !~ '^[A-Za-z0-9_.-]{1,40}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid region name %L: use 1-40 letters, digits, "_", "." or "-"', p_region);
    END IF;
    INSERT INTO dispatcher.region (name) VALUES (p_region) ON CONFLICT (name) DO NOTHING;
    SELECT * INTO r FROM dispatcher.region WHERE name = p_region;
    RETURN r;
END $_$;

--
-- Name: find_idle_sep(text, text[]); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.find_idle_sep(p_region text, p_requires text[]) RETURNS bigint
    LANGUAGE sql
    AS $$
    SELECT s.id FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle' AND NOT s.standby
      AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> p_requires
    ORDER BY s.idle_since
    LIMIT 1
    FOR UPDATE SKIP LOCKED
$$;

--
-- Name: request; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.request (
    id bigint NOT NULL,
    region text NOT NULL,
    transid text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    session_id uuid,
    priority integer NOT NULL,
    dispatch_key timestamp with time zone NOT NULL,
    state text DEFAULT 'queued'::text NOT NULL,
    attempt integer DEFAULT 0 NOT NULL,
    max_attempts integer DEFAULT 1 NOT NULL,
    sep_id bigint,
    class text,
    requires text[] DEFAULT '{}'::text[] NOT NULL,
    idempotency_key text,
    deadline timestamp with time zone,
    not_before timestamp with time zone,
    commarea jsonb,
    origin text DEFAULT 'api'::text NOT NULL,
    error jsonb,
    enqueued_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    dispatched_at timestamp with time zone,
    started_at timestamp with time zone,
    routing_key text,
    CONSTRAINT request_priority_check CHECK (((priority >= 0) AND (priority <= 255))),
    CONSTRAINT request_routing_key_check CHECK (((routing_key IS NULL) OR ((length(routing_key) >= 1) AND (length(routing_key) <= 200)))),
    CONSTRAINT request_state_check CHECK ((state = ANY (ARRAY['queued'::text, 'dispatched'::text, 'running'::text])))
);

--
-- Name: finish_request(dispatcher.request, text, jsonb, jsonb); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.finish_request(r dispatcher.request, p_state text, p_result jsonb, p_error jsonb) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO dispatcher.request_history
        (id, region, transid, payload, session_id, priority, state, attempt, sep_id, class,
         idempotency_key, origin, result, error, enqueued_at, dispatched_at, started_at)
    VALUES
        (r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state, r.attempt,
         r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error, r.enqueued_at,
         r.dispatched_at, coalesce(r.started_at, r.dispatched_at));
    DELETE FROM dispatcher.request WHERE id = r.id;
$$;

--
-- Name: get_region_v1(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.get_region_v1(p_region text) RETURNS dispatcher.region
    LANGUAGE plpgsql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    r dispatcher.region;
BEGIN
    SELECT * INTO r FROM dispatcher.region WHERE name = p_region;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001',
            MESSAGE = format('unknown region %L', p_region),
            HINT = 'create it with: dispatcher region set';
    END IF;
    RETURN r;
END $$;

--
-- Name: heartbeat_listener_v1(uuid); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.heartbeat_listener_v1(p_listener uuid) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    UPDATE dispatcher.listener SET heartbeat_at = clock_timestamp() WHERE id = p_listener;
    RETURN FOUND;
END $$;

--
-- Name: heartbeat_sep_v1(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.heartbeat_sep_v1(p_sep bigint) RETURNS TABLE(state text, paused boolean, stop_requested boolean, standby boolean)
    LANGUAGE plpgsql
    AS $$
#variable_conflict use_column
DECLARE
    s dispatcher.sep;
BEGIN
    UPDATE dispatcher.sep x SET heartbeat_at = clock_timestamp()
    WHERE x.id = p_sep
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF s.state <> 'dead' AND NOT s.standby
       AND dispatcher.active_seps(s.region) >
           (SELECT max_seps FROM dispatcher.region WHERE name = s.region)
       AND s.id = (SELECT max(id) FROM dispatcher.sep
                   WHERE region = s.region AND state <> 'dead' AND NOT standby) THEN
        UPDATE dispatcher.sep x SET standby = true WHERE x.id = p_sep RETURNING * INTO s;
    END IF;
    state := s.state; paused := s.paused; stop_requested := s.stop_requested;
    standby := s.standby;
    RETURN NEXT;
END $$;

--
-- Name: leave_listener_v1(uuid); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.leave_listener_v1(p_listener uuid) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_notify(dispatcher.sep_channel(r.sep_id), 'session_ended ' || r.id)
    FROM dispatcher.session x
    JOIN dispatcher.request r ON r.session_id = x.id AND r.sep_id = x.bound_sep
    WHERE x.listener_id = p_listener AND x.bound_sep IS NOT NULL
      AND r.state IN ('dispatched', 'running');
    DELETE FROM dispatcher.session WHERE listener_id = p_listener;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM dispatcher.listener WHERE id = p_listener;
    RETURN n;
END $$;

--
-- Name: leave_sep_v1(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.leave_sep_v1(p_sep bigint) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
    n integer;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    n := CASE WHEN s.state = 'dead' THEN 0
              ELSE dispatcher.requeue_held(s, format('SEP %s left the region', p_sep)) END;
    DELETE FROM dispatcher.sep WHERE id = p_sep;
    RETURN n;
END $$;

--
-- Name: lock_sep(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.lock_sep(p_sep bigint) RETURNS dispatcher.sep
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP005', MESSAGE = format('unknown SEP %s', p_sep);
    END IF;
    IF s.state = 'dead' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('SEP %s was declared dead; its work was handed to others', p_sep);
    END IF;
    RETURN s;
END $$;

--
-- Name: next_batch(dispatcher.sep, integer, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.next_batch(s dispatcher.sep, p_done integer, p_take integer) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    t dispatcher.task;
    c record;
    v_full text[] := '{}';
    v_held bigint[] := '{}';
    v_plain bigint[] := '{}';
BEGIN
    t := dispatcher.next_or_rest(s, p_done);
    IF t.request_id IS NULL THEN
        RETURN;
    END IF;
    RETURN NEXT t;
    IF coalesce(p_take, 1) < 2 THEN
        RETURN;
    END IF;
    FOR c IN
        SELECT r.id, r.class FROM dispatcher.request r
        WHERE r.region = s.region AND r.state = 'queued'
          AND r.requires <@ s.capabilities
          AND (r.not_before IS NULL OR r.not_before <= clock_timestamp())
          AND (r.deadline IS NULL OR r.deadline > clock_timestamp())
        ORDER BY r.dispatch_key, r.id
        LIMIT least(p_take, 1000) - 1
        FOR UPDATE OF r SKIP LOCKED
    LOOP
        IF c.class IS NOT NULL THEN
            CONTINUE WHEN c.class = ANY (v_full);
            IF dispatcher.class_room(s.region, c.class) <> 1 THEN
                v_full := v_full || c.class;   -- full, or being dispatched by another
                CONTINUE;
            END IF;
            -- counted at once: class_room counts what is no longer queued
            UPDATE dispatcher.request r SET
                state = 'dispatched', sep_id = s.id, attempt = r.attempt + 1,
                dispatched_at = clock_timestamp()
            WHERE r.id = c.id;
        ELSE
            v_plain := v_plain || c.id;
        END IF;
        v_held := v_held || c.id;
    END LOOP;
    IF v_held = '{}' THEN
        RETURN;
    END IF;
    UPDATE dispatcher.request r SET
        state = 'dispatched', sep_id = s.id, attempt = r.attempt + 1,
        dispatched_at = clock_timestamp()
    WHERE r.id = ANY (v_plain);
    UPDATE dispatcher.sep SET held = v_held WHERE id = s.id;
    RETURN QUERY
        SELECT x.* FROM unnest(v_held) WITH ORDINALITY AS h(id, n),
             LATERAL dispatcher.task_of(h.id) AS x
        ORDER BY h.n;
END $$;

--
-- Name: next_or_rest(dispatcher.sep, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.next_or_rest(s dispatcher.sep, p_done integer DEFAULT 0) RETURNS dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    p record;
    v_contended boolean := false;
    v_fenced boolean := false;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = s.region;
    IF s.standby THEN
        -- a standby SEP takes a slot only when one is free (serialised on the region row)
        PERFORM 1 FROM dispatcher.region WHERE name = s.region FOR UPDATE;
        IF dispatcher.active_seps(s.region) < reg.max_seps THEN
            UPDATE dispatcher.sep SET standby = false WHERE id = s.id;
            s.standby := false;
        END IF;
    END IF;
    IF NOT s.standby AND NOT s.paused AND NOT s.stop_requested AND reg.state = 'running' THEN
        p := dispatcher.pick_request(s.region, s.capabilities);
        v_contended := p.contended;
        IF p.request_id IS NULL THEN
            -- the last look, fenced against concurrent enqueues (see the top of this
            -- file). The lock is only tried, never waited for, so that a SEP holding
            -- rows never waits in a cycle; after ~50 ms of tries it rests and wakes
            -- itself to look again once this transaction has committed.
            FOR i IN 1..100 LOOP
                v_fenced := pg_try_advisory_xact_lock(dispatcher.region_lock_key(s.region));
                EXIT WHEN v_fenced;
                PERFORM pg_sleep(0.0005);
            END LOOP;
            IF v_fenced THEN
                p := dispatcher.pick_request(s.region, s.capabilities);
                v_contended := v_contended OR p.contended;
            ELSE
                v_contended := true;
            END IF;
        END IF;
        IF p.request_id IS NOT NULL THEN
            RETURN dispatcher.start_task(s.id, p.request_id, p_done);
        END IF;
    END IF;
    UPDATE dispatcher.sep SET
        state = dispatcher.rest_state(s), current_request = NULL, current_attempt = NULL,
        idle_since = clock_timestamp(), tasks_run = tasks_run + p_done,
        heartbeat_at = clock_timestamp()
    WHERE id = s.id;
    IF v_contended THEN
        PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake');   -- look again soon
    END IF;
    RETURN NULL;
END $$;

--
-- Name: pick_request(text, text[]); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.pick_request(p_region text, p_caps text[], OUT request_id bigint, OUT contended boolean) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_class text;
    v_full text[] := '{}';
    v_room integer;
BEGIN
    contended := false;
    FOR i IN 1..50 LOOP
        SELECT r.id, r.class INTO request_id, v_class
        FROM dispatcher.request r
        WHERE r.region = p_region AND r.state = 'queued'
          AND r.requires <@ p_caps
          AND (r.not_before IS NULL OR r.not_before <= clock_timestamp())
          AND (r.deadline IS NULL OR r.deadline > clock_timestamp())
          AND (r.class IS NULL OR r.class <> ALL (v_full))
        ORDER BY r.dispatch_key, r.id
        LIMIT 1
        FOR UPDATE OF r SKIP LOCKED;
        IF NOT FOUND THEN
            request_id := NULL;
            RETURN;
        END IF;
        IF v_class IS NULL THEN
            RETURN;
        END IF;
        v_room := dispatcher.class_room(p_region, v_class);
        IF v_room = 1 THEN
            RETURN;
        END IF;
        IF v_room = -1 THEN
            contended := true;
        END IF;
        v_full := v_full || v_class;   -- pass over the rest of this class
    END LOOP;
    request_id := NULL;
END $$;

--
-- Name: reap_listeners_v1(text, double precision); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.reap_listeners_v1(p_region text, p_dead_after_s double precision) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    l record;
    n integer := 0;
BEGIN
    FOR l IN SELECT id FROM dispatcher.listener
             WHERE region = p_region
               AND heartbeat_at < clock_timestamp() - make_interval(secs => p_dead_after_s)
               AND pg_postmaster_start_time()
                   < clock_timestamp() - make_interval(secs => p_dead_after_s)
             FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM dispatcher.leave_listener_v1(l.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;

--
-- Name: reap_v1(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.reap_v1(p_region text) RETURNS TABLE(dead_seps integer, requeued integer, expired integer, purged integer)
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    s dispatcher.sep;
BEGIN
    reg := dispatcher.get_region_v1(p_region);
    dead_seps := 0; requeued := 0; expired := 0; purged := 0;
    FOR s IN
        SELECT * FROM dispatcher.sep
        WHERE region = p_region AND state <> 'dead'
          AND heartbeat_at < clock_timestamp() - reg.sep_dead_after
          -- a server that (re)started lately gives every SEP that long to beat again:
          -- an outage is no SEP's silence
          AND pg_postmaster_start_time() < clock_timestamp() - reg.sep_dead_after
        FOR UPDATE SKIP LOCKED
    LOOP
        requeued := requeued + dispatcher.requeue_held(s,
            format('SEP %s (pid %s on %s) stopped beating and was declared dead',
                   s.id, s.pid, s.host));
        UPDATE dispatcher.sep SET state = 'dead', current_request = NULL, current_attempt = NULL
        WHERE id = s.id;
        dead_seps := dead_seps + 1;
    END LOOP;

    WITH gone AS (
        DELETE FROM dispatcher.request r
        WHERE r.id IN (SELECT id FROM dispatcher.request
                       WHERE region = p_region AND state = 'queued'
                         AND deadline IS NOT NULL AND deadline <= clock_timestamp()
                       LIMIT 1000 FOR UPDATE SKIP LOCKED)
        RETURNING r.*
    )
    INSERT INTO dispatcher.request_history
        (id, region, transid, payload, session_id, priority, state, attempt, sep_id, class,
         idempotency_key, origin, result, error, enqueued_at, dispatched_at, started_at)
    SELECT id, region, transid, payload, session_id, priority, 'failed', attempt, NULL, class,
           idempotency_key, origin, NULL,
           jsonb_build_object('type', 'DeadlineExpired',
                              'message', format('not started before its deadline %s', deadline)),
           enqueued_at, NULL, NULL
    FROM gone;
    GET DIAGNOSTICS expired = ROW_COUNT;

    DELETE FROM dispatcher.request_history h
    WHERE h.id IN (SELECT id FROM dispatcher.request_history
                   WHERE region = p_region
                     AND finished_at < clock_timestamp() - reg.history_retention
                   LIMIT 10000);
    GET DIAGNOSTICS purged = ROW_COUNT;

    DELETE FROM dispatcher.sep
    WHERE region = p_region AND state = 'dead' AND heartbeat_at < clock_timestamp() - interval '1 hour';
    RETURN NEXT;
END $$;

--
-- Name: region_channel(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.region_channel(p_region text) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'dispatcher_region_' || md5(p_region) $$;

--
-- Name: region_lock_key(text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.region_lock_key(p_region text) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT hashtextextended('dispatcher.region:' || p_region, 0) $$;

--
-- Name: register_listener_v1(text, text, integer, integer, text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.register_listener_v1(p_region text, p_host text, p_port integer, p_pid integer, p_address text) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    INSERT INTO dispatcher.listener (region, host, port, pid, address)
    VALUES (p_region, p_host, p_port, p_pid, p_address)
    RETURNING id INTO v_id;
    RETURN v_id;
END $$;

--
-- Name: register_sep_v1(text, text, integer, text[], boolean, text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.register_sep_v1(p_region text, p_host text, p_pid integer, p_capabilities text[], p_standby boolean, p_address text DEFAULT NULL::text) RETURNS dispatcher.sep
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    v_live integer;
    v_standby boolean := coalesce(p_standby, false);
    s dispatcher.sep;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    -- SEPs of a crashed host hold no slot: declare the silent ones dead first
    PERFORM dispatcher.reap_v1(p_region);
    v_live := dispatcher.active_seps(p_region);
    IF v_live < reg.max_seps THEN
        v_standby := false;   -- a standby SEP that finds a free slot takes it at once
    ELSIF NOT v_standby THEN
        RAISE EXCEPTION USING ERRCODE = 'DP006',
            MESSAGE = format('region %L has no room for another SEP: %s of max %s running',
                             p_region, v_live, reg.max_seps),
            HINT = 'raise it with: dispatcher region set --max-seps N, or start the SEP with --standby';
    END IF;
    INSERT INTO dispatcher.sep (region, host, pid, capabilities, standby, address)
    VALUES (p_region, p_host, p_pid, coalesce(p_capabilities, '{}'), v_standby, p_address)
    RETURNING * INTO s;
    RETURN s;
END $$;

--
-- Name: register_session_v1(text, uuid, text, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.register_session_v1(p_region text, p_listener uuid, p_user text, p_priority integer) RETURNS uuid
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('session priority must be between 0 and 255, not %s', p_priority);
    END IF;
    INSERT INTO dispatcher.session (region, listener_id, user_name, priority)
    VALUES (p_region, p_listener, coalesce(p_user, ''), coalesce(p_priority, 0))
    RETURNING id INTO v_id;
    RETURN v_id;
END $$;

--
-- Name: requeue_held(dispatcher.sep, text); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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
            -- a conversation lives in the program that died: it cannot resume elsewhere
            PERFORM dispatcher.finish_request(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s during a conversation', p_why)));
            UPDATE dispatcher.session SET bound_sep = NULL WHERE id = r.session_id;
        ELSIF r.attempt >= v_max THEN
            PERFORM dispatcher.finish_request(r, 'failed', NULL,
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
        -- wake an idle SEP for the requeued work
        PERFORM dispatcher.wake_idle_sep(s.region, s.id);
    END IF;
    RETURN n;
END $$;

--
-- Name: rest_state(dispatcher.sep); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.rest_state(s dispatcher.sep) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN s.stop_requested THEN 'draining'
                WHEN s.paused THEN 'unavailable'
                ELSE 'idle' END
$$;

--
-- Name: sep_channel(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.sep_channel(p_sep bigint) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'dispatcher_sep_' || p_sep $$;

--
-- Name: tx_class; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.tx_class (
    region text NOT NULL,
    name text NOT NULL,
    max_active integer NOT NULL,
    CONSTRAINT tx_class_max_active_check CHECK ((max_active >= 0)),
    CONSTRAINT tx_class_name_check CHECK ((name ~ '^[A-Za-z0-9_.-]{1,40}$'::text))
);

--
-- Name: set_class_v1(text, text, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.set_class_v1(p_region text, p_class text, p_max_active integer) RETURNS dispatcher.tx_class
    LANGUAGE plpgsql
    AS $_$
DECLARE
    c dispatcher.tx_class;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF p_max_active IS NULL OR p_max_active < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('max active of a class must be 0 or more, not %s', p_max_active);
    END IF;
    IF p_class IS NULL OR p_class !~ '^[A-Za-z0-9_.-]{1,40}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid class name %L', p_class);
    END IF;
    INSERT INTO dispatcher.tx_class (region, name, max_active)
    VALUES (p_region, p_class, p_max_active)
    ON CONFLICT (region, name) DO UPDATE SET max_active = excluded.max_active
    RETURNING * INTO c;
    -- a larger class may let queued requests run: wake the idle SEPs to look
    PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake')
    FROM dispatcher.sep s WHERE s.region = p_region AND s.state = 'idle';
    RETURN c;
END $_$;

--
-- Name: set_region_v1(text, integer, text, integer, double precision, double precision); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.set_region_v1(p_region text, p_max_seps integer, p_state text, p_aging_ms integer, p_sep_dead_after_s double precision, p_history_retention_s double precision) RETURNS dispatcher.region
    LANGUAGE plpgsql
    AS $$
DECLARE
    r dispatcher.region;
BEGIN
    PERFORM dispatcher.ensure_region_v1(p_region);
    IF p_max_seps IS NOT NULL AND (p_max_seps < 0 OR p_max_seps > 100000) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('max SEPs must be between 0 and 100000, not %s', p_max_seps);
    END IF;
    IF p_state IS NOT NULL AND p_state NOT IN ('running', 'stopping') THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('region state must be running or stopping, not %L', p_state);
    END IF;
    -- 255 priority points x the aging interval must fit the integer arithmetic of the
    -- enqueue procedures; NaN and Infinity fail the range checks
    IF p_aging_ms IS NOT NULL AND p_aging_ms NOT BETWEEN 1 AND 3600000 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('aging interval must be between 1 and 3600000 ms, not %s', p_aging_ms);
    END IF;
    IF p_sep_dead_after_s IS NOT NULL AND NOT (p_sep_dead_after_s > 0 AND p_sep_dead_after_s <= 86400) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('SEP dead after must be more than 0 and at most 86400 s, not %s',
                             p_sep_dead_after_s);
    END IF;
    IF p_history_retention_s IS NOT NULL
       AND NOT (p_history_retention_s >= 0 AND p_history_retention_s <= 315360000) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('history retention must be between 0 and 315360000 s (10 years), not %s',
                             p_history_retention_s);
    END IF;
    UPDATE dispatcher.region SET
        max_seps = coalesce(p_max_seps, max_seps),
        state = coalesce(p_state, state),
        aging_ms = coalesce(p_aging_ms, aging_ms),
        sep_dead_after = coalesce(make_interval(secs => p_sep_dead_after_s), sep_dead_after),
        history_retention = coalesce(make_interval(secs => p_history_retention_s), history_retention)
    WHERE name = p_region
    RETURNING * INTO r;
    IF p_state = 'running' THEN
        -- wake idle SEPs: requests may have queued while the region was stopping
        PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake')
        FROM dispatcher.sep s WHERE s.region = p_region AND s.state = 'idle';
    END IF;
    RETURN r;
END $$;

--
-- Name: start_task(bigint, bigint, integer); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.start_task(p_sep bigint, p_request bigint, p_done integer DEFAULT 0) RETURNS dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    t dispatcher.task;
BEGIN
    WITH u AS (
        UPDATE dispatcher.request r SET
            state = 'running', sep_id = p_sep, attempt = r.attempt + 1,
            dispatched_at = clock_timestamp(), started_at = clock_timestamp()
        WHERE r.id = p_request
        RETURNING r.id, r.attempt, r.transid, r.payload, r.session_id, r.commarea,
                  r.enqueued_at, r.region
    )
    SELECT u.id, u.attempt, u.transid, x.program, u.payload, u.session_id, u.commarea,
           x.timeout_s, u.enqueued_at
    INTO t
    FROM u LEFT JOIN dispatcher.transaction x ON x.region = u.region AND x.transid = u.transid;
    UPDATE dispatcher.sep SET state = 'busy', current_request = p_request,
        current_attempt = t.attempt, tasks_run = tasks_run + p_done,
        heartbeat_at = clock_timestamp()
    WHERE id = p_sep;
    RETURN t;
END $$;

--
-- Name: task_of(bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.task_of(p_request bigint) RETURNS dispatcher.task
    LANGUAGE sql STABLE
    AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM dispatcher.request r
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    WHERE r.id = p_request
$$;

--
-- Name: wake_idle_sep(text, bigint); Type: FUNCTION; Schema: dispatcher; Owner: -
--

CREATE FUNCTION dispatcher.wake_idle_sep(p_region text, p_except bigint) RETURNS void
    LANGUAGE sql
    AS $$
    SELECT pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT id FROM dispatcher.sep
          WHERE region = p_region AND state = 'idle' AND id <> p_except
          ORDER BY idle_since LIMIT 1) w
$$;

--
-- Name: active_seps(text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.active_seps(p_region text) RETURNS integer
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT count(*)::integer FROM dispatcher.sep
    WHERE region = p_region AND state <> 'dead' AND NOT standby
$$;

--
-- Name: archive(dispatcher.request, text, jsonb, jsonb); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.archive(r dispatcher.request, p_state text, p_result jsonb, p_error jsonb) RETURNS void
    LANGUAGE sql
    AS $$
    INSERT INTO dispatcher.request_history
    SELECT h.* FROM dispatcher_v2.history_row(r, p_state, p_result, p_error,
                                              coalesce(r.started_at, r.dispatched_at),
                                              clock_timestamp()) h;
    DELETE FROM dispatcher.request WHERE id = r.id;
$$;

--
-- Name: assign(bigint[], bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.assign(p_requests bigint[], p_sep bigint) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE dispatcher.request r SET
        state = 'dispatched', sep_id = p_sep, attempt = r.attempt + 1,
        dispatched_at = clock_timestamp()
    WHERE r.id = ANY (p_requests)
$$;

--
-- Name: begin(bigint, bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.begin(p_sep bigint, p_request bigint) RETURNS dispatcher.task
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
BEGIN
    UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
    WHERE id = p_request AND sep_id = p_sep AND state IN ('dispatched', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('request %s is not dispatched to SEP %s', p_request, p_sep);
    END IF;
    RETURN dispatcher_v2.task_of(p_request);
END $$;

--
-- Name: cancel_request(text, bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.cancel_request(p_region text, p_request bigint) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    r dispatcher.request;
BEGIN
    SELECT * INTO r FROM dispatcher.request WHERE id = p_request AND region = p_region FOR UPDATE;
    IF FOUND THEN
        IF r.state <> 'queued' THEN
            RETURN 'running';
        END IF;
        PERFORM dispatcher_v2.archive(r, 'cancelled', NULL,
            jsonb_build_object('type', 'Cancelled', 'message', 'cancelled while queued'));
        RETURN 'cancelled';
    END IF;
    IF EXISTS (SELECT 1 FROM dispatcher.request_history
               WHERE id = p_request AND region = p_region) THEN
        RETURN 'finished';
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'DP009',
        MESSAGE = format('unknown request %s in region %L', p_request, p_region);
END $$;

--
-- Name: channel_secret(text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.channel_secret(p_region text) RETURNS text
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    v text;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    INSERT INTO dispatcher.region_secret (region) VALUES (p_region)
    ON CONFLICT (region) DO NOTHING;
    SELECT channel_secret INTO v FROM dispatcher.region_secret WHERE region = p_region;
    RETURN v;
END $$;

--
-- Name: check_token(text, bytea); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.check_token(p_region text, p_hash bytea) RETURNS TABLE(name text, allow text[], priority integer)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT t.name, t.allow, t.priority FROM dispatcher.token t
    WHERE t.region = p_region AND t.hash = p_hash
$$;

--
-- Name: claim(bigint, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.claim(p_sep bigint, p_take integer) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    s := dispatcher_v2.lock_sep(p_sep);
    UPDATE dispatcher.sep SET heartbeat_at = clock_timestamp() WHERE id = p_sep;
    IF s.state = 'busy' THEN
        UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
        WHERE id = s.current_request AND sep_id = p_sep AND state = 'dispatched';
        RETURN QUERY
            SELECT (dispatcher_v2.task_of(r.id)).*
            FROM dispatcher.request r
            WHERE r.id = ANY (s.current_request || s.held) AND r.sep_id = p_sep
            ORDER BY r.id = s.current_request DESC, array_position(s.held, r.id);
        RETURN;
    END IF;
    IF s.state <> 'idle' THEN
        RETURN;
    END IF;
    RETURN QUERY SELECT * FROM dispatcher_v2.next_batch(s, 0, p_take);
END $$;

--
-- Name: class_room(text, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.class_room(p_region text, p_class text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_max integer;
    v_running integer;
BEGIN
    SELECT max_active INTO v_max FROM dispatcher.tx_class
    WHERE region = p_region AND name = p_class
    FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT 1 FROM dispatcher.tx_class WHERE region = p_region AND name = p_class) THEN
            RETURN -1;
        END IF;
        RETURN 1;   -- a class that was never sized has no limit
    END IF;
    SELECT count(*) INTO v_running FROM dispatcher.request
    WHERE region = p_region AND class = p_class AND state <> 'queued' AND class IS NOT NULL;
    RETURN CASE WHEN v_running < v_max THEN 1 ELSE 0 END;
END $$;

--
-- Name: complete(bigint, bigint, integer, boolean, jsonb, jsonb, boolean, text, jsonb); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.complete(p_sep bigint, p_request bigint, p_attempt integer, p_ok boolean, p_result jsonb DEFAULT NULL::jsonb, p_error jsonb DEFAULT NULL::jsonb, p_take_next boolean DEFAULT true, p_next_transid text DEFAULT NULL::text, p_commarea jsonb DEFAULT NULL::jsonb) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    s dispatcher.sep;
    r dispatcher.request;
    v_session uuid;
    v_class text;
    v_region text;
    t dispatcher.task;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND OR s.state = 'dead' THEN
        s := dispatcher_v2.lock_sep(p_sep);   -- raises the right error
    END IF;
    IF p_ok THEN
        -- the hot path: one statement, fenced on the SEP and the attempt
        WITH gone AS (
            DELETE FROM dispatcher.request q
            WHERE q.id = p_request AND q.sep_id = p_sep AND q.attempt = p_attempt
              AND q.state <> 'queued'
            RETURNING q
        )
        INSERT INTO dispatcher.request_history
        SELECT h.* FROM gone g, LATERAL dispatcher_v2.history_row(
            g.q, 'done', p_result, p_error, coalesce((g.q).started_at, (g.q).dispatched_at),
            clock_timestamp()) h
        RETURNING session_id, class, region INTO v_session, v_class, v_region;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'DP004',
                MESSAGE = format('completion refused: SEP %s no longer holds attempt %s of request %s',
                                 p_sep, p_attempt, p_request);
        END IF;
        IF v_session IS NOT NULL THEN
            UPDATE dispatcher.session SET
                next_transid = p_next_transid, commarea = p_commarea, bound_sep = NULL,
                last_active = clock_timestamp()
            WHERE id = v_session;
        END IF;
    ELSE
        SELECT * INTO r FROM dispatcher.request WHERE id = p_request FOR UPDATE;
        IF NOT FOUND OR r.sep_id IS DISTINCT FROM p_sep OR r.attempt <> p_attempt
           OR r.state = 'queued' THEN
            RAISE EXCEPTION USING ERRCODE = 'DP004',
                MESSAGE = format('completion refused: SEP %s no longer holds attempt %s of request %s',
                                 p_sep, p_attempt, p_request);
        END IF;
        v_class := r.class;
        v_region := r.region;
        PERFORM dispatcher_v2.settle_abend(r, p_result, p_error);
    END IF;

    IF p_take_next THEN
        t := dispatcher_v2.next_or_rest(s, 1);
    ELSE
        PERFORM dispatcher_v2.rest_sep(s, 1);
    END IF;

    -- a class slot came free and this SEP did not use it: wake an idle SEP to look
    IF v_class IS NOT NULL THEN
        IF (t.request_id IS NULL OR
            (SELECT class FROM dispatcher.request WHERE id = t.request_id) IS DISTINCT FROM v_class)
           AND EXISTS (SELECT 1 FROM dispatcher.request q
                       WHERE q.region = v_region AND q.class = v_class AND q.state = 'queued') THEN
            PERFORM dispatcher_v2.wake_idle_sep(v_region, p_sep);
        END IF;
    END IF;

    IF t.request_id IS NOT NULL THEN
        RETURN NEXT t;
    END IF;
END $$;

--
-- Name: complete_many(bigint, jsonb, double precision, bigint[], integer, bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.complete_many(p_sep bigint, p_report jsonb, p_clock double precision, p_release bigint[] DEFAULT '{}'::bigint[], p_take integer DEFAULT 0, p_running bigint DEFAULT NULL::bigint) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    s dispatcher.sep;
    r dispatcher.request;
    v_now timestamptz := clock_timestamp();
    v_ok integer;
    v_done integer;
    v_abends integer := 0;
    v_classes text[];
    v_left bigint[];
    v_released integer := 0;
    a record;
BEGIN
    IF p_report IS NULL OR jsonb_typeof(p_report) <> 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'complete_many: the report must be a JSON array of outcomes';
    END IF;
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND OR s.state = 'dead' THEN
        s := dispatcher_v2.lock_sep(p_sep);   -- raises the right error
    END IF;

    -- the tasks that ended well: to the history, set-based
    WITH item AS (
        SELECT u.* FROM jsonb_to_recordset(p_report)
            AS u(id bigint, attempt integer, ok boolean, result jsonb, next_transid text,
                 commarea jsonb, started double precision, ended double precision)
        WHERE u.ok
    ), gone AS (
        DELETE FROM dispatcher.request q USING item i
        WHERE q.id = i.id AND q.sep_id = p_sep AND q.attempt = i.attempt AND q.state <> 'queued'
        RETURNING q AS req, i.result, i.started, i.ended
    ), hist AS (
        INSERT INTO dispatcher.request_history
        SELECT h.* FROM gone g, LATERAL dispatcher_v2.history_row(
            g.req, 'done', coalesce(g.result, 'null'), NULL,
            greatest(coalesce((g.req).dispatched_at, (g.req).enqueued_at),
                     v_now - make_interval(secs => greatest(p_clock - g.started, 0))),
            greatest(coalesce((g.req).dispatched_at, (g.req).enqueued_at),
                     v_now - make_interval(secs => greatest(p_clock - g.ended, 0)))) h
        RETURNING id, session_id, class
    ), sess AS (
        -- (a session whose row would not change is not written: most calls end with
        -- no RETURN TRANSID, no COMMAREA and no bound SEP)
        UPDATE dispatcher.session x SET
            next_transid = i.next_transid, commarea = i.commarea, bound_sep = NULL,
            last_active = v_now
        FROM hist h JOIN item i ON i.id = h.id
        WHERE x.id = h.session_id
          AND (x.next_transid IS DISTINCT FROM i.next_transid
               OR x.commarea IS DISTINCT FROM i.commarea OR x.bound_sep IS NOT NULL)
        RETURNING 1
    )
    SELECT count(*), array_agg(DISTINCT h.class) FILTER (WHERE h.class IS NOT NULL),
           (SELECT count(*) FROM item)
    INTO v_done, v_classes, v_ok
    FROM hist h;
    IF v_done <> v_ok THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('completion refused: SEP %s no longer holds %s of the %s requests it reported',
                             p_sep, v_ok - v_done, v_ok);
    END IF;

    -- abends: one by one, retry or fail (the rule of complete)
    FOR a IN SELECT u.* FROM jsonb_to_recordset(p_report)
                 AS u(id bigint, attempt integer, ok boolean, error jsonb)
             WHERE NOT coalesce(u.ok, false) LOOP
        SELECT * INTO r FROM dispatcher.request WHERE id = a.id FOR UPDATE;
        IF NOT FOUND OR r.sep_id IS DISTINCT FROM p_sep OR r.attempt <> a.attempt
           OR r.state = 'queued' THEN
            RAISE EXCEPTION USING ERRCODE = 'DP004',
                MESSAGE = format('completion refused: SEP %s no longer holds attempt %s of request %s',
                                 p_sep, a.attempt, a.id);
        END IF;
        PERFORM dispatcher_v2.settle_abend(r, NULL, a.error);
        v_abends := v_abends + 1;
        IF r.class IS NOT NULL THEN
            v_classes := array_append(v_classes, r.class);
        END IF;
    END LOOP;
    v_done := v_done + v_abends;

    -- requests never started: back in their old place, the attempt not counted
    IF coalesce(cardinality(p_release), 0) > 0 THEN
        UPDATE dispatcher.request SET state = 'queued', sep_id = NULL,
            attempt = greatest(attempt - 1, 0), dispatched_at = NULL
        WHERE id = ANY (p_release) AND sep_id = p_sep AND state = 'dispatched';
        GET DIAGNOSTICS v_released = ROW_COUNT;
    END IF;

    SELECT array_agg(q.id ORDER BY array_position(s.held, q.id)) INTO v_left
    FROM dispatcher.request q
    WHERE q.id = ANY (s.current_request || s.held) AND q.sep_id = p_sep;

    IF v_left IS NOT NULL THEN
        -- still holding prefetched requests: stay busy with them
        IF p_running = ANY (v_left) THEN
            UPDATE dispatcher.request SET state = 'running', started_at = v_now
            WHERE id = p_running AND state = 'dispatched';
        END IF;
        UPDATE dispatcher.sep SET
            state = 'busy', held = v_left, tasks_run = tasks_run + v_done,
            current_request = CASE WHEN p_running = ANY (v_left) THEN p_running
                                   WHEN current_request = ANY (v_left) THEN current_request END,
            current_attempt = CASE WHEN p_running = ANY (v_left)
                                   THEN (SELECT attempt FROM dispatcher.request WHERE id = p_running)
                                   WHEN current_request = ANY (v_left) THEN current_attempt END,
            heartbeat_at = v_now
        WHERE id = p_sep;
    ELSIF coalesce(p_take, 0) > 0 THEN
        UPDATE dispatcher.sep SET held = '{}' WHERE id = p_sep AND held <> '{}';
        RETURN QUERY SELECT * FROM dispatcher_v2.next_batch(s, v_done, p_take);
    ELSE
        UPDATE dispatcher.sep SET held = '{}' WHERE id = p_sep AND held <> '{}';
        PERFORM dispatcher_v2.rest_sep(s, v_done);
    END IF;

    -- class slots or released requests this SEP did not take: wake an idle SEP to look
    IF v_released > 0 OR (v_classes IS NOT NULL AND EXISTS (
            SELECT 1 FROM dispatcher.request q
            WHERE q.region = s.region AND q.class = ANY (v_classes) AND q.state = 'queued')) THEN
        PERFORM dispatcher_v2.wake_idle_sep(s.region, p_sep);
    END IF;
END $$;

--
-- Name: control_sep(bigint, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.control_sep(p_sep bigint, p_action text) RETURNS dispatcher.sep
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP005', MESSAGE = format('unknown SEP %s', p_sep);
    END IF;
    IF p_action = 'pause' THEN
        UPDATE dispatcher.sep SET paused = true,
            state = CASE WHEN state = 'idle' THEN 'unavailable' ELSE state END
        WHERE id = p_sep RETURNING * INTO s;
    ELSIF p_action = 'resume' THEN
        UPDATE dispatcher.sep SET paused = false,
            state = CASE WHEN state = 'unavailable' THEN 'idle' ELSE state END,
            idle_since = clock_timestamp()
        WHERE id = p_sep RETURNING * INTO s;
    ELSIF p_action = 'stop' THEN
        UPDATE dispatcher.sep SET stop_requested = true,
            state = CASE WHEN state IN ('idle', 'unavailable') THEN 'draining' ELSE state END
        WHERE id = p_sep RETURNING * INTO s;
        PERFORM dispatcher_v2.wake_for_keys(s.region);   -- its keys have new owners
    ELSIF p_action IN ('kill', 'lost') THEN
        -- kill: an operator's `sep stop --force`; lost: the SEP's supervisor (or the SEP
        -- itself, after a task overran) says its process ended without finishing
        IF s.state <> 'dead' THEN
            PERFORM dispatcher_v2.requeue_held(s,
                CASE WHEN p_action = 'kill' THEN format('SEP %s was stopped by force', p_sep)
                     ELSE format('SEP %s (pid %s on %s) ended without finishing its work',
                                 p_sep, s.pid, s.host) END);
        END IF;
        UPDATE dispatcher.sep SET state = 'dead', stop_requested = true,
            current_request = NULL, current_attempt = NULL
        WHERE id = p_sep RETURNING * INTO s;
    ELSE
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('unknown SEP action %L: pause, resume, stop, kill or lost', p_action);
    END IF;
    PERFORM pg_notify(dispatcher.sep_channel(p_sep),
                      CASE WHEN p_action = 'lost' THEN 'kill' ELSE p_action END);
    RETURN s;
END $$;

--
-- Name: create_token(text, text, bytea, text[], integer, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.create_token(p_region text, p_name text, p_hash bytea, p_allow text[], p_priority integer, p_max_sessions integer) RETURNS dispatcher.token
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: dispatch_idle(text, bigint[], text[], text[], boolean); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.dispatch_idle(p_region text, p_new bigint[], p_requires text[], p_keys text[], p_notify boolean) RETURNS TABLE(request_id bigint, sep_id bigint, sep_address text)
    LANGUAGE plpgsql
    AS $$
DECLARE
    i integer := 1;
    v_n integer := coalesce(cardinality(p_new), 0);
    v_none text[] := '{}';      -- what no idle SEP can run: requires, or 'sep:' || owner
    v_taken bigint[] := '{}';   -- new requests handed to a SEP in this call
    v_fenced boolean := false;
    v_owner bigint;
    v_need text;
    s dispatcher.sep;
    p record;
BEGIN
    WHILE i <= v_n LOOP
        IF p_new[i] = ANY (v_taken) THEN
            i := i + 1;
            CONTINUE;
        END IF;
        v_owner := NULL;
        v_need := p_requires[i];
        IF p_keys[i] IS NOT NULL THEN
            -- a keyed request goes only to the SEP that owns its key
            v_owner := dispatcher_v2.key_owner(p_region, p_keys[i], p_requires[i]::text[]);
            v_need := 'sep:' || coalesce(v_owner::text, 'none');
        END IF;
        IF v_need = ANY (v_none) OR (p_keys[i] IS NOT NULL AND v_owner IS NULL) THEN
            i := i + 1;
            CONTINUE;
        END IF;
        s := dispatcher_v2.find_idle_sep(p_region, p_requires[i]::text[], v_owner);
        IF s.id IS NULL AND NOT v_fenced THEN
            -- the last look, fenced against SEPs going idle (see the top)
            PERFORM pg_advisory_xact_lock_shared(dispatcher.region_lock_key(p_region));
            v_fenced := true;
            s := dispatcher_v2.find_idle_sep(p_region, p_requires[i]::text[], v_owner);
        END IF;
        IF s.id IS NULL THEN
            v_none := v_none || v_need;
            i := i + 1;
            CONTINUE;
        END IF;
        p := dispatcher_v2.pick_request(p_region, s.capabilities, s.id);
        IF p.request_id IS NULL THEN
            -- nothing it may run now (a class is full or busy): the SEP stays idle
            IF p.contended THEN
                PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake');
            END IF;
            v_none := v_none || v_need;
            i := i + 1;
            CONTINUE;
        END IF;
        PERFORM dispatcher_v2.assign(ARRAY[p.request_id], s.id);
        UPDATE dispatcher.sep SET state = 'busy', current_request = p.request_id,
            current_attempt = (SELECT attempt FROM dispatcher.request WHERE id = p.request_id)
        WHERE id = s.id;
        IF p.request_id = ANY (p_new) THEN
            v_taken := v_taken || p.request_id;
            IF p_notify THEN
                PERFORM pg_notify(dispatcher.sep_channel(s.id), 'dispatch ' || p.request_id);
            END IF;
        ELSE
            PERFORM pg_notify(dispatcher.sep_channel(s.id), 'dispatch ' || p.request_id);
        END IF;
        request_id := p.request_id;
        sep_id := s.id;
        sep_address := s.address;
        RETURN NEXT;
    END LOOP;
END $$;

--
-- Name: end_sep_backend(integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.end_sep_backend(p_pid integer) RETURNS boolean
    LANGUAGE sql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
    SELECT coalesce(bool_or(pg_terminate_backend(a.pid)), false)
    FROM pg_stat_activity a
    WHERE a.pid = p_pid AND a.datname = current_database()
      AND a.usename = session_user AND a.application_name = 'dispatcher-sep'
$$;

--
-- Name: enqueue(text, text, jsonb, uuid, integer, text, timestamp with time zone, jsonb, text, boolean, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.enqueue(p_region text, p_transid text, p_payload jsonb DEFAULT 'null'::jsonb, p_session uuid DEFAULT NULL::uuid, p_user_priority integer DEFAULT 0, p_idempotency_key text DEFAULT NULL::text, p_deadline timestamp with time zone DEFAULT NULL::timestamp with time zone, p_commarea jsonb DEFAULT NULL::jsonb, p_origin text DEFAULT 'api'::text, p_notify boolean DEFAULT true, p_routing_key text DEFAULT NULL::text) RETURNS dispatcher_v2.enqueued
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    reg dispatcher.region;
    tx dispatcher.transaction;
    v_session_priority integer := 0;
    v_priority integer;
    v_id bigint;
    v_sep bigint;
    v_address text;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    SELECT * INTO tx FROM dispatcher.transaction WHERE region = p_region AND transid = p_transid;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP002',
            MESSAGE = format('unknown transaction %L in region %L', p_transid, p_region),
            HINT = 'define it with: dispatcher tx define, or dispatcher tx sync --app MODULE';
    END IF;
    IF coalesce(p_user_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_user_priority);
    END IF;
    IF p_session IS NOT NULL THEN
        SELECT priority INTO v_session_priority FROM dispatcher.session
        WHERE id = p_session AND region = p_region;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'DP007', MESSAGE = format('unknown session %s', p_session);
        END IF;
    END IF;
    v_priority := least(255, tx.priority + v_session_priority + coalesce(p_user_priority, 0));

    IF p_idempotency_key IS NOT NULL THEN
        -- a key already stored (queued, running or in the history) is answered at once
        v_id := dispatcher_v2.key_request(p_region, p_idempotency_key);
        IF v_id IS NULL THEN
            -- a new key: one enqueue of it at a time, until it commits. Another one's
            -- request, uncommitted, is seen by neither look, and it may finish and move
            -- to the history before the INSERT's conflict check meets it (two requests
            -- for one key, found by 12 sessions sending one key at once). The lock
            -- waits only for an enqueue of this same key still in flight, as the
            -- INSERT's conflict check would.
            PERFORM pg_advisory_xact_lock(dispatcher_v2.key_lock(p_region, p_idempotency_key));
            v_id := dispatcher_v2.key_request(p_region, p_idempotency_key);
        END IF;
        IF v_id IS NOT NULL THEN
            RETURN (v_id, NULL, 'duplicate', true, NULL, NULL)::dispatcher_v2.enqueued;
        END IF;
    END IF;

    IF p_routing_key IS NOT NULL AND length(p_routing_key) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'a routing key is 1 to 200 characters';
    END IF;
    INSERT INTO dispatcher.request
        (region, transid, payload, session_id, priority, dispatch_key, max_attempts, class,
         requires, idempotency_key, deadline, commarea, origin, routing_key)
    VALUES
        (p_region, p_transid, coalesce(p_payload, 'null'::jsonb), p_session, v_priority,
         clock_timestamp() - make_interval(secs => v_priority * reg.aging_ms / 1000.0),
         tx.max_attempts, tx.class, tx.requires, p_idempotency_key, p_deadline, p_commarea,
         coalesce(p_origin, 'api'), p_routing_key)
    ON CONFLICT (region, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id INTO v_id FROM dispatcher.request
        WHERE region = p_region AND idempotency_key = p_idempotency_key;
        RETURN (v_id, NULL, 'duplicate', true, NULL, NULL)::dispatcher_v2.enqueued;
    END IF;

    IF reg.state <> 'running' THEN
        RETURN (v_id, NULL, 'region_stopping', false, NULL, NULL)::dispatcher_v2.enqueued;
    END IF;
    SELECT d.sep_id, d.sep_address INTO v_sep, v_address
    FROM dispatcher_v2.dispatch_idle(p_region, ARRAY[v_id], ARRAY[tx.requires::text],
                                     ARRAY[p_routing_key], p_notify) d
    WHERE d.request_id = v_id;
    IF v_sep IS NOT NULL THEN
        RETURN (v_id, v_sep, 'dispatched', false, to_jsonb(dispatcher_v2.task_of(v_id)),
                v_address)::dispatcher_v2.enqueued;
    END IF;
    RETURN (v_id, NULL,
            CASE WHEN tx.class IS NOT NULL AND dispatcher_v2.class_room(p_region, tx.class) = 0
                 THEN 'class_full' ELSE 'no_idle_sep' END,
            false, NULL, NULL)::dispatcher_v2.enqueued;
END $$;

--
-- Name: enqueue_many(text, text[], jsonb[], uuid[], integer[], text[], text, boolean, text[]); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.enqueue_many(p_region text, p_transids text[], p_payloads jsonb[], p_sessions uuid[] DEFAULT NULL::uuid[], p_user_priorities integer[] DEFAULT NULL::integer[], p_idempotency_keys text[] DEFAULT NULL::text[], p_origin text DEFAULT 'api'::text, p_notify boolean DEFAULT true, p_routing_keys text[] DEFAULT NULL::text[]) RETURNS TABLE(ordinal integer, request_id bigint, sep_id bigint, reason text, duplicate boolean, task jsonb, sep_address text)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    SET enable_seqscan TO 'off'
    AS $$
DECLARE
    reg dispatcher.region;
    e dispatcher_v2.enqueued;
    v_n integer := coalesce(cardinality(p_transids), 0);
    v_bad text;
    v_ids bigint[];
    v_order bigint[];
    v_requires text[];
    v_keys text[];
    v_got bigint[];
    v_seps bigint[];
    v_addresses text[];
BEGIN
    IF v_n IS DISTINCT FROM coalesce(cardinality(p_payloads), 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = 'enqueue_many: transids and payloads differ in length';
    END IF;
    IF v_n = 0 THEN
        RETURN;
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_idempotency_keys) k WHERE k IS NOT NULL) THEN
        -- the locks of its new keys first, in one order (see key_lock), then request
        -- by request (enqueue answers a stored key at once, without its lock)
        PERFORM pg_advisory_xact_lock(l.id)
        FROM (SELECT DISTINCT dispatcher_v2.key_lock(p_region, k) AS id
              FROM unnest(p_idempotency_keys) k
              WHERE k IS NOT NULL AND dispatcher_v2.key_request(p_region, k) IS NULL
              ORDER BY 1) l;
        FOR i IN 1..v_n LOOP
            e := dispatcher_v2.enqueue(
                p_region, p_transids[i], p_payloads[i], p_sessions[i],
                coalesce(p_user_priorities[i], 0), p_idempotency_keys[i], NULL, NULL,
                p_origin, p_notify, p_routing_keys[i]);
            ordinal := i; request_id := e.request_id; sep_id := e.sep_id;
            reason := e.reason; duplicate := e.duplicate; task := e.task;
            sep_address := e.sep_address;
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;

    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    SELECT t INTO v_bad FROM unnest(p_transids) t
    WHERE t IS NULL OR NOT EXISTS (
        SELECT 1 FROM dispatcher.transaction x WHERE x.region = p_region AND x.transid = t)
    LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP002',
            MESSAGE = format('unknown transaction %L in region %L', v_bad, p_region),
            HINT = 'define it with: dispatcher tx define, or dispatcher tx sync --app MODULE';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_user_priorities) u WHERE u NOT BETWEEN 0 AND 255) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'priority must be between 0 and 255';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_sessions) sid
               WHERE sid IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM dispatcher.session s WHERE s.id = sid AND s.region = p_region)) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP007', MESSAGE = 'unknown session in the batch';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_routing_keys) k WHERE length(k) NOT BETWEEN 1 AND 200) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'a routing key is 1 to 200 characters';
    END IF;

    WITH ins AS (
        INSERT INTO dispatcher.request
            (region, transid, payload, session_id, priority, dispatch_key, max_attempts,
             class, requires, origin, routing_key)
        SELECT p_region, x.transid, coalesce(p_payloads[i], 'null'::jsonb), p_sessions[i],
               pr.prio, clock_timestamp() - make_interval(secs => pr.prio * reg.aging_ms / 1000.0),
               x.max_attempts, x.class, x.requires, coalesce(p_origin, 'api'), p_routing_keys[i]
        FROM generate_subscripts(p_transids, 1) AS i
        JOIN dispatcher.transaction x ON x.region = p_region AND x.transid = p_transids[i]
        LEFT JOIN dispatcher.session s ON s.id = p_sessions[i]
        CROSS JOIN LATERAL (SELECT least(255, x.priority + coalesce(s.priority, 0)
                                              + coalesce(p_user_priorities[i], 0)) AS prio) pr
        ORDER BY i
        RETURNING id, dispatch_key, requires, routing_key
    )
    SELECT array_agg(id ORDER BY id),                          -- ids follow the batch order
           array_agg(id ORDER BY dispatch_key, id),            -- and in dispatch order
           array_agg(requires::text ORDER BY dispatch_key, id),
           array_agg(routing_key ORDER BY dispatch_key, id)
    INTO v_ids, v_order, v_requires, v_keys FROM ins;

    IF reg.state = 'running' THEN
        SELECT array_agg(d.request_id), array_agg(d.sep_id), array_agg(d.sep_address)
        INTO v_got, v_seps, v_addresses
        FROM dispatcher_v2.dispatch_idle(p_region, v_order, v_requires, v_keys, p_notify) d;
    END IF;

    RETURN QUERY
    SELECT i, v_ids[i], a.sep, CASE WHEN a.sep IS NOT NULL THEN 'dispatched'
                                    WHEN reg.state <> 'running' THEN 'region_stopping'
                                    ELSE 'no_idle_sep' END,
           false,
           CASE WHEN a.sep IS NOT NULL THEN to_jsonb(dispatcher_v2.task_of(v_ids[i])) END,
           a.address
    FROM generate_subscripts(p_transids, 1) AS i
    LEFT JOIN unnest(v_got, v_seps, v_addresses) AS a(request, sep, address)
        ON a.request = v_ids[i];
END $$;

--
-- Name: find_idle_sep(text, text[], bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.find_idle_sep(p_region text, p_requires text[], p_only bigint) RETURNS dispatcher.sep
    LANGUAGE sql
    AS $$
    SELECT s.* FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle' AND NOT s.standby
      AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> p_requires
      AND (p_only IS NULL OR s.id = p_only)
    ORDER BY s.idle_since
    LIMIT 1
    FOR UPDATE SKIP LOCKED
$$;

--
-- Name: grant_roles(); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.grant_roles() RETURNS void
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: heartbeat_sep(bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.heartbeat_sep(p_sep bigint) RETURNS TABLE(state text, paused boolean, stop_requested boolean, standby boolean)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
#variable_conflict use_column
DECLARE
    s dispatcher.sep;
BEGIN
    UPDATE dispatcher.sep x SET heartbeat_at = clock_timestamp()
    WHERE x.id = p_sep
    RETURNING * INTO s;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF s.state <> 'dead' AND NOT s.standby
       AND dispatcher_v2.active_seps(s.region) >
           (SELECT max_seps FROM dispatcher.region WHERE name = s.region)
       AND s.id = (SELECT max(id) FROM dispatcher.sep
                   WHERE region = s.region AND state <> 'dead' AND NOT standby) THEN
        UPDATE dispatcher.sep x SET standby = true WHERE x.id = p_sep RETURNING * INTO s;
    END IF;
    state := s.state; paused := s.paused; stop_requested := s.stop_requested;
    standby := s.standby;
    RETURN NEXT;
END $$;

--
-- Name: request_history; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.request_history (
    id bigint NOT NULL,
    region text NOT NULL,
    transid text NOT NULL,
    payload jsonb,
    session_id uuid,
    priority integer NOT NULL,
    state text NOT NULL,
    attempt integer NOT NULL,
    sep_id bigint,
    class text,
    idempotency_key text,
    origin text NOT NULL,
    result jsonb,
    error jsonb,
    enqueued_at timestamp with time zone NOT NULL,
    dispatched_at timestamp with time zone,
    started_at timestamp with time zone,
    finished_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    CONSTRAINT request_history_state_check CHECK ((state = ANY (ARRAY['done'::text, 'failed'::text, 'cancelled'::text])))
);

--
-- Name: history_row(dispatcher.request, text, jsonb, jsonb, timestamp with time zone, timestamp with time zone); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.history_row(r dispatcher.request, p_state text, p_result jsonb, p_error jsonb, p_started timestamp with time zone, p_finished timestamp with time zone) RETURNS dispatcher.request_history
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT ROW(r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state,
               r.attempt, r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error,
               r.enqueued_at, r.dispatched_at, p_started, p_finished
           )::dispatcher.request_history
$$;

--
-- Name: key_lock(text, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.key_lock(p_region text, p_key text) RETURNS bigint
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT hashtextextended('dispatcher.key:' || p_region || chr(31) || p_key, 0)
$$;

--
-- Name: key_owner(text, text, text[]); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.key_owner(p_region text, p_key text, p_requires text[]) RETURNS bigint
    LANGUAGE sql STABLE COST 1000
    AS $$
    SELECT s.id FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state <> 'dead' AND NOT s.standby AND NOT s.stop_requested
      AND s.capabilities @> p_requires
    ORDER BY hashtextextended(p_key, s.id) DESC, s.id
    LIMIT 1
$$;

--
-- Name: key_request(text, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.key_request(p_region text, p_key text) RETURNS bigint
    LANGUAGE sql STABLE
    AS $$
    SELECT coalesce(
        (SELECT id FROM dispatcher.request
         WHERE region = p_region AND idempotency_key = p_key),
        (SELECT id FROM dispatcher.request_history
         WHERE region = p_region AND idempotency_key = p_key))
$$;

--
-- Name: leave_sep(bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.leave_sep(p_sep bigint) RETURNS integer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    s dispatcher.sep;
    n integer;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    n := CASE WHEN s.state = 'dead' THEN 0
              ELSE dispatcher_v2.requeue_held(s, format('SEP %s left the region', p_sep)) END;
    DELETE FROM dispatcher.sep WHERE id = p_sep;
    RETURN n;
END $$;

--
-- Name: lock_sep(bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.lock_sep(p_sep bigint) RETURNS dispatcher.sep
    LANGUAGE plpgsql
    AS $$
DECLARE
    s dispatcher.sep;
BEGIN
    SELECT * INTO s FROM dispatcher.sep WHERE id = p_sep FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP005', MESSAGE = format('unknown SEP %s', p_sep);
    END IF;
    IF s.state = 'dead' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('SEP %s was declared dead; its work was handed to others', p_sep);
    END IF;
    RETURN s;
END $$;

--
-- Name: next_batch(dispatcher.sep, integer, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.next_batch(s dispatcher.sep, p_done integer, p_take integer) RETURNS SETOF dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    t dispatcher.task;
    c record;
    v_full text[] := '{}';
    v_held bigint[] := '{}';
    v_plain bigint[] := '{}';
    v_ids bigint[];
    v_classy boolean;
    v_attempt integer;
BEGIN
    IF coalesce(p_take, 1) >= 2 AND NOT s.standby AND NOT s.paused AND NOT s.stop_requested
       AND (SELECT r.state FROM dispatcher.region r WHERE r.name = s.region) = 'running' THEN
        SELECT array_agg(q.id ORDER BY q.n), coalesce(bool_or(q.class IS NOT NULL), false)
        INTO v_ids, v_classy
        FROM dispatcher_v2.queue_candidates(s.region, s.capabilities, '{}',
                                            least(p_take, 1000), s.id)
             WITH ORDINALITY AS q(id, class, n);
        IF v_ids IS NOT NULL AND NOT v_classy THEN
            WITH u AS (
                UPDATE dispatcher.request r SET
                    state = CASE WHEN r.id = v_ids[1] THEN 'running' ELSE 'dispatched' END,
                    sep_id = s.id, attempt = r.attempt + 1, dispatched_at = clock_timestamp(),
                    started_at = CASE WHEN r.id = v_ids[1] THEN clock_timestamp() END
                WHERE r.id = ANY (v_ids)
                RETURNING r.id, r.attempt
            )
            SELECT u.attempt INTO v_attempt FROM u WHERE u.id = v_ids[1];
            UPDATE dispatcher.sep SET state = 'busy', current_request = v_ids[1],
                current_attempt = v_attempt, tasks_run = tasks_run + p_done,
                heartbeat_at = clock_timestamp(), held = v_ids[2:]
            WHERE id = s.id;
            RETURN QUERY SELECT * FROM dispatcher_v2.tasks_of(v_ids);
            RETURN;
        END IF;
        -- (rows this scan locked stay locked by this transaction: the way below sees them)
    END IF;
    t := dispatcher_v2.next_or_rest(s, p_done);
    IF t.request_id IS NULL THEN
        RETURN;
    END IF;
    RETURN NEXT t;
    IF coalesce(p_take, 1) < 2 THEN
        RETURN;
    END IF;
    FOR c IN SELECT * FROM dispatcher_v2.queue_candidates(s.region, s.capabilities, '{}',
                                                          least(p_take, 1000) - 1, s.id) LOOP
        IF c.class IS NOT NULL THEN
            CONTINUE WHEN c.class = ANY (v_full);
            IF dispatcher_v2.class_room(s.region, c.class) <> 1 THEN
                v_full := v_full || c.class;   -- full, or being dispatched by another
                CONTINUE;
            END IF;
            -- counted at once: class_room counts what is no longer queued
            PERFORM dispatcher_v2.assign(ARRAY[c.id], s.id);
        ELSE
            v_plain := v_plain || c.id;
        END IF;
        v_held := v_held || c.id;
    END LOOP;
    IF v_held = '{}' THEN
        RETURN;
    END IF;
    PERFORM dispatcher_v2.assign(v_plain, s.id);
    UPDATE dispatcher.sep SET held = v_held WHERE id = s.id;
    RETURN QUERY SELECT * FROM dispatcher_v2.tasks_of(v_held);
END $$;

--
-- Name: next_or_rest(dispatcher.sep, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.next_or_rest(s dispatcher.sep, p_done integer) RETURNS dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    reg dispatcher.region;
    p record;
    v_contended boolean := false;
    v_fenced boolean := false;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = s.region;
    IF s.standby THEN
        -- a standby SEP takes a slot only when one is free (serialised on the region row)
        PERFORM 1 FROM dispatcher.region WHERE name = s.region FOR UPDATE;
        IF dispatcher_v2.active_seps(s.region) < reg.max_seps THEN
            UPDATE dispatcher.sep SET standby = false WHERE id = s.id;
            s.standby := false;
        END IF;
    END IF;
    IF NOT s.standby AND NOT s.paused AND NOT s.stop_requested AND reg.state = 'running' THEN
        p := dispatcher_v2.pick_request(s.region, s.capabilities, s.id);
        v_contended := p.contended;
        IF p.request_id IS NULL THEN
            -- the last look, fenced against concurrent enqueues (see the top). The lock
            -- is only tried, never waited for, so that a SEP holding rows never waits in
            -- a cycle; after ~50 ms of tries it rests and wakes itself to look again
            -- once this transaction has committed.
            FOR i IN 1..100 LOOP
                v_fenced := pg_try_advisory_xact_lock(dispatcher.region_lock_key(s.region));
                EXIT WHEN v_fenced;
                PERFORM pg_sleep(0.0005);
            END LOOP;
            IF v_fenced THEN
                p := dispatcher_v2.pick_request(s.region, s.capabilities, s.id);
                v_contended := v_contended OR p.contended;
            ELSE
                v_contended := true;
            END IF;
        END IF;
        IF p.request_id IS NOT NULL THEN
            RETURN dispatcher_v2.start_task(s, p.request_id, p_done);
        END IF;
    END IF;
    PERFORM dispatcher_v2.rest_sep(s, p_done);
    IF v_contended THEN
        PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake');   -- look again soon
    END IF;
    RETURN NULL;
END $$;

--
-- Name: open_session(text, uuid, bytea); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.open_session(p_region text, p_listener uuid, p_hash bytea) RETURNS TABLE(id uuid, name text, allow text[], priority integer)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
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

--
-- Name: pick_request(text, text[], bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.pick_request(p_region text, p_caps text[], p_sep bigint, OUT request_id bigint, OUT contended boolean) RETURNS record
    LANGUAGE plpgsql
    AS $$
DECLARE
    v_class text;
    v_full text[] := '{}';
    v_room integer;
BEGIN
    contended := false;
    FOR i IN 1..50 LOOP
        SELECT c.id, c.class INTO request_id, v_class
        FROM dispatcher_v2.queue_candidates(p_region, p_caps, v_full, 1, p_sep) c;
        IF NOT FOUND THEN
            request_id := NULL;
            RETURN;
        END IF;
        IF v_class IS NULL THEN
            RETURN;
        END IF;
        v_room := dispatcher_v2.class_room(p_region, v_class);
        IF v_room = 1 THEN
            RETURN;
        END IF;
        IF v_room = -1 THEN
            contended := true;
        END IF;
        v_full := v_full || v_class;   -- pass over the rest of this class
    END LOOP;
    request_id := NULL;
END $$;

--
-- Name: process_procedures(); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.process_procedures() RETURNS TABLE(role text, proc text)
    LANGUAGE sql IMMUTABLE
    AS $$
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

--
-- Name: queue_candidates(text, text[], text[], integer, bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.queue_candidates(p_region text, p_caps text[], p_skip text[], p_limit integer, p_sep bigint) RETURNS TABLE(id bigint, class text)
    LANGUAGE plpgsql
    AS $$
BEGIN
    RETURN QUERY
    SELECT r.id, r.class FROM dispatcher.request r
    WHERE r.region = p_region AND r.state = 'queued'
      AND r.requires <@ p_caps
      AND (r.not_before IS NULL OR r.not_before <= clock_timestamp())
      AND (r.deadline IS NULL OR r.deadline > clock_timestamp())
      AND (r.class IS NULL OR r.class <> ALL (p_skip))
      AND (r.routing_key IS NULL
           OR dispatcher_v2.key_owner(r.region, r.routing_key, r.requires) = p_sep)
    ORDER BY r.dispatch_key, r.id
    LIMIT p_limit
    FOR UPDATE OF r SKIP LOCKED;
END $$;

--
-- Name: reap(text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.reap(p_region text) RETURNS TABLE(dead_seps integer, requeued integer, expired integer, purged integer)
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    reg dispatcher.region;
    s dispatcher.sep;
BEGIN
    reg := dispatcher.get_region_v1(p_region);
    dead_seps := 0; requeued := 0; expired := 0; purged := 0;
    FOR s IN
        SELECT * FROM dispatcher.sep
        WHERE region = p_region AND state <> 'dead'
          AND heartbeat_at < clock_timestamp() - reg.sep_dead_after
          AND pg_postmaster_start_time() < clock_timestamp() - reg.sep_dead_after
        FOR UPDATE SKIP LOCKED
    LOOP
        requeued := requeued + dispatcher_v2.requeue_held(s,
            format('SEP %s (pid %s on %s) stopped beating and was declared dead',
                   s.id, s.pid, s.host));
        UPDATE dispatcher.sep SET state = 'dead', current_request = NULL, current_attempt = NULL
        WHERE id = s.id;
        dead_seps := dead_seps + 1;
    END LOOP;

    WITH gone AS (
        DELETE FROM dispatcher.request r
        WHERE r.id IN (SELECT id FROM dispatcher.request
                       WHERE region = p_region AND state = 'queued'
                         AND deadline IS NOT NULL AND deadline <= clock_timestamp()
                       LIMIT 1000 FOR UPDATE SKIP LOCKED)
        RETURNING r
    )
    INSERT INTO dispatcher.request_history
    SELECT h.* FROM gone g, LATERAL dispatcher_v2.history_row(
        g.r, 'failed', NULL,
        jsonb_build_object('type', 'DeadlineExpired',
                           'message', format('not started before its deadline %s', (g.r).deadline)),
        NULL, clock_timestamp()) h;
    GET DIAGNOSTICS expired = ROW_COUNT;

    DELETE FROM dispatcher.request_history h
    WHERE h.id IN (SELECT id FROM dispatcher.request_history
                   WHERE region = p_region
                     AND finished_at < clock_timestamp() - reg.history_retention
                   LIMIT 10000);
    GET DIAGNOSTICS purged = ROW_COUNT;

    DELETE FROM dispatcher.sep
    WHERE region = p_region AND state = 'dead' AND heartbeat_at < clock_timestamp() - interval '1 hour';
    RETURN NEXT;
END $$;

--
-- Name: register_sep(text, text, integer, text[], boolean, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.register_sep(p_region text, p_host text, p_pid integer, p_capabilities text[], p_standby boolean, p_address text DEFAULT NULL::text) RETURNS dispatcher.sep
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
DECLARE
    reg dispatcher.region;
    v_live integer;
    v_standby boolean := coalesce(p_standby, false);
    s dispatcher.sep;
BEGIN
    SELECT * INTO reg FROM dispatcher.region WHERE name = p_region FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP001', MESSAGE = format('unknown region %L', p_region);
    END IF;
    -- SEPs of a crashed host hold no slot: declare the silent ones dead first
    PERFORM dispatcher_v2.reap(p_region);
    v_live := dispatcher_v2.active_seps(p_region);
    IF v_live < reg.max_seps THEN
        v_standby := false;   -- a standby SEP that finds a free slot takes it at once
    ELSIF NOT v_standby THEN
        RAISE EXCEPTION USING ERRCODE = 'DP006',
            MESSAGE = format('region %L has no room for another SEP: %s of max %s running',
                             p_region, v_live, reg.max_seps),
            HINT = 'raise it with: dispatcher region set --max-seps N, or start the SEP with --standby';
    END IF;
    INSERT INTO dispatcher.sep (region, host, pid, capabilities, standby, address)
    VALUES (p_region, p_host, p_pid, coalesce(p_capabilities, '{}'), v_standby, p_address)
    RETURNING * INTO s;
    RETURN s;
END $$;

--
-- Name: requeue_held(dispatcher.sep, text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
    LANGUAGE plpgsql
    AS $$
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

--
-- Name: rest_sep(dispatcher.sep, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.rest_sep(s dispatcher.sep, p_done integer) RETURNS void
    LANGUAGE sql
    AS $$
    UPDATE dispatcher.sep SET
        state = dispatcher_v2.rest_state(s), current_request = NULL, current_attempt = NULL,
        idle_since = clock_timestamp(), tasks_run = tasks_run + p_done,
        heartbeat_at = clock_timestamp()
    WHERE id = s.id
$$;

--
-- Name: rest_state(dispatcher.sep); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.rest_state(s dispatcher.sep) RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$
    SELECT CASE WHEN s.stop_requested THEN 'draining'
                WHEN s.paused THEN 'unavailable'
                ELSE 'idle' END
$$;

--
-- Name: settle_abend(dispatcher.request, jsonb, jsonb); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.settle_abend(r dispatcher.request, p_result jsonb, p_error jsonb) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    IF r.attempt >= r.max_attempts OR p_error->>'type' = 'SessionEnded'
       OR p_error->'retryable' = 'false'::jsonb THEN
        PERFORM dispatcher_v2.archive(r, 'failed', p_result, p_error);
    ELSE
        UPDATE dispatcher.request SET
            state = 'queued', sep_id = NULL, error = p_error,
            not_before = clock_timestamp() + make_interval(secs => greatest(
                coalesce((SELECT least(x.max_backoff_s, 604800,
                                       least(greatest(x.retry_backoff_s, 0), 604800)
                                       * power(2::float8, least(greatest(r.attempt - 1, 0), 60)))
                          FROM dispatcher.transaction x
                          WHERE x.region = r.region AND x.transid = r.transid), 0)
                * (0.9 + 0.2 * random()),
                CASE WHEN jsonb_typeof(p_error->'retry_after_s') = 'number'
                     THEN least(greatest((p_error->>'retry_after_s')::float8, 0), 604800)
                     ELSE 0 END))
        WHERE id = r.id;
    END IF;
END $$;

--
-- Name: start_task(dispatcher.sep, bigint, integer); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.start_task(s dispatcher.sep, p_request bigint, p_done integer) RETURNS dispatcher.task
    LANGUAGE plpgsql
    AS $$
DECLARE
    t dispatcher.task;
BEGIN
    WITH u AS (
        UPDATE dispatcher.request r SET
            state = 'running', sep_id = s.id, attempt = r.attempt + 1,
            dispatched_at = clock_timestamp(), started_at = clock_timestamp()
        WHERE r.id = p_request
        RETURNING r.id, r.attempt, r.transid, r.payload, r.session_id, r.commarea,
                  r.enqueued_at, r.region
    )
    SELECT u.id, u.attempt, u.transid, x.program, u.payload, u.session_id, u.commarea,
           x.timeout_s, u.enqueued_at
    INTO t
    FROM u LEFT JOIN dispatcher.transaction x ON x.region = u.region AND x.transid = u.transid;
    UPDATE dispatcher.sep SET state = 'busy', current_request = p_request,
        current_attempt = t.attempt, tasks_run = tasks_run + p_done,
        heartbeat_at = clock_timestamp()
    WHERE id = s.id;
    RETURN t;
END $$;

--
-- Name: task_of(bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.task_of(p_request bigint) RETURNS dispatcher.task
    LANGUAGE sql STABLE
    AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM dispatcher.request r
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    WHERE r.id = p_request
$$;

--
-- Name: tasks_of(bigint[]); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.tasks_of(p_requests bigint[]) RETURNS SETOF dispatcher.task
    LANGUAGE sql STABLE
    AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM unnest(p_requests) WITH ORDINALITY AS h(id, n)
    JOIN dispatcher.request r ON r.id = h.id
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    ORDER BY h.n
$$;

--
-- Name: wake_for_keys(text); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.wake_for_keys(p_region text) RETURNS void
    LANGUAGE sql
    AS $$
    SELECT pg_notify(dispatcher.sep_channel(s.id), 'wake')
    FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle'
      AND EXISTS (SELECT 1 FROM dispatcher.request r
                  WHERE r.region = p_region AND r.state = 'queued'
                    AND r.routing_key IS NOT NULL)
$$;

--
-- Name: wake_idle_sep(text, bigint); Type: FUNCTION; Schema: dispatcher_v2; Owner: -
--

CREATE FUNCTION dispatcher_v2.wake_idle_sep(p_region text, p_except bigint) RETURNS void
    LANGUAGE plpgsql
    AS $$
BEGIN
    -- (PERFORM: every row; an SQL function would stop at its first)
    PERFORM pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT DISTINCT h.requires
          FROM (SELECT q.requires FROM dispatcher.request q
                WHERE q.region = p_region AND q.state = 'queued'
                ORDER BY q.dispatch_key, q.id LIMIT 50) h) need
    CROSS JOIN LATERAL (
        SELECT s.id FROM dispatcher.sep s
        WHERE s.region = p_region AND s.state = 'idle' AND s.id <> p_except
          AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> need.requires
        ORDER BY s.idle_since LIMIT 1) w
    GROUP BY w.id;
END $$;

--
-- Name: cancel_timer_v1(text, text); Type: FUNCTION; Schema: dispatcher_xr; Owner: -
--

CREATE FUNCTION dispatcher_xr.cancel_timer_v1(p_region text, p_reqid text) RETURNS boolean
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $$
BEGIN
    DELETE FROM dispatcher_xr.timer WHERE region = p_region AND reqid = p_reqid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify(dispatcher_xr.channel(), p_region);
    RETURN true;
END $$;

--
-- Name: channel(); Type: FUNCTION; Schema: dispatcher_xr; Owner: -
--

CREATE FUNCTION dispatcher_xr.channel() RETURNS text
    LANGUAGE sql IMMUTABLE
    AS $$ SELECT 'dispatcher_timers' $$;

--
-- Name: clock(); Type: FUNCTION; Schema: dispatcher_xr; Owner: -
--

CREATE FUNCTION dispatcher_xr.clock() RETURNS timestamp with time zone
    LANGUAGE sql
    AS $$ SELECT clock_timestamp() $$;

--
-- Name: timer; Type: TABLE; Schema: dispatcher_xr; Owner: -
--

CREATE TABLE dispatcher_xr.timer (
    id bigint NOT NULL,
    region text NOT NULL,
    reqid text NOT NULL,
    transid text NOT NULL,
    payload jsonb DEFAULT 'null'::jsonb NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    due_at timestamp with time zone NOT NULL,
    cron text,
    tz text,
    fired integer DEFAULT 0 NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT timer_priority_check CHECK (((priority >= 0) AND (priority <= 255))),
    CONSTRAINT timer_reqid_check CHECK ((reqid ~ '^[A-Za-z0-9_.:@-]{1,64}$'::text))
);

--
-- Name: set_timer_v1(text, text, text, jsonb, integer, timestamp with time zone, text, text); Type: FUNCTION; Schema: dispatcher_xr; Owner: -
--

CREATE FUNCTION dispatcher_xr.set_timer_v1(p_region text, p_reqid text, p_transid text, p_payload jsonb, p_priority integer, p_due_at timestamp with time zone, p_cron text, p_tz text) RETURNS dispatcher_xr.timer
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path TO 'pg_catalog', 'pg_temp'
    AS $_$
DECLARE
    t dispatcher_xr.timer;
BEGIN
    IF p_due_at IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'a timer needs a due time';
    END IF;
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    IF p_reqid IS NULL OR p_reqid !~ '^[A-Za-z0-9_.:@-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid REQID %L: 1-64 letters, digits or _.:@-', p_reqid);
    END IF;
    INSERT INTO dispatcher_xr.timer (region, reqid, transid, payload, priority, due_at, cron, tz)
    VALUES (p_region, p_reqid, p_transid, coalesce(p_payload, 'null'::jsonb),
            coalesce(p_priority, 0), greatest(p_due_at, dispatcher_xr.clock()), p_cron, p_tz)
    ON CONFLICT (region, reqid) DO NOTHING
    RETURNING * INTO t;
    IF t.id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'DP010',
            MESSAGE = format('a timer with REQID %L is already pending in region %L',
                             p_reqid, p_region),
            HINT = 'cancel it first, or choose another --reqid';
    END IF;
    PERFORM pg_notify(dispatcher_xr.channel(), p_region);
    RETURN t;
END $_$;

--
-- Name: listener; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.listener (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    region text NOT NULL,
    host text NOT NULL,
    port integer NOT NULL,
    pid integer NOT NULL,
    address text,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    heartbeat_at timestamp with time zone DEFAULT now() NOT NULL
);

--
-- Name: region_secret; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.region_secret (
    region text NOT NULL,
    channel_secret text DEFAULT replace(((gen_random_uuid())::text || (gen_random_uuid())::text), '-'::text, ''::text) NOT NULL
);

--
-- Name: request_id_seq; Type: SEQUENCE; Schema: dispatcher; Owner: -
--

ALTER TABLE dispatcher.request ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dispatcher.request_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: sep_id_seq; Type: SEQUENCE; Schema: dispatcher; Owner: -
--

ALTER TABLE dispatcher.sep ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dispatcher.sep_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: session; Type: TABLE; Schema: dispatcher; Owner: -
--

CREATE TABLE dispatcher.session (
    id uuid DEFAULT gen_random_uuid() NOT NULL,
    region text NOT NULL,
    listener_id uuid,
    user_name text DEFAULT ''::text NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    bound_sep bigint,
    next_transid text,
    commarea jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    last_active timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT session_priority_check CHECK (((priority >= 0) AND (priority <= 255)))
);

--
-- Name: firing; Type: TABLE; Schema: dispatcher_xr; Owner: -
--

CREATE TABLE dispatcher_xr.firing (
    firing_id text NOT NULL,
    region text NOT NULL,
    reqid text NOT NULL,
    due_at timestamp with time zone NOT NULL,
    fired_at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    request_id bigint
);

--
-- Name: timer_id_seq; Type: SEQUENCE; Schema: dispatcher_xr; Owner: -
--

ALTER TABLE dispatcher_xr.timer ALTER COLUMN id ADD GENERATED ALWAYS AS IDENTITY (
    SEQUENCE NAME dispatcher_xr.timer_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1
);

--
-- Name: listener listener_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.listener
    ADD CONSTRAINT listener_pkey PRIMARY KEY (id);

--
-- Name: region region_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.region
    ADD CONSTRAINT region_pkey PRIMARY KEY (name);

--
-- Name: region_secret region_secret_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.region_secret
    ADD CONSTRAINT region_secret_pkey PRIMARY KEY (region);

--
-- Name: request_history request_history_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.request_history
    ADD CONSTRAINT request_history_pkey PRIMARY KEY (id);

--
-- Name: request request_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.request
    ADD CONSTRAINT request_pkey PRIMARY KEY (id);

--
-- Name: sep sep_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.sep
    ADD CONSTRAINT sep_pkey PRIMARY KEY (id);

--
-- Name: session session_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.session
    ADD CONSTRAINT session_pkey PRIMARY KEY (id);

--
-- Name: token token_hash_key; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.token
    ADD CONSTRAINT token_hash_key UNIQUE (hash);

--
-- Name: token token_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.token
    ADD CONSTRAINT token_pkey PRIMARY KEY (region, name);

--
-- Name: transaction transaction_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.transaction
    ADD CONSTRAINT transaction_pkey PRIMARY KEY (region, transid);

--
-- Name: tx_class tx_class_pkey; Type: CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.tx_class
    ADD CONSTRAINT tx_class_pkey PRIMARY KEY (region, name);

--
-- Name: firing firing_pkey; Type: CONSTRAINT; Schema: dispatcher_xr; Owner: -
--

ALTER TABLE ONLY dispatcher_xr.firing
    ADD CONSTRAINT firing_pkey PRIMARY KEY (firing_id);

--
-- Name: timer timer_pkey; Type: CONSTRAINT; Schema: dispatcher_xr; Owner: -
--

ALTER TABLE ONLY dispatcher_xr.timer
    ADD CONSTRAINT timer_pkey PRIMARY KEY (id);

--
-- Name: timer timer_region_reqid_key; Type: CONSTRAINT; Schema: dispatcher_xr; Owner: -
--

ALTER TABLE ONLY dispatcher_xr.timer
    ADD CONSTRAINT timer_region_reqid_key UNIQUE (region, reqid);

--
-- Name: request_class_running_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX request_class_running_idx ON dispatcher.request USING btree (region, class) WHERE ((state <> 'queued'::text) AND (class IS NOT NULL));

--
-- Name: request_history_finished_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX request_history_finished_idx ON dispatcher.request_history USING btree (region, finished_at);

--
-- Name: request_history_idempotency_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX request_history_idempotency_idx ON dispatcher.request_history USING btree (region, idempotency_key) WHERE (idempotency_key IS NOT NULL);

--
-- Name: request_idempotency_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE UNIQUE INDEX request_idempotency_idx ON dispatcher.request USING btree (region, idempotency_key) WHERE (idempotency_key IS NOT NULL);

--
-- Name: request_queue_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX request_queue_idx ON dispatcher.request USING btree (region, dispatch_key, id) WHERE (state = 'queued'::text);

--
-- Name: sep_region_state_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX sep_region_state_idx ON dispatcher.sep USING btree (region, state, idle_since);

--
-- Name: session_listener_idx; Type: INDEX; Schema: dispatcher; Owner: -
--

CREATE INDEX session_listener_idx ON dispatcher.session USING btree (listener_id);

--
-- Name: firing_region_idx; Type: INDEX; Schema: dispatcher_xr; Owner: -
--

CREATE INDEX firing_region_idx ON dispatcher_xr.firing USING btree (region, fired_at);

--
-- Name: timer_due_idx; Type: INDEX; Schema: dispatcher_xr; Owner: -
--

CREATE INDEX timer_due_idx ON dispatcher_xr.timer USING btree (region, due_at);

--
-- Name: listener listener_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.listener
    ADD CONSTRAINT listener_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: region_secret region_secret_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.region_secret
    ADD CONSTRAINT region_secret_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: sep sep_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.sep
    ADD CONSTRAINT sep_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: session session_listener_id_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.session
    ADD CONSTRAINT session_listener_id_fkey FOREIGN KEY (listener_id) REFERENCES dispatcher.listener(id) ON DELETE SET NULL;

--
-- Name: session session_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.session
    ADD CONSTRAINT session_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: token token_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.token
    ADD CONSTRAINT token_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: transaction transaction_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.transaction
    ADD CONSTRAINT transaction_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- Name: tx_class tx_class_region_fkey; Type: FK CONSTRAINT; Schema: dispatcher; Owner: -
--

ALTER TABLE ONLY dispatcher.tx_class
    ADD CONSTRAINT tx_class_region_fkey FOREIGN KEY (region) REFERENCES dispatcher.region(name) ON DELETE CASCADE;

--
-- PostgreSQL database dump complete
--
