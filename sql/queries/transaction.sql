-- name: define_transaction
SELECT * FROM dispatcher.define_transaction_v2(%(region)s, %(transid)s, %(given)s, %(by)s,
    %(program)s, %(priority)s, %(class)s, %(timeout_s)s, %(max_attempts)s,
    %(retry_backoff_s)s, %(max_backoff_s)s, %(requires)s, %(description)s, %(app)s,
    %(release)s);

-- name: list_transactions
SELECT transid, program, priority, class, timeout_s, max_attempts, retry_backoff_s,
    max_backoff_s, requires, description, operator_set, updated_at
FROM dispatcher.transaction WHERE region = %(region)s ORDER BY transid;

-- name: set_class
SELECT * FROM dispatcher.set_class_v1(%(region)s, %(class)s, %(max_active)s);

-- name: list_classes
SELECT c.name, c.max_active,
    (SELECT count(*) FROM dispatcher.request r
     WHERE r.region = c.region AND r.class = c.name AND r.state <> 'queued') AS active
FROM dispatcher.tx_class c WHERE c.region = %(region)s ORDER BY c.name;

-- name: delete_transaction
-- Delete transaction TRANSID unless requests of it are queued or running. found: it
-- existed; waiting: its requests queued or running (the deletion was refused if any);
-- deleted: it is gone.
WITH tx AS (
    SELECT transid FROM dispatcher.transaction
    WHERE region = %(region)s AND transid = %(transid)s
    FOR UPDATE
), waiting AS (
    SELECT count(*) AS n FROM dispatcher.request
    WHERE region = %(region)s AND transid = %(transid)s
), gone AS (
    DELETE FROM dispatcher.transaction t USING tx
    WHERE t.region = %(region)s AND t.transid = tx.transid AND (SELECT n FROM waiting) = 0
    RETURNING t.transid
)
SELECT EXISTS (SELECT 1 FROM tx) AS found, (SELECT n FROM waiting) AS waiting,
    EXISTS (SELECT 1 FROM gone) AS deleted;
