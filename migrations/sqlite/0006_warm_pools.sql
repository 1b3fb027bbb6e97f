-- Lifecycle settings per origin type. Warm pools:, how many ready unassigned dedicated pools to keep
-- per size in nodes ({"1": 2, "3": 1}), or "auto" (forecast from recent sign-ups).
-- A warm pool is a dedicated pool with no account yet (pools.account_id NULL).
ALTER TABLE origin_types ADD COLUMN warm_pools TEXT;
-- How long a deactivated account's pool is kept, in hours (NULL: admin's
-- --retention-hours).
ALTER TABLE origin_types ADD COLUMN retention_hours INTEGER CHECK (retention_hours > 0);
