-- Access logs: a record per player request, sent in batches by the router that
-- answered it and kept for the account's owner (GET /v1/accounts/{name}/logs)
-- until the retention (--access-log-retention-hours) is over. A batch's id is
-- recorded with its rows, so a batch sent again is kept once; ids kept a day.
CREATE TABLE access_logs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id  BLOB NOT NULL,
    at          BIGINT NOT NULL,
    record      TEXT NOT NULL
);
CREATE INDEX access_logs_account ON access_logs(account_id, id);
CREATE INDEX access_logs_at ON access_logs(at);
CREATE TABLE access_log_batches (
    source      TEXT NOT NULL,
    batch_id    BLOB NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (source, batch_id)
);
CREATE INDEX access_log_batches_received ON access_log_batches(received_at);
