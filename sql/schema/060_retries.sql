-- Revision 0003, part 1 (downgrade: 060_retries_down.sql).
--
-- * Retries: the backoff between attempts doubles up to a cap per transaction
--   (transaction.max_backoff_s, default 1 hour, at most 7 days) and varies by +-10%
--   (jitter), so no attempt count overflows and failing requests do not retry in step.
-- * Operator decisions stick: transaction.operator_set lists the fields an operator
--   set with `tx define`; `tx sync` (run by `sep start` and `up`) leaves them alone.
-- * Apps: `tx sync --app M` records that M's transactions require the capability
--   `app:M`, which every SEP started with `--app M` has, so that a request goes only
--   to a SEP that can import its program (docs/sep.md, "Apps").
-- Limits of what `tx define` accepts (so that no stored value can make a procedure
-- overflow): priority 0..255, timeout (0, 30 days], max attempts 1..100000, retry
-- backoff [0, 1 day], max backoff [0, 7 days]; finite numbers only.

ALTER TABLE dispatcher.transaction
    ADD COLUMN max_backoff_s double precision NOT NULL DEFAULT 3600
        CHECK (max_backoff_s >= 0 AND max_backoff_s <= 604800);
ALTER TABLE dispatcher.transaction
    ADD COLUMN operator_set text[] NOT NULL DEFAULT '{}';

-- Define (or redefine) a transaction, field by field.
-- p_given: the fields this call sets, of program, priority, class, timeout,
--   max_attempts, retry_backoff, max_backoff, requires, description; the others keep
--   their value (a new transaction: their default). A NULL class or timeout is "none".
-- p_by: 'operator' (`tx define`): the fields given are recorded in operator_set;
--   'app' (`tx sync`): the fields in operator_set are left as the operator set them.
-- p_app: with 'app', the app module that declares the transaction: its requires then
--   holds 'app:' || p_app in place of any other app capability (an operator's
--   --requires keeps it).
-- p_release: with 'operator', fields handed back to the app (the next sync sets them).
CREATE FUNCTION dispatcher.define_transaction_v2(
    p_region text,
    p_transid text,
    p_given text[],
    p_by text,
    p_program text DEFAULT NULL,
    p_priority integer DEFAULT NULL,
    p_class text DEFAULT NULL,
    p_timeout_s double precision DEFAULT NULL,
    p_max_attempts integer DEFAULT NULL,
    p_retry_backoff_s double precision DEFAULT NULL,
    p_max_backoff_s double precision DEFAULT NULL,
    p_requires text[] DEFAULT NULL,
    p_description text DEFAULT NULL,
    p_app text DEFAULT NULL,
    p_release text[] DEFAULT '{}'
) RETURNS dispatcher.transaction
LANGUAGE plpgsql AS $$
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
END $$;

-- Regions: the aging interval is bounded (1 ms to 1 hour per priority point) so that
-- the enqueue procedures' priority * aging_ms cannot overflow an integer; the durations
-- too (finite, SEP dead after at most a day, history at most 10 years). Regions set
-- beyond them before are brought within.
UPDATE dispatcher.region SET aging_ms = 3600000 WHERE aging_ms > 3600000;
ALTER TABLE dispatcher.region ADD CONSTRAINT region_aging_ms_max CHECK (aging_ms <= 3600000);

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

-- A SEP reports the outcome of its request and, in the same round trip, gets its
-- next one (or rests). Refused (DP004) unless the SEP still holds that attempt.
-- This is the hot path: one statement per step, no helper where SQL will do.
-- (0003: the retry backoff is capped and jittered.)
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
