-- Admin's node CA (DESIGN.md §4, flow 10): every CA it has made, its private key
-- sealed under the master key. Every CA not retired is trusted; the newest one
-- whose activates_at has come signs. A rotation's new CA is trusted first and
-- signs only from activates_at, so every node and router trusts it before any
-- certificate of it is presented.
CREATE TABLE node_cas (
    id UUID PRIMARY KEY,
    cert_pem TEXT NOT NULL,
    key_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    activates_at BIGINT NOT NULL,
    retired_at BIGINT
);
-- A node launched by admin joins once with its join token (hashed here, cleared
-- when used); its certificate's CA and expiry say who still holds an old CA's
-- certificate; tls_address is its mutual-TLS listener.
ALTER TABLE nodes ADD COLUMN join_token_hash BYTEA;
ALTER TABLE nodes ADD COLUMN cert_ca UUID;
ALTER TABLE nodes ADD COLUMN cert_not_after BIGINT;
ALTER TABLE nodes ADD COLUMN tls_address TEXT;
-- The last certificate issued to each router, by its name: a CA is not retired
-- while a router still presents one of it.
CREATE TABLE router_certificates (
    router TEXT PRIMARY KEY,
    ca UUID NOT NULL,
    not_after BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
