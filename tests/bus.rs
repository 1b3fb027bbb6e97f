//! Admin replicas over Redis: an operation accepted by one replica is carried out
//! by a worker on another, woken through the bus rather than by its poll.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Admin, Backend, redis_url};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_another_replica_is_woken_through_redis() {
    let redis = redis_url();
    let prefix = format!("hwtest-{}", uuid::Uuid::new_v4().simple());
    // The API replica runs no worker; the worker replica would poll only every 10 minutes.
    let api =
        Admin::start(Backend::Postgres, &["--redis-url", &redis, "--redis-prefix", &prefix, "--workers", "0"]).await;
    let worker = api.replica(&["--redis-url", &redis, "--redis-prefix", &prefix, "--worker-poll-ms", "600000"]).await;
    // Both are ready only with Redis answering.
    for a in [&api, &worker] {
        let r = a.request(Method::GET, "/readyz", None, None).await;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let (_, key) = api.sign_up("ana@example.com").await;
    let created = api
        .call(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})),
            StatusCode::ACCEPTED,
        )
        .await;
    // Deadline 30 s, far below the 600 s poll: only the bus can have woken it.
    let op = api.wait_operation(created["operation"]["id"].as_str().unwrap(), &key).await;
    assert_eq!(op["state"], "succeeded", "{op}");
    let account = worker.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(account["state"], "active");
}
