-- Targets (issue 13): the places nodes run, with a zone and region, quotas and a
-- state. `local` (this host's processes) exists from the first start, so one-host
-- installs place every node there as before. `settings` holds what differs by
-- kind (a Kubernetes namespace, kubeconfig, selectors) and what nodes there are
-- told (the admin URL they reach, their listen address, the routers' addresses).
CREATE TABLE targets (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('process', 'kubernetes')),
    zone        TEXT NOT NULL,
    region      TEXT NOT NULL,
    max_nodes   INTEGER CHECK (max_nodes >= 0),
    max_mbps    INTEGER CHECK (max_mbps >= 0),
    state       TEXT NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'draining', 'unreachable')),
    settings    TEXT NOT NULL DEFAULT '{}',
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);
INSERT INTO targets (name, kind, zone, region, created_at, updated_at) VALUES ('local', 'process', 'local', 'local', 0, 0);

-- Every node is placed on a target; nodes from before targets ran on this host.
ALTER TABLE nodes ADD COLUMN target TEXT REFERENCES targets(name);
UPDATE nodes SET target = 'local';
CREATE INDEX nodes_target ON nodes(target) WHERE state IN ('starting', 'ready', 'draining');

-- Why a pool cannot get the nodes it needs right now (no target has room).
ALTER TABLE pools ADD COLUMN waiting_reason TEXT;
