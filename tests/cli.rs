//! The command-line client against a real admin process.

mod support;

use std::process::Output;

use support::{Admin, BIN, Backend};

async fn cli(admin: &Admin, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env("HEADWATER_ADMIN_URL", &admin.url)
        .env_remove("HEADWATER_API_KEY")
        .env_remove("HEADWATER_OPERATOR_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().await.expect("run headwater")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn customers_accounts_operations_and_origin_types_from_the_cli() {
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let out = cli(&admin, &[], &["customers", "create", "--name", "Ana", "--email", "ana@example.com", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json prints JSON");
    let key = created["api_key"].as_str().expect("api key").to_owned();
    let env = [("HEADWATER_API_KEY", key.as_str())];

    let out = cli(
        &admin,
        &env,
        &["accounts", "create", "ana-vod", "--type", "hls", "--offer", "sla", "--mbps", "200", "--wait"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("succeeded"), "--wait waits for the operation: {stdout}");
    assert!(stdout.contains("allocation_recorded"), "{stdout}");

    let out = cli(&admin, &env, &["accounts", "list"]).await;
    let stdout = text(&out.stdout);
    let header = stdout.lines().next().unwrap_or_default();
    assert!(header.starts_with("NAME") && header.contains("LOCATOR"), "{stdout}");
    let row = stdout.lines().find(|l| l.starts_with("ana-vod")).unwrap_or_else(|| panic!("{stdout}"));
    assert!(row.contains("sla 200 Mbit/s") && row.contains("active") && row.contains("dedicated 0/3"), "{row}");

    // Upload a packaged folder; the progress bar is drawn on a terminal only.
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo/hls");
    let out = cli(&admin, &env, &["assets", "upload", "ana-vod", "trailer", dir]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("uploaded 9 files"), "{stdout}");
    let out = cli(&admin, &env, &["assets", "list", "ana-vod"]).await;
    let stdout = text(&out.stdout);
    let row = stdout.lines().find(|l| l.starts_with("trailer")).unwrap_or_else(|| panic!("{stdout}"));
    let total: u64 = std::fs::read_dir(format!("{dir}/720p"))
        .unwrap()
        .chain(std::fs::read_dir(format!("{dir}/360p")).unwrap())
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum::<u64>()
        + std::fs::metadata(format!("{dir}/master.m3u8")).unwrap().len();
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), ["trailer", "9", &total.to_string()]);

    // A problem prints readably and exits 1.
    let out = cli(&admin, &env, &["accounts", "create", "Bad_Name"]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("error 422: Invalid value") && stderr.contains("(field: name)"), "{stderr}");

    // The operator's commands use the operator token.
    let op = [("HEADWATER_OPERATOR_TOKEN", admin.operator_token.as_str())];
    let out = cli(&admin, &op, &["origin-types", "list"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.lines().any(|l| l.starts_with("hls ") && l.contains("100")), "{stdout}");
    let out = cli(
        &admin,
        &op,
        &["origin-types", "add-image", "hls", "--version", "2", "--command", "headwater", "--arg", "origin"],
    )
    .await;
    let stdout = text(&out.stdout);
    assert!(out.status.success() && stdout.contains("upgrade"), "{stdout}{}", text(&out.stderr));
    let id = stdout.split_whitespace().nth(1).expect("operation id").to_owned();
    let out = cli(&admin, &op, &["operations", "wait", &id]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("image_current"));

    // Without a reachable admin: exit 2.
    let mut gone = tokio::process::Command::new(BIN);
    gone.args(["accounts", "list"]).env("HEADWATER_ADMIN_URL", "http://127.0.0.1:9").env("HEADWATER_API_KEY", &key);
    assert_eq!(gone.output().await.unwrap().status.code(), Some(2));
}

/// Flags that would break a node are refused when it starts, with the reason,
/// not met later as a panic (a capacity of 0 reached a division by zero in the
/// shaper).
#[tokio::test]
async fn an_origin_node_refuses_impossible_flags() {
    for (flag, value) in [("--capacity-mbps", "0"), ("--max-connections", "0"), ("--idle-timeout-secs", "0")] {
        let out = tokio::process::Command::new(BIN)
            .args(["origin", "--node-id", &uuid::Uuid::now_v7().to_string(), "--node-token", "t", flag, value])
            .output()
            .await
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{flag} {value}");
        let err = text(&out.stderr);
        assert!(err.contains(flag) && err.contains("not in 1.."), "{flag}: {err}");
    }
}

/// An operation followed as it goes: `GET /v1/operations/{id}/watch` streams
/// it (Server-Sent Events) until it ends, and `headwater operations wait`
/// prints each step from that stream.
#[tokio::test]
async fn an_operation_is_watched_as_server_sent_events() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let body = serde_json::json!({"name": "ana-live", "origin_type": "hls", "offer": {"kind": "payg"}});
    let created =
        admin.call(reqwest::Method::POST, "/v1/accounts", Some(&key), Some(body), reqwest::StatusCode::ACCEPTED).await;
    let id = created["operation"]["id"].as_str().unwrap().to_owned();
    let watch = format!("{}/v1/operations/{id}/watch", admin.url);
    let res = admin.http.get(&watch).bearer_auth(&key).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let mut events = res.bytes_stream().eventsource();
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    while let Some(event) = tokio::time::timeout_at(deadline, events.next()).await.expect("the stream ends") {
        let event = event.unwrap();
        assert_eq!(event.event, "operation");
        seen.push(serde_json::from_str(&event.data).unwrap());
    }
    let last = seen.last().expect("at least the operation as it is");
    assert_eq!(last["state"], "succeeded", "the stream ends with the operation: {seen:?}");
    assert!(seen[..seen.len() - 1].iter().all(|op| op["state"] != "succeeded"), "it ends there: {seen:?}");
    let steps = |op: &serde_json::Value| -> Vec<String> {
        op["steps"].as_array().unwrap().iter().map(|s| s["step"].as_str().unwrap().to_owned()).collect()
    };
    for pair in seen.windows(2) {
        let (before, after) = (steps(&pair[0]), steps(&pair[1]));
        assert!(after.starts_with(&before), "steps only ever finish: {before:?} then {after:?}");
        assert_ne!(pair[0], pair[1], "an event is sent for a change only");
    }
    assert!(steps(last).contains(&"allocation_recorded".to_owned()), "{last}");

    // Another customer's operation, or none: a problem, not a stream.
    let (_, other) = admin.sign_up("bo@example.com").await;
    let res = admin.http.get(&watch).bearer_auth(&other).send().await.unwrap();
    support::expect_problem(res, reqwest::StatusCode::NOT_FOUND, "not-found", None).await;
    let none = format!("{}/v1/operations/{}/watch", admin.url, uuid::Uuid::now_v7());
    let res = admin.http.get(&none).bearer_auth(&key).send().await.unwrap();
    support::expect_problem(res, reqwest::StatusCode::NOT_FOUND, "not-found", None).await;

    // The CLI prints each step, then how it ended.
    let env = [("HEADWATER_API_KEY", key.as_str())];
    let out = cli(&admin, &env, &["operations", "wait", &id]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with(&format!("operation {id}")), "{stdout}");
    let printed: Vec<&str> = lines[1..lines.len() - 1].iter().filter_map(|l| l.split_whitespace().nth(1)).collect();
    assert_eq!(printed, steps(last), "{stdout}");
    assert_eq!(lines.last().unwrap().split_whitespace().collect::<Vec<_>>(), ["operation", id.as_str(), "succeeded"]);
}
