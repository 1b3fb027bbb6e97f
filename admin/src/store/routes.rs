//! The rows the routing table is built from: every live account with the
//! ready nodes of its pool.

use sqlx::types::Json;
use uuid::Uuid;

use super::{Result, Store, on_pool};
use crate::states::AccountState;

/// One row of the routing table query: an account and (maybe) one ready node.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RouteRow {
    pub name: String,
    pub state: AccountState,
    pub ip_allow: Json<Vec<String>>,
    pub allow_origins: Json<Vec<String>>,
    pub playback_required: bool,
    pub playback_keys: Json<Vec<super::StoredKey>>,
    pub cdn_secrets: Json<Vec<super::CdnSecret>>,
    pub custom_certificate: Option<Json<super::StoredCertificate>>,
    pub node_id: Option<Uuid>,
    pub address: Option<String>,
    pub tls_address: Option<String>,
}

impl Store {
    /// Every live account with the ready nodes of its pool.
    pub async fn routes(&self) -> Result<Vec<RouteRow>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT a.name, a.state, a.ip_allow, a.allow_origins, a.playback_required, a.playback_keys, a.cdn_secrets, a.custom_certificate, n.id AS node_id, n.address, n.tls_address
                 FROM accounts a
                 LEFT JOIN account_pool_mappings m ON m.account_id = a.id
                 LEFT JOIN nodes n ON n.pool_id = m.pool_id AND n.state = 'ready' AND n.address IS NOT NULL
                 WHERE a.state IN ('active', 'deactivated', 'provisioning')
                 ORDER BY a.name, n.id",
            )
            .fetch_all(p)
            .await?)
        })
    }
}
