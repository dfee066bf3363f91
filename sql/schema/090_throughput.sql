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
