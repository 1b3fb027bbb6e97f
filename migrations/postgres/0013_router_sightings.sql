-- What routers reach (issue 13, partition safety): per router and node, when the
-- router last fetched the node's test content. The partition rule counts a node
-- a router reached within a heartbeat timeout as running, whatever admin hears.
CREATE TABLE router_sightings (
    router   TEXT NOT NULL,
    node_id  UUID NOT NULL REFERENCES nodes(id),
    seen_at  BIGINT NOT NULL,
    PRIMARY KEY (router, node_id)
);
CREATE INDEX router_sightings_node ON router_sightings(node_id, seen_at);
