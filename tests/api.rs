//! End-to-end tests of the admin REST API through the real `headwater admin`
//! binary, on SQLite and on PostgreSQL.

mod support;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::{Admin, Backend, expect_problem, secret_of};

async fn create_account(admin: &Admin, key: &str, body: Value) -> Value {
    admin.call(Method::POST, "/v1/accounts", Some(key), Some(body), StatusCode::ACCEPTED).await
}

async fn signup_and_accounts_of_each_offer(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let (id, key) = admin.sign_up("ana@example.com").await;
    assert!(key.starts_with("hw_"));
    // The key is stored hashed: its secret part appears nowhere in the store.
    let secret = secret_of(&key);
    assert_eq!(
        admin
            .count(&format!("SELECT COUNT(*) FROM customers WHERE name LIKE '%{secret}%' OR email LIKE '%{secret}%'"))
            .await,
        0
    );

    let me = admin.call(Method::GET, "/v1/customers/me", Some(&key), None, StatusCode::OK).await;
    assert_eq!((me["id"].as_str(), me["email"].as_str()), (Some(id.as_str()), Some("ana@example.com")));
    assert_eq!(me["keys"].as_array().unwrap().len(), 1);
    assert!(me.to_string().find(secret).is_none(), "GET /me shows no secret");

    // A third origin type, so one customer can hold an account of each offer.
    let op_token = admin.operator_token.clone();
    let t = admin
        .call(
            Method::POST,
            "/v1/origin-types",
            Some(&op_token),
            Some(json!({"name": "cmaf", "node_capacity_mbps": 100})),
            StatusCode::CREATED,
        )
        .await;
    assert_eq!((t["sla_increment_mbps"].as_i64(), t["trial_cap_mbps"].as_i64()), (Some(100), Some(10)));

    let trial =
        create_account(&admin, &key, json!({"name": "ana-trial", "origin_type": "hls", "offer": {"kind": "trial"}}))
            .await;
    let payg = create_account(
        &admin,
        &key,
        json!({"name": "ana-payg", "origin_type": "dash", "offer": {"kind": "payg"}, "ip_allow": ["192.0.2.0/24"]}),
    )
    .await;
    let sla = create_account(
        &admin,
        &key,
        json!({"name": "ana-sla", "origin_type": "cmaf", "offer": {"kind": "sla", "mbps": 300}}),
    )
    .await;
    assert_eq!(trial["account"]["state"], "provisioning");
    assert_eq!(trial["operation"]["kind"], "create");
    assert!(trial["account"]["locator"].as_str().unwrap().ends_with("/ana-trial/"));

    for accepted in [&trial, &payg, &sla] {
        let op = admin.wait_operation(accepted["operation"]["id"].as_str().unwrap(), &key).await;
        assert_eq!(op["state"], "succeeded", "{op}");
        let steps: Vec<_> =
            op["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_owned()).collect();
        assert_eq!(steps, ["pool_prepared", "pool_assigned", "allocation_recorded"]);
    }
    let sla_now = admin.call(Method::GET, "/v1/accounts/ana-sla", Some(&key), None, StatusCode::OK).await;
    assert_eq!(sla_now["state"], "active");
    assert_eq!(sla_now["offer"], json!({"kind": "sla", "mbps": 300}));
    assert_eq!(
        (sla_now["pool"]["kind"].as_str(), sla_now["pool"]["desired_nodes"].as_i64()),
        (Some("dedicated"), Some(4))
    );
    let payg_now = admin.call(Method::GET, "/v1/accounts/ana-payg", Some(&key), None, StatusCode::OK).await;
    assert_eq!(payg_now["pool"]["kind"], "shared");
    assert_eq!(payg_now["ip_allow"], json!(["192.0.2.0/24"]));

    let list = admin.call(Method::GET, "/v1/accounts", Some(&key), None, StatusCode::OK).await;
    let names: Vec<_> = list["items"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["ana-payg", "ana-sla", "ana-trial"]);

    // The operator sees the same in the global allocation table and the pools.
    let allocs = admin.call(Method::GET, "/v1/allocations", Some(&op_token), None, StatusCode::OK).await;
    assert_eq!(allocs["items"].as_array().unwrap().len(), 3);
    let pools = admin.call(Method::GET, "/v1/pools?limit=2", Some(&op_token), None, StatusCode::OK).await;
    assert_eq!(pools["items"].as_array().unwrap().len(), 2);
    let cursor = pools["next_cursor"].as_str().expect("a second page");
    let rest = admin
        .call(Method::GET, &format!("/v1/pools?limit=2&cursor={cursor}"), Some(&op_token), None, StatusCode::OK)
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 1, "three pools: hls shared, dash shared, cmaf dedicated");
    let events = admin.call(Method::GET, "/v1/events?limit=500", Some(&op_token), None, StatusCode::OK).await;
    let actions: Vec<_> = events["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in [
        "customer.created",
        "account.created",
        "pool.created",
        "allocation.recorded",
        "operation.succeeded",
        "origin_type.created",
    ] {
        assert!(actions.contains(&a), "no {a} event in {actions:?}");
    }

    // payg -> sla, then deactivate, reactivate, delete: each an operation.
    // (200.0 is the JSON number 200.)
    let changed = admin
        .call(
            Method::PATCH,
            "/v1/accounts/ana-payg",
            Some(&key),
            Some(json!({"offer": {"kind": "sla", "mbps": 200.0}})),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(changed["operation"]["kind"], "change_offer");
    assert_eq!(admin.wait_operation(changed["operation"]["id"].as_str().unwrap(), &key).await["state"], "succeeded");
    let payg_now = admin.call(Method::GET, "/v1/accounts/ana-payg", Some(&key), None, StatusCode::OK).await;
    assert_eq!(payg_now["offer"], json!({"kind": "sla", "mbps": 200}));
    assert_eq!(
        (payg_now["pool"]["kind"].as_str(), payg_now["pool"]["desired_nodes"].as_i64()),
        (Some("dedicated"), Some(3))
    );
    assert_eq!(payg_now["locator"], changed["account"]["locator"], "the locator never changes");

    let d = admin.call(Method::POST, "/v1/accounts/ana-trial/deactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    assert_eq!(d["account"]["state"], "deactivated");
    assert!(d["account"]["retain_until"].is_string());
    admin.wait_operation(d["operation"]["id"].as_str().unwrap(), &key).await;
    let again = admin.request(Method::POST, "/v1/accounts/ana-trial/deactivate", Some(&key), None).await;
    expect_problem(again, StatusCode::CONFLICT, "conflict", None).await;
    let r = admin.call(Method::POST, "/v1/accounts/ana-trial/reactivate", Some(&key), None, StatusCode::ACCEPTED).await;
    assert_eq!(admin.wait_operation(r["operation"]["id"].as_str().unwrap(), &key).await["state"], "succeeded");
    let del = admin.call(Method::DELETE, "/v1/accounts/ana-trial", Some(&key), None, StatusCode::ACCEPTED).await;
    admin.wait_operation(del["operation"]["id"].as_str().unwrap(), &key).await;
    expect_problem(
        admin.request(Method::GET, "/v1/accounts/ana-trial", Some(&key), None).await,
        StatusCode::NOT_FOUND,
        "not-found",
        None,
    )
    .await;
    assert_eq!(admin.count("SELECT COUNT(*) FROM global_allocations").await, 2);

    // Images are recorded and their upgrade operation runs.
    let up = admin
        .call(
            Method::POST,
            "/v1/origin-types/hls/images",
            Some(&op_token),
            Some(json!({"version": "1.1.0", "command": "headwater", "args": ["origin"]})),
            StatusCode::ACCEPTED,
        )
        .await;
    assert_eq!(up["kind"], "upgrade");
    assert_eq!(admin.wait_operation(up["id"].as_str().unwrap(), &op_token).await["state"], "succeeded");
    let hls = admin.call(Method::GET, "/v1/origin-types/hls", Some(&op_token), None, StatusCode::OK).await;
    assert_eq!(hls["current_image"], "1.1.0");
}

async fn every_error_is_a_problem_and_writes_nothing(backend: Backend) {
    let admin = Admin::start(backend, &["--max-body-bytes", "4096"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let created =
        create_account(&admin, &key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    // Let the worker finish, so every event counted below comes from a bad request.
    admin.wait_operation(created["operation"]["id"].as_str().unwrap(), &key).await;
    let events_before = admin.count("SELECT COUNT(*) FROM events").await;
    let ops_before = admin.count("SELECT COUNT(*) FROM allocation_operations").await;

    let post = |body: &str| {
        admin
            .http
            .post(format!("{}/v1/accounts", admin.url))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    expect_problem(post("{\"name\": ").await.unwrap(), StatusCode::BAD_REQUEST, "malformed-request", None).await;
    // Origins are exact origins: no wildcard hosts, real ports.
    for (origin, why) in [("https://*.example.com", "wildcard"), ("https://player.example.com:99999", "port")] {
        let body =
            json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "trial"}, "allow_origins": [origin]});
        let p = expect_problem(
            post(&body.to_string()).await.unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-value",
            Some("allow_origins[0]"),
        )
        .await;
        assert!(p["detail"].as_str().unwrap().contains(if why == "port" { "port" } else { "wildcard" }), "{p}");
    }
    // Names show as what they are: no bidi overrides or invisible characters.
    for name in ["Ana\u{202E}gpj.exe", "A\u{200B}na"] {
        let res = admin
            .request(Method::POST, "/v1/customers", None, Some(json!({"name": name, "email": "x@example.com"})))
            .await;
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("name")).await;
    }
    expect_problem(
        post("{\"name\": \"x-y-z\", \"origin_type\": \"hls\"}").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-value",
        Some("offer"),
    )
    .await;
    expect_problem(
        post("{\"name\": 5, \"origin_type\": \"hls\", \"offer\": {\"kind\": \"trial\"}}").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-value",
        Some("name"),
    )
    .await;
    expect_problem(
        post("{\"name\": \"abc\", \"origin_type\": \"hls\", \"offer\": {\"kind\": \"gold\"}}").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-value",
        Some("offer.kind"),
    )
    .await;
    let cases = [
        (json!({"name": "-bad-", "origin_type": "hls", "offer": {"kind": "trial"}}), "name"),
        (json!({"name": "_probe", "origin_type": "hls", "offer": {"kind": "trial"}}), "name"),
        (json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "sla"}}), "offer.mbps"),
        (
            json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "payg"}, "ip_allow": ["10.0.0.0/8", "10.0.0.0/99"]}),
            "ip_allow[1]",
        ),
        (json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "payg"}, "colour": "blue"}), "colour"),
    ];
    for (body, field) in cases {
        let res = admin.request(Method::POST, "/v1/accounts", Some(&key), Some(body.clone())).await;
        let p = expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some(field)).await;
        assert!(!p["detail"].as_str().unwrap().is_empty(), "{body}");
    }
    // An origin type that does not exist.
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-cmaf", "origin_type": "nope", "offer": {"kind": "trial"}})),
        )
        .await;
    let p = expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    assert!(p["detail"].as_str().unwrap().contains("nope"), "{p}");
    // Conflicts: an SLA off the type's increment, a taken name, a second live
    // account of the same type.
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "sla", "mbps": 150}})),
        )
        .await;
    let p = expect_problem(res, StatusCode::CONFLICT, "conflict", Some("offer.mbps")).await;
    assert!(p["detail"].as_str().unwrap().contains("100"), "{p}");
    let (_, bo) = admin.sign_up("bo@example.com").await;
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&bo),
            Some(json!({"name": "ana-vod", "origin_type": "dash", "offer": {"kind": "trial"}})),
        )
        .await;
    expect_problem(res, StatusCode::CONFLICT, "conflict", Some("name")).await;
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-two", "origin_type": "hls", "offer": {"kind": "trial"}})),
        )
        .await;
    expect_problem(res, StatusCode::CONFLICT, "conflict", Some("origin_type")).await;
    // Authentication.
    let res = admin.request(Method::GET, "/v1/accounts", None, None).await;
    assert_eq!(res.headers().get("www-authenticate").unwrap(), "Bearer");
    expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let forged = format!("{}x", &key[..key.len() - 1]);
    expect_problem(
        admin.request(Method::GET, "/v1/accounts", Some(&forged), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    // A customer's key on an operator route: valid, but not its scope.
    expect_problem(
        admin.request(Method::GET, "/v1/origin-types", Some(&key), None).await,
        StatusCode::FORBIDDEN,
        "forbidden",
        None,
    )
    .await;
    // Too large.
    let big = json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "payg"}, "ip_allow": vec!["10.0.0.0/8"; 1000]});
    expect_problem(
        admin.request(Method::POST, "/v1/accounts", Some(&key), Some(big)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too-large",
        None,
    )
    .await;
    // Bad paging input.
    expect_problem(
        admin.request(Method::GET, "/v1/events?limit=0", Some(&admin.operator_token), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-value",
        Some("limit"),
    )
    .await;
    expect_problem(
        admin.request(Method::GET, "/v1/events?limit=x", Some(&admin.operator_token), None).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-value",
        Some("limit"),
    )
    .await;
    expect_problem(
        admin.request(Method::GET, "/v1/nowhere", None, None).await,
        StatusCode::NOT_FOUND,
        "not-found",
        None,
    )
    .await;

    // Nothing above wrote anything (bo's sign-up is the only new event).
    assert_eq!(admin.count("SELECT COUNT(*) FROM events").await, events_before + 1);
    assert_eq!(admin.count("SELECT COUNT(*) FROM allocation_operations").await, ops_before);
    assert_eq!(admin.count("SELECT COUNT(*) FROM accounts").await, 1);
}

async fn idempotent_replay(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let body = json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}});
    let send = |b: Value, k: &str| {
        admin
            .http
            .post(format!("{}/v1/accounts", admin.url))
            .bearer_auth(&key)
            .header("idempotency-key", k.to_owned())
            .json(&b)
            .send()
    };
    let first = send(body.clone(), "create-1").await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone(), "create-1").await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(again.headers().get("idempotent-replayed").unwrap(), "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "the same response, not a second account");
    assert_eq!(admin.count("SELECT COUNT(*) FROM accounts").await, 1);
    assert_eq!(admin.count("SELECT COUNT(*) FROM allocation_operations").await, 1);
    // Without the key the retry is a conflict, showing the replay did the work once.
    let res = admin.request(Method::POST, "/v1/accounts", Some(&key), Some(body.clone())).await;
    expect_problem(res, StatusCode::CONFLICT, "conflict", Some("name")).await;
    // The same key with another body is refused.
    let other = json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "payg"}});
    let res = send(other, "create-1").await.unwrap();
    expect_problem(res, StatusCode::CONFLICT, "idempotency-key-reused", Some("Idempotency-Key")).await;
    assert_eq!(admin.count("SELECT COUNT(*) FROM accounts").await, 1);
    // Sign-up is idempotent too.
    let signup = |k: &'static str| {
        admin
            .http
            .post(format!("{}/v1/customers", admin.url))
            .header("idempotency-key", k)
            .json(&json!({"name": "Bo", "email": "bo@example.com"}))
            .send()
    };
    let a: Value = signup("signup-bo").await.unwrap().json().await.unwrap();
    assert!(a["api_key"].as_str().is_some_and(|k| k.starts_with("hw_")));
    // The same sign-up again (another client behind the same NAT, or a retry):
    // not done twice, and the key is never shown a second time.
    let b = signup("signup-bo").await.unwrap();
    assert_eq!(b.headers().get("idempotent-replayed").unwrap(), "true");
    let p = expect_problem(b, StatusCode::CONFLICT, "secret-not-replayed", Some("Idempotency-Key")).await;
    assert!(!p.to_string().contains("hw_"), "{p}");
    assert_eq!(admin.count("SELECT COUNT(*) FROM customers").await, 2);
}

