//! On-demand projects (`[dynamic_projects]`) end to end over TCP, against a local CDN
//! stand-in: the first requests for a new key wait for one shared fetch and succeed, the poll
//! picks up a new revision, an idle key is dropped, and the allow-list, the bound on loaded
//! projects, unknown keys (negatively cached) and an unreachable source answer clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::cdn::Cdn;
use common::{all_to, metric, spawn_app, TestApp};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

async fn on_demand_app(name: &str, cdn: &Cdn, extra: &[(&str, String)]) -> TestApp {
    let mut env = vec![
        ("BUCKETD__DYNAMIC_PROJECTS__ENABLED", "true".to_string()),
        (
            "BUCKETD__DYNAMIC_PROJECTS__URL_TEMPLATE",
            cdn.url("/datafiles/{sdk_key}.json"),
        ),
        ("BUCKETD__DYNAMIC_PROJECTS__POLL_INTERVAL", "200ms".into()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    spawn_app(name, &env).await
}

/// `/bucketer?e=exp` for `key`: (status, variation or error).
async fn bucket(app: &TestApp, key: &str) -> (u16, serde_json::Value) {
    let r = app
        .client
        // A new visitor each time: sticky profiles would keep the first variation.
        .get(app.url(&format!("/bucketer?e=exp&u={}", uuid::Uuid::new_v4())))
        .header("x-optimizely-sdk-key", key)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    let shown = if status == 200 {
        body["variation_key"].clone()
    } else {
        body["error"].clone()
    };
    (status, shown)
}

#[tokio::test]
async fn a_new_key_loads_on_first_request_refreshes_and_is_evicted_when_idle() {
    let cdn = Cdn::start().await;
    cdn.put("/datafiles/DynKey1.json", &all_to("a", "1").to_string());
    cdn.delay_ms.store(300, Ordering::Relaxed);
    let app = on_demand_app(
        "dynamic-load",
        &cdn,
        &[("BUCKETD__DYNAMIC_PROJECTS__IDLE_TIMEOUT", "1500ms".into())],
    )
    .await;
    // Eight concurrent first requests wait for one fetch and all succeed.
    let mut waiting = Vec::new();
    for _ in 0..8 {
        let (client, url) = (app.client.clone(), app.url("/bucketer?e=exp&u=visitor"));
        waiting.push(tokio::spawn(async move {
            let r = client
                .get(url)
                .header("x-optimizely-sdk-key", "DynKey1")
                .send()
                .await
                .unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap(),
            )
        }));
    }
    for w in waiting {
        let (status, body) = w.await.unwrap();
        assert_eq!(
            (status, body["variation_key"].clone()),
            (200, "a".into()),
            "{body}"
        );
    }
    assert_eq!(
        cdn.requests("/datafiles/DynKey1.json"),
        1,
        "one shared fetch"
    );
    assert_eq!(metric(&app.base, "bucketd_dynamic_projects ").await, 1.0);
    // One shared, bounded label; the key is no label.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("bucketd_datafile_revision{project=\"on_demand\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("DynKey1"), "{metrics}");
    // Cached under state_dir like a configured project.
    let cached: Vec<String> = std::fs::read_dir(app.dir.join("datafiles"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("on-demand-"))
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");
    assert!(
        !cached[0].contains("DynKey1"),
        "a short form of the key: {cached:?}"
    );
    // The mirror serves it too.
    let r = app
        .client
        .get(app.url("/datafiles/DynKey1.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), all_to("a", "1").to_string());

    // The poll picks up a new revision.
    cdn.delay_ms.store(0, Ordering::Relaxed);
    cdn.put("/datafiles/DynKey1.json", &all_to("b", "2").to_string());
    let deadline = Instant::now() + Duration::from_secs(5);
    while bucket(&app, "DynKey1").await.1 != "b" {
        assert!(
            Instant::now() < deadline,
            "the new revision was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Idle: dropped, and its poller stops.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(metric(&app.base, "bucketd_dynamic_projects ").await, 0.0);
    assert!(
        metric(
            &app.base,
            "bucketd_dynamic_project_loads_total{outcome=\"evicted\"}"
        )
        .await
            >= 1.0
    );
    let polls = cdn.requests("/datafiles/DynKey1.json");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        cdn.requests("/datafiles/DynKey1.json"),
        polls,
        "no poll after eviction"
    );
    // Named again: loaded again.
    assert_eq!(bucket(&app, "DynKey1").await, (200, "b".into()));
    assert_eq!(cdn.requests("/datafiles/DynKey1.json"), polls + 1);
    app.stop().await;
}

#[tokio::test]
async fn allow_list_bound_unknown_and_unreachable_keys_get_clear_errors() {
    let cdn = Cdn::start().await;
    for key in ["Ok1", "Ok2", "Nope1"] {
        cdn.put(
            &format!("/datafiles/{key}.json"),
            &all_to("a", "1").to_string(),
        );
    }
    let app = on_demand_app(
        "dynamic-limits",
        &cdn,
        &[
            (
                "BUCKETD__DYNAMIC_PROJECTS__ALLOW",
                "Ok[0-9]+|Missing".into(),
            ),
            ("BUCKETD__DYNAMIC_PROJECTS__MAX_PROJECTS", "1".into()),
            ("BUCKETD__DYNAMIC_PROJECTS__FAILURE_TTL", "1h".into()),
        ],
    )
    .await;
    let (status, error) = bucket(&app, "Nope1").await;
    assert_eq!(status, 403, "{error}");
    assert!(error.as_str().unwrap().contains("not allowed"), "{error}");
    assert_eq!(
        cdn.requests("/datafiles/Nope1.json"),
        0,
        "refused before any fetch"
    );

    // Unknown to the source: the Agent's 403 on /v1/*, remembered (one fetch for many asks).
    for _ in 0..3 {
        let r = app
            .client
            .get(app.url("/v1/config"))
            .header("x-optimizely-sdk-key", "Missing")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("SDK key"),
            "{body}"
        );
    }
    assert_eq!(
        cdn.requests("/datafiles/Missing.json"),
        1,
        "negatively cached"
    );
    assert_eq!(bucket(&app, "Ok1").await, (200, "a".into()));
    let (status, error) = bucket(&app, "Ok2").await;
    assert_eq!(status, 503, "{error}");
    assert!(
        error.as_str().unwrap().contains("max_projects = 1"),
        "{error}"
    );
    assert_eq!(cdn.requests("/datafiles/Ok2.json"), 0);

    let (status, error) = bucket(&app, "bad key!").await;
    assert_eq!(status, 400, "{error}");
    app.stop().await;

    // A source that does not answer: 503 with the reason, within load_timeout.
    let down = spawn_app(
        "dynamic-down",
        &[
            ("BUCKETD__DYNAMIC_PROJECTS__ENABLED", "true".to_string()),
            (
                "BUCKETD__DYNAMIC_PROJECTS__URL_TEMPLATE",
                format!("http://127.0.0.1:{}/{{sdk_key}}.json", common::free_port()),
            ),
            ("BUCKETD__DYNAMIC_PROJECTS__LOAD_TIMEOUT", "1s".into()),
        ],
    )
    .await;
    let started = Instant::now();
    let (status, error) = bucket(&down, "Anything").await;
    assert_eq!(status, 503, "{error}");
    assert!(error.as_str().unwrap().contains("unavailable"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(3));
    down.stop().await;
}

#[tokio::test]
async fn configured_only_when_off() {
    let cdn = Cdn::start().await;
    cdn.put("/datafiles/Off1.json", &all_to("a", "1").to_string());
    let app = spawn_app(
        "dynamic-off",
        &[(
            "BUCKETD__DYNAMIC_PROJECTS__URL_TEMPLATE",
            cdn.url("/datafiles/{sdk_key}.json"),
        )],
    )
    .await;
    let (status, _) = bucket(&app, "Off1").await;
    assert_eq!(status, 404);
    assert_eq!(cdn.requests("/datafiles/Off1.json"), 0);
    app.stop().await;
}

#[tokio::test]
async fn an_on_demand_key_is_served_from_its_cache_when_the_source_is_down() {
    let cdn = Cdn::start().await;
    cdn.put("/datafiles/Cached1.json", &all_to("b", "6").to_string());
    let first = on_demand_app("dynamic-cache", &cdn, &[]).await;
    assert_eq!(bucket(&first, "Cached1").await, (200, "b".into()));
    let dir = first.dir.clone();
    first.stop().await;

    // Same state_dir, source unreachable: the cached copy serves the first request.
    let mut env: std::collections::HashMap<String, String> = [
        ("BUCKETD__STATE_DIR", dir.display().to_string()),
        ("BUCKETD__SERVER__LISTEN", "127.0.0.1:0".into()),
        ("BUCKETD__FLUSHER__ENABLED", "false".into()),
        ("BUCKETD__DYNAMIC_PROJECTS__ENABLED", "true".into()),
        ("BUCKETD__DYNAMIC_PROJECTS__LOAD_TIMEOUT", "1s".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    env.insert(
        "BUCKETD__DYNAMIC_PROJECTS__URL_TEMPLATE".into(),
        format!("http://127.0.0.1:{}/{{sdk_key}}.json", common::free_port()),
    );
    let settings = bucketd::config::load(None, &env).unwrap();
    let second = common::start(settings, dir).await.unwrap();
    assert_eq!(bucket(&second, "Cached1").await, (200, "b".into()));
    second.stop().await;
}
