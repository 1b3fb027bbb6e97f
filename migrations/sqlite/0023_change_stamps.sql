-- What routers and nodes are told is read again only when something it is made
-- of changed: each stamp grows with every committed change to what it covers.
-- `routing`: the routing table (accounts' routed settings, their pools, ready
-- nodes' addresses). `node_config`: what nodes serve (accounts' served
-- settings and ties to pools, pools' ready nodes, origin types' caps).
-- SQLite has one writer at a time: plain triggers, in the writing transaction.
-- A reader reads the stamp before what it covers; a change it did not see has
-- a larger stamp.
CREATE TABLE change_stamps (
    name  TEXT PRIMARY KEY CHECK (name IN ('routing', 'node_config')),
    value BIGINT NOT NULL
);
INSERT INTO change_stamps (name, value) VALUES ('routing', 0), ('node_config', 0);


CREATE TRIGGER accounts_routing_insert AFTER INSERT ON accounts
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER accounts_routing_delete AFTER DELETE ON accounts
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER accounts_routing_update AFTER UPDATE ON accounts
    WHEN OLD.name IS NOT NEW.name OR OLD.state IS NOT NEW.state OR OLD.ip_allow IS NOT NEW.ip_allow OR OLD.allow_origins IS NOT NEW.allow_origins OR OLD.playback_required IS NOT NEW.playback_required OR OLD.playback_keys IS NOT NEW.playback_keys OR OLD.cdn_secrets IS NOT NEW.cdn_secrets OR OLD.custom_certificate IS NOT NEW.custom_certificate
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER account_pool_mappings_routing_insert AFTER INSERT ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER account_pool_mappings_routing_update AFTER UPDATE ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER account_pool_mappings_routing_delete AFTER DELETE ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER nodes_routing_insert AFTER INSERT ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER nodes_routing_delete AFTER DELETE ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;

CREATE TRIGGER nodes_routing_update AFTER UPDATE ON nodes
    WHEN OLD.pool_id IS NOT NEW.pool_id OR OLD.state IS NOT NEW.state OR OLD.address IS NOT NEW.address OR OLD.tls_address IS NOT NEW.tls_address
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
END;


CREATE TRIGGER accounts_node_config_insert AFTER INSERT ON accounts
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER accounts_node_config_delete AFTER DELETE ON accounts
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER accounts_node_config_update AFTER UPDATE ON accounts
    WHEN OLD.name IS NOT NEW.name OR OLD.offer IS NOT NEW.offer OR OLD.state IS NOT NEW.state OR OLD.ip_allow IS NOT NEW.ip_allow OR OLD.allow_origins IS NOT NEW.allow_origins OR OLD.playback_required IS NOT NEW.playback_required OR OLD.playback_keys IS NOT NEW.playback_keys OR OLD.cdn_secrets IS NOT NEW.cdn_secrets OR OLD.encryption IS NOT NEW.encryption OR OLD.dash_encryption IS NOT NEW.dash_encryption OR OLD.content_secret IS NOT NEW.content_secret OR OLD.staged_pool_id IS NOT NEW.staged_pool_id OR OLD.staged_generation IS NOT NEW.staged_generation
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER account_pool_mappings_node_config_insert AFTER INSERT ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER account_pool_mappings_node_config_update AFTER UPDATE ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER account_pool_mappings_node_config_delete AFTER DELETE ON account_pool_mappings
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER nodes_node_config_insert AFTER INSERT ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER nodes_node_config_delete AFTER DELETE ON nodes
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER nodes_node_config_update AFTER UPDATE ON nodes
    WHEN OLD.pool_id IS NOT NEW.pool_id OR OLD.state IS NOT NEW.state
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER pools_node_config_update AFTER UPDATE ON pools
    WHEN OLD.kind IS NOT NEW.kind OR OLD.origin_type IS NOT NEW.origin_type OR OLD.config_generation IS NOT NEW.config_generation
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;

CREATE TRIGGER origin_types_node_config_update AFTER UPDATE ON origin_types
    WHEN OLD.node_capacity_mbps IS NOT NEW.node_capacity_mbps OR OLD.trial_cap_mbps IS NOT NEW.trial_cap_mbps OR OLD.payg_cap_mbps IS NOT NEW.payg_cap_mbps
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
END;
