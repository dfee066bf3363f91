-- Listeners, their tokens, and the sessions they own.

-- A client credential. The token itself is never stored: only its SHA-256.
CREATE TABLE dispatcher.token (
    region      text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    name        text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    hash        bytea NOT NULL UNIQUE,
    allow       text[],          -- NULL: every transaction
    priority    integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, name)
);

CREATE FUNCTION dispatcher.create_token_v1(
    p_region text, p_name text, p_hash bytea, p_allow text[], p_priority integer
) RETURNS dispatcher.token
LANGUAGE plpgsql AS $$
DECLARE
    t dispatcher.token;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    IF p_name IS NULL OR p_name !~ '^[A-Za-z0-9_.@-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid token name %L: 1-64 letters, digits or _.@-', p_name);
    END IF;
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    INSERT INTO dispatcher.token (region, name, hash, allow, priority)
    VALUES (p_region, p_name, p_hash, p_allow, coalesce(p_priority, 0))
    ON CONFLICT (region, name) DO UPDATE SET
        hash = excluded.hash, allow = excluded.allow, priority = excluded.priority,
        created_at = now()
    RETURNING * INTO t;
    RETURN t;
END $$;

CREATE FUNCTION dispatcher.register_listener_v1(
    p_region text, p_host text, p_port integer, p_pid integer, p_address text
) RETURNS uuid
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM dispatcher.get_region_v1(p_region);
    INSERT INTO dispatcher.listener (region, host, port, pid, address)
    VALUES (p_region, p_host, p_port, p_pid, p_address)
    RETURNING id INTO v_id;
    RETURN v_id;
END $$;

-- A listener's heartbeat; false when it was declared dead meanwhile (it must
-- register again: its sessions were ended).
CREATE FUNCTION dispatcher.heartbeat_listener_v1(p_listener uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE dispatcher.listener SET heartbeat_at = clock_timestamp() WHERE id = p_listener;
    RETURN FOUND;
END $$;

-- A listener leaves: its sessions end with it.
CREATE FUNCTION dispatcher.leave_listener_v1(p_listener uuid) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
BEGIN
    DELETE FROM dispatcher.session WHERE listener_id = p_listener;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM dispatcher.listener WHERE id = p_listener;
    RETURN n;
END $$;

-- Listeners silent for longer than p_dead_after_s are gone: end their sessions.
-- Requests they acknowledged are untouched: they run, and their outcomes stay
-- retrievable by request id.
CREATE FUNCTION dispatcher.reap_listeners_v1(p_region text, p_dead_after_s double precision)
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
