-- What routers and nodes are told is read again only when something it is made
-- of changed: each stamp grows with every committed change to what it covers.
-- `routing`: the routing table (accounts' routed settings, their pools, ready
-- nodes' addresses). `node_config`: what nodes serve (accounts' served
-- settings and ties to pools, pools' ready nodes, origin types' caps).
--
-- The stamps are bumped at commit (deferred constraint triggers): a
-- transaction takes the stamp's row lock last, so it never holds it while
-- waiting for another lock, and no deadlock goes through a stamp. A reader
-- reads the stamp before what it covers; a change it did not see has a
-- larger stamp.
CREATE TABLE change_stamps (
    name  TEXT PRIMARY KEY CHECK (name IN ('routing', 'node_config')),
    value BIGINT NOT NULL
);
INSERT INTO change_stamps (name, value) VALUES ('routing', 0), ('node_config', 0);

CREATE FUNCTION routing_changed() RETURNS trigger AS $$
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION node_config_changed() RETURNS trigger AS $$
BEGIN
    UPDATE change_stamps SET value = value + 1 WHERE name = 'node_config';
    RETURN NULL;
END $$ LANGUAGE plpgsql;

CREATE CONSTRAINT TRIGGER accounts_routing_added AFTER INSERT OR DELETE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION routing_changed();
CREATE CONSTRAINT TRIGGER accounts_routing AFTER UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.name, OLD.state, OLD.ip_allow, OLD.allow_origins, OLD.playback_required, OLD.playback_keys,
           OLD.cdn_secrets, OLD.custom_certificate)
          IS DISTINCT FROM
          (NEW.name, NEW.state, NEW.ip_allow, NEW.allow_origins, NEW.playback_required, NEW.playback_keys,
           NEW.cdn_secrets, NEW.custom_certificate))
    EXECUTE FUNCTION routing_changed();
CREATE CONSTRAINT TRIGGER account_pool_mappings_routing AFTER INSERT OR UPDATE OR DELETE ON account_pool_mappings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION routing_changed();
CREATE CONSTRAINT TRIGGER nodes_routing_added AFTER INSERT OR DELETE ON nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION routing_changed();
CREATE CONSTRAINT TRIGGER nodes_routing AFTER UPDATE ON nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.pool_id, OLD.state, OLD.address, OLD.tls_address)
          IS DISTINCT FROM (NEW.pool_id, NEW.state, NEW.address, NEW.tls_address))
    EXECUTE FUNCTION routing_changed();

CREATE CONSTRAINT TRIGGER accounts_node_config_added AFTER INSERT OR DELETE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER accounts_node_config AFTER UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.name, OLD.offer, OLD.state, OLD.ip_allow, OLD.allow_origins, OLD.playback_required,
           OLD.playback_keys, OLD.cdn_secrets, OLD.encryption, OLD.dash_encryption, OLD.content_secret,
           OLD.staged_pool_id, OLD.staged_generation)
          IS DISTINCT FROM
          (NEW.name, NEW.offer, NEW.state, NEW.ip_allow, NEW.allow_origins, NEW.playback_required,
           NEW.playback_keys, NEW.cdn_secrets, NEW.encryption, NEW.dash_encryption, NEW.content_secret,
           NEW.staged_pool_id, NEW.staged_generation))
    EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER account_pool_mappings_node_config AFTER INSERT OR UPDATE OR DELETE ON account_pool_mappings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER nodes_node_config_added AFTER INSERT OR DELETE ON nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER nodes_node_config AFTER UPDATE ON nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.pool_id, OLD.state) IS DISTINCT FROM (NEW.pool_id, NEW.state))
    EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER pools_node_config AFTER UPDATE ON pools
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.kind, OLD.origin_type, OLD.config_generation)
          IS DISTINCT FROM (NEW.kind, NEW.origin_type, NEW.config_generation))
    EXECUTE FUNCTION node_config_changed();
CREATE CONSTRAINT TRIGGER origin_types_node_config AFTER UPDATE ON origin_types
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN ((OLD.node_capacity_mbps, OLD.trial_cap_mbps, OLD.payg_cap_mbps)
          IS DISTINCT FROM (NEW.node_capacity_mbps, NEW.trial_cap_mbps, NEW.payg_cap_mbps))
    EXECUTE FUNCTION node_config_changed();
