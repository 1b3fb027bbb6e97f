-- The secrets an account's CDN sends (X-Headwater-CDN-Secret), as SHA-256 hex:
-- at most two (during a rotation), each {"id", "sha256", "created_at"}.
ALTER TABLE accounts ADD COLUMN cdn_secrets TEXT NOT NULL DEFAULT '[]';
