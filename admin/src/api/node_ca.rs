//! The node CA over the API: a node's join (its one-time join token and a CSR
//! for its first certificate), renewals by nodes and routers, and the
//! operator's rotation and retirement of CAs.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use headwater_serve::mtls::{Peer, TlsPeer};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::auth::{JoinAuth, NodeAuth, OperatorAuth, RouterAuth};
use super::problem::{ApiError, ApiJson, Problem};
use crate::keys;
use crate::node_ca::Certificate;
use crate::store::{IssuedTo, StoreError};

/// Largest CSR taken (a P-256 one is under 1 KiB; an RSA-4096 one under 4).
const CSR_MAX: usize = 16 * 1024;

/// A certificate signing request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CertificateSigningRequest {
    /// PKCS#10 in PEM, signed with the key it names. Admin names the holder
    /// itself: the names and uses asked for are ignored.
    #[schema(max_length = 16384)]
    pub csr: String,
    /// A router's name (its pod or host name, as in its sightings): admin
    /// keeps which CA each router's certificate is of, so no CA a router still
    /// presents is retired. Nodes send none.
    #[serde(default)]
    pub name: Option<String>,
}

/// A certificate of the node CA (`headwater_protocol::IssuedCertificate`).
#[derive(Serialize, ToSchema)]
pub struct IssuedCertificate {
    /// The certificate, PEM.
    pub certificate: String,
    /// Every CA trusted now (two during a rotation), PEM.
    pub ca: String,
    /// The node CA's generation: heartbeat answers and the routing table carry
    /// the current one, and a holder of another renews.
    pub generation: String,
    /// When the certificate expires, Unix ms.
    pub not_after_ms: i64,
    /// A join over plain HTTP only: the node's bearer token for an admin it
    /// cannot reach over TLS (shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
}

impl IssuedCertificate {
    fn of(c: Certificate, token: Option<String>) -> Self {
        Self { certificate: c.pem, ca: c.bundle, generation: c.generation, not_after_ms: c.not_after, token }
    }
}

fn issue(s: &AppState, csr: &str, peer: Peer) -> Result<Certificate, ApiError> {
    if csr.len() > CSR_MAX {
        return Err(ApiError::invalid("csr", "at most 16384 bytes"));
    }
    s.node_ca.issue(csr, peer, s.clock.now_ms()).map_err(|e| ApiError::invalid("csr", e.0))
}

/// A node's join: its one-time join token (from its environment) and a CSR for
/// its own key give it its first certificate. Over plain HTTP the answer also
/// carries a bearer token (it cannot present a certificate there); over TLS
/// the certificate is its only credential. The token is used up either way.
#[utoipa::path(post, path = "/v1/nodes/{id}/join", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = CertificateSigningRequest,
    responses((status = 200, body = IssuedCertificate), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn join(
    State(s): State<AppState>,
    JoinAuth(id): JoinAuth,
    tls: Option<Extension<TlsPeer>>,
    ApiJson(b): ApiJson<CertificateSigningRequest>,
) -> Result<(Extension<super::middleware::ShownOnce>, Json<IssuedCertificate>), ApiError> {
    let cert = issue(&s, &b.csr, Peer::Node(id))?;
    let used = || ApiError::Unauthorized("invalid or already used join token");
    let expected = s.store.join_token_hash(id).await?.ok_or_else(used)?;
    // A bearer token only where no certificate can be presented; over TLS the
    // stored hash is of a secret nobody was ever shown.
    let (token, token_hash) = keys::node_token(id);
    let token = tls.is_none().then_some(token);
    let issued = IssuedTo { node: id, ca: cert.ca, not_after: cert.not_after };
    if !s.store.use_join_token(&expected, issued, &token_hash, s.clock.now_ms()).await? {
        return Err(used());
    }
    // A replay (Idempotency-Key) never shows the token again.
    Ok((Extension(super::middleware::ShownOnce("a node token")), Json(IssuedCertificate::of(cert, token))))
}

/// A node renews its certificate (before two thirds of its life, or at once
/// when admin names a new generation), authenticated by its certificate or token.
#[utoipa::path(post, path = "/v1/nodes/{id}/certificate", tag = "nodes", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = CertificateSigningRequest,
    responses((status = 200, body = IssuedCertificate), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn renew_node(
    State(s): State<AppState>,
    NodeAuth(id): NodeAuth,
    ApiJson(b): ApiJson<CertificateSigningRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    let cert = issue(&s, &b.csr, Peer::Node(id))?;
    s.store
        .record_node_certificate(IssuedTo { node: id, ca: cert.ca, not_after: cert.not_after }, s.clock.now_ms())
        .await?;
    Ok(Json(IssuedCertificate::of(cert, None)))
}

/// A router's certificate (`router.headwater`), which it presents to nodes
/// and may present to admin; by the router token only (a certificate never
/// renews itself, so rotating the router token cuts a stolen key off).
#[utoipa::path(post, path = "/v1/routing/certificate", tag = "nodes", security(("bearer" = [])),
    request_body = CertificateSigningRequest,
    responses((status = 200, body = IssuedCertificate), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem)))]
