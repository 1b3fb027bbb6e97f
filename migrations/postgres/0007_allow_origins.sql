-- The web origins whose pages may read an account's content (CORS); empty: any.
ALTER TABLE accounts ADD COLUMN allow_origins JSONB NOT NULL DEFAULT '[]'::jsonb;

-- `update` operations (a PATCH that changes no offer) were refused by the kind
-- check since 0001.
ALTER TABLE allocation_operations DROP CONSTRAINT allocation_operations_kind_check;
ALTER TABLE allocation_operations ADD CONSTRAINT allocation_operations_kind_check
    CHECK (kind IN ('create', 'scale', 'change_offer', 'update', 'upgrade', 'deactivate', 'reactivate', 'delete'));
