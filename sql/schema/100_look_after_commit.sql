-- Revision 0007 (downgrade: 100_look_after_commit_down.sql): no lost wake-up without a
-- lock. Before, a SEP that found the queue empty took the region's advisory lock in
-- exclusive mode before it rested (trying it every 0.5 ms for up to 50 ms, holding its
-- own row meanwhile) and an enqueue that found no idle SEP took it in shared mode until
-- it committed; under load an enqueue almost always held it, so SEPs spun and enqueues
-- waited on the SEPs' commits (pg_sleep was the third costliest statement of a
-- sustained run with four SEPs).
--
-- Now each side commits, then looks (docs/dispatch.md, "No lost wake-up"):
--   * a SEP that rests after work commits its rest, then asks work_waiting whether a
--     request it may run is queued, and claims if so;
--   * an enqueuer that left a request queued because no SEP was idle commits, then calls
--     dispatch_queued, which hands queued requests to the SEPs idle by then, and wakes
--     an idle SEP whose row is held by a transaction of its own (it is busy looking:
--     the wake makes it look once more).
-- Of an enqueue and a rest that race, the one that commits last sees the other's
-- commit in its look. No step waits for another, and nobody sleeps in the database.

-- Work for SEP s (its row locked by the caller), or rest if there is none (NULL).
-- p_done: tasks the SEP just finished, added to its tasks_run in the same update.
CREATE OR REPLACE FUNCTION dispatcher_v2.next_or_rest(s dispatcher.sep, p_done integer)
RETURNS dispatcher.task
LANGUAGE plpgsql AS $$
DECLARE
    reg dispatcher.region;
    p record;
    v_contended boolean := false;
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
        IF p.request_id IS NOT NULL THEN
            RETURN dispatcher_v2.start_task(s, p.request_id, p_done);
        END IF;
        v_contended := p.contended;
    END IF;
    -- (the SEP looks again once this has committed: work_waiting, see the top)
    PERFORM dispatcher_v2.rest_sep(s, p_done);
    IF v_contended THEN
        PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake');   -- a class row was busy
    END IF;
    RETURN NULL;
END $$;

-- Idle SEP s (its row locked by the caller) takes request p_request now: the request is
-- dispatched to it and the SEP busy with it; announced on the SEP's channel ('dispatch
-- ID') when p_notify (else the caller hands the task over itself).
CREATE FUNCTION dispatcher_v2.hand_to(s dispatcher.sep, p_request bigint, p_notify boolean)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM dispatcher_v2.assign(ARRAY[p_request], s.id);
    UPDATE dispatcher.sep SET state = 'busy', current_request = p_request,
        current_attempt = (SELECT attempt FROM dispatcher.request WHERE id = p_request)
    WHERE id = s.id;
    IF p_notify THEN
        PERFORM pg_notify(dispatcher.sep_channel(s.id), 'dispatch ' || p_request);
    END IF;
END $$;
REVOKE EXECUTE ON FUNCTION dispatcher_v2.hand_to(dispatcher.sep, bigint, boolean) FROM PUBLIC;

