-- Usage reports a node sends are counted once: each carries an id, recorded in
-- the transaction that adds its windows, so a report resent after a lost answer
-- (or to another admin replica) is recognised. Kept a day.
CREATE TABLE usage_reports (
    node_id     BLOB NOT NULL,
    report_id   BLOB NOT NULL,
    received_at BIGINT NOT NULL,
    PRIMARY KEY (node_id, report_id)
);
CREATE INDEX usage_reports_received ON usage_reports(received_at);
