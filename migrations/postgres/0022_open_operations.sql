-- A worker claims the open operation runnable longest (`not_before`, then id)
-- whose account (and, for upgrades, whose type) has no earlier open one. Read
-- through these, the claim touches only open operations runnable by now, and
-- each "is there an earlier one" is a lookup, whatever the planner believes
-- about the table: with statistics taken before a burst of sign-ups, it
-- scanned every open operation for each candidate (1.8 s with 3,000 pending;
-- 0.5 ms through these), and in id order it walked past every operation
-- waiting for its nodes before reaching a runnable one.
DROP INDEX allocation_operations_open;
CREATE INDEX allocation_operations_open ON allocation_operations(not_before, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX allocation_operations_open_account ON allocation_operations(account_id, id)
    WHERE state IN ('pending', 'running');
CREATE INDEX allocation_operations_open_upgrade ON allocation_operations(origin_type, id)
    WHERE kind = 'upgrade' AND state IN ('pending', 'running');
