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

/// The audit trail followed as it is written: `GET /v1/events/watch` sends
/// each event once, oldest first, with its id as the SSE id, resumes after
/// `Last-Event-ID`, and `headwater events --follow` prints from it.
#[tokio::test]
async fn the_audit_trail_is_followed_as_server_sent_events() {
    use eventsource_stream::Eventsource;
    use futures_util::StreamExt;
    use serde_json::{Value, json};
    use tokio::io::AsyncBufReadExt;
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let op = admin.operator_token.clone();
    let watch = format!("{}/v1/events/watch", admin.url);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);

    // Opened before the change: only what is written from now on.
    let res = admin.http.get(&watch).bearer_auth(&op).send().await.unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let before: Value =
        admin.call(reqwest::Method::GET, "/v1/events?limit=1", Some(&op), None, reqwest::StatusCode::OK).await;
    let newest_before = before["items"][0]["id"].as_i64().unwrap_or(0);
    let mut stream = res.bytes_stream().eventsource();
    let body = json!({"name": "ana-feed", "origin_type": "hls", "offer": {"kind": "payg"}});
    let created =
        admin.call(reqwest::Method::POST, "/v1/accounts", Some(&key), Some(body), reqwest::StatusCode::ACCEPTED).await;
    let subject = format!("account:{}", created["account"]["id"].as_str().unwrap());
    let mut seen: Vec<(String, Value)> = Vec::new();
    while !seen.iter().any(|(_, e)| e["action"] == "account.mapped" && e["subject"] == subject) {
        let event =
            tokio::time::timeout_at(deadline, stream.next()).await.expect("the account is mapped").unwrap().unwrap();
        assert_eq!(event.event, "event");
        seen.push((event.id, serde_json::from_str(&event.data).unwrap()));
    }
    for (sse_id, e) in &seen {
        assert_eq!(sse_id, &e["id"].to_string(), "the SSE id is the event's id");
    }
    let ids: Vec<i64> = seen.iter().map(|(_, e)| e["id"].as_i64().unwrap()).collect();
    assert!(ids[0] > newest_before && ids.windows(2).all(|w| w[0] < w[1]), "oldest first, once each: {ids:?}");
    assert!(seen.iter().any(|(_, e)| e["action"] == "account.created" && e["subject"] == subject), "{seen:?}");
    // What was streamed is the durable trail, in the same order.
    let listed =
        admin.call(reqwest::Method::GET, "/v1/events?limit=500", Some(&op), None, reqwest::StatusCode::OK).await;
    let mut trail: Vec<Value> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["id"].as_i64().unwrap() > newest_before)
        .cloned()
        .collect();
    trail.reverse();
    let streamed: Vec<Value> = seen.iter().map(|(_, e)| e.clone()).collect();
    assert_eq!(streamed, trail[..streamed.len()]);

    // Reconnecting with Last-Event-ID (it wins over `?after=`): the rest, none twice.
    let res = admin
        .http
        .get(format!("{watch}?after=0"))
        .bearer_auth(&op)
        .header("Last-Event-ID", ids[0].to_string())
        .send()
        .await
        .unwrap();
    let mut resumed = res.bytes_stream().eventsource();
    for expected in &streamed[1..] {
        let event = tokio::time::timeout_at(deadline, resumed.next()).await.expect("resumed").unwrap().unwrap();
        assert_eq!(&serde_json::from_str::<Value>(&event.data).unwrap(), expected);
    }

    // Not the operator, or a bad id: a problem, not a stream.
    let res = admin.http.get(&watch).bearer_auth(&key).send().await.unwrap();
    support::expect_problem(res, reqwest::StatusCode::FORBIDDEN, "forbidden", None).await;
    let res = admin.http.get(&watch).bearer_auth(&op).header("Last-Event-ID", "tomorrow").send().await.unwrap();
    support::expect_problem(res, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("Last-Event-ID"))
        .await;
    let res = admin.http.get(format!("{watch}?after=-1")).bearer_auth(&op).send().await.unwrap();
    support::expect_problem(res, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", Some("after")).await;

    // The CLI: the newest events oldest first, then each new one as it is written.
    let env = [("HEADWATER_OPERATOR_TOKEN", op.as_str())];
    let out = cli(&admin, &env, &["events", "--limit", "2", "--json"]).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed: Vec<Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut newest: Vec<Value> = listed["items"].as_array().unwrap()[..2].to_vec();
    newest.reverse();
    assert_eq!(printed, newest);
    let mut follow = tokio::process::Command::new(BIN);
    follow
        .args(["events", "--follow", "--limit", "1"])
        .env("HEADWATER_ADMIN_URL", &admin.url)
        .env("HEADWATER_OPERATOR_TOKEN", &op)
        .env_remove("HEADWATER_API_KEY")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = follow.spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("the newest event").unwrap().unwrap();
    let id_of =
        |line: &str| line.split("  ").next().and_then(|id| id.parse::<i64>().ok()).unwrap_or_else(|| panic!("{line}"));
    let mut last = id_of(&first);
    assert!(last >= newest[1]["id"].as_i64().unwrap(), "{first}");
    admin.wait_operation(created["operation"]["id"].as_str().unwrap(), &key).await;
    let res = admin
        .http
        .post(format!("{}/v1/accounts/ana-feed/deactivate", admin.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), reqwest::StatusCode::ACCEPTED);
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line()).await.expect("a new event").unwrap().unwrap();
        assert!(id_of(&line) > last, "each event once, oldest first: {line}");
        last = id_of(&line);
        let cells: Vec<&str> = line.split("  ").collect();
        if cells[3..5] == ["account.deactivate", subject.as_str()] {
            break;
        }
    }
    child.kill().await.unwrap();
}

