//! Sticky bucketing through each profile store, end to end over HTTP: assignments survive a
//! datafile that would re-bucket everyone, `IGNORE_USER_PROFILE_SERVICE` bypasses them, and a
//! store that dies mid-load never fails a request (the metric moves; stickiness resumes when
//! the store is back).
//!
//! Memory always runs. Redis runs against a `redis-server` this test starts and kills itself
//! (its binary must be on PATH: `.ci/servers/redis.sh` installs it); without it the test skips
//! locally and fails in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::{all_to, spawn_app, TestApp};
use serde_json::{json, Value};
use std::time::Duration;

async fn push(app: &TestApp, datafile: &Value) {
    let r = app
        .client
        .put(app.url("/admin/datafile"))
        .bearer_auth("tok")
        .body(datafile.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        200,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

async fn variation(app: &TestApp, user: &str) -> Value {
    let (status, b) = app.get_json(&format!("/bucketer?e=exp&u={user}")).await;
    assert_eq!(status, 200, "{b}");
    b["variation_key"].clone()
}

async fn decide_ignoring_profiles(app: &TestApp, user: &str) -> Value {
    // The experiment is flag `f`'s feature test (see `with_flag`), so decide reaches it.
    let (_, d) = app
        .post_json(
            "/v1/decide?keys=f",
            &json!({"userId": user, "decideOptions": ["IGNORE_USER_PROFILE_SERVICE"]}),
        )
        .await;
    d["variationKey"].clone()
}

/// `all_to` plus a flag whose feature test is the experiment.
fn with_flag(variation: &str, revision: &str) -> Value {
    let mut d = all_to(variation, revision);
    d["featureFlags"] = json!([{"id": "500", "key": "f", "experimentIds": ["100"], "rolloutId": "", "variables": []}]);
    d
}

async fn check_stickiness(app: &TestApp, users: usize) {
    push(app, &with_flag("a", "1")).await;
    for i in 0..users {
        assert_eq!(variation(app, &format!("s{i}")).await, "a");
    }
    // Let write-behind saves land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    push(app, &with_flag("b", "2")).await;
    for i in 0..users {
        assert_eq!(
            variation(app, &format!("s{i}")).await,
            "a",
            "user s{i} stays in A after the datafile change"
        );
        assert_eq!(
            decide_ignoring_profiles(app, &format!("s{i}")).await,
            "b",
            "IGNORE_USER_PROFILE_SERVICE re-buckets"
        );
    }
    assert_eq!(
        variation(app, "newcomer").await,
        "b",
        "new users follow the new datafile"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_keeps_assignments_sticky() {
    let app = spawn_app("sticky-memory", &[("BUCKETD__ADMIN__TOKEN", "tok".into())]).await;
    check_stickiness(&app, 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_is_stateless() {
    let app = spawn_app(
        "sticky-none",
        &[
            ("BUCKETD__ADMIN__TOKEN", "tok".into()),
            ("BUCKETD__PROFILES__TYPE", "none".into()),
        ],
    )
    .await;
    push(&app, &with_flag("a", "1")).await;
    assert_eq!(variation(&app, "x").await, "a");
    push(&app, &with_flag("b", "2")).await;
    assert_eq!(variation(&app, "x").await, "b");
    let (status, _) = app.post_json("/v1/lookup", &json!({"userId": "x"})).await;
    assert_eq!(status, 404);
}

/// Kills the store under load (via `kill`), checks no request fails and the failure metric of
/// `backend` moves, restarts it (via `restart`), and checks stickiness resumes.
async fn outage_and_recovery(
    app: &TestApp,
    backend: &str,
    kill: impl FnOnce(),
    restart: impl FnOnce(),
) {
    let load = {
        let (client, url) = (app.client.clone(), app.url("/bucketer?e=exp&u=load"));
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..400 {
                let r = client.get(format!("{url}{i}")).send().await.unwrap();
                statuses.push(r.status().as_u16());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            statuses
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    kill();
    let statuses = load.await.unwrap();
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every request succeeds while the store is down"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let failures: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("bucketd_profile_operations_total")
                && l.contains(&format!("backend=\"{backend}\""))
                && (l.contains("outcome=\"error\"")
                    || l.contains("outcome=\"timeout\"")
                    || l.contains("outcome=\"skipped\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(failures > 0.0, "the failure metric moves:\n{metrics}");
    let (_, health) = app.get_json("/health").await;
    assert_eq!(health["profile_store"]["state"], "degraded");

    // The store is back (empty): new assignments are stored and sticky again.
    restart();
    let mut resumed = false;
    for _ in 0..60 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (_, h) = app.get_json("/health").await;
        let _ = variation(app, "probe").await;
        if h["profile_store"]["state"] == "ok" {
            resumed = true;
            break;
        }
    }
    if !resumed {
        let metrics = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let ops: Vec<&str> = metrics
            .lines()
            .filter(|l| l.starts_with("bucketd_profile_operations_total"))
            .collect();
        panic!("the breaker did not close once the store answered again: {ops:#?}");
    }
    push(app, &with_flag("a", "3")).await;
    assert_eq!(variation(app, "after").await, "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    push(app, &with_flag("b", "4")).await;
    assert_eq!(variation(app, "after").await, "a", "stickiness resumes");
}

/// A server process owned by one test.
struct ServerProcess {
    child: std::process::Child,
}

impl ServerProcess {
    fn start(program: &str, args: &[String], port: u16) -> Option<Self> {
        let child = std::process::Command::new(program)
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(Self { child });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn or_skip(server: Option<ServerProcess>, what: &str) -> Option<ServerProcess> {
    if server.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but {what} cannot be started"
        );
        eprintln!("SKIPPED sticky test: {what} is not available");
    }
    server
}

#[cfg(feature = "cassandra")]
mod cassandra_store {
    use super::*;

    /// The shared CQL test server (address and pid from `.ci/servers/cql.sh`). The driver
    /// discovers the node at the port the server reports for itself, so a second server on
    /// another port cannot be used here; this test pauses the shared one instead.
    fn shared_server() -> Option<(String, String)> {
        Some((
            std::env::var("BUCKETD_TEST_CQL_ADDR").ok()?,
            std::env::var("BUCKETD_TEST_CQL_PID").ok()?,
        ))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cassandra_store_keeps_assignments_sticky_and_survives_an_outage() {
        let Some((addr, pid)) = shared_server() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI is set but BUCKETD_TEST_CQL_ADDR/PID are not"
            );
            eprintln!(
                "SKIPPED cassandra sticky test: set BUCKETD_TEST_CQL_ADDR and BUCKETD_TEST_CQL_PID"
            );
            return;
        };
        let app = spawn_app(
            "sticky-cassandra",
            &[
                ("BUCKETD__ADMIN__TOKEN", "tok".to_string()),
                ("BUCKETD__PROFILES__TYPE", "cassandra".into()),
                ("BUCKETD__PROFILES__CONTACT_POINTS", addr),
                (
                    "BUCKETD__PROFILES__KEYSPACE",
                    format!("sticky_{}", std::process::id()),
                ),
                ("BUCKETD__PROFILES__CONSISTENCY", "ONE".into()),
                ("BUCKETD__PROFILES__TIMEOUT", "200ms".into()),
            ],
        )
        .await;
        check_stickiness(&app, 10).await;
        // The emulator keeps its schema in memory, so a killed one comes back empty (a real
        // Cassandra node keeps it on disk). Freeze it instead: requests hang until the timeout,
        // exactly like a stalled node, and it answers again with its data after SIGCONT.
        let signal = |sig: &str| {
            let ok = std::process::Command::new("kill")
                .args([sig, &pid])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill {sig} {pid}");
        };
        outage_and_recovery(&app, "cassandra", || signal("-STOP"), || signal("-CONT")).await;
    }
}

#[cfg(feature = "redis")]
mod redis_store {
    use super::*;

    fn start(port: u16) -> Option<ServerProcess> {
        let args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        ServerProcess::start("redis-server", &args, port)
    }

    fn env(port: u16, cache: bool) -> Vec<(&'static str, String)> {
        let mut v = vec![
            ("BUCKETD__ADMIN__TOKEN", "tok".to_string()),
            ("BUCKETD__PROFILES__TYPE", "redis".into()),
            (
                "BUCKETD__PROFILES__URL",
                format!("redis://127.0.0.1:{port}"),
            ),
            ("BUCKETD__PROFILES__KEY_PREFIX", "sticky:".into()),
            ("BUCKETD__PROFILES__TIMEOUT", "100ms".into()),
        ];
        if cache {
            v.push(("BUCKETD__PROFILES__CACHE_CAPACITY", "10000".into()));
        }
        v
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_keeps_assignments_sticky_and_survives_an_outage() {
        let port = common::free_port();
        let Some(redis) = or_skip(start(port), "redis-server") else {
            return;
        };
        let app = spawn_app("sticky-redis", &env(port, false)).await;
        check_stickiness(&app, 20).await;
        let mut restarted = None;
        outage_and_recovery(&app, "redis", || redis.kill(), || restarted = start(port)).await;
        restarted.expect("redis restarts").kill();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_store_with_read_cache() {
        let port = common::free_port();
        let Some(redis) = or_skip(start(port), "redis-server") else {
            return;
        };
        let app = spawn_app("sticky-redis-cache", &env(port, true)).await;
        check_stickiness(&app, 10).await;
        redis.kill();
    }
}
