-- Quotas (issue 18). Per origin type, the largest SLA one account may buy; per
-- customer, overrides of the operator's defaults (NULL: admin's flags apply).
ALTER TABLE origin_types ADD COLUMN max_sla_mbps INTEGER NOT NULL DEFAULT 1000 CHECK (max_sla_mbps > 0);
ALTER TABLE customers ADD COLUMN max_accounts INTEGER CHECK (max_accounts >= 0);
ALTER TABLE customers ADD COLUMN max_total_sla_mbps INTEGER CHECK (max_total_sla_mbps >= 0);
ALTER TABLE customers ADD COLUMN max_sla_mbps INTEGER CHECK (max_sla_mbps > 0);
ALTER TABLE customers ADD COLUMN max_storage_bytes BIGINT CHECK (max_storage_bytes >= 0);

-- What each account stores, file by file: the storage quota counts it.
CREATE TABLE stored_files (
    account_id  BLOB NOT NULL REFERENCES accounts(id),
    path        TEXT NOT NULL,
    bytes       BIGINT NOT NULL CHECK (bytes >= 0),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, path)
);

-- A deleted account's name is released once its retention is over; until then
-- no other account may take it (its locator may still be cached by CDNs). The
-- name's UNIQUE becomes a partial index, which SQLite does only by rebuilding
-- the table; other tables reference it, so their keys are checked at commit.
PRAGMA defer_foreign_keys = ON;
CREATE TABLE accounts_new (
    id            BLOB PRIMARY KEY,
    customer_id   BLOB NOT NULL REFERENCES customers(id),
    name          TEXT NOT NULL
                  CHECK (length(name) BETWEEN 3 AND 40 AND name GLOB '[a-z0-9]*[a-z0-9]'
                         AND name NOT GLOB '*[^a-z0-9-]*'),
    origin_type   TEXT NOT NULL REFERENCES origin_types(name),
    offer         TEXT NOT NULL CHECK (offer IN ('trial', 'payg', 'sla')),
    sla_mbps      INTEGER,
    state         TEXT NOT NULL
                  CHECK (state IN ('provisioning', 'active', 'deactivated', 'deleted')),
    locator       TEXT NOT NULL,
    ip_allow      TEXT NOT NULL,
    deactivated_at BIGINT,
    retain_until  BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    staged_pool_id BLOB REFERENCES pools(id),
    allow_origins TEXT NOT NULL DEFAULT '[]',
    name_released_at BIGINT,
    CHECK ((offer = 'sla') = (sla_mbps IS NOT NULL)),
    CHECK (sla_mbps IS NULL OR sla_mbps > 0)
);
INSERT INTO accounts_new
    SELECT id, customer_id, name, origin_type, offer, sla_mbps, state, locator, ip_allow, deactivated_at,
           retain_until, created_at, updated_at, staged_pool_id, allow_origins, NULL
    FROM accounts;
DROP TABLE accounts;
ALTER TABLE accounts_new RENAME TO accounts;
CREATE UNIQUE INDEX accounts_name_held ON accounts(name) WHERE name_released_at IS NULL;
CREATE UNIQUE INDEX accounts_one_per_type
    ON accounts(customer_id, origin_type) WHERE state <> 'deleted';
CREATE TRIGGER accounts_sla_increment_insert BEFORE INSERT ON accounts
    FOR EACH ROW WHEN NEW.sla_mbps IS NOT NULL AND NEW.sla_mbps %
        (SELECT sla_increment_mbps FROM origin_types WHERE name = NEW.origin_type) <> 0
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: sla_mbps is not a multiple of the increment');
END;
CREATE TRIGGER accounts_sla_increment_update BEFORE UPDATE OF sla_mbps, origin_type ON accounts
    FOR EACH ROW WHEN NEW.sla_mbps IS NOT NULL AND NEW.sla_mbps %
        (SELECT sla_increment_mbps FROM origin_types WHERE name = NEW.origin_type) <> 0
BEGIN
    SELECT RAISE(ABORT, 'CHECK constraint failed: sla_mbps is not a multiple of the increment');
END;

-- Idempotency records expire after a day.
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
