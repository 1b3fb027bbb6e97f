-- Origin nodes authenticate with a token (its SHA-256 is kept) and report their
-- load with each heartbeat.
ALTER TABLE nodes ADD COLUMN token_hash BLOB;
ALTER TABLE nodes ADD COLUMN egress_mbps REAL NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN open_connections INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN cache_hit_ratio REAL NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN config_version INTEGER NOT NULL DEFAULT 0;
CREATE INDEX usage_window ON usage(window_start);
