-- Downgrade of revision 0003, part 060_retries.sql: back to revision 0002 (an uncapped
-- retry backoff, tx sync overwriting what operators set).

DROP FUNCTION dispatcher.define_transaction_v2(text, text, text[], text, text, integer, text,
    double precision, integer, double precision, double precision, text[], text, text, text[]);

-- complete_v1 exactly as revision 0001 created it (0002 did not change it)
CREATE OR REPLACE FUNCTION dispatcher.complete_v1(
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

-- set_region_v1 exactly as revision 0001 created it
CREATE OR REPLACE FUNCTION dispatcher.set_region_v1(
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

ALTER TABLE dispatcher.region DROP CONSTRAINT region_aging_ms_max;

ALTER TABLE dispatcher.transaction DROP COLUMN operator_set;
ALTER TABLE dispatcher.transaction DROP COLUMN max_backoff_s;
