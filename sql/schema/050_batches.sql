-- Revision 0002: SEP-side batching (`sep start --batch K`). Downgrade: 050_batches_down.sql.
--
-- A batching SEP takes up to K requests in one call and reports the outcomes of the
-- ones it ran in one call, which also takes its next K (see docs/dispatch.md,
-- "Batches"). It still runs one task at a time. The first request of a batch is
-- 'running' (sep.current_request); the others are 'dispatched' to the SEP and listed
-- in sep.held until they are reported or handed back. A class's max active counts
-- both, so prefetching never lets a class run more than its limit.

ALTER TABLE dispatcher.sep ADD COLUMN held bigint[] NOT NULL DEFAULT '{}';

-- Hand back the requests a SEP holds (it leaves, stops by force, or is declared dead):
-- the one it names as current and the ones a batch prefetched.
CREATE OR REPLACE FUNCTION dispatcher.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
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

-- Work for SEP s (its row locked by the caller): up to p_take requests, or rest if
-- there is none. The first is started ('running', through next_or_rest: same order,
-- limits and wake-up fence); the rest are 'dispatched' to the SEP and listed in
-- sep.held. The rest come from one scan of the queue index, in order, so that the
-- index entries of requests dispatched since the last vacuum are walked over once per
-- batch, not once per request; a request of a class without room is passed over, as
-- pick_request does.
CREATE FUNCTION dispatcher.next_batch(s dispatcher.sep, p_done integer, p_take integer)
RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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

-- Give a batching SEP work: what it already holds (after a reconnect, or what an
-- enqueue handed it while it was idle), else up to p_take new requests.
CREATE FUNCTION dispatcher.claim_batch_v1(p_sep bigint, p_take integer) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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

-- A batching SEP reports the tasks it ran, in the order it ran them, and in the same
-- round trip gets its next batch. p_report is a JSON array, one object per task:
--   "id", "attempt"         the task (fenced: refused, DP004, unless the SEP holds it)
--   "ok", "result", "error", "next_transid", "commarea"   as for complete_v1
--   "started", "ended"      the SEP's clock (seconds) when the task started and ended;
--                           p_clock is that clock at the report: they are placed on the
--                           server's clock as now - (p_clock - started)
-- (one JSON document: the SEP encodes each outcome once, when its task ends).
-- p_release: requests of the batch the SEP never started (it is stopping); they go
-- back to the queue in their old place, their attempt not counted.
-- p_take: 0 reports only (the SEP keeps what it still holds); K > 0 also takes the
-- next K once the SEP holds nothing else.
-- p_running: a held request the SEP starts now (shown 'running' instead of 'dispatched';
-- the SEP reports this way before a task that may run long).
CREATE FUNCTION dispatcher.complete_many_v1(
    p_sep bigint,
    p_report jsonb,
    p_clock double precision,
    p_release bigint[] DEFAULT '{}',
    p_take integer DEFAULT 0,
    p_running bigint DEFAULT NULL
) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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