async fn customers_are_isolated_and_keys_revocable(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let (_, ana) = admin.sign_up("ana@example.com").await;
    let (_, bo) = admin.sign_up("bo@example.com").await;
    let a = create_account(&admin, &ana, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "trial"}}))
        .await;
    let op_id = a["operation"]["id"].as_str().unwrap();

    for (method, path) in [
        (Method::GET, "/v1/accounts/ana-vod".to_owned()),
        (Method::POST, "/v1/accounts/ana-vod/deactivate".to_owned()),
        (Method::DELETE, "/v1/accounts/ana-vod".to_owned()),
        (Method::GET, format!("/v1/operations/{op_id}")),
    ] {
        let res = admin.request(method.clone(), &path, Some(&bo), None).await;
        expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    }
    let res = admin.request(Method::PATCH, "/v1/accounts/ana-vod", Some(&bo), Some(json!({"ip_allow": []}))).await;
    expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;
    let bo_list = admin.call(Method::GET, "/v1/accounts", Some(&bo), None, StatusCode::OK).await;
    assert_eq!(bo_list["items"], json!([]));
    // bo's attempts to deactivate and delete changed nothing.
    let mine = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&ana), None, StatusCode::OK).await;
    assert!(matches!(mine["state"].as_str(), Some("provisioning" | "active")), "{mine}");
    assert_eq!(admin.count("SELECT COUNT(*) FROM allocation_operations").await, 1, "only ana's create");

    // A second key works; revoking the first stops it at once.
    let k2 = admin.call(Method::POST, "/v1/customers/me/keys", Some(&ana), None, StatusCode::CREATED).await;
    let second = k2["api_key"].as_str().unwrap().to_owned();
    let me = admin.call(Method::GET, "/v1/customers/me", Some(&second), None, StatusCode::OK).await;
    let first_id = me["keys"][0]["id"].as_str().unwrap().to_owned();
    // bo cannot revoke ana's key.
    expect_problem(
        admin.request(Method::DELETE, &format!("/v1/customers/me/keys/{first_id}"), Some(&bo), None).await,
        StatusCode::NOT_FOUND,
        "not-found",
        None,
    )
    .await;
    admin
        .call(Method::DELETE, &format!("/v1/customers/me/keys/{first_id}"), Some(&second), None, StatusCode::NO_CONTENT)
        .await;
    expect_problem(
        admin.request(Method::GET, "/v1/accounts", Some(&ana), None).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        None,
    )
    .await;
    let me = admin.call(Method::GET, "/v1/customers/me", Some(&second), None, StatusCode::OK).await;
    assert!(me["keys"][0]["revoked_at"].is_string());
}

