-- What routers and nodes are told is read again only when something it is made
-- of changed. `change_stamps.routing` grows with every committed transaction
-- that changed the routing table's inputs (accounts' routed settings, their
-- pools, nodes' states and addresses); `serving_stamps` holds one number per
-- pool that grows with every committed transaction that changed what the
-- pool's nodes serve (accounts' served settings and ties to the pool, its
-- ready nodes, its origin type's caps). A reader reads a stamp before what it
-- covers: a change that read did not see has a larger stamp.
--
-- Triggers note what a statement changed in transaction-local settings; a
-- deferred constraint trigger bumps the stamps once, at commit, pools in id
-- order. So a transaction takes a stamp's row lock last, never holds one while
-- waiting for another lock, and takes several in one order: no deadlock runs
-- through the stamps.
CREATE TABLE change_stamps (
    name  TEXT PRIMARY KEY CHECK (name IN ('routing')),
    value BIGINT NOT NULL
);
INSERT INTO change_stamps (name, value) VALUES ('routing', 0);
CREATE TABLE serving_stamps (
    pool_id UUID PRIMARY KEY,
    value   BIGINT NOT NULL
);

CREATE FUNCTION stamps_note(routing BOOLEAN, pools UUID[]) RETURNS void AS $$
BEGIN
    IF routing THEN
        PERFORM set_config('headwater.routing_changed', 'yes', true);
    END IF;
    IF cardinality(pools) > 0 THEN
        PERFORM set_config('headwater.serving_changed',
            concat_ws(' ', nullif(current_setting('headwater.serving_changed', true), ''),
                      array_to_string(pools, ' ')), true);
    END IF;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION stamps_bump() RETURNS trigger AS $$
DECLARE
    pools TEXT := nullif(current_setting('headwater.serving_changed', true), '');
BEGIN
    IF current_setting('headwater.routing_changed', true) = 'yes' THEN
        PERFORM set_config('headwater.routing_changed', '', true);
        UPDATE change_stamps SET value = value + 1 WHERE name = 'routing';
    END IF;
    IF pools IS NOT NULL THEN
        PERFORM set_config('headwater.serving_changed', '', true);
        INSERT INTO serving_stamps (pool_id, value)
            SELECT DISTINCT p::uuid, 1 FROM unnest(string_to_array(pools, ' ')) AS p ORDER BY 1
        ON CONFLICT (pool_id) DO UPDATE SET value = serving_stamps.value + 1;
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;

-- accounts: routed and served settings; served by the pools it is mapped to,
-- just left, or staged to.
CREATE FUNCTION accounts_stamps() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM stamps_note(true, ARRAY[]::uuid[]);
    ELSE
        PERFORM stamps_note(
            (OLD.name, OLD.state, OLD.ip_allow, OLD.allow_origins, OLD.playback_required, OLD.playback_keys,
             OLD.cdn_secrets, OLD.custom_certificate)
            IS DISTINCT FROM
            (NEW.name, NEW.state, NEW.ip_allow, NEW.allow_origins, NEW.playback_required, NEW.playback_keys,
             NEW.cdn_secrets, NEW.custom_certificate),
            CASE WHEN (OLD.name, OLD.offer, OLD.state, OLD.ip_allow, OLD.allow_origins, OLD.playback_required,
                       OLD.playback_keys, OLD.cdn_secrets, OLD.encryption, OLD.dash_encryption, OLD.content_secret,
                       OLD.staged_pool_id, OLD.staged_generation)
                      IS DISTINCT FROM
                      (NEW.name, NEW.offer, NEW.state, NEW.ip_allow, NEW.allow_origins, NEW.playback_required,
                       NEW.playback_keys, NEW.cdn_secrets, NEW.encryption, NEW.dash_encryption, NEW.content_secret,
                       NEW.staged_pool_id, NEW.staged_generation)
                 THEN array_remove(ARRAY[OLD.staged_pool_id, NEW.staged_pool_id]
                          || ARRAY(SELECT m.pool_id FROM account_pool_mappings m WHERE m.account_id = NEW.id)
                          || ARRAY(SELECT m.previous_pool_id FROM account_pool_mappings m WHERE m.account_id = NEW.id),
                      NULL)
                 ELSE ARRAY[]::uuid[] END);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER accounts_stamps AFTER INSERT OR UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION accounts_stamps();

