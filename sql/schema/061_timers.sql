-- Revision 0003, part 2 (downgrade: 061_timers_down.sql): timers on one clock.
--
-- Every timer computation (a START's due time, the claim of due timers, a cron's next
-- slot, the lag, the retention of dispatcher_xr.firing) uses the clock of the database
-- that holds the timers, read through dispatcher_xr.clock(), never a process's clock.
-- A START whose due time has passed (`--at` in the past) is due now: it fires at once
-- and its lag counts from when it was set.
--
-- Like 040_timers.sql this script is idempotent: with DISPATCHER_CROSS_REGION_URL it
-- is also run on the cross-region server (dispatcher.migrate.install_cross_region).

-- The timers' clock: the time now on the server holding dispatcher_xr.
CREATE OR REPLACE FUNCTION dispatcher_xr.clock() RETURNS timestamptz
LANGUAGE sql VOLATILE AS $$ SELECT clock_timestamp() $$;

-- START with a timer. Duplicate REQIDs of pending timers are refused (DP010). A due
-- time in the past is now (the timer fires at once; its lag counts from now).
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
            coalesce(p_priority, 0), greatest(p_due_at, dispatcher_xr.clock()), p_cron, p_tz)
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
