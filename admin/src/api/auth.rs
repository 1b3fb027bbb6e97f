//! Who is calling. [`authenticate`] reads `Authorization: Bearer …` once per
//! request, before rate limits and idempotency, into a [`Principal`]: a customer
//! (an API key), a node (its token, or its certificate of the node CA when it
//! sends no token), a node yet to join (its one-time join token: its join
//! only), a router (the router token or its certificate: the routing table and
//! its own sightings, nothing else), the operator, nobody, or a credential that
//! failed. Only the canonical spelling is accepted (`Bearer`, one space, the
//! token), so one credential has one rate-limit bucket. Secrets are compared in
//! constant time. The extractors below take the principal a route needs: the
//! wrong kind of credential is 403, none or a failed one 401.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use uuid::Uuid;

use headwater_serve::mtls::{Peer, TlsPeer};

use super::AppState;
use super::problem::ApiError;
use crate::keys;

/// A customer authenticated by one of its keys.
#[derive(Debug, Clone, Copy)]
pub struct CustomerAuth {
    pub customer_id: Uuid,
    pub key_id: Uuid,
}

/// The operator, authenticated by `HEADWATER_OPERATOR_TOKEN`.
#[derive(Debug, Clone, Copy)]
pub struct OperatorAuth;

/// Either kind of caller, for routes both may use.
#[derive(Debug, Clone, Copy)]
pub enum Caller {
    Customer(CustomerAuth),
    Operator,
}

/// What the request's credentials are, as [`authenticate`] found them.
#[derive(Debug, Clone, Copy)]
pub enum Principal {
    /// No `Authorization` header.
    Anonymous,
    Customer(CustomerAuth),
    /// An origin node, by its token or its certificate.
    Node(Uuid),
    /// A node launched with a join token, before it has joined (its join only).
    Joining(Uuid),
    /// A router, by the router token.
    Router,
    Operator,
    /// Credentials that were given but failed: why.
    Failed(&'static str),
}

impl Principal {
    /// The key of its rate-limit bucket and idempotency records: one per customer,
    /// node or operator, however the credential was spelled. `None` for nobody.
    pub fn key(self) -> Option<String> {
        match self {
            Principal::Customer(c) => Some(format!("customer:{}", c.customer_id)),
            Principal::Node(id) | Principal::Joining(id) => Some(format!("node:{id}")),
            Principal::Router => Some("router".to_owned()),
            Principal::Operator => Some("operator".to_owned()),
            Principal::Anonymous | Principal::Failed(_) => None,
        }
    }
}

impl Caller {
    /// The customer whose resources this caller may see; `None` means all (operator).
    pub fn customer_scope(self) -> Option<Uuid> {
        match self {
            Caller::Customer(c) => Some(c.customer_id),
            Caller::Operator => None,
        }
    }

    /// How the caller is named in the event trail.
    pub fn actor(self) -> String {
        match self {
            Caller::Customer(c) => format!("customer:{}", c.customer_id),
            Caller::Operator => "operator".into(),
        }
    }
}

/// The token of an `Authorization` header in its one accepted spelling:
/// `Bearer <token>`, the token of visible ASCII without spaces.
fn bearer(value: &[u8]) -> Option<&str> {
    let token = std::str::from_utf8(value.strip_prefix(b"Bearer ")?).ok()?;
    (!token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())).then_some(token)
}

/// Who a client certificate of the node CA names, checked again now (expired
/// or of a retired CA: failed), when there is one and no bearer token.
async fn by_certificate(peer: Option<&TlsPeer>, state: &AppState) -> Result<Principal, ApiError> {
    let Some(chain) = peer.and_then(|p| p.0.as_ref()) else { return Ok(Principal::Anonymous) };
    Ok(match state.node_ca.trust.verify_client(chain) {
        Ok(Peer::Node(id)) if state.store.node_is_live(id).await? => Principal::Node(id),
        Ok(Peer::Node(_)) => Principal::Failed("the certificate's node is stopped"),
        Ok(Peer::Router) => Principal::Router,
        Err(_) => Principal::Failed("the client certificate is not one of the node CA's valid now"),
    })
}

