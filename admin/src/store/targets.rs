//! Targets: the places nodes run (this host's processes, a Kubernetes namespace),
//! each with a zone, quotas and a state, and what they hold now.

use serde::{Deserialize, Serialize};
use sqlx::types::Json;
use uuid::Uuid;

use super::{BeginWrite, Result, Store, StoreError, event, on_pool};
use crate::clock::UnixMs;
use crate::states::{TargetKind, TargetState};

/// What nodes on a target are told (each falls back to admin's own setting).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeSettings {
    /// The admin URL nodes there can reach (default: the one admin gives every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_admin_url: Option<String>,
    /// The address nodes there listen on (default `127.0.0.1:0` for processes,
    /// `0.0.0.0:8080` for pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_listen: Option<String>,
    /// The routers' addresses (CIDR): nodes there believe `X-Forwarded-For` from
    /// these only (default: admin's `--trusted-proxy`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_items = 20)]
    pub trusted_proxies: Option<Vec<String>>,
}

/// Where a Kubernetes target's pods go and how they are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// The namespace pods are made in.
    pub namespace: String,
    /// The container image nodes run (the origin type's image gives the command
    /// and arguments).
    pub image: String,
    /// A kubeconfig file on admin's host (absent: admin runs in the cluster and
    /// uses its ServiceAccount).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<String>,
    /// The kubeconfig's context (absent: its current one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Labels a cluster node must have to run these pods.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub node_selector: std::collections::BTreeMap<String, String>,
    /// Taints these pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(max_items = 20)]
    pub tolerations: Vec<Toleration>,
    /// Run pods in their cluster node's network (for throughput).
    #[serde(default)]
    pub host_network: bool,
    /// A Secret in the namespace whose keys pods get as environment variables
    /// (the content store's `AWS_*` credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env_from_secret: Option<String>,
}

/// A taint that pods tolerate, as Kubernetes spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Absent: every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A target's settings as stored: what its nodes are told, and for a Kubernetes
/// target where its pods go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSettings {
    #[serde(flatten)]
    pub nodes: NodeSettings,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesSettings>,
}

/// A target as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetRow {
    pub name: String,
    pub kind: TargetKind,
    pub zone: String,
    pub region: String,
    /// Most live nodes placed here (`None`: no limit).
    pub max_nodes: Option<i32>,
    /// Most Mbit/s of node capacity placed here (`None`: no limit).
    pub max_mbps: Option<i32>,
    pub state: TargetState,
    pub settings: Json<TargetSettings>,
    pub created_at: UnixMs,
    pub updated_at: UnixMs,
}

/// A target and what it holds: its live nodes (starting, ready, draining) and
/// their capacity.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TargetUse {
    #[sqlx(flatten)]
    pub target: TargetRow,
    pub nodes: i64,
    pub mbps: i64,
}

impl TargetUse {
    /// Whether one more node of `mbps` fits within the quotas.
    pub fn fits(&self, mbps: i32) -> bool {
        self.target.max_nodes.is_none_or(|max| self.nodes < i64::from(max))
            && self.target.max_mbps.is_none_or(|max| self.mbps + i64::from(mbps) <= i64::from(max))
    }

    /// Why a node of `mbps` cannot go here, in words (`None`: it can).
    pub fn no_room(&self, mbps: i32) -> Option<String> {
        let t = &self.target;
        if t.state != TargetState::Active {
            return Some(format!("{}: {}", t.name, t.state));
        }
        if let Some(max) = t.max_nodes.filter(|m| self.nodes >= i64::from(*m)) {
            return Some(format!("{}: {} of {max} nodes", t.name, self.nodes));
        }
        if let Some(max) = t.max_mbps.filter(|m| self.mbps + i64::from(mbps) > i64::from(*m)) {
            return Some(format!("{}: {} of {max} Mbit/s in use", t.name, self.mbps));
        }
        None
    }
}

/// A new target.
#[derive(Debug, Clone)]
pub struct NewTarget {
    pub name: String,
    pub kind: TargetKind,
    pub zone: String,
    pub region: String,
    pub max_nodes: Option<i32>,
    pub max_mbps: Option<i32>,
    pub settings: TargetSettings,
}

/// A change to a target: every field present is set (`Some(None)` clears a quota).
#[derive(Debug, Clone, Default)]
pub struct TargetChange {
    pub zone: Option<String>,
    pub region: Option<String>,
    pub max_nodes: Option<Option<i32>>,
    pub max_mbps: Option<Option<i32>>,
    pub state: Option<TargetState>,
    pub nodes: Option<NodeSettings>,
    pub kubernetes: Option<KubernetesSettings>,
}

