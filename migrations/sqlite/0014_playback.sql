-- Signed playback: whether an account's locator needs a token, and the keys
-- tokens are signed with (at most two: during a rotation), each
-- {"id", "sealed" (the secret, sealed under the master key), "created_at"}.
ALTER TABLE accounts ADD COLUMN playback_required BOOLEAN NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN playback_keys TEXT NOT NULL DEFAULT '[]';
