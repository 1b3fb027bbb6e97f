-- Headwater foundation schema (PostgreSQL). The SQLite twin lives in
-- migrations/sqlite/0001_foundation.sql; both must accept and refuse the same rows.
-- Times are Unix milliseconds (BIGINT) in both backends so that ordering and lease
-- arithmetic are exact and identical everywhere.

CREATE TABLE customers (
    id          UUID PRIMARY KEY,
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    email       TEXT NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254),
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id          UUID PRIMARY KEY,
    customer_id UUID NOT NULL REFERENCES customers(id) ON DELETE CASCADE,
    -- SHA-256 of the secret part of the key; the key itself is never stored.
    secret_hash BYTEA NOT NULL CHECK (length(secret_hash) = 32),
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_keys_customer ON api_keys(customer_id);

CREATE TABLE origin_types (
    name                TEXT PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9-]{1,30}$'),
    node_capacity_mbps  INTEGER NOT NULL CHECK (node_capacity_mbps > 0),
    sla_increment_mbps  INTEGER NOT NULL CHECK (sla_increment_mbps > 0),
    trial_cap_mbps      INTEGER NOT NULL CHECK (trial_cap_mbps > 0),
    payg_cap_mbps       INTEGER NOT NULL CHECK (payg_cap_mbps > 0),
    current_image       TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);

CREATE TABLE images (
    origin_type TEXT NOT NULL REFERENCES origin_types(name),
    version     TEXT NOT NULL CHECK (length(version) BETWEEN 1 AND 64),
    command     TEXT NOT NULL CHECK (length(command) > 0),
    args        JSONB NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (origin_type, version)
);

CREATE TABLE accounts (
    id            UUID PRIMARY KEY,
    customer_id   UUID NOT NULL REFERENCES customers(id),
    name          TEXT NOT NULL UNIQUE
                  CHECK (name ~ '^[a-z0-9]([a-z0-9-]{1,38})[a-z0-9]$'),
    origin_type   TEXT NOT NULL REFERENCES origin_types(name),
    offer         TEXT NOT NULL CHECK (offer IN ('trial', 'payg', 'sla')),
    sla_mbps      INTEGER,
    state         TEXT NOT NULL
                  CHECK (state IN ('provisioning', 'active', 'deactivated', 'deleted')),
    locator       TEXT NOT NULL,
    ip_allow      JSONB NOT NULL,
    deactivated_at BIGINT,
    retain_until  BIGINT,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    CHECK ((offer = 'sla') = (sla_mbps IS NOT NULL)),
    CHECK (sla_mbps IS NULL OR sla_mbps > 0)
);
-- One live account per customer per origin type.
CREATE UNIQUE INDEX accounts_one_per_type
    ON accounts(customer_id, origin_type) WHERE state <> 'deleted';

-- The SLA must be a multiple of the origin type's increment: a rule across two
-- tables, so a trigger rather than a CHECK.
CREATE FUNCTION accounts_check_sla_increment() RETURNS trigger AS $$
DECLARE inc INTEGER;
BEGIN
    IF NEW.sla_mbps IS NOT NULL THEN
        SELECT sla_increment_mbps INTO inc FROM origin_types WHERE name = NEW.origin_type;
        IF NEW.sla_mbps % inc <> 0 THEN
            RAISE EXCEPTION 'sla_mbps % is not a multiple of % for %', NEW.sla_mbps, inc, NEW.origin_type
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER accounts_sla_increment BEFORE INSERT OR UPDATE OF sla_mbps, origin_type ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_check_sla_increment();

