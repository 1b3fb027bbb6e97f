-- Warm pools: per origin type, how many ready unassigned dedicated pools to keep
-- per size in nodes ({"1": 2, "3": 1}), or "auto" (forecast from recent sign-ups).
-- A warm pool is a dedicated pool with no account yet (pools.account_id NULL).
ALTER TABLE origin_types ADD COLUMN warm_pools TEXT;
