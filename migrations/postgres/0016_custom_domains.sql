-- An account's own domain, served by routers with the customer's certificate:
-- {"name", "certificate" (PEM chain), "key_sealed" (the private key sealed under
-- the master key)}. The name is unique across accounts.
ALTER TABLE accounts ADD COLUMN custom_domain TEXT;
ALTER TABLE accounts ADD COLUMN custom_certificate JSONB;
CREATE UNIQUE INDEX accounts_custom_domain ON accounts(custom_domain);
