-- Downgrade of revision 0002 (050_batches.sql): back to one request per SEP.
-- Requests a batching SEP holds are handed back first (they are re-run).

SELECT dispatcher.requeue_held(s, 'the batching SEPs were removed by a downgrade')
FROM dispatcher.sep s WHERE s.held <> '{}' AND s.state <> 'dead';

DROP FUNCTION dispatcher.complete_many_v1(bigint, jsonb, double precision, bigint[], integer,
    bigint);
DROP FUNCTION dispatcher.claim_batch_v1(bigint, integer);
DROP FUNCTION dispatcher.next_batch(dispatcher.sep, integer, integer);

-- requeue_held exactly as revision 0001 created it
-- Hand back a request a SEP holds (it leaves, stops by force, or is declared dead).
CREATE OR REPLACE FUNCTION dispatcher.requeue_held(s dispatcher.sep, p_why text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    r dispatcher.request;
    v_max integer;
    n integer := 0;
BEGIN
    SELECT max_redispatch INTO v_max FROM dispatcher.region WHERE name = s.region;
    -- a SEP holds at most one request: the one it names (no index on sep_id needed)
    FOR r IN SELECT * FROM dispatcher.request
             WHERE id = s.current_request AND sep_id = s.id FOR UPDATE LOOP
        IF r.session_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM dispatcher.session WHERE id = r.session_id AND bound_sep = s.id
        ) THEN
            -- a conversation lives in the program that died: it cannot resume elsewhere
            PERFORM dispatcher.finish_request(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s during a conversation', p_why)));
            UPDATE dispatcher.session SET bound_sep = NULL WHERE id = r.session_id;
        ELSIF r.attempt >= v_max THEN
            PERFORM dispatcher.finish_request(r, 'failed', NULL,
                jsonb_build_object('type', 'SEPLost', 'message',
                    format('%s; gave up after %s attempts', p_why, r.attempt)));
        ELSE
            UPDATE dispatcher.request SET state = 'queued', sep_id = NULL,
                error = jsonb_build_object('type', 'SEPLost', 'message', p_why)
            WHERE id = r.id;
        END IF;
        n := n + 1;
    END LOOP;
    IF n > 0 THEN
        -- wake an idle SEP for the requeued work
        PERFORM dispatcher.wake_idle_sep(s.region, s.id);
    END IF;
    RETURN n;
END $$;

ALTER TABLE dispatcher.sep DROP COLUMN held;
