//! Targets (operator): where nodes run, each with a zone, quotas and a state. The
//! reconciler places new nodes on active targets with room; a draining target's
//! nodes are replaced elsewhere, make-before-break.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::auth::OperatorAuth;
use super::problem::{ApiError, ApiJson, Problem};
use crate::clock::rfc3339;
use crate::rules;
use crate::states::{TargetKind, TargetState};
use crate::store::{KubernetesSettings, NewTarget, NodeSettings, StoreError, TargetChange, TargetSettings, TargetUse};

/// Most nodes a target's quota may name.
const MAX_NODES: i64 = 100_000;
/// Most Mbit/s a target's quota may name.
const MAX_MBPS: i64 = 100_000_000;

/// A target's quotas: `null` (or left out) is no limit.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TargetQuotas {
    /// Most live nodes (starting, ready or draining) placed here.
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 0, maximum = 100000)]
    pub max_nodes: Option<i32>,
    /// Most node capacity placed here, in Mbit/s.
    #[serde(default, deserialize_with = "super::whole::nullable")]
    #[schema(minimum = 0, maximum = 100000000)]
    pub max_mbps: Option<i32>,
}

impl TargetQuotas {
    fn check(&self) -> Result<(), ApiError> {
        let within = |field: &str, v: Option<i32>, max: i64| match v {
            Some(v) if !(0..=max).contains(&i64::from(v)) => {
                Err(ApiError::invalid(format!("quotas.{field}"), format!("must be between 0 and {max}")))
            }
            _ => Ok(()),
        };
        within("max_nodes", self.max_nodes, MAX_NODES)?;
        within("max_mbps", self.max_mbps, MAX_MBPS)
    }
}