pub async fn renew_router(
    State(s): State<AppState>,
    _router: RouterAuth,
    headers: axum::http::HeaderMap,
    ApiJson(b): ApiJson<CertificateSigningRequest>,
) -> Result<Json<IssuedCertificate>, ApiError> {
    // A bearer token authenticated it (a certificate counts only without one).
    if !headers.contains_key(axum::http::header::AUTHORIZATION) {
        return Err(ApiError::Forbidden("a router's certificate is renewed with the router token".into()));
    }
    let name = b.name.as_deref().unwrap_or("router");
    if !crate::rules::IS_ZONE.matches(name) {
        return Err(ApiError::invalid("name", "1 to 63 of [A-Za-z0-9._-], a letter or digit at each end"));
    }
    let cert = issue(&s, &b.csr, Peer::Router)?;
    s.store.record_router_certificate(name, cert.ca, cert.not_after, s.clock.now_ms()).await?;
    Ok(Json(IssuedCertificate::of(cert, None)))
}

/// Whether a CA signs, is only trusted, or was retired.
#[derive(Debug, Clone, Copy, Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CaState {
    /// Signs every new certificate (and is trusted).
    Active,
    /// A rotation's new CA: trusted now, signing from `activates_at`.
    Staged,
    /// Trusted, no longer signing: a rotation is under way until it is retired.
    Trusted,
    Retired,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCaView {
    pub id: Uuid,
    pub state: CaState,
    /// The CA's certificate, PEM.
    pub certificate: String,
    pub created_at: i64,
    /// From when it signs.
    pub activates_at: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retired_at: Option<i64>,
    /// Live nodes whose unexpired certificate it signed.
    pub holders: i64,
    /// Routers whose last certificate, unexpired, it signed.
    pub routers: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeCaList {
    /// The current generation (the trusted set and the signing CA).
    pub generation: String,
    /// Every CA, oldest first.
    pub items: Vec<NodeCaView>,
}

async fn views(s: &AppState) -> Result<NodeCaList, ApiError> {
    let rows = s.store.node_cas().await?;
    let active = s.node_ca.active();
    let now = s.clock.now_ms();
    let mut items = Vec::with_capacity(rows.len());
    for r in rows {
        let state = match r.retired_at {
            Some(_) => CaState::Retired,
            None if r.id == active => CaState::Active,
            None if r.activates_at > now => CaState::Staged,
            None => CaState::Trusted,
        };
        let (holders, routers) = if state == CaState::Retired {
            (0, 0)
        } else {
            (s.store.node_ca_holders(r.id, now).await?, s.store.node_ca_routers(r.id, now).await?)
        };
        items.push(NodeCaView {
            id: r.id,
            state,
            certificate: r.cert_pem,
            created_at: r.created_at,
            activates_at: r.activates_at,
            retired_at: r.retired_at,
            holders,
            routers,
        });
    }
    Ok(NodeCaList { generation: s.node_ca.generation(), items })
}

/// The node CA's CAs, with how many live nodes still hold a certificate of each.
#[utoipa::path(get, path = "/v1/node-ca", tag = "operator", security(("bearer" = [])),
    responses((status = 200, body = NodeCaList), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn list(State(s): State<AppState>, _op: OperatorAuth) -> Result<Json<NodeCaList>, ApiError> {
    Ok(Json(views(&s).await?))
}

/// Starts a rotation: a new CA, trusted at once and signing after the stage
/// (`--node-ca-stage-secs`, 10 s by default), so every node and router trusts
/// it before any presents a certificate of it. Nodes and routers renew within
/// seconds of each step (heartbeat answers and the routing table name the new
/// generation). Retire the old one once it has no holders.
#[utoipa::path(post, path = "/v1/node-ca/rotate", tag = "operator", security(("bearer" = [])),
    responses((status = 201, body = NodeCaList), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn rotate(State(s): State<AppState>, _op: OperatorAuth) -> Result<(StatusCode, Json<NodeCaList>), ApiError> {
    s.node_ca
        .rotate(&s.store, &s.settings.sealer, "operator")
        .await
        .map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    Ok((StatusCode::CREATED, Json(views(&s).await?)))
}

/// Retires a CA that no longer signs: its certificates stop verifying at once
/// (on admin, on open connections too). Refused (409) for the signing CA, for
/// a staged one, and while a live node or a router holds an unexpired
/// certificate of it.
#[utoipa::path(delete, path = "/v1/node-ca/{id}", tag = "operator", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = NodeCaList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn retire(
    State(s): State<AppState>,
    _op: OperatorAuth,
    Path(id): Path<Uuid>,
) -> Result<Json<NodeCaList>, ApiError> {
    s.store.retire_node_ca(id, "operator", s.clock.now_ms()).await.map_err(|e| match e {
        StoreError::NotFound => ApiError::NotFound(format!("node CA {id} (not retired)")),
        other => other.into(),
    })?;
    s.node_ca.refresh(&s.store, &s.settings.sealer).await.map_err(|e| ApiError::Internal(format!("{e:#}")))?;
    Ok(Json(views(&s).await?))
}
