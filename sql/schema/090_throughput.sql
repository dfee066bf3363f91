-- Revision 0006 (downgrade: 090_throughput_down.sql): fewer statements per request on
-- the hot path, and plans that stay on the indexes of a churning queue table.
-- Nothing a caller sees changes: same procedures, same arguments, same answers.
--
-- * history_row is one ROW expression, so that PostgreSQL inlines it into the query
--   that calls it (before: one SQL-function call per finished request).
-- * tasks_of(ids): the tasks of many requests in one set-returning SQL function that
--   PostgreSQL inlines (next_batch called task_of once per held request).
-- * complete_many writes a session's row only when it changes (before: every finished
--   call rewrote it, for a last_active that nothing reads) and counts the report's good
--   outcomes in the statement that archives them (one statement less per report).
-- * One enqueue of a new idempotency key at a time (key_lock, an advisory lock held
--   until the enqueue commits; a batch takes its new keys' locks in one order; a key
--   already stored is answered without it). Before, two
--   transactions enqueuing one new key could both miss the other's uncommitted request,
--   and if the first finished and moved to the history before the second's INSERT met
--   it, the key got two requests (seen with 12 sessions sending one key at once).
-- * The procedures of the hot path plan with enable_seqscan off. The request table of a
--   busy region holds few live rows and many dead ones between vacuums, so the planner
--   took it for a small table and read all of it (a sequential scan over every dead
--   row) where the primary key finds ten rows: the DELETE of complete_many, the UPDATE
--   of assign, the held-requests check, the session check of enqueue_many. Off, not
--   forbidden: a table with no usable index is still read whole.

CREATE OR REPLACE FUNCTION dispatcher_v2.history_row(
    r dispatcher.request, p_state text, p_result jsonb, p_error jsonb,
    p_started timestamptz, p_finished timestamptz
) RETURNS dispatcher.request_history
LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state,
               r.attempt, r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error,
               r.enqueued_at, r.dispatched_at, p_started, p_finished
           )::dispatcher.request_history
$$;

-- The tasks of requests p_requests, in that order (requests that no longer exist are
-- left out). Set-returning and STABLE: inlined into the query that calls it.
CREATE FUNCTION dispatcher_v2.tasks_of(p_requests bigint[]) RETURNS SETOF dispatcher.task
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM unnest(p_requests) WITH ORDINALITY AS h(id, n)
    JOIN dispatcher.request r ON r.id = h.id
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    ORDER BY h.n
$$;
REVOKE EXECUTE ON FUNCTION dispatcher_v2.tasks_of(bigint[]) FROM PUBLIC;

-- Work for batching SEP s (its row locked by the caller): up to p_take requests, or
-- rest. The common case is one statement each: one scan of the queue for the whole
-- batch, one update of its requests (the first 'running', the rest 'dispatched' and
-- listed in sep.held), one of the SEP. A SEP that may not take work now (standby,
-- paused, asked to stop, region not running), a batch with a request of a class (class
-- room is counted request by request) or an empty queue (the fenced last look, then
-- rest) goes the way of revision 0004, which the fast path gives the same answer as.
CREATE OR REPLACE FUNCTION dispatcher_v2.next_batch(s dispatcher.sep, p_done integer, p_take integer)
RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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

-- A batching SEP reports the tasks it ran, in the order it ran them, and in the same
-- round trip gets its next batch. p_report is a JSON array, one object per task:
--   "id", "attempt"         the task (fenced: refused, DP004, unless the SEP holds it)
--   "ok", "result", "error", "next_transid", "commarea"   as for complete
--   "started", "ended"      the SEP's clock (seconds) when the task started and ended;
--                           p_clock is that clock at the report: they are placed on the
--                           server's clock as now - (p_clock - started)
-- p_release: requests of the batch the SEP never started (it is stopping); they go
-- back to the queue in their old place, their attempt not counted.
-- p_take: 0 reports only (the SEP keeps what it still holds); K > 0 also takes the
-- next K once the SEP holds nothing else.
-- p_running: a held request the SEP starts now (shown 'running' instead of 'dispatched').
CREATE OR REPLACE FUNCTION dispatcher_v2.complete_many(
    p_sep bigint,
    p_report jsonb,
    p_clock double precision,
    p_release bigint[] DEFAULT '{}',
    p_take integer DEFAULT 0,
    p_running bigint DEFAULT NULL
) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
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

-- The advisory lock that serialises the enqueues of one idempotency key (taken for
-- the rest of the enqueuing transaction; a batch takes its keys' locks in the order of
-- these numbers, so that two batches never wait for each other in a cycle).
CREATE FUNCTION dispatcher_v2.key_lock(p_region text, p_key text) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT hashtextextended('dispatcher.key:' || p_region || chr(31) || p_key, 0)
$$;
REVOKE EXECUTE ON FUNCTION dispatcher_v2.key_lock(text, text) FROM PUBLIC;

-- The request that idempotency key p_key of region p_region names, queued, running or
-- finished (the history); NULL when the key is new.
CREATE FUNCTION dispatcher_v2.key_request(p_region text, p_key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT id FROM dispatcher.request
         WHERE region = p_region AND idempotency_key = p_key),
        (SELECT id FROM dispatcher.request_history
         WHERE region = p_region AND idempotency_key = p_key))
$$;
REVOKE EXECUTE ON FUNCTION dispatcher_v2.key_request(text, text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION dispatcher_v2.enqueue(
    p_region text,
    p_transid text,
    p_payload jsonb DEFAULT 'null',
    p_session uuid DEFAULT NULL,
    p_user_priority integer DEFAULT 0,
    p_idempotency_key text DEFAULT NULL,
    p_deadline timestamptz DEFAULT NULL,
    p_commarea jsonb DEFAULT NULL,
    p_origin text DEFAULT 'api',
    p_notify boolean DEFAULT true,
    p_routing_key text DEFAULT NULL
) RETURNS dispatcher_v2.enqueued
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
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

-- Many requests in one call and one commit (START --data-file, group commit): one
-- INSERT for the batch, then dispatch_idle as for one (the reasons: dispatched,
-- region_stopping or no_idle_sep). A batch with idempotency keys
-- goes request by request through enqueue.
CREATE OR REPLACE FUNCTION dispatcher_v2.enqueue_many(
    p_region text,
    p_transids text[],
    p_payloads jsonb[],
    p_sessions uuid[] DEFAULT NULL,
    p_user_priorities integer[] DEFAULT NULL,
    p_idempotency_keys text[] DEFAULT NULL,
    p_origin text DEFAULT 'api',
    p_notify boolean DEFAULT true,
    p_routing_keys text[] DEFAULT NULL
) RETURNS TABLE (ordinal integer, request_id bigint, sep_id bigint, reason text,
                 duplicate boolean, task jsonb, sep_address text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET enable_seqscan = off
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

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure FROM pg_proc p
        WHERE p.pronamespace = 'dispatcher_v2'::regnamespace
          AND p.proname IN ('enqueue', 'enqueue_many', 'claim', 'begin', 'complete',
                            'complete_many')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET enable_seqscan = off', f);
    END LOOP;
END $$;
