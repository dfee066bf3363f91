-- The region database: every piece of state the dispatch procedures need.
-- Applied by migrations/versions/0001_initial.py; see docs/state_machine.md.

CREATE SCHEMA IF NOT EXISTS dispatcher;

-- A region: the unit of dispatch. max_seps bounds the tasks running at once.
CREATE TABLE dispatcher.region (
    name              text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9_.-]{1,40}$'),
    max_seps          integer NOT NULL DEFAULT 8 CHECK (max_seps BETWEEN 0 AND 100000),
    state             text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'stopping')),
    -- a waiting request gains one priority point per aging interval (CICS PRTYAGE)
    aging_ms          integer NOT NULL DEFAULT 32768 CHECK (aging_ms > 0),
    sep_dead_after    interval NOT NULL DEFAULT '15 seconds',
    max_redispatch    integer NOT NULL DEFAULT 5 CHECK (max_redispatch >= 1),
    history_retention interval NOT NULL DEFAULT '7 days',
    properties        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now()
);

-- A transaction class: caps how many of its tasks run at once (CICS TCLASS).
CREATE TABLE dispatcher.tx_class (
    region     text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9_.-]{1,40}$'),
    max_active integer NOT NULL CHECK (max_active >= 0),
    PRIMARY KEY (region, name)
);

-- A transaction definition: what program runs a TRANSID, and how.
CREATE TABLE dispatcher.transaction (
    region          text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    transid         text NOT NULL CHECK (transid ~ '^[A-Za-z0-9_.$#@-]{1,32}$'),
    program         text NOT NULL CHECK (program ~ '^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$'),
    priority        integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    class           text,
    timeout_s       double precision CHECK (timeout_s IS NULL OR timeout_s > 0),
    max_attempts    integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    retry_backoff_s double precision NOT NULL DEFAULT 2 CHECK (retry_backoff_s >= 0),
    requires        text[] NOT NULL DEFAULT '{}',
    description     text NOT NULL DEFAULT '',
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (region, transid)
);

-- A SEP (system execution process): one OS process that runs one task at a time.
CREATE TABLE dispatcher.sep (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region          text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    host            text NOT NULL,
    pid             integer NOT NULL,
    capabilities    text[] NOT NULL DEFAULT '{}',
    standby         boolean NOT NULL DEFAULT false,
    state           text NOT NULL DEFAULT 'idle'
                    CHECK (state IN ('idle', 'busy', 'unavailable', 'draining', 'dead')),
    paused          boolean NOT NULL DEFAULT false,
    stop_requested  boolean NOT NULL DEFAULT false,
    current_request bigint,
    current_attempt integer,
    tasks_run       bigint NOT NULL DEFAULT 0,
    address         text,
    started_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at    timestamptz NOT NULL DEFAULT now(),
    idle_since      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sep_region_state_idx ON dispatcher.sep (region, state, idle_since);

-- A listener process serving client sessions.
CREATE TABLE dispatcher.listener (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    region       text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    host         text NOT NULL,
    port         integer NOT NULL,
    pid          integer NOT NULL,
    address      text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);

-- A client session (a terminal, in CICS words).
CREATE TABLE dispatcher.session (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    region       text NOT NULL REFERENCES dispatcher.region (name) ON DELETE CASCADE,
    listener_id  uuid REFERENCES dispatcher.listener (id) ON DELETE SET NULL,
    user_name    text NOT NULL DEFAULT '',
    priority     integer NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 255),
    bound_sep    bigint,
    next_transid text,
    commarea     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_active  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX session_listener_idx ON dispatcher.session (listener_id);

-- The hot table: requests that are waiting or running. Finished ones move to
-- request_history, so this table stays as small as the work in flight.
CREATE TABLE dispatcher.request (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    region          text NOT NULL,
    transid         text NOT NULL,
    payload         jsonb NOT NULL DEFAULT 'null'::jsonb,
    session_id      uuid,
    priority        integer NOT NULL CHECK (priority BETWEEN 0 AND 255),
    dispatch_key    timestamptz NOT NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'dispatched', 'running')),
    attempt         integer NOT NULL DEFAULT 0,
    max_attempts    integer NOT NULL DEFAULT 1,
    sep_id          bigint,
    class           text,
    requires        text[] NOT NULL DEFAULT '{}',
    idempotency_key text,
    deadline        timestamptz,
    not_before      timestamptz,
    commarea        jsonb,
    origin          text NOT NULL DEFAULT 'api',
    error           jsonb,
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    dispatched_at   timestamptz,
    started_at      timestamptz
);
-- The dispatch order: one B-tree scan gives the next request (see docs/dispatch.md).
CREATE INDEX request_queue_idx ON dispatcher.request (region, dispatch_key, id)
    WHERE state = 'queued';
-- Counting a class's running tasks (its max active is checked by counting, not a counter).
CREATE INDEX request_class_running_idx ON dispatcher.request (region, class)
    WHERE state <> 'queued' AND class IS NOT NULL;
CREATE UNIQUE INDEX request_idempotency_idx ON dispatcher.request (region, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- Finished requests, with their outcome, kept for region.history_retention.
CREATE TABLE dispatcher.request_history (
    id              bigint PRIMARY KEY,
    region          text NOT NULL,
    transid         text NOT NULL,
    payload         jsonb,
    session_id      uuid,
    priority        integer NOT NULL,
    state           text NOT NULL CHECK (state IN ('done', 'failed', 'cancelled')),
    attempt         integer NOT NULL,
    sep_id          bigint,
    class           text,
    idempotency_key text,
    origin          text NOT NULL,
    result          jsonb,
    error           jsonb,
    enqueued_at     timestamptz NOT NULL,
    dispatched_at   timestamptz,
    started_at      timestamptz,
    finished_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX request_history_finished_idx ON dispatcher.request_history (region, finished_at);
CREATE INDEX request_history_idempotency_idx ON dispatcher.request_history (region, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

-- The row type every "give me work" procedure returns to a SEP.
CREATE TYPE dispatcher.task AS (
    request_id  bigint,
    attempt     integer,
    transid     text,
    program     text,
    payload     jsonb,
    session_id  uuid,
    commarea    jsonb,
    timeout_s   double precision,
    enqueued_at timestamptz
);

-- What enqueue tells its caller.
CREATE TYPE dispatcher.enqueued AS (
    request_id bigint,
    sep_id     bigint,
    reason     text,
    duplicate  boolean
);