macro_rules! target_use_select {
    ($where:literal) => {
        concat!(
            "SELECT t.name, t.kind, t.zone, t.region, t.max_nodes, t.max_mbps, t.state, t.settings, t.created_at, t.updated_at,
                (SELECT COUNT(*) FROM nodes n WHERE n.target = t.name AND n.state IN ('starting', 'ready', 'draining')) AS nodes,
                (SELECT COALESCE(SUM(o.node_capacity_mbps), 0) FROM nodes n JOIN pools p ON p.id = n.pool_id
                   JOIN origin_types o ON o.name = p.origin_type
                 WHERE n.target = t.name AND n.state IN ('starting', 'ready', 'draining')) AS mbps
             FROM targets t ",
            $where,
            " ORDER BY t.name"
        )
    };
}

const TARGET_COLUMNS: &str = "name, kind, zone, region, max_nodes, max_mbps, state, settings, created_at, updated_at";

impl Store {
    /// Every target with what it holds, by name.
    pub async fn targets(&self) -> Result<Vec<TargetUse>> {
        on_pool!(self, |p| Ok(sqlx::query_as(target_use_select!("")).fetch_all(p).await?))
    }

    pub async fn target(&self, name: &str) -> Result<Option<TargetUse>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(target_use_select!("WHERE t.name = $1")).bind(name).fetch_optional(p).await?)
        })
    }

    pub async fn create_target(&self, t: &NewTarget, actor: &str, now: UnixMs) -> Result<TargetRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let row: TargetRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "INSERT INTO targets (name, kind, zone, region, max_nodes, max_mbps, state, settings, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8, $8) RETURNING {TARGET_COLUMNS}"
            )))
            .bind(&t.name)
            .bind(t.kind)
            .bind(&t.zone)
            .bind(&t.region)
            .bind(t.max_nodes)
            .bind(t.max_mbps)
            .bind(Json(&t.settings))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let reason = format!("{} in zone {} ({})", t.kind, t.zone, quotas(t.max_nodes, t.max_mbps));
            event!(tx, now, actor, "target.created", format!("target:{}", t.name), reason)?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Applies `change`; the event says what changed.
    pub async fn update_target(
        &self,
        name: &str,
        change: &TargetChange,
        actor: &str,
        now: UnixMs,
    ) -> Result<TargetRow> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let cur: TargetRow =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT {TARGET_COLUMNS} FROM targets WHERE name = $1")))
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::NotFound)?;
            let zone = change.zone.clone().unwrap_or(cur.zone.clone());
            let region = change.region.clone().unwrap_or(cur.region.clone());
            let max_nodes = change.max_nodes.unwrap_or(cur.max_nodes);
            let max_mbps = change.max_mbps.unwrap_or(cur.max_mbps);
            let state = change.state.unwrap_or(cur.state);
            let settings = TargetSettings {
                nodes: change.nodes.clone().unwrap_or(cur.settings.0.nodes.clone()),
                kubernetes: change.kubernetes.clone().or(cur.settings.0.kubernetes.clone()),
            };
            let row: TargetRow = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "UPDATE targets SET zone = $2, region = $3, max_nodes = $4, max_mbps = $5, state = $6, settings = $7,
                    updated_at = $8 WHERE name = $1 RETURNING {TARGET_COLUMNS}"
            )))
            .bind(name)
            .bind(&zone)
            .bind(&region)
            .bind(max_nodes)
            .bind(max_mbps)
            .bind(state)
            .bind(Json(&settings))
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
            let mut changed = Vec::new();
            if zone != cur.zone || region != cur.region {
                changed.push(format!("zone {zone} in {region}"));
            }
            if (max_nodes, max_mbps) != (cur.max_nodes, cur.max_mbps) {
                changed.push(quotas(max_nodes, max_mbps));
            }
            if state != cur.state {
                changed.push(format!("{} -> {state}", cur.state));
            }
            if settings != cur.settings.0 {
                changed.push("settings".to_owned());
            }
            if !changed.is_empty() {
                event!(tx, now, actor, "target.updated", format!("target:{name}"), changed.join("; "))?;
            }
            tx.commit().await?;
            Ok(row)
        })
    }

    /// Deletes a target that holds no live node (the rows of its stopped and
    /// failed nodes forget it).
    pub async fn delete_target(&self, name: &str, actor: &str, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let live: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM nodes WHERE target = $1 AND state IN ('starting', 'ready', 'draining')",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            if live > 0 {
                return Err(StoreError::InvalidState(format!(
                    "target {name} holds {live} live nodes: set it draining and wait until they moved"
                )));
            }
            sqlx::query("UPDATE nodes SET target = NULL WHERE target = $1").bind(name).execute(&mut *tx).await?;
            let gone = sqlx::query("DELETE FROM targets WHERE name = $1").bind(name).execute(&mut *tx).await?;
            if gone.rows_affected() == 0 {
                return Err(StoreError::NotFound);
            }
            event!(tx, now, actor, "target.deleted", format!("target:{name}"), "")?;
            tx.commit().await?;
            Ok(())
        })
    }

    /// Records why a pool cannot get its nodes now (`None`: it can again); an
    /// event when that changes.
    pub async fn set_pool_waiting(&self, pool: Uuid, reason: Option<&str>, now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let changed = sqlx::query(
                "UPDATE pools SET waiting_reason = $2 WHERE id = $1 AND COALESCE(waiting_reason, '') <> COALESCE($2, '')",
            )
            .bind(pool)
            .bind(reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed > 0 {
                match reason {
                    Some(why) => event!(tx, now, "reconciler", "pool.waiting", format!("pool:{pool}"), why)?,
                    None => event!(tx, now, "reconciler", "pool.placed", format!("pool:{pool}"), "capacity found")?,
                };
            }
            tx.commit().await?;
            Ok(())
        })
    }

    /// Why the pool an account waits for cannot get its nodes, if it cannot: its
    /// dedicated pool, the pool it is mapped to, or a shared pool of its type.
    pub async fn account_pool_waiting(&self, account_id: Uuid) -> Result<Option<String>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_scalar(
                "SELECT p.waiting_reason FROM pools p, accounts a
                 WHERE a.id = $1 AND p.waiting_reason IS NOT NULL AND p.state IN ('creating', 'ready', 'retained')
                   AND ((p.kind = 'dedicated' AND p.account_id = a.id)
                        OR p.id IN (SELECT m.pool_id FROM account_pool_mappings m WHERE m.account_id = a.id)
                        OR (p.kind = 'shared' AND p.origin_type = a.origin_type))
                 ORDER BY p.id LIMIT 1",
            )
            .bind(account_id)
            .fetch_optional(p)
            .await?)
        })
    }
}

