//! An account's own domain (`video.customer.com`), served by routers over HTTPS
//! with the customer's certificate: uploaded as PEM, checked (the chain parses,
//! the key is the certificate's, the certificate names the domain, the chain
//! leads to a public root or a `--domain-ca`, so a CA vouched for the name, and
//! the name is not the platform's own), the key
//! kept sealed under the master key. Routers pick it by SNI and route its Host
//! to the account.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::accounts::find;
use super::auth::Caller;
use super::problem::{ApiError, ApiJson, Problem};
use crate::control::signing::domain_key_context;
use crate::rules;
use crate::store::{StoreError, StoredCertificate};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetCustomDomain {
    pub domain: String,
    /// The certificate chain (PEM), the domain's own certificate first.
    pub certificate: String,
    /// Its private key (PEM): kept sealed, never shown again.
    pub private_key: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CustomDomainView {
    /// `null`: the account has no domain of its own.
    pub domain: Option<String>,
    /// Where players fetch the account's files: `https://{domain}/{asset}/{file}`.
    pub locator: Option<String>,
}

fn view(domain: Option<&str>) -> CustomDomainView {
    CustomDomainView { domain: domain.map(str::to_owned), locator: domain.map(|d| format!("https://{d}/")) }
}

/// The account's own domain.
#[utoipa::path(get, path = "/v1/accounts/{name}/domain", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = CustomDomainView), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Json<CustomDomainView>, ApiError> {
    let a = find(&s, caller, &name).await?;
    Ok(Json(view(a.custom_certificate.as_ref().map(|c| c.0.name.as_str()))))
}

/// Sets the account's own domain and its certificate (replacing any before:
/// a renewal is the same call). Routers serve it within a second or two.
#[utoipa::path(put, path = "/v1/accounts/{name}/domain", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = SetCustomDomain,
    responses((status = 200, body = CustomDomainView), (status = 401, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem, description = "another account holds the domain"),
              (status = 422, body = Problem, description = "the certificate does not parse, is not the key's, or does not name the domain")))]
pub async fn set(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    ApiJson(body): ApiJson<SetCustomDomain>,
) -> Result<Json<CustomDomainView>, ApiError> {
    if !rules::IS_DOMAIN.matches(&body.domain) {
        return Err(ApiError::invalid("domain", "a lower-case DNS name such as video.example.com"));
    }
    // The platform's own names (the locators' host and below) are not an account's.
    let platform = s.settings.locator_base.split("://").nth(1).unwrap_or_default();
    let platform = platform.split(['/', ':']).next().unwrap_or_default().to_ascii_lowercase();
    if !platform.is_empty() && (body.domain == platform || body.domain.ends_with(&format!(".{platform}"))) {
        return Err(ApiError::invalid("domain", format!("{platform} and its subdomains are the platform's own")));
    }
    let a = find(&s, caller, &name).await?;
    let pair = headwater_serve::tls::parse_pair(body.certificate.as_bytes(), body.private_key.as_bytes())
        .map_err(|why| ApiError::invalid("certificate", why))?;
    if !headwater_serve::tls::covers(&pair, &body.domain) {
        return Err(ApiError::invalid("certificate", format!("the certificate does not name {}", body.domain)));
    }
    // A CA vouched that the customer holds the name (as browsers will check).
    headwater_serve::tls::verify_chain(&pair, &s.settings.domain_roots)
        .map_err(|why| ApiError::invalid("certificate", why))?;
    let key_sealed = s
        .settings
        .sealer
        .seal(&body.private_key, &domain_key_context(&a.name, &body.domain))
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let stored = StoredCertificate { name: body.domain.clone(), certificate: body.certificate, key_sealed };
    s.store.set_custom_domain(a.id, Some(&stored), s.clock.now_ms()).await.map_err(|e| match e {
        StoreError::Conflict { .. } => ApiError::Conflict {
            detail: format!("another account holds {}", body.domain),
            field: Some("domain".into()),
        },
        other => other.into(),
    })?;
    Ok(Json(view(Some(&body.domain))))
}

/// Removes the account's own domain: routers stop serving it.
#[utoipa::path(delete, path = "/v1/accounts/{name}/domain", tag = "accounts", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(s): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let a = find(&s, caller, &name).await?;
    s.store.set_custom_domain(a.id, None, s.clock.now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}
