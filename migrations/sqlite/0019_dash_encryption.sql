-- The Common Encryption scheme of an encrypting `jit` account's DASH segments:
-- 'cenc' (AES-128-CTR) or 'cbcs' (AES-128-CBC, a 1:9 pattern over video).
ALTER TABLE accounts ADD COLUMN dash_encryption TEXT NOT NULL DEFAULT 'cenc' CHECK (dash_encryption IN ('cenc', 'cbcs'));