async fn resolve(
    parts_headers: &axum::http::HeaderMap,
    peer: Option<&TlsPeer>,
    state: &AppState,
) -> Result<Principal, ApiError> {
    let Some(value) = parts_headers.get(header::AUTHORIZATION) else { return by_certificate(peer, state).await };
    let Some(token) = bearer(value.as_bytes()) else {
        return Ok(Principal::Failed("expected Authorization: Bearer <token>"));
    };
    if token.starts_with(keys::PREFIX) {
        let Some((key_id, secret)) = keys::parse(token) else {
            return Ok(Principal::Failed("invalid or revoked API key"));
        };
        return Ok(match state.store.api_key(key_id).await? {
            Some(k) if k.revoked_at.is_none() && keys::verify(secret, &k.secret_hash) => {
                Principal::Customer(CustomerAuth { customer_id: k.customer_id, key_id })
            }
            _ => Principal::Failed("invalid or revoked API key"),
        });
    }
    if token.starts_with(keys::NODE_PREFIX) {
        let Some((node, secret)) = keys::parse_node_token(token) else {
            return Ok(Principal::Failed("invalid node token"));
        };
        return Ok(match state.store.node_token_hash(node).await? {
            Some(hash) if keys::verify(secret, &hash) => Principal::Node(node),
            _ => Principal::Failed("invalid node token"),
        });
    }
    if token.starts_with(keys::JOIN_PREFIX) {
        let Some((node, secret)) = keys::parse_join_token(token) else {
            return Ok(Principal::Failed("invalid join token"));
        };
        return Ok(match state.store.join_token_hash(node).await? {
            Some(hash) if keys::verify(secret, &hash) => Principal::Joining(node),
            _ => Principal::Failed("invalid or already used join token"),
        });
    }
    Ok(if keys::tokens_equal(token, &state.settings.operator_token) {
        Principal::Operator
    } else if keys::tokens_equal(token, &state.settings.router_token) {
        Principal::Router
    } else {
        Principal::Failed("invalid operator token")
    })
}

/// Resolves the request's credentials into a [`Principal`] extension, once.
pub async fn authenticate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    use axum::response::IntoResponse;
    match resolve(req.headers(), req.extensions().get::<TlsPeer>(), &s).await {
        Ok(p) => {
            req.extensions_mut().insert(p);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

fn principal(parts: &Parts) -> Principal {
    parts.extensions.get::<Principal>().copied().unwrap_or(Principal::Anonymous)
}

/// The refusal for a principal that is not the one a route needs.
fn refuse(p: Principal, wanted: &'static str) -> ApiError {
    match p {
        Principal::Anonymous => ApiError::Unauthorized("missing Authorization: Bearer header"),
        Principal::Failed(why) => ApiError::Unauthorized(why),
        Principal::Customer(_)
        | Principal::Node(_)
        | Principal::Joining(_)
        | Principal::Router
        | Principal::Operator => ApiError::Forbidden(format!("this route needs {wanted}")),
    }
}

impl FromRequestParts<AppState> for CustomerAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts) {
            Principal::Customer(c) => Ok(c),
            other => Err(refuse(other, "a customer's API key")),
        }
    }
}

impl FromRequestParts<AppState> for OperatorAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts) {
            Principal::Operator => Ok(OperatorAuth),
            other => Err(refuse(other, "the operator token")),
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts) {
            Principal::Customer(c) => Ok(Caller::Customer(c)),
            Principal::Operator => Ok(Caller::Operator),
            other => Err(refuse(other, "a customer's API key or the operator token")),
        }
    }
}

/// A router (the router token) or the operator, on the routes routers use.
#[derive(Debug, Clone, Copy)]
pub struct RouterAuth;

impl FromRequestParts<AppState> for RouterAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        match principal(parts) {
            Principal::Router | Principal::Operator => Ok(RouterAuth),
            other => Err(refuse(other, "the router token")),
        }
    }
}

/// A node, authenticated by its token, on a route of its own (`/v1/nodes/{id}/…`).
pub struct NodeAuth(pub Uuid);

impl FromRequestParts<AppState> for NodeAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let id = path_node(parts, state).await?;
        match principal(parts) {
            Principal::Node(node) if node == id => Ok(NodeAuth(id)),
            // Another node's routes are not this node's to call.
            Principal::Node(_) => Err(ApiError::Forbidden("a node calls only its own routes".into())),
            other => Err(refuse(other, "the node's token or certificate")),
        }
    }
}

/// A node joining with its join token, on its own join route (`/v1/nodes/{id}/join`).
pub struct JoinAuth(pub Uuid);

impl FromRequestParts<AppState> for JoinAuth {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let id = path_node(parts, state).await?;
        match principal(parts) {
            Principal::Joining(node) if node == id => Ok(JoinAuth(id)),
            Principal::Joining(_) => Err(ApiError::Forbidden("a node joins only as itself".into())),
            other => Err(refuse(other, "the node's join token")),
        }
    }
}

async fn path_node(parts: &mut Parts, state: &AppState) -> Result<Uuid, ApiError> {
    let axum::extract::Path(id): axum::extract::Path<String> =
        axum::extract::Path::from_request_parts(parts, state).await.map_err(|_| ApiError::NotFound("node".into()))?;
    Uuid::try_parse(&id).map_err(|_| ApiError::NotFound(format!("node {id}")))
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn only_the_canonical_spelling_is_a_bearer_token() {
        assert_eq!(bearer(b"Bearer abc"), Some("abc"));
        for bad in [
            &b"Bearer  abc"[..],
            b"bearer abc",
            b"Bearer abc ",
            b"Bearer a bc",
            b"Bearer ",
            b"Basic abc",
            b"Bearer\tabc",
        ] {
            assert_eq!(bearer(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
