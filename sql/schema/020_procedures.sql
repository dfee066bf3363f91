-- The dispatch procedures. Names carry a version suffix (_v1) so that SEPs and
-- listeners of two releases can run side by side during an upgrade.
--
-- Error codes (SQLSTATE), turned into Python exceptions by dispatcher/errors.py:
--   DP001 unknown region          DP002 unknown transaction   DP003 value out of range
--   DP004 completion refused      DP005 unknown SEP           DP006 region has no room
--   DP007 unknown session         DP009 unknown request
--
-- Lost wake-ups (ARCHITECTURE.md invariant 2): a SEP that finds no work takes the
-- region's advisory lock in exclusive mode (trying, never waiting: see next_or_rest)
-- and looks once more before it goes idle;
-- an enqueue that finds no idle SEP takes the same lock in shared mode and looks
-- once more. Whichever comes second sees what the first committed.

CREATE FUNCTION dispatcher.region_lock_key(p_region text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT hashtextextended('dispatcher.region:' || p_region, 0) $$;

CREATE FUNCTION dispatcher.sep_channel(p_sep bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'dispatcher_sep_' || p_sep $$;

CREATE FUNCTION dispatcher.region_channel(p_region text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'dispatcher_region_' || md5(p_region) $$;

-- ---------------------------------------------------------------- regions

CREATE FUNCTION dispatcher.ensure_region_v1(p_region text) RETURNS dispatcher.region
LANGUAGE plpgsql AS $$
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
END $$;

CREATE FUNCTION dispatcher.get_region_v1(p_region text) RETURNS dispatcher.region
LANGUAGE plpgsql STABLE AS $$
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

CREATE FUNCTION dispatcher.set_region_v1(
    p_region text, p_max_seps integer, p_state text, p_aging_ms integer,
    p_sep_dead_after_s double precision, p_history_retention_s double precision
) RETURNS dispatcher.region
LANGUAGE plpgsql AS $$
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
    IF p_aging_ms IS NOT NULL AND p_aging_ms <= 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'aging interval must be positive';
    END IF;
    IF (p_sep_dead_after_s IS NOT NULL AND p_sep_dead_after_s <= 0)
       OR (p_history_retention_s IS NOT NULL AND p_history_retention_s < 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'durations must be positive';
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

-- ------------------------------------------------------- transactions

CREATE FUNCTION dispatcher.set_class_v1(p_region text, p_class text, p_max_active integer)
RETURNS dispatcher.tx_class
LANGUAGE plpgsql AS $$
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
END $$;

CREATE FUNCTION dispatcher.define_transaction_v1(
    p_region text, p_transid text, p_program text, p_priority integer, p_class text,
    p_timeout_s double precision, p_max_attempts integer, p_requires text[], p_description text
) RETURNS dispatcher.transaction
LANGUAGE plpgsql AS $$
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
END $$;

-- ------------------------------------------------------------ picking
--
-- Limits are checked by counting, under a lock taken only by those who add work:
-- * max SEPs: a SEP registers only if the region has room (standby SEPs wait for a
--   slot and promote themselves), so busy SEPs can never outnumber max SEPs;
-- * a class's max active: whoever dispatches a request of the class locks the class
--   row (SKIP LOCKED, so it never waits) and counts its running requests. A task that
--   finishes takes no lock at all: it only makes the count smaller.

-- 1: the class has room (its row is now locked by the caller); 0: it is full;
-- -1: another dispatcher holds it right now (look again later).
CREATE FUNCTION dispatcher.class_room(p_region text, p_class text) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- The next request a SEP with capabilities p_caps may run: highest effective
-- priority first (aging is in dispatch_key), FIFO within a priority, what it
-- requires covered by p_caps, its class below max active. The request is locked
-- (SKIP LOCKED). contended: some class was skipped only because another dispatcher
-- held it, so the caller should look again soon.
CREATE FUNCTION dispatcher.pick_request(
    p_region text, p_caps text[], OUT request_id bigint, OUT contended boolean
)
LANGUAGE plpgsql AS $$
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

-- Hand request p_request (locked by the caller) to SEP p_sep as running; p_done is
-- how many tasks the SEP just finished (counted in sep.tasks_run in the same update).
CREATE FUNCTION dispatcher.start_task(p_sep bigint, p_request bigint, p_done integer DEFAULT 0)
RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
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

-- The task of a request already handed to a SEP.
CREATE FUNCTION dispatcher.task_of(p_request bigint) RETURNS dispatcher.task
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM dispatcher.request r
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    WHERE r.id = p_request
$$;

-- Wake the longest-idle SEP of the region (other than p_except) to look for work.
CREATE FUNCTION dispatcher.wake_idle_sep(p_region text, p_except bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT id FROM dispatcher.sep
          WHERE region = p_region AND state = 'idle' AND id <> p_except
          ORDER BY idle_since LIMIT 1) w
$$;

-- An idle SEP of the region able to run what p_requires, locked (SKIP LOCKED).
CREATE FUNCTION dispatcher.find_idle_sep(p_region text, p_requires text[]) RETURNS bigint
LANGUAGE sql AS $$
    SELECT s.id FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle' AND NOT s.standby
      AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> p_requires
    ORDER BY s.idle_since
    LIMIT 1
    FOR UPDATE SKIP LOCKED
$$;

-- ------------------------------------------------------------ enqueue

CREATE FUNCTION dispatcher.enqueue_v1(
    p_region text,
    p_transid text,
    p_payload jsonb DEFAULT 'null',
    p_session uuid DEFAULT NULL,
    p_user_priority integer DEFAULT 0,
    p_idempotency_key text DEFAULT NULL,
    p_deadline timestamptz DEFAULT NULL,
    p_commarea jsonb DEFAULT NULL,
    p_origin text DEFAULT 'api',
    p_notify boolean DEFAULT true
) RETURNS dispatcher.enqueued
LANGUAGE plpgsql AS $$
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

-- Many requests in one call and one commit (START --data-file, group commit).
-- Set-based: one INSERT for the batch, then each idle SEP gets the highest-priority
-- request it may run (same order, limits and wake-up fence as enqueue_v1). A batch
-- with idempotency keys goes request by request through enqueue_v1.
CREATE FUNCTION dispatcher.enqueue_many_v1(
    p_region text,
    p_transids text[],
    p_payloads jsonb[],
    p_sessions uuid[] DEFAULT NULL,
    p_user_priorities integer[] DEFAULT NULL,
    p_idempotency_keys text[] DEFAULT NULL,
    p_origin text DEFAULT 'api',
    p_notify boolean DEFAULT true
) RETURNS TABLE (ordinal integer, request_id bigint, sep_id bigint, reason text, duplicate boolean)
LANGUAGE plpgsql AS $$
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

-- --------------------------------------------------------------- SEPs

-- The number of SEPs holding a slot of the region (live and not standby).
CREATE FUNCTION dispatcher.active_seps(p_region text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM dispatcher.sep
    WHERE region = p_region AND state <> 'dead' AND NOT standby
$$;

CREATE FUNCTION dispatcher.register_sep_v1(
    p_region text, p_host text, p_pid integer, p_capabilities text[], p_standby boolean,
    p_address text DEFAULT NULL
) RETURNS dispatcher.sep
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION dispatcher.lock_sep(p_sep bigint) RETURNS dispatcher.sep
LANGUAGE plpgsql AS $$
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

-- The state a SEP falls to when it has no work.
CREATE FUNCTION dispatcher.rest_state(s dispatcher.sep) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s.stop_requested THEN 'draining'
                WHEN s.paused THEN 'unavailable'
                ELSE 'idle' END
$$;

-- Work for SEP s (its row locked by the caller), or rest if there is none (NULL).
-- p_done: tasks the SEP just finished, added to its tasks_run in the same update.
CREATE FUNCTION dispatcher.next_or_rest(s dispatcher.sep, p_done integer DEFAULT 0)
RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
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

-- Give an idle SEP work: what was already dispatched to it, else the next request.
CREATE FUNCTION dispatcher.claim_next_v1(p_sep bigint) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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

-- Start a request that the enqueue procedure dispatched to this SEP.
CREATE FUNCTION dispatcher.begin_v1(p_sep bigint, p_request bigint) RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
    WHERE id = p_request AND sep_id = p_sep AND state IN ('dispatched', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('request %s is not dispatched to SEP %s', p_request, p_sep);
    END IF;
    RETURN dispatcher.task_of(p_request);
END $$;

-- Move a request to the history with its outcome.
CREATE FUNCTION dispatcher.finish_request(
    r dispatcher.request, p_state text, p_result jsonb, p_error jsonb
) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO dispatcher.request_history
        (id, region, transid, payload, session_id, priority, state, attempt, sep_id, class,
         idempotency_key, origin, result, error, enqueued_at, dispatched_at, started_at)
    VALUES
        (r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state, r.attempt,
         r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error, r.enqueued_at,
         r.dispatched_at, coalesce(r.started_at, r.dispatched_at));
    DELETE FROM dispatcher.request WHERE id = r.id;
$$;

-- A SEP reports the outcome of its request and, in the same round trip, gets its
-- next one (or rests). Refused (DP004) unless the SEP still holds that attempt.
-- This is the hot path: one statement per step, no helper where SQL will do.
CREATE FUNCTION dispatcher.complete_v1(
    p_sep bigint,
    p_request bigint,
    p_attempt integer,
    p_ok boolean,
    p_result jsonb DEFAULT NULL,
    p_error jsonb DEFAULT NULL,
    p_take_next boolean DEFAULT true,
    p_next_transid text DEFAULT NULL,
    p_commarea jsonb DEFAULT NULL
) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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
        IF r.attempt >= r.max_attempts THEN
            PERFORM dispatcher.finish_request(r, 'failed', p_result, p_error);
        ELSE
            -- abend with attempts left: back in the queue, in its old place, after a backoff
            UPDATE dispatcher.request SET
                state = 'queued', sep_id = NULL, error = p_error,
                not_before = clock_timestamp() + make_interval(secs =>
                    coalesce((SELECT retry_backoff_s FROM dispatcher.transaction x
                              WHERE x.region = r.region AND x.transid = r.transid), 0)
                    * power(2, r.attempt - 1))
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

-- A SEP's heartbeat. It also applies a lowered max SEPs: while the region has more
-- active SEPs than slots, the newest of them turns standby (it finishes its task).
CREATE FUNCTION dispatcher.heartbeat_sep_v1(p_sep bigint)
RETURNS TABLE (state text, paused boolean, stop_requested boolean, standby boolean)
LANGUAGE plpgsql AS $$
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

-- Hand back a request a SEP holds (it leaves, stops by force, or is declared dead).
CREATE FUNCTION dispatcher.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r dispatcher.request;
    v_max integer;
    n integer := 0;
BEGIN
    SELECT max_redispatch INTO v_max FROM dispatcher.region WHERE name = s.region;
    -- a SEP holds at most one request: the one it names (no index on sep_id needed)
    FOR r IN SELECT * FROM dispatcher.request
             WHERE id = s.current_request AND sep_id = s.id FOR UPDATE LOOP
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
    IF n > 0 THEN
        -- wake an idle SEP for the requeued work
        PERFORM dispatcher.wake_idle_sep(s.region, s.id);
    END IF;
    RETURN n;
END $$;

-- A SEP leaves the region (graceful stop, or its process is ending).
CREATE FUNCTION dispatcher.leave_sep_v1(p_sep bigint) RETURNS integer
LANGUAGE plpgsql AS $$
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

-- Operators: pause, resume, stop (graceful), kill (abandon the task, re-queued).
CREATE FUNCTION dispatcher.control_sep_v1(p_sep bigint, p_action text) RETURNS dispatcher.sep
LANGUAGE plpgsql AS $$
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

-- Housekeeping, run by every SEP now and then and by the supervisor: declare SEPs
-- that stopped beating dead and re-queue their work, fail expired requests, purge
-- old history. Safe to run from many places at once (SKIP LOCKED).
CREATE FUNCTION dispatcher.reap_v1(p_region text)
RETURNS TABLE (dead_seps integer, requeued integer, expired integer, purged integer)
LANGUAGE plpgsql AS $$
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

-- ----------------------------------------------------------- sessions

CREATE FUNCTION dispatcher.register_session_v1(
    p_region text, p_listener uuid, p_user text, p_priority integer
) RETURNS uuid
LANGUAGE plpgsql AS $$
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

CREATE FUNCTION dispatcher.end_session_v1(p_session uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dispatcher.session WHERE id = p_session;
    RETURN FOUND;
END $$;
