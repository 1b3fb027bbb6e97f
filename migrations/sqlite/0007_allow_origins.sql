-- The web origins whose pages may read an account's content (CORS); empty: any.
ALTER TABLE accounts ADD COLUMN allow_origins TEXT NOT NULL DEFAULT '[]';

-- `update` operations (a PATCH that changes no offer) were refused by the kind
-- check since 0001; SQLite changes a CHECK by rebuilding the table (nothing
-- references it).
CREATE TABLE allocation_operations_new (
    id          BLOB PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('create', 'scale', 'change_offer', 'update', 'upgrade',
                                             'deactivate', 'reactivate', 'delete')),
    account_id  BLOB REFERENCES accounts(id),
    origin_type TEXT REFERENCES origin_types(name),
    customer_id BLOB REFERENCES customers(id),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
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
    SELECT id, kind, account_id, origin_type, customer_id, state, step, steps, input, attempts, last_error,
           lease_owner, lease_until, not_before, created_at, updated_at, progress
    FROM allocation_operations;
DROP TABLE allocation_operations;
ALTER TABLE allocation_operations_new RENAME TO allocation_operations;
CREATE INDEX allocation_operations_open ON allocation_operations(not_before)
    WHERE state IN ('pending', 'running');
CREATE INDEX allocation_operations_account ON allocation_operations(account_id);