/// What the target holds now.
#[derive(Debug, Serialize, ToSchema)]
pub struct TargetUsed {
    /// Live nodes (starting, ready or draining).
    pub nodes: i64,
    /// Their capacity, in Mbit/s.
    pub mbps: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Target {
    pub name: String,
    pub kind: TargetKind,
    pub zone: String,
    pub region: String,
    pub state: TargetState,
    pub quotas: TargetQuotas,
    pub used: TargetUsed,
    pub settings: NodeSettings,
    /// Where a Kubernetes target's pods go (`null` for a process target).
    pub kubernetes: Option<KubernetesSettings>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<TargetUse> for Target {
    fn from(u: TargetUse) -> Self {
        let t = u.target;
        Self {
            name: t.name,
            kind: t.kind,
            zone: t.zone,
            region: t.region,
            state: t.state,
            quotas: TargetQuotas { max_nodes: t.max_nodes, max_mbps: t.max_mbps },
            used: TargetUsed { nodes: u.nodes, mbps: u.mbps },
            settings: t.settings.0.nodes,
            kubernetes: t.settings.0.kubernetes,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TargetList {
    pub items: Vec<Target>,
}

/// The states an operator sets (`unreachable` is admin's to set).
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TargetStateChange {
    Active,
    Draining,
}

impl From<TargetStateChange> for TargetState {
    fn from(s: TargetStateChange) -> Self {
        match s {
            TargetStateChange::Active => TargetState::Active,
            TargetStateChange::Draining => TargetState::Draining,
        }
    }
}

/// A new target, by kind: `process` (this host) or `kubernetes` (a namespace of a
/// cluster). `name` is a DNS label (1 to 63 of `a-z`, `0-9` and `-`, a letter or
/// digit at each end); `zone` and `region` are label values (region default: the zone).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum CreateTarget {
    Process {
        name: String,
        zone: String,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        region: Option<String>,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        quotas: Option<TargetQuotas>,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        settings: Option<NodeSettings>,
    },
    Kubernetes {
        name: String,
        zone: String,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        region: Option<String>,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        quotas: Option<TargetQuotas>,
        #[serde(default, deserialize_with = "super::model::present")]
        #[schema(nullable = false)]
        settings: Option<NodeSettings>,
        kubernetes: KubernetesSettings,
    },
}

/// A change: each field given is set; `quotas` replaces both quotas.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct UpdateTarget {
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub zone: Option<String>,
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub region: Option<String>,
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub quotas: Option<TargetQuotas>,
    /// `draining` replaces its nodes elsewhere; `active` takes new nodes again.
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub state: Option<TargetStateChange>,
    /// Replaces what nodes there are told.
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub settings: Option<NodeSettings>,
    /// Replaces where a Kubernetes target's pods go (a process target has none: 409).
    #[serde(default, deserialize_with = "super::model::present")]
    #[schema(nullable = false)]
    pub kubernetes: Option<KubernetesSettings>,
}

fn label(field: &str, v: &str) -> Result<String, ApiError> {
    if rules::IS_ZONE.matches(v) {
        Ok(v.to_owned())
    } else {
        Err(ApiError::invalid(field, "1 to 63 of [A-Za-z0-9._-], a letter or digit at each end"))
    }
}

/// Checks node settings; the admin URL is kept without a trailing `/`. Pods
/// need a fixed port (`pods`) for their probes.
fn check_nodes(mut s: NodeSettings, pods: bool) -> Result<NodeSettings, ApiError> {
    if let Some(url) = &mut s.node_admin_url {
        if !rules::IS_WEB_ORIGIN.matches(url) {
            return Err(ApiError::invalid(
                "settings.node_admin_url",
                "http(s)://host[:port], as nodes there reach admin",
            ));
        }
        url.truncate(url.trim_end_matches('/').len());
    }
    if let Some(listen) = &s.node_listen {
        if !rules::IS_LISTEN_ADDRESS.matches(listen) || listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ApiError::invalid("settings.node_listen", "an address and port, such as 0.0.0.0:8080"));
        }
        if pods && listen.ends_with(":0") {
            return Err(ApiError::Conflict {
                detail: "pods need a fixed port for their probes".into(),
                field: Some("settings.node_listen".into()),
            });
        }
    }
    if let Some(proxies) = &s.trusted_proxies {
        if proxies.len() > 20 {
            return Err(ApiError::invalid("settings.trusted_proxies", "at most 20 networks"));
        }
        let bad = |p: &String| {
            !rules::IS_IP_NETWORK.matches(p)
                || (p.parse::<ipnet::IpNet>().is_err() && p.parse::<std::net::IpAddr>().is_err())
        };
        if let Some(i) = proxies.iter().position(bad) {
            return Err(ApiError::invalid(format!("settings.trusted_proxies[{i}]"), "a network such as 10.0.0.0/8"));
        }
    }
    Ok(s)
}

fn check_kubernetes(k: &KubernetesSettings) -> Result<(), ApiError> {
    if !rules::IS_TARGET_NAME.matches(&k.namespace) {
        return Err(ApiError::invalid("kubernetes.namespace", "a Kubernetes namespace (a DNS label)"));
    }
    if !rules::IS_CONTAINER_IMAGE.matches(&k.image) {
        return Err(ApiError::invalid("kubernetes.image", "a container image reference"));
    }
    if let Some(secret) = &k.env_from_secret
        && !rules::IS_TARGET_NAME.matches(secret)
    {
        return Err(ApiError::invalid("kubernetes.env_from_secret", "a Secret's name (a DNS label)"));
    }
    if let Some(path) = &k.kubeconfig
        && !rules::IS_ABSOLUTE_PATH.matches(path)
    {
        return Err(ApiError::invalid("kubernetes.kubeconfig", "an absolute path on admin's host"));
    }
    Ok(())
}

fn not_found(name: &str) -> impl FnOnce(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("target {name}")),
        other => other.into(),
    }
}

