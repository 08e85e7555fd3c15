//! Replicas in step (`datafile.fanout`): two daemons sharing the test Redis
//! (`BUCKETD_TEST_REDIS_URL`). An admin push or a webhook on one, and the other serves the new
//! revision within a second although its own poll is a minute away; with Redis unreachable
//! both start, serve and keep polling.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::cdn::Cdn;
use common::{all_to, spawn_app, TestApp};
use hmac::{Hmac, Mac};
use std::time::{Duration, Instant};

fn redis_url() -> String {
    std::env::var("BUCKETD_TEST_REDIS_URL").expect("BUCKETD_TEST_REDIS_URL (the test Redis)")
}

async fn replica(name: &str, cdn: &Cdn, fanout: &str, channel: &str, poll: &str) -> TestApp {
    spawn_app(
        name,
        &[
            ("BUCKETD__DATAFILE__SDK_KEY", "FanKey".into()),
            (
                "BUCKETD__DATAFILE__URL_TEMPLATE",
                cdn.url("/datafiles/{sdk_key}.json"),
            ),
            ("BUCKETD__DATAFILE__POLL_INTERVAL", poll.into()),
            ("BUCKETD__DATAFILE__WEBHOOK_SECRET", "hooksecret".into()),
            ("BUCKETD__DATAFILE__FANOUT", fanout.into()),
            ("BUCKETD__DATAFILE__FANOUT_CHANNEL", channel.into()),
            ("BUCKETD__ADMIN__TOKEN", "admintok".into()),
        ],
    )
    .await
}

async fn variation(app: &TestApp) -> String {
    // A new visitor each time: sticky profiles would keep the first variation.
    let path = format!("/bucketer?e=exp&u={}", uuid::Uuid::new_v4());
    let (status, body) = app.get_json(&path).await;
    assert_eq!(status, 200, "{body}");
    body["variation_key"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until `app` serves `want`; how long it took.
async fn until_serves(app: &TestApp, want: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if variation(app).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{} did not serve {want} within {within:?}",
            app.base
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn channel(tag: &str) -> String {
    format!("bucketd-test:{tag}:{}", std::process::id())
}

#[tokio::test]
async fn a_push_or_webhook_on_one_replica_reaches_the_other_within_a_second() {
    let cdn = Cdn::start().await;
    cdn.put("/datafiles/FanKey.json", &all_to("a", "1").to_string());
    let ch = channel("sync");
    let one = replica("fanout-one", &cdn, &redis_url(), &ch, "60s").await;
    let two = replica("fanout-two", &cdn, &redis_url(), &ch, "60s").await;
    // Both subscribed before the push.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(variation(&two).await, "a");

    // An admin push on one: the other serves it within a second (its poll is 60 s away, and
    // the CDN still has the old revision).
    let r = one
        .client
        .put(one.url("/admin/datafile"))
        .bearer_auth("admintok")
        .body(all_to("b", "2").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let took = until_serves(&two, "b", Duration::from_secs(1)).await;
    eprintln!("admin push reached the other replica in {took:?}");
    let (_, health) = two.get_json("/health").await;
    assert!(health.to_string().contains("\"fanout\""), "{health}");

    // A webhook on two (the CDN has revision 3 now): one serves it within a second.
    cdn.put("/datafiles/FanKey.json", &all_to("a", "3").to_string());
    let body = br#"{"project_id":2,"event":"project.datafile_updated"}"#;
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"hooksecret").unwrap();
    mac.update(body);
    let signature = format!("sha1={}", hex::encode(mac.finalize().into_bytes()));
    let r = two
        .client
        .post(two.url("/webhooks/optimizely"))
        .header("x-hub-signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    let took = until_serves(&one, "a", Duration::from_secs(1)).await;
    eprintln!("webhook refresh reached the other replica in {took:?}");
    let (_, health) = one.get_json("/health").await;
    assert!(health.to_string().contains("\"3\""), "{health}");
    // The mirror of the replica that got it through Redis repeats the CDN's Cache-Control.
    let r = one
        .client
        .get(one.url("/datafiles/FanKey.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], common::cdn::CDN_CACHE_CONTROL);
    assert_eq!(r.text().await.unwrap(), all_to("a", "3").to_string());
    one.stop().await;
    two.stop().await;
}

#[tokio::test]
async fn with_redis_unreachable_both_replicas_serve_and_poll() {
    let cdn = Cdn::start().await;
    cdn.put("/datafiles/FanKey.json", &all_to("a", "1").to_string());
    let nowhere = format!("redis://127.0.0.1:{}/", common::free_port());
    let ch = channel("down");
    let one = replica("fanout-down-one", &cdn, &nowhere, &ch, "200ms").await;
    let two = replica("fanout-down-two", &cdn, &nowhere, &ch, "200ms").await;
    assert_eq!(variation(&one).await, "a");
    let r = one
        .client
        .put(one.url("/admin/datafile"))
        .bearer_auth("admintok")
        .body(all_to("b", "2").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "an admin push works without Redis"
    );
    // Polling goes on: a new CDN revision reaches both.
    cdn.put("/datafiles/FanKey.json", &all_to("b", "5").to_string());
    until_serves(&two, "b", Duration::from_secs(5)).await;
    for app in [&one, &two] {
        let (_, health) = app.get_json("/health").await;
        assert!(health.to_string().contains("\"5\""), "{health}");
    }
    one.stop().await;
    two.stop().await;
}
