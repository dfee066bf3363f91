-- Revision 0006 down: history_row and next_batch as revision 0004 made them (one call
-- per finished request, one task_of per held request), no tasks_of, and the hot
-- procedures plan with the server's enable_seqscan again.

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
        EXECUTE format('ALTER FUNCTION %s RESET enable_seqscan', f);
    END LOOP;
END $$;

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
    RETURN QUERY
        SELECT x.* FROM unnest(v_held) WITH ORDINALITY AS h(id, n),
             LATERAL dispatcher_v2.task_of(h.id) AS x
        ORDER BY h.n;
END $$;

CREATE OR REPLACE FUNCTION dispatcher_v2.history_row(
    r dispatcher.request, p_state text, p_result jsonb, p_error jsonb,
    p_started timestamptz, p_finished timestamptz
) RETURNS dispatcher.request_history
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state, r.attempt,
           r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error, r.enqueued_at,
           r.dispatched_at, p_started, p_finished
$$;

DROP FUNCTION dispatcher_v2.tasks_of(bigint[]);