/// A new target from its request, checked.
fn new_target(b: CreateTarget) -> Result<NewTarget, ApiError> {
    let (kind, name, zone, region, quotas, nodes, kubernetes) = match b {
        CreateTarget::Process { name, zone, region, quotas, settings } => {
            (TargetKind::Process, name, zone, region, quotas, settings, None)
        }
        CreateTarget::Kubernetes { name, zone, region, quotas, settings, kubernetes } => {
            (TargetKind::Kubernetes, name, zone, region, quotas, settings, Some(kubernetes))
        }
    };
    if !rules::IS_TARGET_NAME.matches(&name) {
        return Err(ApiError::invalid("name", "a DNS label: 1 to 63 of [a-z0-9-], a letter or digit at each end"));
    }
    let zone = label("zone", &zone)?;
    let region = match &region {
        Some(r) => label("region", r)?,
        None => zone.clone(),
    };
    let quotas = quotas.unwrap_or_default();
    quotas.check()?;
    if let Some(k) = &kubernetes {
        check_kubernetes(k)?;
    }
    let nodes = check_nodes(nodes.unwrap_or_default(), kubernetes.is_some())?;
    Ok(NewTarget {
        name,
        kind,
        zone,
        region,
        max_nodes: quotas.max_nodes,
        max_mbps: quotas.max_mbps,
        settings: TargetSettings { nodes, kubernetes },
    })
}

/// Creates the targets `path` declares (a JSON array of `POST /v1/targets`
/// bodies) that do not exist yet, at start (`--targets`): a cluster deployment
/// names its own namespace as a target. A target of that name that exists is
/// left as the API last set it.
pub async fn declare(store: &crate::store::Store, path: &std::path::Path, now: i64) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let declared: Vec<CreateTarget> =
        serde_json::from_str(&text).with_context(|| format!("{}: not a JSON array of targets", path.display()))?;
    for (i, t) in declared.into_iter().enumerate() {
        let new = new_target(t).map_err(|e| anyhow::anyhow!("{}: target {i}: {e}", path.display()))?;
        if store.target(&new.name).await?.is_some() {
            continue;
        }
        match store.create_target(&new, "targets-file", now).await {
            // Another replica starting at the same moment made it.
            Ok(_) | Err(StoreError::Conflict { .. }) => tracing::info!(target = %new.name, "target declared"),
            Err(e) => return Err(e).context(format!("creating target {}", new.name)),
        }
    }
    Ok(())
}

#[utoipa::path(get, path = "/v1/targets", tag = "operator", security(("bearer" = [])),
    responses((status = 200, body = TargetList)))]
pub async fn list_targets(State(s): State<AppState>, _op: OperatorAuth) -> Result<Json<TargetList>, ApiError> {
    Ok(Json(TargetList { items: s.store.targets().await?.into_iter().map(Into::into).collect() }))
}

/// Adds a target: `process` (this host) or `kubernetes` (a namespace of a cluster:
/// `kubernetes.namespace` and `kubernetes.image` required).
#[utoipa::path(post, path = "/v1/targets", tag = "operator", security(("bearer" = [])), request_body = CreateTarget,
    responses((status = 201, body = Target), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_target(
    State(s): State<AppState>,
    _op: OperatorAuth,
    ApiJson(b): ApiJson<CreateTarget>,
) -> Result<(StatusCode, Json<Target>), ApiError> {
    let new = new_target(b)?;
    s.store.create_target(&new, "operator", s.clock.now_ms()).await?;
    let t = s.store.target(&new.name).await?.ok_or_else(|| ApiError::NotFound(format!("target {}", new.name)))?;
    Ok((StatusCode::CREATED, Json(t.into())))
}

#[utoipa::path(get, path = "/v1/targets/{name}", tag = "operator", security(("bearer" = [])),
    params(("name" = String, Path)), responses((status = 200, body = Target), (status = 404, body = Problem)))]
pub async fn get_target(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
) -> Result<Json<Target>, ApiError> {
    let t = s.store.target(&name).await?.ok_or_else(|| ApiError::NotFound(format!("target {name}")))?;
    Ok(Json(t.into()))
}

