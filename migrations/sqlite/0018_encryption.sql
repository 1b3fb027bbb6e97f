-- Just-in-time packaging's encryption per account: the scheme its packaged
-- answers are encrypted with ('none' or 'aes128': HLS AES-128, whole segments), and the
-- secret each asset's content key is derived from (32 random bytes, base64url,
-- sealed under the master key), made the first time encryption is turned on.
ALTER TABLE accounts ADD COLUMN encryption TEXT NOT NULL DEFAULT 'none' CHECK (encryption IN ('none', 'aes128'));
ALTER TABLE accounts ADD COLUMN content_secret TEXT;
