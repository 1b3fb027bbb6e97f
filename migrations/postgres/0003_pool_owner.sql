-- A dedicated pool belongs to one account: it is prepared (and its nodes made
-- ready) before the account is switched to it.
ALTER TABLE pools ADD COLUMN account_id UUID REFERENCES accounts(id);
CREATE INDEX pools_account ON pools(account_id);
