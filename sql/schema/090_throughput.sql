-- Revision 0006 (downgrade: 090_throughput_down.sql): fewer statements per request on
-- the hot path, and plans that stay on the indexes of a churning queue table.
-- Nothing a caller sees changes: same procedures, same arguments, same answers.
--
-- * history_row is one ROW expression, so that PostgreSQL inlines it into the query
--   that calls it (before: one SQL-function call per finished request).
-- * tasks_of(ids): the tasks of many requests in one set-returning SQL function that
--   PostgreSQL inlines (next_batch called task_of once per held request).
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

CREATE OR REPLACE FUNCTION dispatcher_v2.next_batch(s dispatcher.sep, p_done integer, p_take integer)
RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
DECLARE
    t dispatcher.task;
    c record;
    v_full text[] := '{}';
    v_held bigint[] := '{}';
    v_plain bigint[] := '{}';
BEGIN
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