-- New requests meet the idle SEPs of the region. p_new: the new requests in dispatch
-- order, p_requires: what each requires (text of the array). For each new request still
-- queued, an idle SEP able to run it (idle the longest) takes the request pick_request
-- gives it: the same rule as everywhere, so it may be an older request of higher
-- priority, and the new one then tries the next idle SEP. A request of this call is
-- announced to its SEP only when p_notify (else the caller hands it over); an older one
-- always is. Each turn hands a request to a SEP or moves to the next new request, and a
-- requires that found no SEP is not looked for again: at most n + (idle SEPs) turns.
-- Returns the requests handed to a SEP, with the SEP's channel address. A request left
-- queued because no SEP was idle is the caller's to look for again once it has
-- committed (dispatch_queued, see the top).
CREATE OR REPLACE FUNCTION dispatcher_v2.dispatch_idle(
    p_region text, p_new bigint[], p_requires text[], p_keys text[], p_notify boolean
) RETURNS TABLE (request_id bigint, sep_id bigint, sep_address text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer := 1;
    v_n integer := coalesce(cardinality(p_new), 0);
    v_none text[] := '{}';      -- what no idle SEP can run: requires, or 'sep:' || owner
    v_taken bigint[] := '{}';   -- new requests handed to a SEP in this call
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
        -- a request of this call the caller may hand over; an older one is announced
        PERFORM dispatcher_v2.hand_to(s, p.request_id, p_notify OR p.request_id <> ALL (p_new));
        IF p.request_id = ANY (p_new) THEN
            v_taken := v_taken || p.request_id;
        END IF;
        request_id := p.request_id;
        sep_id := s.id;
        sep_address := s.address;
        RETURN NEXT;
    END LOOP;
END $$;

-- The enqueuer's look after its commit (see the top): each SEP of the region idle now
-- (the longest idle first) takes the queued request pick_request gives it, announced
-- by NOTIFY ('dispatch ID'); an idle SEP whose row another transaction holds is woken
-- instead ('wake': it looks again once that transaction is over). Returns how many
-- requests were handed out. Nothing to do (no SEP idle) costs one index scan.
CREATE FUNCTION dispatcher_v2.dispatch_queued(p_region text) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off AS $$
DECLARE
    v_id bigint;
    v_n integer := 0;
    s dispatcher.sep;
    p record;
BEGIN
    IF (SELECT r.state FROM dispatcher.region r WHERE r.name = p_region)
       IS DISTINCT FROM 'running' THEN
        RETURN 0;
    END IF;
    FOR v_id IN SELECT x.id FROM dispatcher.sep x
                WHERE x.region = p_region AND x.state = 'idle' AND NOT x.standby
                  AND NOT x.paused AND NOT x.stop_requested
                ORDER BY x.idle_since, x.id LOOP
        SELECT * INTO s FROM dispatcher.sep x
        WHERE x.id = v_id AND x.state = 'idle' AND NOT x.standby AND NOT x.paused
          AND NOT x.stop_requested
        FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            PERFORM pg_notify(dispatcher.sep_channel(v_id), 'wake');
            CONTINUE;
        END IF;
        p := dispatcher_v2.pick_request(p_region, s.capabilities, s.id);
        IF p.request_id IS NULL THEN
            IF p.contended THEN
                PERFORM pg_notify(dispatcher.sep_channel(s.id), 'wake');
            END IF;
            CONTINUE;
        END IF;
        PERFORM dispatcher_v2.hand_to(s, p.request_id, true);
        v_n := v_n + 1;
    END LOOP;
    RETURN v_n;
END $$;

-- The SEP's look after its rest has committed (see the top): is a request queued that
-- SEP p_sep may run now? Read-only and without locks (a yes is followed by a claim,
-- which decides); the conditions are those of queue_candidates, class room left to the
-- claim.
CREATE FUNCTION dispatcher_v2.work_waiting(p_sep bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
SET enable_seqscan = off AS $$
    SELECT EXISTS (
        SELECT 1 FROM dispatcher.sep s
        JOIN dispatcher.region g ON g.name = s.region AND g.state = 'running'
        JOIN dispatcher.request r ON r.region = s.region AND r.state = 'queued'
        WHERE s.id = p_sep AND s.state = 'idle' AND NOT s.paused AND NOT s.stop_requested
          AND r.requires <@ s.capabilities
          AND (r.not_before IS NULL OR r.not_before <= clock_timestamp())
          AND (r.deadline IS NULL OR r.deadline > clock_timestamp())
          AND (r.routing_key IS NULL
               OR dispatcher_v2.key_owner(r.region, r.routing_key, r.requires) = s.id))
$$;

-- A listener that leaves or is reaped ends its sessions. A SEP in a conversation with one
-- of them (its row says bound_sep) is told at once on its channel ('session_ended ID'),
-- so that the task's wait for input ends with SessionEnded (failed, not run again)
-- instead of lasting until its timeout, and so that a SEP lost later does not see a
-- request without a session and run the conversation again from its start.
CREATE OR REPLACE FUNCTION dispatcher.leave_listener_v1(p_listener uuid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    PERFORM pg_notify(dispatcher.sep_channel(r.sep_id), 'session_ended ' || r.id)
    FROM dispatcher.session x
    JOIN dispatcher.request r ON r.session_id = x.id AND r.sep_id = x.bound_sep
    WHERE x.listener_id = p_listener AND x.bound_sep IS NOT NULL
      AND r.state IN ('dispatched', 'running');
    DELETE FROM dispatcher.session WHERE listener_id = p_listener;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM dispatcher.listener WHERE id = p_listener;
    RETURN n;
END $$;

-- Wake idle SEPs of the region (other than p_except) to look for work, after a class slot
-- came free, requests were released or requeued: for each kind of request at the head of
-- the queue (what it requires, among the next 50 in dispatch order), the SEP idle the
-- longest that is able to run it. Before, the SEP idle the longest was woken whatever it
-- could run, and a request of a class could wait beside an idle SEP able to run it
-- until that SEP's safety poll.
CREATE OR REPLACE FUNCTION dispatcher_v2.wake_idle_sep(p_region text, p_except bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- (PERFORM: every row; an SQL function would stop at its first)
    PERFORM pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT DISTINCT h.requires
          FROM (SELECT q.requires FROM dispatcher.request q
                WHERE q.region = p_region AND q.state = 'queued'
                ORDER BY q.dispatch_key, q.id LIMIT 50) h) need
    CROSS JOIN LATERAL (
        SELECT s.id FROM dispatcher.sep s
        WHERE s.region = p_region AND s.state = 'idle' AND s.id <> p_except
          AND NOT s.paused AND NOT s.stop_requested AND s.capabilities @> need.requires
        ORDER BY s.idle_since LIMIT 1) w
    GROUP BY w.id;
END $$;

-- Who may call the two new procedures: every enqueuer (dispatch_queued) and the SEP.
CREATE OR REPLACE FUNCTION dispatcher_v2.process_procedures()
RETURNS TABLE (role text, proc text)
LANGUAGE sql IMMUTABLE AS $$
    SELECT r, p FROM (VALUES
        ('dispatcher_listener', 'dispatcher_v2.open_session'),
        ('dispatcher_listener', 'dispatcher_v2.check_token'),
        ('dispatcher_listener', 'dispatcher_v2.channel_secret'),
        ('dispatcher_listener', 'dispatcher.register_listener_v1'),
        ('dispatcher_listener', 'dispatcher.heartbeat_listener_v1'),
        ('dispatcher_listener', 'dispatcher.leave_listener_v1'),
        ('dispatcher_listener', 'dispatcher.reap_listeners_v1'),
        ('dispatcher_listener', 'dispatcher.register_session_v1'),
        ('dispatcher_listener', 'dispatcher.end_session_v1'),
        ('dispatcher_listener', 'dispatcher_v2.enqueue'),
        ('dispatcher_listener', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_listener', 'dispatcher_v2.dispatch_queued'),
        ('dispatcher_listener', 'dispatcher_v2.cancel_request'),
        ('dispatcher_listener', 'dispatcher.get_region_v1'),
        ('dispatcher_listener', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_listener', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_sep', 'dispatcher_v2.channel_secret'),
        ('dispatcher_sep', 'dispatcher_v2.register_sep'),
        ('dispatcher_sep', 'dispatcher_v2.claim'),
        ('dispatcher_sep', 'dispatcher_v2.begin'),
        ('dispatcher_sep', 'dispatcher_v2.complete'),
        ('dispatcher_sep', 'dispatcher_v2.complete_many'),
        ('dispatcher_sep', 'dispatcher_v2.work_waiting'),
        ('dispatcher_sep', 'dispatcher_v2.heartbeat_sep'),
        ('dispatcher_sep', 'dispatcher_v2.leave_sep'),
        ('dispatcher_sep', 'dispatcher_v2.control_sep'),
        ('dispatcher_sep', 'dispatcher_v2.active_seps'),
        ('dispatcher_sep', 'dispatcher_v2.reap'),
        ('dispatcher_sep', 'dispatcher_v2.end_sep_backend'),
        ('dispatcher_sep', 'dispatcher.define_transaction_v2'),
        ('dispatcher_sep', 'dispatcher.get_region_v1'),
        ('dispatcher_sep', 'dispatcher_v2.enqueue'),
        ('dispatcher_sep', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_sep', 'dispatcher_v2.dispatch_queued'),
        ('dispatcher_sep', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_sep', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_monitor', 'dispatcher_v2.dispatch_queued'),
        ('dispatcher_monitor', 'dispatcher.get_region_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_viewer', 'dispatcher.get_region_v1')
    ) AS t (r, p)
$$;

-- (the two entry points: callable by the processes' roles only, when the roles exist;
-- by every login, as the other procedures, when they do not)
SELECT dispatcher_v2.grant_roles();