CREATE TABLE pools (
    id            UUID PRIMARY KEY,
    origin_type   TEXT NOT NULL REFERENCES origin_types(name),
    kind          TEXT NOT NULL CHECK (kind IN ('shared', 'dedicated')),
    image_version TEXT,
    desired_nodes INTEGER NOT NULL CHECK (desired_nodes >= 0),
    state         TEXT NOT NULL CHECK (state IN ('creating', 'ready', 'retained', 'deleting', 'deleted')),
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE shared_pools (
    pool_id     UUID PRIMARY KEY REFERENCES pools(id),
    origin_type TEXT NOT NULL REFERENCES origin_types(name),
    accounts    INTEGER NOT NULL DEFAULT 0 CHECK (accounts >= 0),
    load_mbps   INTEGER NOT NULL DEFAULT 0 CHECK (load_mbps >= 0)
);
CREATE INDEX shared_pools_type ON shared_pools(origin_type);

CREATE TABLE account_pool_mappings (
    account_id  UUID PRIMARY KEY REFERENCES accounts(id),
    pool_id     UUID NOT NULL REFERENCES pools(id),
    updated_at  BIGINT NOT NULL
);
CREATE INDEX account_pool_mappings_pool ON account_pool_mappings(pool_id);

CREATE TABLE global_allocations (
    account_id  UUID PRIMARY KEY REFERENCES accounts(id),
    origin_type TEXT NOT NULL REFERENCES origin_types(name),
    offer       TEXT NOT NULL CHECK (offer IN ('trial', 'payg', 'sla')),
    sla_mbps    INTEGER,
    pool_id     UUID NOT NULL REFERENCES pools(id),
    locator     TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('active', 'deactivated')),
    updated_at  BIGINT NOT NULL,
    CHECK ((offer = 'sla') = (sla_mbps IS NOT NULL))
);

CREATE TABLE allocation_operations (
    id          UUID PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('create', 'scale', 'change_offer', 'upgrade',
                                             'deactivate', 'reactivate', 'delete')),
    account_id  UUID REFERENCES accounts(id),
    origin_type TEXT REFERENCES origin_types(name),
    customer_id UUID REFERENCES customers(id),
    state       TEXT NOT NULL CHECK (state IN ('pending', 'running', 'succeeded', 'failed')),
    -- The last step that finished; a resumed operation continues after it.
    step        TEXT,
    steps       JSONB NOT NULL,
    input       JSONB NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  TEXT,
    lease_owner TEXT,
    lease_until BIGINT,
    not_before  BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
CREATE INDEX allocation_operations_open ON allocation_operations(not_before)
    WHERE state IN ('pending', 'running');
CREATE INDEX allocation_operations_account ON allocation_operations(account_id);

CREATE TABLE nodes (
    id              UUID PRIMARY KEY,
    pool_id         UUID NOT NULL REFERENCES pools(id),
    handle          TEXT,
    address         TEXT,
    image_version   TEXT,
    upgrade_domain  INTEGER NOT NULL DEFAULT 0 CHECK (upgrade_domain >= 0),
    state           TEXT NOT NULL CHECK (state IN ('starting', 'ready', 'draining', 'failed', 'stopped')),
    last_heartbeat  BIGINT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX nodes_pool ON nodes(pool_id);

CREATE TABLE probes (
    id          BIGSERIAL PRIMARY KEY,
    node_id     UUID NOT NULL REFERENCES nodes(id),
    at          BIGINT NOT NULL,
    source      TEXT NOT NULL CHECK (source IN ('self', 'admin')),
    ok          BOOLEAN NOT NULL,
    latency_ms  INTEGER,
    detail      TEXT
);
CREATE INDEX probes_node_at ON probes(node_id, at);

CREATE TABLE usage (
    account_id   UUID NOT NULL REFERENCES accounts(id),
    window_start BIGINT NOT NULL,
    bytes        BIGINT NOT NULL CHECK (bytes >= 0),
    requests     BIGINT NOT NULL DEFAULT 0 CHECK (requests >= 0),
    PRIMARY KEY (account_id, window_start)
);

CREATE TABLE events (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    subject     TEXT NOT NULL,
    reason      TEXT NOT NULL
);

-- Replayable responses for Idempotency-Key. `status` 0 marks a request in flight.
CREATE TABLE idempotency_keys (
    principal     TEXT NOT NULL,
    key           TEXT NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  BYTEA NOT NULL,
    status        INTEGER NOT NULL,
    body          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (principal, key)
);
