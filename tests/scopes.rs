//! Every credential is scoped to its job: this walks every operation of admin's
//! OpenAPI document with each kind of credential (a customer's API key, a node's
//! token, a node's join token, the router token, the operator token) and asserts 403 wherever the
//! operation is out of that credential's scope, and no 401/403 where it is in.
//! An operation the table below does not classify fails the test, so a new
//! route must say who may call it.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend};

const ROUTER_TOKEN: &str = "hw-test-router-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Customer,
    Node,
    /// A node's one-time join token: its own join, nothing else.
    Joining,
    Router,
    Operator,
}

use Who::*;

/// Who may call an operation; `None`: anyone (no credential needed).
fn allowed(method: &str, path: &str) -> Option<&'static [Who]> {
    const OPERATOR: &[Who] = &[Operator];
    const CALLER: &[Who] = &[Customer, Operator];
    const CUSTOMER: &[Who] = &[Customer];
    const NODE: &[Who] = &[Node];
    const JOINING: &[Who] = &[Joining];
    const ROUTER: &[Who] = &[Router, Operator];
    Some(match (method, path) {
        ("get", "/healthz" | "/readyz") | ("post", "/v1/customers") => return None,
        // The metrics token (or the operator's); checked on its own below.
        ("get", "/metrics") => OPERATOR,
        ("get" | "post", "/v1/accounts") | ("get", "/v1/customers/me") => CUSTOMER,
        (_, "/v1/customers/me/keys" | "/v1/customers/me/keys/{id}") => CUSTOMER,
        (_, p) if p.starts_with("/v1/accounts/{name}") => CALLER,
        ("get", "/v1/operations" | "/v1/operations/{id}" | "/v1/operations/{id}/watch") => CALLER,
        (_, "/v1/nodes/{id}/config" | "/v1/nodes/{id}/heartbeat" | "/v1/nodes/{id}/usage") => NODE,
        (_, "/v1/nodes/{id}/access-logs") => NODE,
        (_, "/v1/nodes/{id}/certificate") => NODE,
        (_, "/v1/nodes/{id}/join") => JOINING,
        (
            _,
            "/v1/routing"
            | "/v1/routing/stream"
            | "/v1/routing/sightings"
            | "/v1/routing/certificate"
            | "/v1/routing/access-logs",
        ) => ROUTER,
        (_, "/v1/node-ca" | "/v1/node-ca/rotate" | "/v1/node-ca/{id}") => OPERATOR,
        (
            _,
            "/v1/allocations"
            | "/v1/events"
            | "/v1/events/watch"
            | "/v1/pools"
            | "/v1/test/clock"
            | "/v1/nodes/{id}/drain",
        ) => OPERATOR,
        (_, "/v1/operations/{id}/rollback") => OPERATOR,
        (_, "/v1/customers" | "/v1/customers/{id}" | "/v1/nodes") => OPERATOR,
        (_, p) if p.starts_with("/v1/origin-types") || p.starts_with("/v1/targets") => OPERATOR,
        _ => panic!("{method} {path}: classify who may call it in tests/scopes.rs"),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_refuses_every_credential_out_of_its_scope() {
    let admin = Admin::start(
        Backend::Sqlite,
        &[
            "--test-clock",
            "--router-token",
            ROUTER_TOKEN,
            "--rate-limit-per-key",
            "1000",
            "--upload-rate-limit",
            "1000",
        ],
    )
    .await;
    let op = admin.operator_token.clone();
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let node =
        admin.call(Method::POST, "/v1/nodes", Some(&op), Some(json!({"pool_id": pool})), StatusCode::CREATED).await;
    let (node_id, node_token) = (node["id"].as_str().unwrap().to_owned(), node["token"].as_str().unwrap().to_owned());
    let join_token = node["join_token"].as_str().unwrap().to_owned();
    let credentials = [
        (Customer, key.as_str()),
        (Node, node_token.as_str()),
        (Joining, join_token.as_str()),
        (Router, ROUTER_TOKEN),
        (Operator, op.as_str()),
    ];

    // The router token reads the routing table, and that is all it is for.
    let table = admin.call(Method::GET, "/v1/routing", Some(ROUTER_TOKEN), None, StatusCode::OK).await;
    assert!(table["accounts"]["ana-vod"].is_object(), "{table}");

    let doc = admin.call(Method::GET, "/openapi.json", None, None, StatusCode::OK).await;
    let http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build().unwrap();
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            let Some(who) = allowed(method, path) else { continue };
            // Real values where a route looks something up: the customer's own
            // account, the node's own id, a built-in type, the local target.
            let target = if path.starts_with("/v1/targets") { "local" } else { "ana-vod" };
            let id =
                if path.starts_with("/v1/nodes/") { node_id.as_str() } else { "00000000-0000-0000-0000-000000000000" };
            let url = path
                .replace("{name}", target)
                .replace("{asset}", "demo")
                .replace("{path}", "x.m3u8")
                .replace("{type}", "hls")
                .replace("{id}", id);
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for (kind, token) in credentials {
                let mut req = http.request(m.clone(), format!("{}{url}", admin.url)).bearer_auth(token);
                if matches!(m, Method::POST | Method::PATCH | Method::PUT) {
                    req = if method == "put" {
                        req.header("content-type", "application/vnd.apple.mpegurl").body("#EXTM3U\n")
                    } else {
                        req.json(&json!({}))
                    };
                }
                let res = req.send().await.unwrap();
                let status = res.status();
                let body: Value =
                    if matches!(path.as_str(), "/v1/routing/stream" | "/v1/events/watch") && status.is_success() {
                        Value::Null
                    } else {
                        res.json().await.unwrap_or(Value::Null)
                    };
                if path == "/metrics" && kind != Operator {
                    assert_eq!(status, StatusCode::UNAUTHORIZED, "{kind:?} {method} {path}: {body}");
                } else if who.contains(&kind) {
                    assert!(
                        status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                        "{kind:?} may {method} {path}, got {status}: {body}"
                    );
                } else {
                    assert_eq!(status, StatusCode::FORBIDDEN, "{kind:?} must not {method} {path}: {body}");
                    assert_eq!(body["type"], "/problems/forbidden", "{body}");
                }
            }
            walked += 1;
        }
    }
    assert!(walked >= 40, "walked {walked} operations");
}
