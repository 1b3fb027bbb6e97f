//! `headwater loadtest` on every shipped scenario, in a short form (12 s), through
//! the real binary: each must pass, with the figures its scenario is about in the
//! JSON report, and the deliberately impossible one must fail. The scenarios run one
//! after another, so they do not compete with each other for the machine.

mod support;

use serde_json::Value;
use support::BIN;

const SCENARIOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/loadtest/scenarios");

/// Runs a scenario for 12 s; its exit code and JSON report.
async fn run(name: &str) -> (i32, Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let plot = dir.path().join("plot.svg");
    let out = tokio::process::Command::new(BIN)
        .args(["loadtest", &format!("{SCENARIOS}/{name}.toml"), "--duration-secs", "12", "--quiet"])
        .arg("--report")
        .arg(&report)
        .arg("--plot")
        .arg(&plot)
        .output()
        .await
        .expect("run headwater loadtest");
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("{name}:{table}{}", String::from_utf8_lossy(&out.stderr));
    let code = out.status.code().expect("exit code");
    assert!(code == 0 || code == 1, "{name} could not run (exit {code})");
    let svg = std::fs::read_to_string(&plot).expect("a plot");
    assert!(svg.starts_with("<svg") && svg.contains(name), "{name}: not a plot of the run");
    (code, serde_json::from_slice(&std::fs::read(&report).expect("a report")).unwrap())
}

fn account<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["accounts"].as_array().unwrap().iter().find(|a| a["name"] == name).unwrap_or_else(|| panic!("{name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shipped_scenarios_hold_and_the_impossible_one_fails() {
    // One SLA account beside ten greedy payg accounts.
    let (code, r) = run("sla-isolation").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    let sla = account(&r, "sla");
    assert_eq!(sla["sla"][0]["held"], true, "{sla}");
    assert!(sla["sla"][0]["worst_window_mbps"].as_f64().unwrap() >= 198.0);
    assert!(r["payg_jain_index"].as_f64().unwrap() >= 0.95, "{}", r["payg_jain_index"]);
    assert_eq!(r["accounts"].as_array().unwrap().len(), 11);
    // The payg cap (10 Mbit/s) holds per account across the shared pool's nodes
    // (each enforces its share; the router spreads each account evenly over them).
    for a in r["accounts"].as_array().unwrap().iter().filter(|a| a["offer"] == "payg") {
        let mean = a["mean_mbps"].as_f64().unwrap();
        assert!((8.0..=11.0).contains(&mean), "{}: {mean:.1} Mbit/s against a 10 Mbit/s cap", a["name"]);
    }

    // A node killed under the players: nothing failed, nobody rebuffered.
    let (code, r) = run("failover").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    assert!(r["events"][0][1].as_str().unwrap().starts_with("kill -9 a node of sla"), "{}", r["events"]);
    let sla = account(&r, "sla");
    assert_eq!((sla["errors"].as_u64(), sla["rebuffers"].as_u64()), (Some(0), Some(0)), "{sla}");

    // A new image rolled out under the players.
    let (code, r) = run("upgrade").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    let up = &r["upgrades"][0];
    assert_eq!((up["version"].as_str(), up["outcome"].as_str()), (Some("2.0.0"), Some("succeeded")), "{up}");
    assert!(up["pools_total"].as_u64().is_some_and(|n| n >= 2) && up["pools_upgraded"] == up["pools_total"], "{up}");
    assert!(up["seconds"].as_f64().is_some_and(|s| s > 0.0), "{up}");
    for a in r["accounts"].as_array().unwrap() {
        assert_eq!(a["errors"], 0, "{a}");
        assert!(a["requests"].as_u64().unwrap() > 10, "{a}");
    }

    // payg → sla 200: the bandwidth rises to the SLA.
    let (code, r) = run("offer-change").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    let grower = account(&r, "grower");
    let per_second: Vec<f64> =
        grower["mbps_per_second"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    assert!(per_second[2] < 30.0, "capped as payg before the change: {per_second:?}");
    assert!(per_second[9..].iter().all(|v| *v >= 190.0), "at the SLA after it: {per_second:?}");

    // Sign-ups while others stream: sign-up → first segment reported.
    let (code, r) = run("scale").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    let trial = account(&r, "trial-1");
    assert!(trial["first_segment_ms_p50"].as_f64().unwrap() > 0.0, "{trial}");
    let (p50, p99) =
        (r["signup_to_first_segment_ms_p50"].as_f64().unwrap(), r["signup_to_first_segment_ms_p99"].as_f64().unwrap());
    assert!(p50 > 0.0 && p99 >= p50, "{p50} {p99}");
    assert!(trial["requests"].as_u64().unwrap() > 1, "{trial}");

    // Admin killed, then Redis stopped: the data plane goes on serving.
    let (code, r) = run("control-plane-outage").await;
    assert_eq!(code, 0, "{}", r["failures"]);
    assert_eq!(r["events"].as_array().unwrap().len(), 2, "{}", r["events"]);
    for a in r["accounts"].as_array().unwrap() {
        assert_eq!((a["errors"].as_u64(), a["rebuffers"].as_u64()), (Some(0), Some(0)), "{a}");
    }

    // An SLA the nodes cannot carry: exit 1, the miss named.
    let (code, r) = run("impossible").await;
    assert_eq!(code, 1);
    assert_eq!(r["passed"], false);
    assert!(r["failures"][0].as_str().unwrap().contains("SLA 300 Mbit/s missed"), "{}", r["failures"]);
}
