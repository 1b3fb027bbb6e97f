-- Which configuration a node runs, in terms an operation can wait on. A pool's
-- generation grows each time an account is staged to it; the account keeps the
-- generation it was staged at; a node keeps the version it last fetched and the
-- pool's generation read before that configuration was built. A node whose
-- running version is the one it fetched, at a generation at or past the
-- account's, serves the account, however often the pool's configuration has
-- changed since (other accounts staged after it). When it fetched: a heartbeat
-- received before then says what the node ran before, and is not taken for
-- what it runs now.
ALTER TABLE pools ADD COLUMN config_generation BIGINT NOT NULL DEFAULT 0;
ALTER TABLE accounts ADD COLUMN staged_generation BIGINT;
ALTER TABLE nodes ADD COLUMN config_fetched_version BIGINT;
ALTER TABLE nodes ADD COLUMN config_generation BIGINT;
ALTER TABLE nodes ADD COLUMN config_fetched_at BIGINT;

-- What a node serves is read by pool, through each way an account is tied to
-- one: mapped (indexed since 0002), staged to move there, or just moved away.
CREATE INDEX accounts_staged_pool ON accounts(staged_pool_id) WHERE staged_pool_id IS NOT NULL;
CREATE INDEX account_pool_mappings_previous ON account_pool_mappings(previous_pool_id) WHERE previous_pool_id IS NOT NULL;
