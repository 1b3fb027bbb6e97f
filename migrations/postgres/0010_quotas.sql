-- Quotas (issue 18). Per origin type, the largest SLA one account may buy; per
-- customer, overrides of the operator's defaults (NULL: admin's flags apply).
ALTER TABLE origin_types ADD COLUMN max_sla_mbps INTEGER NOT NULL DEFAULT 1000 CHECK (max_sla_mbps > 0);
ALTER TABLE customers ADD COLUMN max_accounts INTEGER CHECK (max_accounts >= 0);
ALTER TABLE customers ADD COLUMN max_total_sla_mbps INTEGER CHECK (max_total_sla_mbps >= 0);
ALTER TABLE customers ADD COLUMN max_sla_mbps INTEGER CHECK (max_sla_mbps > 0);
ALTER TABLE customers ADD COLUMN max_storage_bytes BIGINT CHECK (max_storage_bytes >= 0);

-- What each account stores, file by file: the storage quota counts it.
CREATE TABLE stored_files (
    account_id  UUID NOT NULL REFERENCES accounts(id),
    path        TEXT NOT NULL,
    bytes       BIGINT NOT NULL CHECK (bytes >= 0),
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (account_id, path)
);

-- A deleted account's name is released once its retention is over; until then
-- no other account may take it (its locator may still be cached by CDNs).
ALTER TABLE accounts ADD COLUMN name_released_at BIGINT;
ALTER TABLE accounts DROP CONSTRAINT accounts_name_key;
CREATE UNIQUE INDEX accounts_name_held ON accounts(name) WHERE name_released_at IS NULL;

-- Idempotency records expire after a day.
CREATE INDEX idempotency_keys_created ON idempotency_keys(created_at);