async fn everything_survives_a_restart(backend: Backend) {
    let mut admin = Admin::start(backend, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let a = create_account(
        &admin,
        &key,
        json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 100}}),
    )
    .await;
    admin.wait_operation(a["operation"]["id"].as_str().unwrap(), &key).await;
    let before = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    admin.restart().await;
    let after = admin.call(Method::GET, "/v1/accounts/ana-vod", Some(&key), None, StatusCode::OK).await;
    assert_eq!(before, after);
    let types = admin.call(Method::GET, "/v1/origin-types", Some(&admin.operator_token), None, StatusCode::OK).await;
    assert_eq!(types["items"].as_array().unwrap().len(), 3, "built-in types are not seeded twice");
}

async fn signups_are_rate_limited_per_ip(backend: Backend) {
    let admin = Admin::start(backend, &["--signup-rate-limit", "2"]).await;
    admin.sign_up("a@example.com").await;
    admin.sign_up("b@example.com").await;
    let res =
        admin.request(Method::POST, "/v1/customers", None, Some(json!({"name": "C", "email": "c@example.com"}))).await;
    let retry: u64 = res.headers().get("retry-after").expect("Retry-After").to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate-limited", None).await;
    assert_eq!(admin.count("SELECT COUNT(*) FROM customers").await, 2);
}

