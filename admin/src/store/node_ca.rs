//! Admin's node CA at rest (its CAs, keys sealed) and what nodes hold of it: the
//! one-time join token a launched node presents, and the CA and expiry of the
//! certificate it was last issued.

use uuid::Uuid;

use super::{BeginWrite, Result, Store, StoreError, event, on_pool};
use crate::clock::UnixMs;

/// One CA of the node CA.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NodeCaRow {
    pub id: Uuid,
    pub cert_pem: String,
    /// The private key (PEM), sealed under the master key.
    pub key_sealed: String,
    pub created_at: UnixMs,
    /// From when it signs (until then, a rotation's new CA is trusted only).
    pub activates_at: UnixMs,
    pub retired_at: Option<UnixMs>,
}

/// A certificate just issued to a node.
#[derive(Debug, Clone, Copy)]
pub struct IssuedTo {
    pub node: Uuid,
    pub ca: Uuid,
    pub not_after: UnixMs,
}

impl Store {
    /// Every CA, oldest first.
    pub async fn node_cas(&self) -> Result<Vec<NodeCaRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT id, cert_pem, key_sealed, created_at, activates_at, retired_at FROM node_cas ORDER BY created_at, id",
            )
            .fetch_all(p)
            .await?)
        })
    }

    /// Adds a CA (the first, or a rotation's new one).
    pub async fn insert_node_ca(&self, row: &NodeCaRow, actor: &str) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            sqlx::query(
                "INSERT INTO node_cas (id, cert_pem, key_sealed, created_at, activates_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(row.id)
            .bind(&row.cert_pem)
            .bind(&row.key_sealed)
            .bind(row.created_at)
            .bind(row.activates_at)
            .execute(&mut *tx)
            .await?;
            event!(tx, row.created_at, actor, "node_ca.created", format!("node_ca:{}", row.id), "")?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Live nodes (not stopped or failed) whose certificate, unexpired at `now`,
    /// came from CA `id`.
    pub async fn node_ca_holders(&self, id: Uuid, now: UnixMs) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT COUNT(*) FROM nodes WHERE cert_ca = $1 AND cert_not_after > $2 AND state NOT IN ('stopped', 'failed')",
            )
            .bind(id)
            .bind(now)
            .fetch_one(p)
            .await?)
        })
    }

    /// Routers whose last certificate, unexpired at `now`, came from CA `id`.
    pub async fn node_ca_routers(&self, id: Uuid, now: UnixMs) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM router_certificates WHERE ca = $1 AND not_after > $2")
                .bind(id)
                .bind(now)
                .fetch_one(p)
                .await?)
        })
    }

    /// Records the certificate just issued to router `router`.
    pub async fn record_router_certificate(
        &self,
        router: &str,
        ca: Uuid,
        not_after: UnixMs,
        now: UnixMs,
    ) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "INSERT INTO router_certificates (router, ca, not_after, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (router) DO UPDATE SET ca = excluded.ca, not_after = excluded.not_after, updated_at = excluded.updated_at",
            )
            .bind(router)
            .bind(ca)
            .bind(not_after)
            .bind(now)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Stops trusting CA `id`: refused (`InvalidState`) for the CA that signs
    /// now (by the rows, in the transaction), for one yet to sign (a
    /// rotation's), for the last one, and while a live node or a router still
    /// holds an unexpired certificate of it; `NotFound` when there is no such
    /// CA not yet retired.
    pub async fn retire_node_ca(&self, id: Uuid, actor: &str, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let rows: Vec<NodeCaRow> = sqlx::query_as(
                "SELECT id, cert_pem, key_sealed, created_at, activates_at, retired_at FROM node_cas
                 WHERE retired_at IS NULL ORDER BY created_at, id",
            )
            .fetch_all(&mut *tx)
            .await?;
            let Some(target) = rows.iter().find(|r| r.id == id) else { return Err(StoreError::NotFound) };
            if crate::node_ca::signing(&rows, now).map(|r| r.id) == Some(id) || rows.len() < 2 {
                return Err(StoreError::InvalidState(
                    "this is the CA that signs now: rotate first, then retire the previous one".into(),
                ));
            }
            if target.activates_at > now {
                return Err(StoreError::InvalidState(
                    "this CA is a rotation's new one and signs soon: retire the previous one instead".into(),
                ));
            }
            let nodes: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM nodes WHERE cert_ca = $1 AND cert_not_after > $2 AND state NOT IN ('stopped', 'failed')",
            )
            .bind(id)
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let routers: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM router_certificates WHERE ca = $1 AND not_after > $2")
                    .bind(id)
                    .bind(now)
                    .fetch_one(&mut *tx)
                    .await?;
            if nodes + routers > 0 {
                return Err(StoreError::InvalidState(format!(
                    "{nodes} live node(s) and {routers} router(s) still hold a certificate of this CA; \
                     they renew within seconds of a rotation"
                )));
            }
            sqlx::query("UPDATE node_cas SET retired_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            event!(tx, now, actor, "node_ca.retired", format!("node_ca:{id}"), "")?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// The hash of node `id`'s join token while it is unused and the node not stopped.
    pub async fn join_token_hash(&self, id: Uuid) -> Result<Option<Vec<u8>>> {
        let hash: Option<Option<Vec<u8>>> = on_pool!(self, |p| {
            sqlx::query_scalar("SELECT join_token_hash FROM nodes WHERE id = $1 AND state <> 'stopped'")
                .bind(id)
                .fetch_optional(p)
                .await?
        });
        Ok(hash.flatten())
    }

    /// Uses node `id`'s join token, if it is still `expected` (read and checked
    /// before): clears it, records the certificate issued, and replaces the
    /// node's bearer token hash with `token_hash`. `false` when another join
    /// used it first (then nothing changes).
    pub async fn use_join_token(
        &self,
        expected: &[u8],
        issued: IssuedTo,
        token_hash: &[u8],
        now: UnixMs,
    ) -> Result<bool> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let done = sqlx::query(
                "UPDATE nodes SET join_token_hash = NULL, token_hash = $3, cert_ca = $4, cert_not_after = $5, updated_at = $6
                 WHERE id = $1 AND join_token_hash = $2 AND state <> 'stopped'",
            )
            .bind(issued.node)
            .bind(expected)
            .bind(token_hash)
            .bind(issued.ca)
            .bind(issued.not_after)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if done == 1 {
                event!(
                    tx,
                    now,
                    "node",
                    "node.joined",
                    format!("node:{}", issued.node),
                    format!("node_ca:{}", issued.ca)
                )?;
            }
            tx.commit().await?;
            Ok(done == 1)
        })
    }

    /// Records a renewed certificate of a node. Its join token, if unused (a
    /// node run by hand with its token), is void from now on.
    pub async fn record_node_certificate(&self, issued: IssuedTo, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            sqlx::query(
                "UPDATE nodes SET cert_ca = $2, cert_not_after = $3, join_token_hash = NULL, updated_at = $4 WHERE id = $1",
            )
                .bind(issued.node)
                .bind(issued.ca)
                .bind(issued.not_after)
                .bind(now)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Whether node `id` exists and is not stopped (a certificate names it).
    pub async fn node_is_live(&self, id: Uuid) -> Result<bool> {
        let n: i64 = on_pool!(self, |p| {
            sqlx::query_scalar("SELECT COUNT(*) FROM nodes WHERE id = $1 AND state <> 'stopped'")
                .bind(id)
                .fetch_one(p)
                .await?
        });
        Ok(n > 0)
    }
}