CREATE FUNCTION account_pool_mappings_stamps() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM stamps_note(true, array_remove(ARRAY[NEW.pool_id, NEW.previous_pool_id], NULL));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM stamps_note(true, array_remove(ARRAY[OLD.pool_id, OLD.previous_pool_id], NULL));
    ELSE
        PERFORM stamps_note(OLD.pool_id IS DISTINCT FROM NEW.pool_id,
            array_remove(ARRAY[OLD.pool_id, OLD.previous_pool_id, NEW.pool_id, NEW.previous_pool_id], NULL));
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER account_pool_mappings_stamps AFTER INSERT OR UPDATE OR DELETE ON account_pool_mappings
    FOR EACH ROW EXECUTE FUNCTION account_pool_mappings_stamps();

-- nodes: a pool's ready nodes (its accounts' shares), their addresses.
CREATE FUNCTION nodes_stamps() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM stamps_note(true, ARRAY[NEW.pool_id]);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM stamps_note(true, ARRAY[OLD.pool_id]);
    ELSE
        PERFORM stamps_note(
            (OLD.pool_id, OLD.state, OLD.address, OLD.tls_address)
                IS DISTINCT FROM (NEW.pool_id, NEW.state, NEW.address, NEW.tls_address),
            CASE WHEN (OLD.pool_id, OLD.state) IS DISTINCT FROM (NEW.pool_id, NEW.state)
                 THEN ARRAY[OLD.pool_id, NEW.pool_id] ELSE ARRAY[]::uuid[] END);
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER nodes_stamps_added AFTER INSERT OR DELETE ON nodes
    FOR EACH ROW EXECUTE FUNCTION nodes_stamps();
CREATE TRIGGER nodes_stamps AFTER UPDATE ON nodes
    FOR EACH ROW WHEN ((OLD.pool_id, OLD.state, OLD.address, OLD.tls_address)
                       IS DISTINCT FROM (NEW.pool_id, NEW.state, NEW.address, NEW.tls_address))
    EXECUTE FUNCTION nodes_stamps();

CREATE FUNCTION pools_stamps() RETURNS trigger AS $$
BEGIN
    PERFORM stamps_note(false, ARRAY[NEW.id]);
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER pools_stamps AFTER UPDATE ON pools
    FOR EACH ROW WHEN ((OLD.kind, OLD.origin_type, OLD.config_generation)
                       IS DISTINCT FROM (NEW.kind, NEW.origin_type, NEW.config_generation))
    EXECUTE FUNCTION pools_stamps();

CREATE FUNCTION origin_types_stamps() RETURNS trigger AS $$
BEGIN
    PERFORM stamps_note(false, ARRAY(SELECT p.id FROM pools p WHERE p.origin_type = NEW.name));
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER origin_types_stamps AFTER UPDATE ON origin_types
    FOR EACH ROW WHEN ((OLD.node_capacity_mbps, OLD.trial_cap_mbps, OLD.payg_cap_mbps)
                       IS DISTINCT FROM (NEW.node_capacity_mbps, NEW.trial_cap_mbps, NEW.payg_cap_mbps))
    EXECUTE FUNCTION origin_types_stamps();

-- At commit, once: every row event above also queues this; the first to run
-- bumps what was noted and clears it, the others find nothing noted.
CREATE CONSTRAINT TRIGGER accounts_stamps_bump AFTER INSERT OR UPDATE ON accounts
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stamps_bump();
CREATE CONSTRAINT TRIGGER account_pool_mappings_stamps_bump AFTER INSERT OR UPDATE OR DELETE ON account_pool_mappings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stamps_bump();
CREATE CONSTRAINT TRIGGER nodes_stamps_bump_added AFTER INSERT OR DELETE ON nodes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION stamps_bump();
CREATE CONSTRAINT TRIGGER nodes_stamps_bump AFTER UPDATE ON nodes
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN ((OLD.pool_id, OLD.state, OLD.address, OLD.tls_address)
                       IS DISTINCT FROM (NEW.pool_id, NEW.state, NEW.address, NEW.tls_address))
    EXECUTE FUNCTION stamps_bump();
CREATE CONSTRAINT TRIGGER pools_stamps_bump AFTER UPDATE ON pools
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN ((OLD.kind, OLD.origin_type, OLD.config_generation)
                       IS DISTINCT FROM (NEW.kind, NEW.origin_type, NEW.config_generation))
    EXECUTE FUNCTION stamps_bump();
CREATE CONSTRAINT TRIGGER origin_types_stamps_bump AFTER UPDATE ON origin_types
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN ((OLD.node_capacity_mbps, OLD.trial_cap_mbps, OLD.payg_cap_mbps)
                       IS DISTINCT FROM (NEW.node_capacity_mbps, NEW.trial_cap_mbps, NEW.payg_cap_mbps))
    EXECUTE FUNCTION stamps_bump();