/// `GET /v1/operations`: the operator sees every operation, a customer only its
/// own; state, kind, account and origin type narrow the list; pages follow
/// `next_cursor`; bad filters are problems. `GET /v1/accounts` pages too.
async fn operations_and_accounts_are_listed_a_page_at_a_time(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let op = admin.operator_token.clone();
    let (_, ana) = admin.sign_up("ana@example.com").await;
    let (_, bo) = admin.sign_up("bo@example.com").await;
    let mut ana_ops = Vec::new();
    for (name, t) in [("ana-hls", "hls"), ("ana-dash", "dash")] {
        let a = create_account(&admin, &ana, json!({"name": name, "origin_type": t, "offer": {"kind": "trial"}})).await;
        ana_ops.push(a["operation"]["id"].as_str().unwrap().to_owned());
    }
    let b =
        create_account(&admin, &bo, json!({"name": "bo-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let bo_op = b["operation"]["id"].as_str().unwrap().to_owned();
    for id in ana_ops.iter().chain([&bo_op]) {
        admin.wait_operation(id, &op).await;
    }
    let patched =
        admin.call(Method::POST, "/v1/accounts/ana-hls/deactivate", Some(&ana), None, StatusCode::ACCEPTED).await;
    admin.wait_operation(patched["operation"]["id"].as_str().unwrap(), &ana).await;
    let ids = |v: &Value| -> Vec<String> {
        v["items"].as_array().unwrap().iter().map(|o| o["id"].as_str().unwrap().to_owned()).collect()
    };
    // The operator: all four, newest first.
    let all = admin.call(Method::GET, "/v1/operations", Some(&op), None, StatusCode::OK).await;
    let all_ids = ids(&all);
    assert_eq!(all_ids.len(), 4, "{all}");
    assert_eq!(all_ids[0], patched["operation"]["id"].as_str().unwrap());
    // A customer: only its own, never bo's.
    let mine = admin.call(Method::GET, "/v1/operations", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(ids(&mine).len(), 3);
    assert!(!ids(&mine).contains(&bo_op));
    let theirs = admin.call(Method::GET, "/v1/operations?account=bo-vod", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(ids(&theirs), Vec::<String>::new(), "another customer's account lists nothing");
    // Filters.
    let created = admin.call(Method::GET, "/v1/operations?kind=create", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(ids(&created).len(), 2);
    assert!(created["items"].as_array().unwrap().iter().all(|o| o["kind"] == "create"));
    let dash = admin.call(Method::GET, "/v1/operations?origin_type=dash", Some(&op), None, StatusCode::OK).await;
    assert_eq!(ids(&dash), vec![ana_ops[1].clone()]);
    let one = admin
        .call(
            Method::GET,
            "/v1/operations?account=ana-hls&kind=deactivate&state=succeeded",
            Some(&op),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!(ids(&one), vec![patched["operation"]["id"].as_str().unwrap().to_owned()]);
    let none = admin.call(Method::GET, "/v1/operations?state=failed", Some(&op), None, StatusCode::OK).await;
    assert!(ids(&none).is_empty());
    // Pages: two and two, no overlap, the same four.
    let first = admin.call(Method::GET, "/v1/operations?limit=2", Some(&op), None, StatusCode::OK).await;
    let cursor = first["next_cursor"].as_str().expect("a full page has a cursor").to_owned();
    let second = admin
        .call(Method::GET, &format!("/v1/operations?limit=2&cursor={cursor}"), Some(&op), None, StatusCode::OK)
        .await;
    let paged: Vec<String> = ids(&first).into_iter().chain(ids(&second)).collect();
    assert_eq!(paged, all_ids);
    // Bad filters are problems.
    for (q, field) in
        [("state=sleeping", "state"), ("kind=scale", "kind"), ("limit=0", "limit"), ("cursor=x", "cursor")]
    {
        let res = admin.request(Method::GET, &format!("/v1/operations?{q}"), Some(&op), None).await;
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some(field)).await;
    }
    let res = admin.request(Method::GET, "/v1/operations", None, None).await;
    expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    // Accounts page by name.
    let page = admin.call(Method::GET, "/v1/accounts?limit=1", Some(&ana), None, StatusCode::OK).await;
    assert_eq!(page["items"][0]["name"], "ana-dash");
    let next = page["next_cursor"].as_str().unwrap();
    let rest =
        admin.call(Method::GET, &format!("/v1/accounts?limit=1&cursor={next}"), Some(&ana), None, StatusCode::OK).await;
    assert_eq!(rest["items"][0]["name"], "ana-hls");
    let res = admin.request(Method::GET, "/v1/accounts?limit=501", Some(&ana), None).await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("limit")).await;
}

/// A node's usage report is counted once, however often it is sent (its answer
/// lost, or sent to another replica), and a window of more bytes than the node
/// could send in a minute is refused, so totals never wrap.
async fn usage_reports_count_once_and_within_what_a_node_can_send(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let (node, token) = admin.register_node(&pool).await;
    // A minute boundary (2027-01-15 08:00 UTC).
    let window = 1_800_000_000_000i64;
    let report = |id: &str, bytes: u64| json!({"id": id, "windows": [{"account": "ana-vod", "window_start": window, "bytes": bytes, "requests": 3}]});
    let path = format!("/v1/nodes/{node}/usage");
    let id = uuid::Uuid::now_v7().to_string();
    let first = admin.call(Method::POST, &path, Some(&token), Some(report(&id, 1000)), StatusCode::OK).await;
    assert_eq!(first, json!({"accepted": 1, "refused": 0, "duplicate": false}));
    let again = admin.call(Method::POST, &path, Some(&token), Some(report(&id, 1000)), StatusCode::OK).await;
    assert_eq!(again, json!({"accepted": 0, "refused": 0, "duplicate": true}));
    // Another report adds.
    let other = uuid::Uuid::now_v7().to_string();
    admin.call(Method::POST, &path, Some(&token), Some(report(&other, 500)), StatusCode::OK).await;
    // 2^64 - 1 bytes in a minute, twice: refused, never added (a node of 100
    // Mbit/s sends at most some 750 MB a minute).
    for _ in 0..2 {
        let huge = admin
            .call(
                Method::POST,
                &path,
                Some(&token),
                Some(report(&uuid::Uuid::now_v7().to_string(), u64::MAX)),
                StatusCode::OK,
            )
            .await;
        assert_eq!(huge, json!({"accepted": 0, "refused": 1, "duplicate": false}));
    }
    let from = "2027-01-15T00:00:00Z";
    let u = admin
        .call(
            Method::GET,
            &format!("/v1/accounts/ana-vod/usage?from={from}&to=2027-01-16T00:00:00Z"),
            Some(&key),
            None,
            StatusCode::OK,
        )
        .await;
    assert_eq!((u["total_bytes"].as_u64(), u["total_requests"].as_u64()), (Some(1500), Some(6)), "{u}");
}

/// Usage rolls up per hour and per day, every window of the range (those
/// without traffic as 0), with the busiest minute and the 95th percentile of
/// 5-minute samples; as JSON or CSV; a resent report and an admin restart
/// change nothing.
async fn usage_rolls_up_per_hour_and_day(backend: Backend) {
    let mut admin = Admin::start(backend, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let (node, token) = admin.register_node(&pool).await;
    // 2026-11-02T00:00:00Z, a past day.
    let day = 1_793_577_600_000i64;
    let (h, m) = (3_600_000i64, 60_000i64);
    let w = |at: i64, bytes: u64, requests: u64| json!({"account": "ana-vod", "window_start": at, "bytes": bytes, "requests": requests});
    let report = json!({"id": uuid::Uuid::now_v7(), "windows": [
        w(day + 8 * h, 1500, 6),
        // 75 MB in a minute: 10 Mbit/s that minute, 2 Mbit/s over its 5 minutes.
        w(day + 8 * h + 7 * m, 75_000_000, 10),
        // 1 Mbit/s for a minute, 0.2 Mbit/s over five.
        w(day + 9 * h + 30 * m, 7_500_000, 2),
        w(day + 24 * h + 10 * m, 375_000, 1),
    ]});
    let path = format!("/v1/nodes/{node}/usage");
    let first = admin.call(Method::POST, &path, Some(&token), Some(report.clone()), StatusCode::OK).await;
    assert_eq!(first["accepted"], 4, "{first}");
    let again = admin.call(Method::POST, &path, Some(&token), Some(report), StatusCode::OK).await;
    assert_eq!(again["duplicate"], true);

    // Asked from 08:30 to 09:10: the whole hours 08:00 and 09:00.
    let hours = "/v1/accounts/ana-vod/usage?granularity=hour&from=2026-11-02T08:30:00Z&to=2026-11-02T09:10:00Z";
    let u = admin.call(Method::GET, hours, Some(&key), None, StatusCode::OK).await;
    assert_eq!(
        u,
        json!({
            "account": "ana-vod", "granularity": "hour",
            "from": "2026-11-02T08:00:00Z", "to": "2026-11-02T10:00:00Z",
            "total_bytes": 82_501_500, "total_requests": 18,
            // 24 samples: the 23rd smallest is the 0.2 of 09:30; the 2.0 is dropped.
            "peak_mbps": 10.0, "p95_mbps": 0.2,
            "windows": [
                {"window_start": "2026-11-02T08:00:00Z", "bytes": 75_001_500, "requests": 16, "peak_mbps": 10.0, "p95_mbps": 2.0},
                {"window_start": "2026-11-02T09:00:00Z", "bytes": 7_500_000, "requests": 2, "peak_mbps": 1.0, "p95_mbps": 0.2},
            ],
        })
    );
    let days = "/v1/accounts/ana-vod/usage?granularity=day&from=2026-11-02T00:00:00Z&to=2026-11-04T00:00:00Z";
    let d = admin.call(Method::GET, days, Some(&key), None, StatusCode::OK).await;
    let per_day: Vec<(&str, i64, i64)> = d["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["window_start"].as_str().unwrap(), w["bytes"].as_i64().unwrap(), w["requests"].as_i64().unwrap()))
        .collect();
    assert_eq!(per_day, [("2026-11-02T00:00:00Z", 82_501_500, 18), ("2026-11-03T00:00:00Z", 375_000, 1)], "{d}");
    // Three busy samples of 288 a day: under the 95th percentile.
    assert_eq!((d["windows"][0]["p95_mbps"].as_f64(), d["peak_mbps"].as_f64()), (Some(0.0), Some(10.0)), "{d}");
    // Minutes: only those that served, and no percentile of their own.
    let minutes = "/v1/accounts/ana-vod/usage?granularity=minute&from=2026-11-02T08:00:00Z&to=2026-11-02T08:10:00Z";
    let mm = admin.call(Method::GET, minutes, Some(&key), None, StatusCode::OK).await;
    assert_eq!(mm["windows"].as_array().unwrap().len(), 2, "{mm}");
    assert_eq!((mm["windows"][1]["peak_mbps"].as_f64(), &mm["windows"][1]["p95_mbps"]), (Some(10.0), &Value::Null));

    // A range past 10,080 windows keeps its latest ones: a week of minutes.
    let long = "/v1/accounts/ana-vod/usage?granularity=minute&from=2026-10-01T00:00:00Z&to=2026-11-03T00:00:00Z";
    let week = admin.call(Method::GET, long, Some(&key), None, StatusCode::OK).await;
    assert_eq!(
        (week["from"].as_str(), week["to"].as_str()),
        (Some("2026-10-27T00:00:00Z"), Some("2026-11-03T00:00:00Z"))
    );
    assert_eq!(week["total_bytes"], u["total_bytes"], "{week}");

    // The same hours as CSV.
    let res = admin.request(Method::GET, &format!("{hours}&format=csv"), Some(&key), None).await;
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(res.headers()["content-disposition"], "attachment; filename=\"ana-vod-usage-hour.csv\"");
    assert_eq!(
        res.text().await.unwrap(),
        "window_start,bytes,requests,peak_mbps,p95_mbps\n\
         2026-11-02T08:00:00Z,75001500,16,10.0,2.0\n\
         2026-11-02T09:00:00Z,7500000,2,1.0,0.2\n"
    );

    // Bad input: a problem naming the parameter.
    for (query, field) in [
        ("granularity=week", "granularity"),
        ("format=xml", "format"),
        ("from=yesterday", "from"),
        ("from=2026-11-02T00:00:00Z&to=2026-11-01T00:00:00Z", "to"),
        ("limit=3", "limit"),
    ] {
        let res = admin.request(Method::GET, &format!("/v1/accounts/ana-vod/usage?{query}"), Some(&key), None).await;
        expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some(field)).await;
    }
    // Another customer's account is not found.
    let (_, other) = admin.sign_up("bo@example.com").await;
    let res = admin.request(Method::GET, hours, Some(&other), None).await;
    expect_problem(res, StatusCode::NOT_FOUND, "not-found", None).await;

    // The rollups are the durable minutes: a restart changes nothing.
    admin.restart().await;
    assert_eq!(admin.call(Method::GET, hours, Some(&key), None, StatusCode::OK).await, u);
}

/// A revoked key replays nothing (authentication comes before replay), and a
/// replay never shows a secret again, even to a valid key of the same customer.
async fn replays_follow_authentication_and_never_show_a_secret_twice(backend: Backend) {
    let admin = Admin::start(backend, &[]).await;
    let (_, k) = admin.sign_up("ana@example.com").await;
    let mint = |key: String| {
        admin
            .http
            .post(format!("{}/v1/customers/me/keys", admin.url))
            .bearer_auth(key)
            .header("idempotency-key", "mint-1")
            .send()
    };
    let first = mint(k.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let minted: Value = first.json().await.unwrap();
    let k2 = minted["api_key"].as_str().unwrap().to_owned();
    // The same request with the same key: a refusal, not the new key again.
    let again = mint(k2.clone()).await.unwrap();
    let p = expect_problem(again, StatusCode::CONFLICT, "secret-not-replayed", Some("Idempotency-Key")).await;
    assert!(!p.to_string().contains(&k2), "{p}");
    // K is revoked: it replays nothing at all.
    let me = admin.call(Method::GET, "/v1/customers/me", Some(&k2), None, StatusCode::OK).await;
    let k_id = me["keys"].as_array().unwrap().iter().find(|x| x["id"] != minted["id"]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    admin.call(Method::DELETE, &format!("/v1/customers/me/keys/{k_id}"), Some(&k2), None, StatusCode::NO_CONTENT).await;
    let replay = mint(k.clone()).await.unwrap();
    assert!(replay.headers().get("idempotent-replayed").is_none());
    expect_problem(replay, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    // Nothing secret was kept: no key, no part of one, in the saved answers.
    let secret = secret_of(&k2);
    assert_eq!(admin.count(&format!("SELECT COUNT(*) FROM idempotency_keys WHERE body LIKE '%{secret}%'")).await, 0);
}

/// Credentials that fail store nothing, requests without valid credentials are
/// limited per client address, and the per-key limit is keyed on the customer,
/// so other spellings or more keys of it do not buy more requests.
async fn rate_limits_follow_the_principal_and_failures_write_nothing(backend: Backend) {
    let admin = Admin::start(backend, &["--rate-limit-per-key", "2", "--unauthenticated-rate-limit", "3"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    // Bogus bearer tokens with fresh Idempotency-Keys: 401 (then 429), no row.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let res = admin
            .http
            .post(format!("{}/v1/accounts", admin.url))
            .bearer_auth(format!("hw_{:032x}_{}", i, "A".repeat(43)))
            .header("idempotency-key", format!("k-{i}"))
            .json(&json!({"name": format!("bogus-{i}"), "origin_type": "hls", "offer": {"kind": "trial"}}))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 401 || *s == 429), "{statuses:?}");
    assert!(statuses.contains(&429), "requests without valid credentials are limited per address: {statuses:?}");
    assert_eq!(admin.count("SELECT COUNT(*) FROM idempotency_keys").await, 0, "nothing stored for a failed credential");
    assert_eq!(admin.count("SELECT COUNT(*) FROM accounts").await, 0);
    // Other spellings of the key are not the key: 401, never a bucket of their own.
    let (id, secret) = key.trim_start_matches("hw_").split_once('_').unwrap();
    for spelling in
        [format!("Bearer  {key}"), format!("Bearer hw_{}_{secret}", id.to_uppercase()), format!("bearer {key}")]
    {
        let res = admin
            .http
            .get(format!("{}/v1/customers/me", admin.url))
            .header("authorization", spelling.clone())
            .send()
            .await
            .unwrap();
        assert!(matches!(res.status().as_u16(), 401 | 429), "{spelling}: {}", res.status());
    }
    // Two keys of one customer share its bucket (2/s, bursts of 4).
    let k2 = admin.call(Method::POST, "/v1/customers/me/keys", Some(&key), None, StatusCode::CREATED).await["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut answered = Vec::new();
    for k in [&key, &k2].iter().cycle().take(12) {
        answered.push(admin.request(Method::GET, "/v1/customers/me", Some(k), None).await.status().as_u16());
    }
    let ok = answered.iter().filter(|s| **s == 200).count();
    assert!(ok <= 5, "one bucket for the customer, not one per key: {answered:?}");
    assert!(answered.contains(&429), "{answered:?}");
}

/// Quotas: the largest SLA per account (the type's, 1000 Mbit/s by default),
/// accounts and SLA Mbit/s per customer, storage per account; each refusal a
/// problem naming the quota that writes nothing; the operator raises them per
/// customer.
async fn quotas_refuse_what_is_past_them_and_the_operator_raises_them(backend: Backend) {
    let admin = Admin::start(backend, &["--quota-accounts", "1", "--quota-sla-mbps", "300"]).await;
    let op = admin.operator_token.clone();
    let (id, key) = admin.sign_up("ana@example.com").await;
    // 2000 Mbit/s from a brand-new customer: 21 nodes before; refused now.
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-big", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 2000}})),
        )
        .await;
    let p = expect_problem(res, StatusCode::CONFLICT, "quota-exceeded", Some("offer.mbps")).await;
    assert_eq!(p["quota"], "max_sla_mbps", "{p}");
    assert!(p["detail"].as_str().unwrap().contains("1000 Mbit/s"), "{p}");
    assert_eq!(admin.count("SELECT COUNT(*) FROM accounts").await + admin.count("SELECT COUNT(*) FROM pools").await, 0);
    // Within the largest SLA but past the customer's 300 in all.
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-sla", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 400}})),
        )
        .await;
    let p = expect_problem(res, StatusCode::CONFLICT, "quota-exceeded", Some("offer.mbps")).await;
    assert_eq!(p["quota"], "max_total_sla_mbps", "{p}");
    create_account(
        &admin,
        &key,
        json!({"name": "ana-sla", "origin_type": "hls", "offer": {"kind": "sla", "mbps": 300}}),
    )
    .await;
    // One account at most.
    let res = admin
        .request(
            Method::POST,
            "/v1/accounts",
            Some(&key),
            Some(json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "trial"}})),
        )
        .await;
    assert_eq!(expect_problem(res, StatusCode::CONFLICT, "quota-exceeded", None).await["quota"], "max_accounts");
    let res = admin
        .request(
            Method::PATCH,
            "/v1/accounts/ana-sla",
            Some(&key),
            Some(json!({"offer": {"kind": "sla", "mbps": 400}})),
        )
        .await;
    assert_eq!(
        expect_problem(res, StatusCode::CONFLICT, "quota-exceeded", Some("offer.mbps")).await["quota"],
        "max_total_sla_mbps"
    );
    let me = admin.call(Method::GET, "/v1/customers/me", Some(&key), None, StatusCode::OK).await;
    assert_eq!(me["quotas"]["used"], json!({"accounts": 1, "total_sla_mbps": 300, "storage_bytes": 0}), "{me}");
    assert_eq!(
        (me["quotas"]["max_accounts"].as_i64(), me["quotas"]["max_total_sla_mbps"].as_i64()),
        (Some(1), Some(300))
    );

    // Only the operator sets quotas, and only sensible ones.
    let path = format!("/v1/customers/{id}");
    let raise = json!({"quotas": {"max_accounts": 5, "max_total_sla_mbps": 5000, "max_sla_mbps": 2000, "max_storage_bytes": 1000}});
    let res = admin.request(Method::PATCH, &path, Some(&key), Some(raise.clone())).await;
    expect_problem(res, StatusCode::FORBIDDEN, "forbidden", None).await;
    let res = admin.request(Method::PATCH, &path, Some(&op), Some(json!({"quotas": {"max_sla_mbps": 0}}))).await;
    expect_problem(res, StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("quotas.max_sla_mbps")).await;
    let view = admin.call(Method::PATCH, &path, Some(&op), Some(raise), StatusCode::OK).await;
    assert_eq!(view["quotas"]["max_sla_mbps"], 2000, "{view}");
    assert_eq!(view["quotas"]["overrides"]["max_accounts"], 5, "{view}");
    assert!(admin.has_event("customer.quotas", &format!("customer:{id}")).await);
    // Now allowed: a second account, and an SLA past the type's 1000.
    create_account(&admin, &key, json!({"name": "ana-dash", "origin_type": "dash", "offer": {"kind": "trial"}})).await;
    admin
        .call(
            Method::PATCH,
            "/v1/accounts/ana-sla",
            Some(&key),
            Some(json!({"offer": {"kind": "sla", "mbps": 2000}})),
            StatusCode::ACCEPTED,
        )
        .await;
    let listed = admin.call(Method::GET, "/v1/customers?limit=10", Some(&op), None, StatusCode::OK).await;
    assert!(listed["items"].as_array().unwrap().iter().any(|c| c["id"] == id.as_str()), "{listed}");

    // Storage: 1000 bytes for the account; a replaced file counts once.
    let put = |file: &str, n: usize| {
        admin
            .http
            .put(format!("{}/v1/accounts/ana-dash/assets/vod/{file}", admin.url))
            .bearer_auth(&key)
            .body(vec![b'x'; n])
            .send()
    };
    assert_eq!(put("a.ts", 600).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(put("a.ts", 600).await.unwrap().status(), StatusCode::CREATED, "a replaced file counts once");
    let res = put("b.ts", 600).await.unwrap();
    let p = expect_problem(res, StatusCode::CONFLICT, "quota-exceeded", None).await;
    assert_eq!(p["quota"], "max_storage_bytes", "{p}");
    assert_eq!(put("b.ts", 400).await.unwrap().status(), StatusCode::CREATED);
    // A file used as a folder: a conflict naming the path, never a 500.
    admin.call(Method::DELETE, "/v1/accounts/ana-dash/assets/vod", Some(&key), None, StatusCode::NO_CONTENT).await;
    assert_eq!(put("master.m3u8", 10).await.unwrap().status(), StatusCode::CREATED);
    for nested in ["master.m3u8/child.ts", "master.m3u8/x/child.ts"] {
        let p = expect_problem(put(nested, 10).await.unwrap(), StatusCode::CONFLICT, "conflict", Some("path")).await;
        assert!(p["detail"].as_str().unwrap().contains("master.m3u8"), "{p}");
    }
    let me = admin.call(Method::GET, "/v1/customers/me", Some(&key), None, StatusCode::OK).await;
    assert_eq!(me["quotas"]["used"]["storage_bytes"], 10, "{me}");
}

/// After a run that makes every kind of secret (sign-up, a minted key, a node
/// token, each with an Idempotency-Key so their answers are saved), none of them
/// is anywhere in the database: not in a row, not in SQLite's files at all. The
/// database's files and the data directory are the owner's only.
async fn no_secret_is_kept_in_the_database(backend: Backend) {
    use std::os::unix::fs::PermissionsExt;
    let admin = Admin::start(backend, &[]).await;
    let op = admin.operator_token.clone();
    let post = |path: &str, token: Option<String>, body: Value, key: &str| {
        let mut req = admin.http.post(format!("{}{path}", admin.url)).header("idempotency-key", key).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let signed: Value = post("/v1/customers", None, json!({"name": "Ana", "email": "ana@example.com"}), "s-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = signed["api_key"].as_str().unwrap().to_owned();
    let minted: Value =
        post("/v1/customers/me/keys", Some(key.clone()), json!({}), "m-1").await.unwrap().json().await.unwrap();
    let key2 = minted["api_key"].as_str().unwrap().to_owned();
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "trial"}})).await;
    let node: Value =
        post("/v1/nodes", Some(op.clone()), json!({"pool_id": pool}), "n-1").await.unwrap().json().await.unwrap();
    let token = node["token"].as_str().unwrap().to_owned();
    let join = node["join_token"].as_str().unwrap().to_owned();
    // A request each, so the keys are used (and looked up) too.
    admin.call(Method::GET, "/v1/customers/me", Some(&key2), None, StatusCode::OK).await;
    assert_eq!(admin.count("SELECT COUNT(*) FROM idempotency_keys").await, 3);
    let mut secrets: Vec<String> =
        [&key, &key2, &token, &join, &op].iter().flat_map(|s| [s.to_string(), secret_of(s).to_owned()]).collect();
    // The node CA's key is sealed under the master key: no PEM key in the store.
    assert_eq!(admin.count("SELECT COUNT(*) FROM node_cas WHERE key_sealed LIKE 'v1.%'").await, 1);
    secrets.push("PRIVATE KEY".into());
    if admin.db_url.starts_with("postgres") {
        let tables = db_tables(&admin).await;
        assert!(tables.len() >= 15, "{tables:?}");
        let any: Vec<String> = secrets.iter().map(|s| format!("r::text LIKE '%{s}%'")).collect();
        for t in &tables {
            let hits = admin.count(&format!("SELECT COUNT(*) FROM {t} r WHERE {}", any.join(" OR "))).await;
            assert_eq!(hits, 0, "a secret in {t}");
        }
    } else {
        let mut files = 0;
        for e in std::fs::read_dir(admin.data_dir.path()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !name.starts_with("headwater.db") {
                continue;
            }
            files += 1;
            let bytes = std::fs::read(e.path()).unwrap();
            for secret in &secrets {
                assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "a secret in {name}");
            }
            let mode = e.metadata().unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{name} is {mode:o}");
        }
        assert!(files >= 2, "the database and its WAL");
    }
}

/// The tables of the test's PostgreSQL database.
async fn db_tables(admin: &Admin) -> Vec<String> {
    let n = admin.count("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public'").await;
    let mut out = Vec::new();
    for i in 0..n {
        let t = admin
            .text(&format!(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name OFFSET {i} LIMIT 1"
            ))
            .await
            .unwrap();
        out.push(t);
    }
    out
}

/// Sockets that never send a byte are closed at the header-read timeout (20 of
/// them were still open after 130 s), and uploads are rate limited per customer.
#[tokio::test]
async fn silent_sockets_are_closed_and_uploads_are_rate_limited() {
    let admin = Admin::start(Backend::Sqlite, &["--header-read-timeout-ms", "300", "--upload-rate-limit", "1"]).await;
    let addr = admin.url.trim_start_matches("http://").to_owned();
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    for s in &mut silent {
        use tokio::io::AsyncReadExt;
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a silent socket was still open after 10 s");
    }
    let (_, key) = admin.sign_up("ana@example.com").await;
    admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "trial"}})).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let url = format!("{}/v1/accounts/ana-vod/assets/vod/f{i}.ts", admin.url);
        statuses.push(admin.http.put(url).bearer_auth(&key).body("x").send().await.unwrap().status().as_u16());
    }
    // 1 a second, bursts of 2.
    assert_eq!(&statuses[..2], [201, 201], "{statuses:?}");
    assert!(statuses.contains(&429), "{statuses:?}");
}