/// `headwater usage`: the rollup as a table, and the API's CSV as it is.
#[tokio::test]
async fn usage_from_the_cli() {
    use serde_json::json;
    let admin = Admin::start(Backend::Sqlite, &[]).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    let (node, token) = admin.register_node(&pool).await;
    // 2026-11-02T08:07:00Z: 7.5 MB, 1 Mbit/s for that minute.
    let report = json!({"id": uuid::Uuid::now_v7(), "windows": [
        {"account": "ana-vod", "window_start": 1_793_606_820_000i64, "bytes": 7_500_000, "requests": 4}]});
    admin
        .call(
            reqwest::Method::POST,
            &format!("/v1/nodes/{node}/usage"),
            Some(&token),
            Some(report),
            reqwest::StatusCode::OK,
        )
        .await;
    let env = [("HEADWATER_API_KEY", key.as_str())];
    let range = ["--from", "2026-11-02T07:00:00Z", "--to", "2026-11-02T09:00:00Z"];
    let out = cli(&admin, &env, &[&["usage", "ana-vod"][..], &range].concat()).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let rows: Vec<Vec<&str>> = stdout.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows,
        [
            vec!["2026-11-02T07:00:00Z", "0", "0", "0.0", "0.0"],
            vec!["2026-11-02T08:00:00Z", "7500000", "4", "1.0", "0.2"],
            // Of 24 samples, the 23rd smallest is idle.
            vec!["total", "7500000", "4", "1.0", "0.0"],
        ],
        "{stdout}"
    );
    let out = cli(&admin, &env, &[&["usage", "ana-vod", "--granularity", "day", "--csv"][..], &range].concat()).await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let res = admin
        .request(
            reqwest::Method::GET,
            "/v1/accounts/ana-vod/usage?granularity=day&from=2026-11-02T07:00:00Z&to=2026-11-02T09:00:00Z&format=csv",
            Some(&key),
            None,
        )
        .await;
    let csv = res.text().await.unwrap();
    assert_eq!(text(&out.stdout), csv);
    assert_eq!(csv.lines().nth(1), Some("2026-11-02T00:00:00Z,7500000,4,1.0,0.0"), "{csv}");
    // A wrong range prints the problem and exits 1.
    let out = cli(&admin, &env, &["usage", "ana-vod", "--from", "yesterday"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("(field: from)"), "{}", text(&out.stderr));
}
