-- The cross-region database: timers of the START API. By default this schema lives in
-- the region database; with DISPATCHER_CROSS_REGION_URL it lives on another server
-- (`dispatcher db upgrade` installs it there too: this script is idempotent).

CREATE SCHEMA IF NOT EXISTS dispatcher_xr;

-- A pending timer: a one-shot START (due_at) or a cron schedule (next firing in due_at).
CREATE TABLE IF NOT EXISTS dispatcher_xr.timer (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region      text NOT NULL,
    reqid       text NOT NULL CHECK (reqid ~ '^[A-Za-z0-9_.:@-]{1,64}$'),
    transid     text NOT NULL,
    payload     jsonb NOT NULL DEFAULT 'null'::jsonb,
    priority    integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    due_at      timestamptz NOT NULL,
    cron        text,
    tz          text,
    fired       integer NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (region, reqid)
);
CREATE INDEX IF NOT EXISTS timer_due_idx ON dispatcher_xr.timer (region, due_at);

-- Each firing, kept a while: its lag, and the request it queued.
CREATE TABLE IF NOT EXISTS dispatcher_xr.firing (
    firing_id   text PRIMARY KEY,
    region      text NOT NULL,
    reqid       text NOT NULL,
    due_at      timestamptz NOT NULL,
    fired_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    request_id  bigint
);
CREATE INDEX IF NOT EXISTS firing_region_idx ON dispatcher_xr.firing (region, fired_at);

CREATE OR REPLACE FUNCTION dispatcher_xr.channel() RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT 'dispatcher_timers' $$;

-- START with a timer. Duplicate REQIDs of pending timers are refused (DP010).
CREATE OR REPLACE FUNCTION dispatcher_xr.set_timer_v1(
    p_region text, p_reqid text, p_transid text, p_payload jsonb, p_priority integer,
    p_due_at timestamptz, p_cron text, p_tz text
) RETURNS dispatcher_xr.timer
LANGUAGE plpgsql AS $$
DECLARE
    t dispatcher_xr.timer;
BEGIN
    IF p_due_at IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003', MESSAGE = 'a timer needs a due time';
    END IF;
    IF coalesce(p_priority, 0) NOT BETWEEN 0 AND 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('priority must be between 0 and 255, not %s', p_priority);
    END IF;
    IF p_reqid IS NULL OR p_reqid !~ '^[A-Za-z0-9_.:@-]{1,64}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'DP003',
            MESSAGE = format('invalid REQID %L: 1-64 letters, digits or _.:@-', p_reqid);
    END IF;
    INSERT INTO dispatcher_xr.timer (region, reqid, transid, payload, priority, due_at, cron, tz)
    VALUES (p_region, p_reqid, p_transid, coalesce(p_payload, 'null'::jsonb),
            coalesce(p_priority, 0), p_due_at, p_cron, p_tz)
    ON CONFLICT (region, reqid) DO NOTHING
    RETURNING * INTO t;
    IF t.id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'DP010',
            MESSAGE = format('a timer with REQID %L is already pending in region %L',
                             p_reqid, p_region),
            HINT = 'cancel it first, or choose another --reqid';
    END IF;
    PERFORM pg_notify(dispatcher_xr.channel(), p_region);
    RETURN t;
END $$;

CREATE OR REPLACE FUNCTION dispatcher_xr.cancel_timer_v1(p_region text, p_reqid text)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dispatcher_xr.timer WHERE region = p_region AND reqid = p_reqid;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify(dispatcher_xr.channel(), p_region);
    RETURN true;
END $$;