e2e_on_both_backends!(
    no_secret_is_kept_in_the_database,
    quotas_refuse_what_is_past_them_and_the_operator_raises_them,
    replays_follow_authentication_and_never_show_a_secret_twice,
    rate_limits_follow_the_principal_and_failures_write_nothing,
    usage_reports_count_once_and_within_what_a_node_can_send,
    usage_rolls_up_per_hour_and_day,
    operations_and_accounts_are_listed_a_page_at_a_time,
    signup_and_accounts_of_each_offer,
    every_error_is_a_problem_and_writes_nothing,
    idempotent_replay,
    customers_are_isolated_and_keys_revocable,
    everything_survives_a_restart,
    signups_are_rate_limited_per_ip,
);

#[tokio::test]
async fn per_key_rate_limit_answers_429_with_retry_after() {
    let admin = Admin::start(Backend::Sqlite, &["--rate-limit-per-key", "1"]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let mut limited = None;
    for _ in 0..10 {
        let res = admin.request(Method::GET, "/v1/accounts", Some(&key), None).await;
        if res.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(res);
            break;
        }
        assert_eq!(res.status(), StatusCode::OK);
    }
    let res = limited.expect("a burst of 10 exceeds 1/s with a burst of 2");
    assert!(res.headers().get("retry-after").is_some());
    expect_problem(res, StatusCode::TOO_MANY_REQUESTS, "rate-limited", None).await;
}

