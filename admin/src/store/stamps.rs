//! Change stamps (migration 0023): numbers that grow with every committed change
//! to what the routing table (one stamp) or a pool's nodes' configuration (one
//! per pool) is made of, so that a reader holding what it read at a stamp knows,
//! from one read, whether it is still current.

use uuid::Uuid;

use super::{Result, Store, on_pool};
use crate::states::NodeState;

/// What a heartbeat's answer needs to know of its node, in one read.
#[derive(Debug, Clone, Copy, sqlx::FromRow)]
pub struct NodeAtStamp {
    pub state: NodeState,
    pub pool_id: Uuid,
    /// The pool's serving stamp, read with the node.
    pub stamp: i64,
}

impl Store {
    /// The routing stamp now. Read it before the table: a change that read did
    /// not see has a larger stamp.
    pub async fn routing_stamp(&self) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT value FROM change_stamps WHERE name = 'routing'").fetch_one(p).await?)
        })
    }

    /// A pool's serving stamp now (0 before anything it serves changed).
    pub async fn serving_stamp(&self, pool: Uuid) -> Result<i64> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar("SELECT COALESCE((SELECT s.value FROM serving_stamps s WHERE s.pool_id = $1), 0)")
                .bind(pool)
                .fetch_one(p)
                .await?)
        })
    }

    /// A node's state and pool, with the pool's serving stamp.
    pub async fn node_at_stamp(&self, id: Uuid) -> Result<NodeAtStamp> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT n.state, n.pool_id,
                        COALESCE((SELECT s.value FROM serving_stamps s WHERE s.pool_id = n.pool_id), 0) AS stamp
                 FROM nodes n WHERE n.id = $1",
            )
            .bind(id)
            .fetch_one(p)
            .await?)
        })
    }
}
