-- Rolling upgrades: how far an operation got (an upgrade's pools done / total and
-- the pools in progress), shown on the operation.
ALTER TABLE allocation_operations ADD COLUMN progress JSONB;
