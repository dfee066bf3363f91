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
