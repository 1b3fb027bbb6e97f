-- The control plane hardened (issue 12).
-- Operation kinds are those the code plans (an SLA change is a change_offer; no
-- 'scale'), and an upgrade a newer upload replaces ends 'superseded'. SQLite
-- changes a CHECK by rebuilding the table (nothing references it).
CREATE TABLE allocation_operations_new (
    id          BLOB PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('create', 'change_offer', 'update', 'upgrade',
                                             'deactivate', 'reactivate', 'delete')),
    account_id  BLOB REFERENCES accounts(id),
    origin_type TEXT REFERENCES origin_types(name),
    customer_id BLOB REFERENCES customers(id),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'superseded')),
    step        TEXT,
    steps       TEXT NOT NULL,
    input       TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    not_before  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    progress    TEXT
);
INSERT INTO allocation_operations_new
    SELECT id, CASE WHEN kind = 'scale' THEN 'change_offer' ELSE kind END, account_id, origin_type, customer_id,
           state, step, steps, input, attempts, last_error, lease_owner, lease_until, not_before, created_at,
           updated_at, progress
    FROM allocation_operations;
DROP TABLE allocation_operations;
ALTER TABLE allocation_operations_new RENAME TO allocation_operations;
CREATE INDEX allocation_operations_open ON allocation_operations(not_before)
    WHERE state IN ('pending', 'running');
CREATE INDEX allocation_operations_account ON allocation_operations(account_id);
CREATE INDEX allocation_operations_created ON allocation_operations(created_at);

-- Crash loops back off per pool: consecutive nodes that failed before they were
-- ready, when the next launch may happen, and why the pool is degraded (since when).
ALTER TABLE pools ADD COLUMN launch_failures INTEGER NOT NULL DEFAULT 0 CHECK (launch_failures >= 0);
ALTER TABLE pools ADD COLUMN launch_after BIGINT;
ALTER TABLE pools ADD COLUMN degraded_reason TEXT;
ALTER TABLE pools ADD COLUMN degraded_since BIGINT;

-- The last image an upgrade finished on every pool of the type: where a rollback
-- goes back to (never to an upgrade that was superseded or halted).
ALTER TABLE origin_types ADD COLUMN completed_image TEXT;
UPDATE origin_types SET completed_image = current_image;

-- Leases: one admin replica holds a named lease (the control loops) until it
-- expires or is renewed.
CREATE TABLE leases (
    name    TEXT PRIMARY KEY,
    holder  TEXT NOT NULL,
    until   BIGINT NOT NULL
);
