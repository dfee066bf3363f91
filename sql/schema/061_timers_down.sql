-- Downgrade of revision 0003, part 061_timers.sql: back to revision 0002 (timers on
-- the process clock, a START in the past kept in the past).

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

DROP FUNCTION IF EXISTS dispatcher_xr.clock();
