-- Downgrade of 062_reap.sql: reap_v1 and reap_listeners_v1 exactly as revision 0001
-- created them.

CREATE OR REPLACE FUNCTION dispatcher.reap_v1(p_region text)
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

CREATE OR REPLACE FUNCTION dispatcher.reap_listeners_v1(p_region text, p_dead_after_s double precision)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    l record;
    n integer := 0;
BEGIN
    FOR l IN SELECT id FROM dispatcher.listener
             WHERE region = p_region
               AND heartbeat_at < clock_timestamp() - make_interval(secs => p_dead_after_s)
             FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM dispatcher.leave_listener_v1(l.id);
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