/// A live node that has sent a heartbeat, with its target (for the partition rule).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HeardNode {
    pub id: Uuid,
    pub target: String,
    pub kind: TargetKind,
    pub handle: Option<String>,
    pub last_heartbeat: UnixMs,
    /// When a router last reached it (fetched its test content).
    pub seen_by_router: Option<UnixMs>,
}

impl Store {
    /// Live nodes on a target that have been heard from at least once.
    pub async fn heard_nodes(&self) -> Result<Vec<HeardNode>> {
        on_pool!(self, |p| {
            Ok(sqlx::query_as(
                "SELECT n.id, n.target, t.kind, n.handle, n.last_heartbeat,
                        (SELECT MAX(s.seen_at) FROM router_sightings s WHERE s.node_id = n.id) AS seen_by_router
                 FROM nodes n JOIN targets t ON t.name = n.target
                 WHERE n.state IN ('starting', 'ready') AND n.last_heartbeat IS NOT NULL ORDER BY n.id",
            )
            .fetch_all(p)
            .await?)
        })
    }

    /// Marks an active target unreachable, or an unreachable one active again
    /// (`reachable`), with an event saying why; a target in another state, or
    /// already so, is left alone. Returns whether it changed.
    pub async fn set_target_reachable(&self, name: &str, reachable: bool, reason: &str, now: UnixMs) -> Result<bool> {
        let (from, to, action) = if reachable {
            (TargetState::Unreachable, TargetState::Active, "target.reachable")
        } else {
            (TargetState::Active, TargetState::Unreachable, "target.unreachable")
        };
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            let changed = sqlx::query("UPDATE targets SET state = $3, updated_at = $4 WHERE name = $1 AND state = $2")
                .bind(name)
                .bind(from)
                .bind(to)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                > 0;
            if changed {
                event!(tx, now, "reconciler", action, format!("target:{name}"), reason)?;
            }
            tx.commit().await?;
            Ok(changed)
        })
    }
}

fn quotas(max_nodes: Option<i32>, max_mbps: Option<i32>) -> String {
    let nodes = max_nodes.map_or("any number of nodes".to_owned(), |n| format!("at most {n} nodes"));
    let mbps = max_mbps.map_or("any Mbit/s".to_owned(), |m| format!("at most {m} Mbit/s"));
    format!("{nodes}, {mbps}")
}

/// Sightings older than this are dropped: a router gone for good leaves nothing.
const SIGHTINGS_KEPT_MS: i64 = 600_000;

impl Store {
    /// Records that `router` reached `nodes` at `now` (unknown nodes are left
    /// out), and forgets sightings older than ten minutes.
    pub async fn record_sightings(&self, router: &str, nodes: &[Uuid], now: UnixMs) -> Result<()> {
        on_pool!(self, |p| {
            let mut tx = p.begin_write().await?;
            // One statement per 500 nodes, not one per node: every router reports
            // every node each second.
            for chunk in nodes.chunks(500) {
                let ids: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 3)).collect();
                let sql = format!(
                    "INSERT INTO router_sightings (router, node_id, seen_at) SELECT $1, id, $2 FROM nodes WHERE id IN ({})
                     ON CONFLICT (router, node_id) DO UPDATE SET seen_at = excluded.seen_at",
                    ids.join(", ")
                );
                let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(router).bind(now);
                for node in chunk {
                    q = q.bind(node);
                }
                q.execute(&mut *tx).await?;
            }
            sqlx::query("DELETE FROM router_sightings WHERE seen_at < $1")
                .bind(now - SIGHTINGS_KEPT_MS)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }
}