/// Changes a target: raising a quota lets waiting pools go on at once; setting
/// it `draining` replaces its nodes elsewhere, make-before-break.
#[utoipa::path(patch, path = "/v1/targets/{name}", tag = "operator", security(("bearer" = [])), request_body = UpdateTarget,
    params(("name" = String, Path)),
    responses((status = 200, body = Target), (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update_target(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
    ApiJson(b): ApiJson<UpdateTarget>,
) -> Result<Json<Target>, ApiError> {
    let current = s.store.target(&name).await?.ok_or_else(|| ApiError::NotFound(format!("target {name}")))?;
    if b.zone.is_none()
        && b.region.is_none()
        && b.quotas.is_none()
        && b.state.is_none()
        && b.settings.is_none()
        && b.kubernetes.is_none()
    {
        return Err(ApiError::invalid("state", "give a zone, a region, quotas, a state, settings or kubernetes"));
    }
    let pods = current.target.kind == TargetKind::Kubernetes;
    if let Some(k) = &b.kubernetes {
        if !pods {
            return Err(ApiError::Conflict {
                detail: format!("target {name} runs processes: it has no Kubernetes settings"),
                field: Some("kubernetes".into()),
            });
        }
        check_kubernetes(k)?;
    }
    let zone = b.zone.as_deref().map(|z| label("zone", z)).transpose()?;
    let region = b.region.as_deref().map(|r| label("region", r)).transpose()?;
    if let Some(q) = &b.quotas {
        q.check()?;
    }
    let nodes = b.settings.map(|t| check_nodes(t, pods)).transpose()?;
    let change = TargetChange {
        zone,
        region,
        max_nodes: b.quotas.map(|q| q.max_nodes),
        max_mbps: b.quotas.map(|q| q.max_mbps),
        state: b.state.map(Into::into),
        nodes,
        kubernetes: b.kubernetes,
    };
    s.store.update_target(&name, &change, "operator", s.clock.now_ms()).await.map_err(not_found(&name))?;
    let t = s.store.target(&name).await?.ok_or_else(|| ApiError::NotFound(format!("target {name}")))?;
    Ok(Json(t.into()))
}

/// Removes a target that holds no live node (drain it first).
#[utoipa::path(delete, path = "/v1/targets/{name}", tag = "operator", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete_target(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    s.store.delete_target(&name, "operator", s.clock.now_ms()).await.map_err(not_found(&name))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[tokio::test]
    async fn declared_targets_are_made_once_and_then_left_to_the_api() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}/t.db", dir.path().display())).await.unwrap();
        let file = dir.path().join("targets.json");
        let declared = r#"[{"kind": "kubernetes", "name": "cluster", "zone": "eu-1",
            "kubernetes": {"namespace": "headwater", "image": "registry.example/headwater:1", "env_from_secret": "content"}}]"#;
        std::fs::write(&file, declared).unwrap();
        declare(&store, &file, 1).await.unwrap();
        let t = store.target("cluster").await.unwrap().unwrap().target;
        assert_eq!((t.kind, t.zone.as_str()), (TargetKind::Kubernetes, "eu-1"));
        assert_eq!(t.settings.0.kubernetes.unwrap().env_from_secret.as_deref(), Some("content"));
        // Changed through the API, then declared again at the next start: the change stays.
        let change = TargetChange { zone: Some("eu-2".into()), ..Default::default() };
        store.update_target("cluster", &change, "operator", 2).await.unwrap();
        declare(&store, &file, 3).await.unwrap();
        assert_eq!(store.target("cluster").await.unwrap().unwrap().target.zone, "eu-2");
        // A bad declaration stops the start with the field and why, and makes nothing.
        let bad = r#"[{"kind": "kubernetes", "name": "Bad_Name", "zone": "z", "kubernetes": {"namespace": "n", "image": "i"}}]"#;
        std::fs::write(&file, bad).unwrap();
        let err = declare(&store, &file, 4).await.unwrap_err().to_string();
        assert!(err.contains("target 0") && err.contains("name"), "{err}");
        std::fs::write(&file, r#"{"kind": "process"}"#).unwrap();
        let err = format!("{:#}", declare(&store, &file, 5).await.unwrap_err());
        assert!(err.contains("not a JSON array of targets"), "{err}");
        assert_eq!(store.targets().await.unwrap().len(), 2, "local and cluster only");
    }
}
