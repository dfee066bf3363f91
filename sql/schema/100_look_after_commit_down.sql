-- Revision 0007 down: the region's advisory lock fences a SEP going idle against
-- enqueues again (next_or_rest and dispatch_idle as revision 0004 made them), and the
-- procedures of the look after commit are gone.

DROP FUNCTION dispatcher_v2.dispatch_queued(text);
DROP FUNCTION dispatcher_v2.work_waiting(bigint);

CREATE OR REPLACE FUNCTION dispatcher_v2.next_or_rest(s dispatcher.sep, p_done integer)
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

CREATE OR REPLACE FUNCTION dispatcher_v2.dispatch_idle(
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
        ('dispatcher_sep', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_sep', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue'),
        ('dispatcher_monitor', 'dispatcher_v2.enqueue_many'),
        ('dispatcher_monitor', 'dispatcher.get_region_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.set_timer_v1'),
        ('dispatcher_monitor', 'dispatcher_xr.cancel_timer_v1'),
        ('dispatcher_viewer', 'dispatcher.get_region_v1')
    ) AS t (r, p)
$$;

CREATE OR REPLACE FUNCTION dispatcher.leave_listener_v1(p_listener uuid) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM dispatcher.session WHERE listener_id = p_listener;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM dispatcher.listener WHERE id = p_listener;
    RETURN n;
END $$;

DROP FUNCTION dispatcher_v2.hand_to(dispatcher.sep, bigint, boolean);

CREATE OR REPLACE FUNCTION dispatcher_v2.wake_idle_sep(p_region text, p_except bigint)
RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify(dispatcher.sep_channel(w.id), 'wake')
    FROM (SELECT id FROM dispatcher.sep
          WHERE region = p_region AND state = 'idle' AND id <> p_except
          ORDER BY idle_since LIMIT 1) w
$$;

SELECT dispatcher_v2.grant_roles();
