//! Change stamps (migration 0023): numbers that grow with every committed change
//! to what a routing table or a node's configuration is made of, so that a
//! reader holding one built at a stamp knows, from one read, whether it is
//! still current.

use uuid::Uuid;

use super::{Result, Store, on_pool};
use crate::states::NodeState;

/// What a stamp covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeStamp {
    /// The routing table: accounts' routed settings, their pools, ready nodes' addresses.
    Routing,
    /// What nodes serve: accounts' served settings and ties to pools, pools'
    /// ready nodes, origin types' caps.
    NodeConfig,
}

impl ChangeStamp {
    fn name(self) -> &'static str {
        match self {
            Self::Routing => "routing",
            Self::NodeConfig => "node_config",
        }
    }
}

/// What a heartbeat's answer needs to know of its node, in one read.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct NodeAtStamp {
    pub state: NodeState,
    pub pool_id: Uuid,
    /// The node-configuration stamp, read with the node.
    pub stamp: i64,
}

impl Store {
    /// The stamp's value now. Read it before what it covers: a change that read
    /// did not see has a larger stamp.
    pub async fn change_stamp(&self, stamp: ChangeStamp) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT value FROM change_stamps WHERE name = $1")
                .bind(stamp.name())
                .fetch_one(p)
                .await?)
        })
    }

    /// A node's state and pool, with the node-configuration stamp.
    pub async fn node_at_stamp(&self, id: Uuid) -> Result<NodeAtStamp> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT n.state, n.pool_id, (SELECT s.value FROM change_stamps s WHERE s.name = 'node_config') AS stamp
                 FROM nodes n WHERE n.id = $1",
            )
            .bind(id)
            .fetch_one(p)
            .await?)
        })
    }
}
