-- Make-before-break moves between pools. The pool an account is about to move to
-- serves it before routers are pointed there (accounts.staged_pool_id), and the
-- pool it left keeps serving it for a grace period while routers catch up
-- (account_pool_mappings.previous_pool_id, moved_at).
ALTER TABLE accounts ADD COLUMN staged_pool_id UUID REFERENCES pools(id);
ALTER TABLE account_pool_mappings ADD COLUMN previous_pool_id UUID REFERENCES pools(id);
ALTER TABLE account_pool_mappings ADD COLUMN moved_at BIGINT;
