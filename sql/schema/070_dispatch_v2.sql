-- Revision 0004: the dispatch procedures, version 2, in their own schema dispatcher_v2.
-- Downgrade: 070_dispatch_v2_down.sql (drops the schema: version 1 is untouched).
--
-- Why a schema per version: a release calls only the procedures of its version, and a
-- version's procedures call only helpers of the same version, so SEPs and listeners of
-- two releases run side by side during an upgrade (version 1 lives on in the
-- dispatcher schema until a later revision drops it). Tables stay in dispatcher.
-- The management procedures (regions, classes, transactions, sessions, listeners,
-- tokens, timers) did not change and stay at version 1.
--
-- Each step of a request's life is written once, as a helper, and every entry point
-- uses it (docs/state_machine.md):
--   queue_candidates  the queue in dispatch order (the one query that reads it)
--   pick_request      the next request a SEP may run: the one rule, used by enqueue,
--                     enqueue_many, claim, complete, complete_many
--   assign            hand requests to a SEP to start (dispatched)
--   start_task        a SEP starts a request now (running)
--   rest_sep          a SEP with no work rests (idle, unavailable or draining)
--   archive           move a request to the history with its outcome
--   settle_abend      an abend: retry after a backoff, or fail
--   requeue_held      hand back what a SEP holds (it left, was killed, or died)
--   dispatch_idle     new requests meet idle SEPs (enqueue and enqueue_many)
--
-- Error codes (SQLSTATE) as in version 1 (dispatcher/errors.py):
--   DP001 unknown region          DP002 unknown transaction   DP003 value out of range
--   DP004 completion refused      DP005 unknown SEP           DP006 region has no room
--   DP007 unknown session         DP009 unknown request
--
-- Lost wake-ups (ARCHITECTURE.md invariant 2): a SEP that finds no work takes the
-- region's advisory lock in exclusive mode (trying, never waiting: see next_or_rest)
-- and looks once more before it rests; an enqueue that finds no idle SEP takes the
-- same lock in shared mode and looks once more. Whichever comes second sees what the
-- first committed.

CREATE SCHEMA dispatcher_v2;

-- Routing by key (docs/dispatch.md, "Routing keys"): requests with the same key go to
-- the same live SEP while it lives.
ALTER TABLE dispatcher.request ADD COLUMN routing_key text
    CHECK (routing_key IS NULL OR length(routing_key) BETWEEN 1 AND 200);

-- What enqueue tells its caller: with reason 'dispatched', the task and the address
-- of the SEP's channel, so that the caller hands the task over without another query.
CREATE TYPE dispatcher_v2.enqueued AS (
    request_id  bigint,
    sep_id      bigint,
    reason      text,
    duplicate   boolean,
    task        jsonb,
    sep_address text
);

-- ------------------------------------------------------------ helpers

CREATE FUNCTION dispatcher_v2.lock_sep(p_sep bigint) RETURNS dispatcher.sep
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