#[tokio::test]
async fn openapi_metrics_and_health() {
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let api = admin.call(Method::GET, "/openapi.json", None, None, StatusCode::OK).await;
    let paths = api["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/v1/customers", &["post"][..]),
        ("/v1/customers/me", &["get"]),
        ("/v1/customers/me/keys", &["post"]),
        ("/v1/customers/me/keys/{id}", &["delete"]),
        ("/v1/accounts", &["get", "post"]),
        ("/v1/accounts/{name}", &["get", "patch", "delete"]),
        ("/v1/accounts/{name}/deactivate", &["post"]),
        ("/v1/accounts/{name}/reactivate", &["post"]),
        ("/v1/operations/{id}", &["get"]),
        ("/v1/origin-types", &["get", "post"]),
        ("/v1/origin-types/{type}", &["get", "patch"]),
        ("/v1/origin-types/{type}/images", &["post"]),
        ("/v1/pools", &["get"]),
        ("/v1/nodes", &["get"]),
        ("/v1/allocations", &["get"]),
        ("/v1/events", &["get"]),
        ("/metrics", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
    ] {
        for m in methods {
            assert!(paths.get(path).and_then(|p| p.get(*m)).is_some(), "openapi.json lacks {m} {path}");
        }
    }
    let schemas = api["components"]["schemas"].as_object().unwrap();
    for s in [
        "Account",
        "AccountAccepted",
        "CreateAccount",
        "Operation",
        "Problem",
        "OriginType",
        "Pool",
        "Node",
        "Allocation",
        "Event",
        "CustomerCreated",
    ] {
        assert!(schemas.contains_key(s), "openapi.json lacks schema {s}");
    }
    let ready = admin.request(Method::GET, "/readyz", None, None).await;
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(ready.text().await.unwrap(), "ready\n");
    let (_, key) = admin.sign_up("ana@example.com").await;
    // /metrics names every account: the metrics token (or the operator's) only.
    let res = admin.request(Method::GET, "/metrics", None, None).await;
    expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let res = admin.request(Method::GET, "/metrics", Some(&key), None).await;
    expect_problem(res, StatusCode::UNAUTHORIZED, "unauthorized", None).await;
    let by_operator = admin.request(Method::GET, "/metrics", Some(&admin.operator_token), None).await;
    assert_eq!(by_operator.status(), StatusCode::OK);
    let metrics = support::metrics(&admin.url).await;
    assert!(
        metrics.lines().any(|l| l.starts_with("headwater_admin_http_requests_total{")
            && l.contains("route=\"/v1/customers\"")
            && l.contains("status=\"201\"")),
        "{metrics}"
    );
}
