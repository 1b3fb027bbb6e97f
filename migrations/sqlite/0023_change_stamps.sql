-- What routers and nodes are told is read again only when something it is made
-- of changed. `change_stamps.routing` grows with every change to the routing
-- table's inputs (accounts' routed settings, their pools, nodes' states and
-- addresses); `serving_stamps` holds one number per pool that grows with every
-- change to what the pool's nodes serve (accounts' served settings and ties to
-- the pool, its ready nodes, its origin type's caps). A reader reads a stamp
-- before what it covers: a change that read did not see has a larger stamp.
-- SQLite has one writer at a time: plain triggers, in the writing transaction.
CREATE TABLE change_stamps (
    name  TEXT PRIMARY KEY CHECK (name IN ('routing')),
    value BIGINT NOT NULL
);
INSERT INTO change_stamps (name, value) VALUES ('routing', 0);
CREATE TABLE serving_stamps (
    pool_id BLOB PRIMARY KEY,
    value   BIGINT NOT NULL
);

CREATE TRIGGER accounts_routing_insert AFTER INSERT ON accounts
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER accounts_routing_update AFTER UPDATE ON accounts
    WHEN OLD.name IS NOT NEW.name OR OLD.state IS NOT NEW.state OR OLD.ip_allow IS NOT NEW.ip_allow OR OLD.allow_origins IS NOT NEW.allow_origins OR OLD.playback_required IS NOT NEW.playback_required OR OLD.playback_keys IS NOT NEW.playback_keys OR OLD.cdn_secrets IS NOT NEW.cdn_secrets OR OLD.custom_certificate IS NOT NEW.custom_certificate
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER accounts_serving_update AFTER UPDATE ON accounts
    WHEN OLD.name IS NOT NEW.name OR OLD.offer IS NOT NEW.offer OR OLD.state IS NOT NEW.state OR OLD.ip_allow IS NOT NEW.ip_allow OR OLD.allow_origins IS NOT NEW.allow_origins OR OLD.playback_required IS NOT NEW.playback_required OR OLD.playback_keys IS NOT NEW.playback_keys OR OLD.cdn_secrets IS NOT NEW.cdn_secrets OR OLD.encryption IS NOT NEW.encryption OR OLD.dash_encryption IS NOT NEW.dash_encryption OR OLD.content_secret IS NOT NEW.content_secret OR OLD.staged_pool_id IS NOT NEW.staged_pool_id OR OLD.staged_generation IS NOT NEW.staged_generation
BEGIN
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT OLD.staged_pool_id AS p UNION SELECT NEW.staged_pool_id UNION SELECT m.pool_id FROM account_pool_mappings m WHERE m.account_id = NEW.id UNION SELECT m.previous_pool_id FROM account_pool_mappings m WHERE m.account_id = NEW.id) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER account_pool_mappings_insert AFTER INSERT ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT NEW.pool_id AS p UNION SELECT NEW.previous_pool_id) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER account_pool_mappings_delete AFTER DELETE ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT OLD.pool_id AS p UNION SELECT OLD.previous_pool_id) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER account_pool_mappings_routing_update AFTER UPDATE ON account_pool_mappings
    WHEN OLD.pool_id IS NOT NEW.pool_id
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER account_pool_mappings_serving_update AFTER UPDATE ON account_pool_mappings
BEGIN
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT OLD.pool_id AS p UNION SELECT OLD.previous_pool_id UNION SELECT NEW.pool_id UNION SELECT NEW.previous_pool_id) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER nodes_insert AFTER INSERT ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT NEW.pool_id AS p) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER nodes_delete AFTER DELETE ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT OLD.pool_id AS p) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER nodes_routing_update AFTER UPDATE ON nodes
    WHEN OLD.pool_id IS NOT NEW.pool_id OR OLD.state IS NOT NEW.state OR OLD.address IS NOT NEW.address OR OLD.tls_address IS NOT NEW.tls_address
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER nodes_serving_update AFTER UPDATE ON nodes
    WHEN OLD.pool_id IS NOT NEW.pool_id OR OLD.state IS NOT NEW.state
BEGIN
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT OLD.pool_id AS p UNION SELECT NEW.pool_id) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER pools_serving_update AFTER UPDATE ON pools
    WHEN OLD.kind IS NOT NEW.kind OR OLD.origin_type IS NOT NEW.origin_type OR OLD.config_generation IS NOT NEW.config_generation
BEGIN
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT NEW.id AS p) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;

CREATE TRIGGER origin_types_serving_update AFTER UPDATE ON origin_types
    WHEN OLD.node_capacity_mbps IS NOT NEW.node_capacity_mbps OR OLD.trial_cap_mbps IS NOT NEW.trial_cap_mbps OR OLD.payg_cap_mbps IS NOT NEW.payg_cap_mbps
BEGIN
    INSERT INTO serving_stamps (pool_id, value)
        SELECT p, 1 FROM (SELECT id AS p FROM pools WHERE origin_type = NEW.name) WHERE p IS NOT NULL
        ON CONFLICT (pool_id) DO UPDATE SET value = value + 1;
END;