-- The number of SEPs holding a slot of the region (live and not standby).
CREATE FUNCTION dispatcher_v2.active_seps(p_region text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT count(*)::integer FROM dispatcher.sep
    WHERE region = p_region AND state <> 'dead' AND NOT standby
$$;

-- 1: the class has room (its row is now locked by the caller); 0: it is full;
-- -1: another dispatcher holds it right now (look again later). A class's running
-- requests are those no longer queued (dispatched ones count: a batch's prefetch
-- never lets a class run more than its limit). A finishing task takes no lock.
CREATE FUNCTION dispatcher_v2.class_room(p_region text, p_class text) RETURNS integer
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

-- The SEP that owns routing key p_key among the region's live SEPs able to run what
-- p_requires (rendezvous hashing: the highest hash of key and SEP id). Live: not dead,
-- not standby, not asked to stop. A SEP that leaves or dies takes only its own keys
-- with it: every other key keeps its owner.
CREATE FUNCTION dispatcher_v2.key_owner(p_region text, p_key text, p_requires text[])
RETURNS bigint
LANGUAGE sql STABLE COST 1000 AS $$
    SELECT s.id FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state <> 'dead' AND NOT s.standby AND NOT s.stop_requested
      AND s.capabilities @> p_requires
    ORDER BY hashtextextended(p_key, s.id) DESC, s.id
    LIMIT 1
$$;

-- The queue in dispatch order, for a SEP with capabilities p_caps: highest effective
-- priority first (aging is in dispatch_key), FIFO within a priority, what a request
-- requires covered by p_caps, not before its not_before, not past its deadline, not of
-- a class in p_skip, without a routing key or with one that SEP p_sep owns. At most
-- p_limit requests, locked (SKIP LOCKED). The only query that reads the queue
-- (tests/test_explain.py checks that it uses its index).
CREATE FUNCTION dispatcher_v2.queue_candidates(
    p_region text, p_caps text[], p_skip text[], p_limit integer, p_sep bigint
) RETURNS TABLE (id bigint, class text)
LANGUAGE plpgsql AS $$
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

-- The one rule for which request SEP p_sep (capabilities p_caps) gets: the first queue
-- candidate whose class has room. contended: some class was passed over only because another dispatcher held
-- it, so the caller should look again soon.
CREATE FUNCTION dispatcher_v2.pick_request(
    p_region text, p_caps text[], p_sep bigint, OUT request_id bigint, OUT contended boolean
)
LANGUAGE plpgsql AS $$
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

-- Hand requests p_requests (locked by the caller) to SEP p_sep: 'dispatched' (the SEP
-- will start them). Each hand-over counts an attempt.
CREATE FUNCTION dispatcher_v2.assign(p_requests bigint[], p_sep bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE dispatcher.request r SET
        state = 'dispatched', sep_id = p_sep, attempt = r.attempt + 1,
        dispatched_at = clock_timestamp()
    WHERE r.id = ANY (p_requests)
$$;

-- The task of a request handed to a SEP.
CREATE FUNCTION dispatcher_v2.task_of(p_request bigint) RETURNS dispatcher.task
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.attempt, r.transid, x.program, r.payload, r.session_id, r.commarea,
           x.timeout_s, r.enqueued_at
    FROM dispatcher.request r
    LEFT JOIN dispatcher.transaction x ON x.region = r.region AND x.transid = r.transid
    WHERE r.id = p_request
$$;

-- SEP s (its row locked by the caller) starts request p_request (locked too) now, as
-- one hand-over (an attempt); p_done: tasks it just finished, counted in the same update.
CREATE FUNCTION dispatcher_v2.start_task(s dispatcher.sep, p_request bigint, p_done integer)
RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
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

-- The state a SEP falls to when it has no work.
CREATE FUNCTION dispatcher_v2.rest_state(s dispatcher.sep) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN s.stop_requested THEN 'draining'
                WHEN s.paused THEN 'unavailable'
                ELSE 'idle' END
$$;

-- SEP s has no task running: it rests; p_done: tasks it just finished. (What a batch
-- prefetched stays in sep.held until it is reported, released or handed back: a SEP
-- that ends its task without taking the next, as a timed-out one does, leaves them
-- for leave_sep to requeue.)
CREATE FUNCTION dispatcher_v2.rest_sep(s dispatcher.sep, p_done integer) RETURNS void
LANGUAGE sql AS $$
    UPDATE dispatcher.sep SET
        state = dispatcher_v2.rest_state(s), current_request = NULL, current_attempt = NULL,
        idle_since = clock_timestamp(), tasks_run = tasks_run + p_done,
        heartbeat_at = clock_timestamp()
    WHERE id = s.id
$$;

-- The history row of request r ended in p_state (the one place that lists its columns).
CREATE FUNCTION dispatcher_v2.history_row(
    r dispatcher.request, p_state text, p_result jsonb, p_error jsonb,
    p_started timestamptz, p_finished timestamptz
) RETURNS dispatcher.request_history
LANGUAGE sql IMMUTABLE AS $$
    SELECT r.id, r.region, r.transid, r.payload, r.session_id, r.priority, p_state, r.attempt,
           r.sep_id, r.class, r.idempotency_key, r.origin, p_result, p_error, r.enqueued_at,
           r.dispatched_at, p_started, p_finished
$$;

-- Move request r (locked by the caller) to the history with its outcome.
CREATE FUNCTION dispatcher_v2.archive(r dispatcher.request, p_state text, p_result jsonb, p_error jsonb)
RETURNS void
LANGUAGE sql AS $$
    INSERT INTO dispatcher.request_history
    SELECT h.* FROM dispatcher_v2.history_row(r, p_state, p_result, p_error,
                                              coalesce(r.started_at, r.dispatched_at),
                                              clock_timestamp()) h;
    DELETE FROM dispatcher.request WHERE id = r.id;
$$;

-- An abend of request r (locked by the caller). With attempts left it goes back to the
-- queue, in its old place, after a backoff of retry_backoff_s * 2^(attempt - 1), at most
-- max_backoff_s (never over 7 days, whatever a row holds), then +-10% jitter; each
-- factor is bounded first so that nothing can overflow (NaN and Infinity sort above
-- every number: least() passes them over). A program that asked to be retried after a
-- delay (error "retry_after_s": sep.RetryLater, an HTTP Retry-After) waits at least that
-- long (at most 7 days). Its last attempt, a program that gave up (error "retryable":
-- false: sep.GiveUp), or a conversation whose session ended (nobody is there to talk
-- to), fails.
CREATE FUNCTION dispatcher_v2.settle_abend(r dispatcher.request, p_result jsonb, p_error jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
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

-- Wake the longest-idle SEP of the region (other than p_except) to look for work.
CREATE FUNCTION dispatcher_v2.wake_idle_sep(p_region text, p_except bigint) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT id FROM dispatcher.sep
          WHERE region = p_region AND state = 'idle' AND id <> p_except
          ORDER BY idle_since LIMIT 1) w
$$;

-- An idle SEP of the region able to run what p_requires (and, given p_only, that one
-- SEP), locked (SKIP LOCKED): the one idle the longest (NULL: none).
CREATE FUNCTION dispatcher_v2.find_idle_sep(p_region text, p_requires text[], p_only bigint)
RETURNS dispatcher.sep
LANGUAGE sql AS $$
    SELECT s.* FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle' AND NOT s.standby
      AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> p_requires
      AND (p_only IS NULL OR s.id = p_only)
    ORDER BY s.idle_since
    LIMIT 1
    FOR UPDATE SKIP LOCKED
$$;

-- The owners of routing keys change when a SEP leaves, dies or is asked to stop: wake
-- the idle SEPs of the region when keyed requests wait (their new owners look).
CREATE FUNCTION dispatcher_v2.wake_for_keys(p_region text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(dispatcher.sep_channel(s.id), 'wake')
    FROM dispatcher.sep s
    WHERE s.region = p_region AND s.state = 'idle'
      AND EXISTS (SELECT 1 FROM dispatcher.request r
                  WHERE r.region = p_region AND r.state = 'queued'
                    AND r.routing_key IS NOT NULL)
$$;

-- Hand back the requests SEP s holds (it leaves, stops by force, or is declared dead):
-- the one it runs and the ones a batch prefetched. A conversation lived in the program
-- that is gone: it fails (it cannot resume elsewhere); a request dispatched
-- max_redispatch times fails; the others go back to the queue in their old place.
CREATE FUNCTION dispatcher_v2.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
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
            PERFORM dispatcher_v2.archive(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s during a conversation', p_why)));
            UPDATE dispatcher.session SET bound_sep = NULL WHERE id = r.session_id;
        ELSIF r.attempt >= v_max THEN
            PERFORM dispatcher_v2.archive(r, 'failed', NULL,
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
        PERFORM dispatcher_v2.wake_idle_sep(s.region, s.id);   -- for the requeued work
    END IF;
    PERFORM dispatcher_v2.wake_for_keys(s.region);   -- its keys have new owners
    RETURN n;
END $$;

-- Work for SEP s (its row locked by the caller), or rest if there is none (NULL).
-- p_done: tasks the SEP just finished, added to its tasks_run in the same update.
CREATE FUNCTION dispatcher_v2.next_or_rest(s dispatcher.sep, p_done integer)
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

-- Work for batching SEP s (its row locked by the caller): up to p_take requests, or
-- rest. The first is started (next_or_rest); the rest are 'dispatched' to the SEP and
-- listed in sep.held, from one scan of the queue (so that the index entries of requests
-- dispatched since the last vacuum are walked over once per batch, not per request);
-- a request of a class without room is passed over, as pick_request does.
CREATE FUNCTION dispatcher_v2.next_batch(s dispatcher.sep, p_done integer, p_take integer)
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

-- New requests meet the idle SEPs of the region. p_new: the new requests in dispatch
-- order, p_requires: what each requires (text of the array). For each new request still
-- queued, an idle SEP able to run it (idle the longest) takes the request pick_request
-- gives it: the same rule as everywhere, so it may be an older request of higher
-- priority, and the new one then tries the next idle SEP. A request of this call is
-- announced to its SEP only when p_notify (else the caller hands it over); an older one
-- always is. Each turn hands a request to a SEP or moves to the next new request, and a
-- requires that found no SEP is not looked for again: at most n + (idle SEPs) turns.
-- Returns the requests handed to a SEP, with the SEP's channel address.
CREATE FUNCTION dispatcher_v2.dispatch_idle(
    p_region text, p_new bigint[], p_requires text[], p_keys text[], p_notify boolean
) RETURNS TABLE (request_id bigint, sep_id bigint, sep_address text)
LANGUAGE plpgsql AS $$
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

-- ------------------------------------------------------------ enqueue

CREATE FUNCTION dispatcher_v2.enqueue(
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
LANGUAGE plpgsql AS $$
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
        SELECT id INTO v_id FROM dispatcher.request
        WHERE region = p_region AND idempotency_key = p_idempotency_key;
        IF NOT FOUND THEN
            SELECT id INTO v_id FROM dispatcher.request_history
            WHERE region = p_region AND idempotency_key = p_idempotency_key;
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
CREATE FUNCTION dispatcher_v2.enqueue_many(
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
LANGUAGE plpgsql AS $$
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

-- Cancel request p_request of p_region while it waits: a queued request moves to the
-- history as 'cancelled' (error type Cancelled) and never runs. Answers 'cancelled',
-- or why not: 'running' (a SEP has it: it runs to its end) or 'finished' (already in
-- the history, whatever its outcome). Unknown request: DP009.
CREATE FUNCTION dispatcher_v2.cancel_request(p_region text, p_request bigint) RETURNS text
LANGUAGE plpgsql AS $$
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

-- --------------------------------------------------------------- SEPs

CREATE FUNCTION dispatcher_v2.register_sep(
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

-- Give a SEP work: what it already holds (after a reconnect, or what an enqueue handed
-- it while it was idle), else up to p_take new requests (1: one-by-one SEPs).
CREATE FUNCTION dispatcher_v2.claim(p_sep bigint, p_take integer) RETURNS SETOF dispatcher.task
LANGUAGE plpgsql AS $$
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

-- Start a request that the enqueue procedure dispatched to this SEP.
CREATE FUNCTION dispatcher_v2.begin(p_sep bigint, p_request bigint) RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dispatcher.request SET state = 'running', started_at = clock_timestamp()
    WHERE id = p_request AND sep_id = p_sep AND state IN ('dispatched', 'running');
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'DP004',
            MESSAGE = format('request %s is not dispatched to SEP %s', p_request, p_sep);
    END IF;
    RETURN dispatcher_v2.task_of(p_request);
END $$;

-- A SEP reports the outcome of its request and, in the same round trip, gets its
-- next one (or rests). Refused (DP004) unless the SEP still holds that attempt.
CREATE FUNCTION dispatcher_v2.complete(
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
CREATE FUNCTION dispatcher_v2.complete_many(
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

-- A SEP's heartbeat. It also applies a lowered max SEPs: while the region has more
-- active SEPs than slots, the newest of them turns standby (it finishes its task).
CREATE FUNCTION dispatcher_v2.heartbeat_sep(p_sep bigint)
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

-- A SEP leaves the region (graceful stop, or its process is ending).
CREATE FUNCTION dispatcher_v2.leave_sep(p_sep bigint) RETURNS integer
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
              ELSE dispatcher_v2.requeue_held(s, format('SEP %s left the region', p_sep)) END;
    DELETE FROM dispatcher.sep WHERE id = p_sep;
    RETURN n;
END $$;

-- Operators: pause, resume, stop (graceful), kill (abandon the task, re-queued); lost:
-- as kill, for a SEP whose process ended (the message says so).
CREATE FUNCTION dispatcher_v2.control_sep(p_sep bigint, p_action text) RETURNS dispatcher.sep
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

-- Housekeeping, run by every SEP now and then and by the supervisor: declare SEPs
-- that stopped beating dead and re-queue their work, fail expired requests, purge
-- old history. Safe to run from many places at once (SKIP LOCKED). After PostgreSQL
-- (re)started, every SEP gets sep_dead_after to beat again: an outage is no SEP's
-- silence.
CREATE FUNCTION dispatcher_v2.reap(p_region text)
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
