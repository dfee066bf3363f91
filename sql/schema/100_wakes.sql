-- Revision 0007 (downgrade: 100_wakes_down.sql): two wake-ups that could miss.
--
-- * A listener that leaves or is reaped ends its sessions; a SEP conversing with one of
--   them is now told on its channel at once (before: its task waited for input until its
--   timeout, and a SEP lost meanwhile left the request to be run again from its start).
-- * wake_idle_sep wakes a SEP able to run what waits (before: the SEP idle the longest,
--   whatever it could run).

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
