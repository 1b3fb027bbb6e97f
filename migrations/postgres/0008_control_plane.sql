-- The control plane hardened (issue 12).
-- Operation kinds are those the code plans (an SLA change is a change_offer; no
-- 'scale'), and an upgrade a newer upload replaces ends 'superseded'.
UPDATE allocation_operations SET kind = 'change_offer' WHERE kind = 'scale';
ALTER TABLE allocation_operations DROP CONSTRAINT allocation_operations_kind_check;
ALTER TABLE allocation_operations ADD CONSTRAINT allocation_operations_kind_check
    CHECK (kind IN ('create', 'change_offer', 'update', 'upgrade', 'deactivate', 'reactivate', 'delete'));
ALTER TABLE allocation_operations DROP CONSTRAINT allocation_operations_state_check;
ALTER TABLE allocation_operations ADD CONSTRAINT allocation_operations_state_check
    CHECK (state IN ('pending', 'running', 'succeeded', 'failed', 'superseded'));
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
