-- Origin nodes authenticate with a token (its SHA-256 is kept) and report their
-- load with each heartbeat.
ALTER TABLE nodes ADD COLUMN token_hash BYTEA;
ALTER TABLE nodes ADD COLUMN egress_mbps DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN open_connections BIGINT NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN cache_hit_ratio DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN config_version BIGINT NOT NULL DEFAULT 0;
CREATE INDEX usage_window ON usage(window_start);
