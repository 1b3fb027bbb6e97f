//! The S3-compatible content store: admin uploads into a bucket and a node serves
//! from it, against a real S3 server (moto, installed by scripts/test).

mod support;

use reqwest::{Method, StatusCode};
use serde_json::json;
use support::{Admin, Backend, Origin};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_in_the_bucket_and_nodes_serve_from_it() {
    let Some(s3) = support::moto().await else { return };
    s3.bucket("headwater-test").await;
    let env = support::s3_env(&s3.url);
    let admin = Admin::start_with(Backend::Sqlite, &[], Some("s3://headwater-test/tenant-a".into()), env).await;
    let (_, key) = admin.sign_up("ana@example.com").await;
    let pool = admin.account(&key, json!({"name": "ana-vod", "origin_type": "hls", "offer": {"kind": "payg"}})).await;
    admin.upload_demo(&key, "ana-vod", "demo").await;

    // The objects are in the bucket, under the prefix (listed through S3 itself).
    let listing = reqwest::get(format!("{}/headwater-test?list-type=2&prefix=tenant-a/ana-vod/demo/hls/", s3.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(listing.contains("tenant-a/ana-vod/demo/hls/720p/seg_002.ts"), "{listing}");
    let probe = reqwest::get(format!("{}/headwater-test?list-type=2&prefix=tenant-a/_probe/", s3.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        probe.contains("tenant-a/_probe/hls/360p/index.m3u8"),
        "the test content is seeded into the bucket: {probe}"
    );
    let list = admin.call(Method::GET, "/v1/accounts/ana-vod/assets", Some(&key), None, StatusCode::OK).await;
    assert_eq!(list["items"][0]["files"].as_u64(), Some(support::demo_files().len() as u64));

    let (id, token) = admin.register_node(&pool).await;
    // A 1 MiB cache keeps files up to 128 KiB: playlists are served from memory,
    // the 720p segment (317 KiB) is streamed from the bucket for every request.
    let origin = Origin::start(&admin, &id, &token, 1000, &["--cache-mib", "1"]).await;
    origin.wait_state(&admin, "ready").await;
    let http = reqwest::Client::new();
    for file in ["hls/master.m3u8", "hls/720p/seg_001.ts", "dash/seg-1-002.m4s"] {
        let got = http.get(format!("{}/ana-vod/demo/{file}", origin.url)).send().await.unwrap().bytes().await.unwrap();
        assert_eq!(got, std::fs::read(format!("{DEMO}/{file}")).unwrap(), "{file}");
    }
    let res = http
        .get(format!("{}/ana-vod/demo/hls/720p/seg_001.ts", origin.url))
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(res.bytes().await.unwrap(), std::fs::read(format!("{DEMO}/hls/720p/seg_001.ts")).unwrap()[10..20]);
}
