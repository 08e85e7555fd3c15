//! The HTTP API end to end: a real daemon on 127.0.0.1:0 (embedded profile store and disk
//! queue), driven with a real HTTP client.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use bucketd::core::{Decider, ProjectConfig, UserContext};
use bucketd::source::BUNDLED_DATAFILE;
use common::{all_to, metric, spawn_app};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};

fn expected_variation(experiment: &str, user: &str, attrs: Value) -> Option<String> {
    let config = ProjectConfig::parse(BUNDLED_DATAFILE.as_bytes()).unwrap();
    let user = UserContext::new(user, attrs.as_object().unwrap().clone());
    let idx = config.experiment_by_key(experiment).unwrap();
    Decider::new(&config, &user)
        .variation(idx, None)
        .decision
        .variation
        .map(|v| config.experiments[idx].variations[v].key.clone())
}

#[tokio::test]
async fn bucketer_answers_like_the_core_and_validates_input() {
    let app = spawn_app("bucketer", &[]).await;
    for i in 0..20 {
        let user = format!("user-{i}");
        let (status, body) = app
            .get_json(&format!(
                "/bucketer?e=platinum_pricing_test&u={user}&a=tier:%22platinum%22,zip:07020"
            ))
            .await;
        assert_eq!(status, 200);
        let want = expected_variation(
            "platinum_pricing_test",
            &user,
            json!({"tier": "platinum", "zip": "07020"}),
        );
        assert!(want.is_some());
        assert_eq!(body["variation_key"].as_str(), want.as_deref(), "{user}");
        assert_eq!(body["experiment_key"], "platinum_pricing_test");
        assert_eq!(body["user_id"], user.as_str());
    }
    // Not in the audience: null variation.
    let (status, body) = app
        .get_json("/bucketer?e=platinum_pricing_test&u=x&a=tier:%22gold%22")
        .await;
    assert_eq!((status, body["variation_key"].clone()), (200, Value::Null));
    // JSON attributes keep their types.
    let (_, body) = app
        .get_json("/bucketer?f=new_checkout&u=adult&a=%7B%22age%22%3A30%2C%22app_version%22%3A%222.1.0%22%7D")
        .await;
    assert_eq!(body["flag_key"], "new_checkout");
    assert!(body["variables"].is_object());

    let (status, body) = app.get_json("/bucketer?u=x").await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("`e`"));
    let (status, body) = app.get_json("/bucketer?e=nope&u=x").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("nope"));
    let (status, _) = app.get_json("/bucketer?f=nope&u=x").await;
    assert_eq!(status, 404);
    let (status, body) = app
        .get_json("/bucketer?e=checkout_flow_experiment&a=tier:%22x")
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("`a`"));
    let (status, _) = app
        .get_json("/bucketer?e=checkout_flow_experiment&debug=maybe")
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn bucketer_debug_and_default_user_id() {
    let app = spawn_app("debug", &[]).await;
    let (status, body) = app
        .get_json("/bucketer?e=checkout_flow_experiment&debug=1")
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body["user_id"], "127.0.0.1",
        "u defaults to the peer address"
    );
    assert_eq!(body["account_id"], "10000001");
    assert_eq!(body["project_id"], "20000001");
    assert_eq!(body["revision"], "1");
    assert!(body["bucket"]["experiment_bucket"].as_u64().unwrap() < 10000);
    assert!(!body["reasons"].as_array().unwrap().is_empty());
    assert_eq!(body["datafile"]["experiments"], 3);
    assert_eq!(body["datafile"]["flags"], 1);
    assert_eq!(body["datafile"]["source"], "bundled");
    // X-Forwarded-For is ignored unless trusted.
    let r = app
        .client
        .get(app.url("/bucketer?e=checkout_flow_experiment"))
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], "127.0.0.1");

    let trusted = spawn_app(
        "xff",
        &[("BUCKETD__SERVER__TRUST_FORWARDED_FOR", "true".into())],
    )
    .await;
    let r = trusted
        .client
        .get(trusted.url("/bucketer?e=checkout_flow_experiment"))
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["user_id"], "203.0.113.9");
}

#[tokio::test]
async fn agent_endpoints_have_agent_shapes() {
    let app = spawn_app(
        "agent",
        &[("BUCKETD__API__ENABLE_OVERRIDES", "true".into())],
    )
    .await;
    let user = json!({"userId": "u1", "userAttributes": {"tier": "platinum"}});
    let (status, one) = app.post_json("/v1/decide?keys=new_checkout", &user).await;
    assert_eq!(status, 200);
    assert_eq!(one["flagKey"], "new_checkout");
    assert_eq!(one["userContext"]["userId"], "u1");
    assert!(
        one["enabled"].is_boolean() && one["variables"].is_object() && one["reasons"].is_array()
    );
    let (_, all) = app.post_json("/v1/decide", &user).await;
    assert_eq!(all.as_array().unwrap().len(), 1);
    let (_, many) = app
        .post_json("/v1/decide?keys=new_checkout&keys=missing", &user)
        .await;
    assert_eq!(many.as_array().unwrap().len(), 2);
    let (status, body) = app
        .post_json(
            "/v1/decide",
            &json!({"userId": "u1", "decideOptions": ["NOPE"]}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["error"].as_str().unwrap().contains("NOPE"));
    let (status, _) = app
        .post_json("/v1/decide", &json!({"userAttributes": {}}))
        .await;
    assert_eq!(status, 400, "userId is required");
    // Forced decisions in the body.
    let (_, forced) = app
        .post_json(
            "/v1/decide?keys=new_checkout",
            &json!({"userId": "u2", "forcedDecisions": [{"flagKey": "new_checkout", "variationKey": "on"}]}),
        )
        .await;
    assert_eq!(forced["variationKey"], "on");
    assert_eq!(forced["enabled"], true);

    let (status, acts) = app
        .post_json(
            "/v1/activate?experimentKey=checkout_flow_experiment&featureKey=new_checkout",
            &json!({"userId": "u1"}),
        )
        .await;
    assert_eq!(status, 200);
    let acts = acts.as_array().unwrap();
    assert_eq!(acts.len(), 2);
    assert_eq!(acts[0]["type"], "experiment");
    assert_eq!(acts[1]["type"], "feature");
    let (_, unknown) = app
        .post_json("/v1/activate?experimentKey=zzz", &json!({"userId": "u1"}))
        .await;
    assert!(unknown[0]["error"].is_string());

    let (status, t) = app
        .post_json(
            "/v1/track?eventKey=purchase",
            &json!({"userId": "u1", "eventTags": {"revenue": 42}}),
        )
        .await;
    assert_eq!((status, t["eventKey"].clone()), (200, json!("purchase")));
    // As the Agent: an undeclared event is answered 200 with an `error`, not a 404.
    let (status, t) = app
        .post_json("/v1/track?eventKey=nope", &json!({"userId": "u1"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(t["error"], "event with key \"nope\" not found");
    let (status, _) = app.post_json("/v1/track", &json!({"userId": "u1"})).await;
    assert_eq!(status, 400);

    // Overrides: force a variation, see it, clear it.
    let (status, o) = app
        .post_json(
            "/v1/override",
            &json!({"userId": "qa", "experimentKey": "checkout_flow_experiment", "variationKey": "control"}),
        )
        .await;
    assert_eq!((status, o["variationKey"].clone()), (200, json!("control")));
    let (_, b) = app
        .get_json("/bucketer?e=checkout_flow_experiment&u=qa")
        .await;
    assert_eq!(b["variation_key"], "control");
    // As the Agent: an unknown variation is a 200 whose message says so.
    let (status, o) = app
        .post_json("/v1/override", &json!({"userId": "qa", "experimentKey": "checkout_flow_experiment", "variationKey": "nope"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(o["messages"][0], "variationKey not found in configuration");

    let (status, cfg) = app.get_json("/v1/config").await;
    assert_eq!(status, 200);
    assert!(cfg["experimentsMap"]["checkout_flow_experiment"].is_object());
    assert!(cfg["featuresMap"]["new_checkout"]["deliveryRules"].is_array());
    let (status, df) = app.get_json("/v1/datafile").await;
    assert_eq!((status, df["revision"].clone()), (200, json!("1")));

    // Profiles (the Agent's camelCase): save stores, lookup reads back.
    let (status, _) = app
        .post_json("/v1/save", &json!({"userId": "p1", "experimentBucketMap": {"60000001": {"variation_id": "80000001"}}}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, p) = app.post_json("/v1/lookup", &json!({"userId": "p1"})).await;
    assert_eq!(
        p["experimentBucketMap"]["60000001"]["variation_id"],
        "80000001"
    );
    let (_, sticky) = app
        .get_json("/bucketer?e=checkout_flow_experiment&u=p1")
        .await;
    assert_eq!(
        sticky["variation_key"], "control",
        "the stored profile wins"
    );
    let (status, _) = app
        .post_json(
            "/v1/save",
            &json!({"userId": "p1", "experimentBucketMap": {"1": 5}}),
        )
        .await;
    assert_eq!(status, 400);
}

/// Profile-store lookups the daemon at `app` has made so far (the read cache is off by default,
/// so every gateway lookup reaches the store).
async fn profile_lookups(app: &common::TestApp) -> f64 {
    metric(
        &app.base,
        "bucketd_profile_operations_total{backend=\"memory\",op=\"lookup\",outcome=\"ok\"}",
    )
    .await
}

#[tokio::test]
async fn activate_makes_one_profile_lookup_per_request() {
    let app = spawn_app("activate-lookups", &[]).await;
    let before = profile_lookups(&app).await;
    let (status, acts) = app
        .post_json(
            "/v1/activate?experimentKey=checkout_flow_experiment&experimentKey=platinum_pricing_test&featureKey=new_checkout",
            &json!({"userId": "one-lookup", "userAttributes": {"tier": "platinum"}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(acts.as_array().unwrap().len(), 3);
    assert_eq!(
        profile_lookups(&app).await - before,
        1.0,
        "three keys, one lookup"
    );
    // Every experiment and flag (the Agent's `type`), still one lookup.
    let (_, all) = app
        .post_json(
            "/v1/activate?type=experiment&type=feature",
            &json!({"userId": "one-lookup-all"}),
        )
        .await;
    assert_eq!(all.as_array().unwrap().len(), 4);
    assert_eq!(profile_lookups(&app).await - before, 2.0);
    // The decisions of one request share the profile: what the first one stored, the rest see,
    // and the request saves it once.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, p) = app
        .post_json("/v1/lookup", &json!({"userId": "one-lookup"}))
        .await;
    assert!(
        !p["experimentBucketMap"].as_object().unwrap().is_empty(),
        "{p}"
    );
}

#[tokio::test]
async fn override_reads_the_override_map_and_saves_no_profile() {
    let app = spawn_app(
        "override-map",
        &[("BUCKETD__API__ENABLE_OVERRIDES", "true".into())],
    )
    .await;
    let user = "ov";
    assert!(
        expected_variation("checkout_flow_experiment", user, json!({})).is_some(),
        "a decision would bucket (and store) this user"
    );
    let before = profile_lookups(&app).await;
    let set = |variation: &'static str| {
        let body = json!({"userId": user, "experimentKey": "checkout_flow_experiment", "variationKey": variation});
        let app = &app;
        async move { app.post_json("/v1/override", &body).await }
    };
    let (status, o) = set("control").await;
    assert_eq!(status, 200);
    assert_eq!(o["variationKey"], "control");
    assert_eq!(o["prevVariationKey"], "", "no override before");
    assert_eq!(o["messages"], json!(null), "as the Agent: nothing to say");
    let (_, o) = set("variation_a").await;
    assert_eq!(o["prevVariationKey"], "control");
    assert_eq!(o["messages"], json!(["updating previous override"]));
    let (_, o) = set("").await;
    assert_eq!(
        (o["variationKey"].clone(), o["prevVariationKey"].clone()),
        (json!(""), json!("variation_a"))
    );
    assert_eq!(
        profile_lookups(&app).await - before,
        0.0,
        "an override makes no decision"
    );
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, p) = app.post_json("/v1/lookup", &json!({"userId": user})).await;
    assert_eq!(
        p["experimentBucketMap"],
        json!({}),
        "an override saves no profile"
    );
}

#[tokio::test]
async fn overrides_are_refused_unless_enabled() {
    let app = spawn_app("nooverride", &[]).await;
    let (status, body) = app
        .post_json("/v1/override", &json!({"userId": "qa", "experimentKey": "checkout_flow_experiment", "variationKey": "control"}))
        .await;
    assert_eq!(status, 403);
    assert!(body["error"].as_str().unwrap().contains("enable_overrides"));
}

#[tokio::test]
async fn limits_and_malformed_requests_get_clear_4xx() {
    let app = spawn_app(
        "limits",
        &[
            ("BUCKETD__SERVER__MAX_BODY_BYTES", "1024".into()),
            ("BUCKETD__SERVER__MAX_ATTRIBUTES", "3".into()),
        ],
    )
    .await;
    let big = json!({"userId": "u", "userAttributes": {"x": "y".repeat(2000)}});
    let (status, body) = app.post_json("/v1/decide", &big).await;
    assert_eq!(status, 413);
    assert!(body["error"].is_string());
    let r = app
        .client
        .post(app.url("/v1/decide"))
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]
        .as_str()
        .unwrap()
        .contains("JSON"));
    let (status, _) = app
        .get_json("/bucketer?e=checkout_flow_experiment&a=a:1,b:2,c:3,d:4")
        .await;
    assert_eq!(status, 400);
    let long = format!(
        "/bucketer?e=checkout_flow_experiment&u={}",
        "x".repeat(10_000)
    );
    let (status, _) = app.get_json(&long).await;
    assert_eq!(status, 414);
    let r = app
        .client
        .delete(app.url("/bucketer"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    let (status, _) = app.get_json("/nope").await;
    assert_eq!(status, 404);
    let r = app.client.post(app.url("/v1/decide")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let app = spawn_app("ops", &[]).await;
    let (status, h) = app.get_json("/health").await;
    assert_eq!((status, h["status"].clone()), (200, json!("ok")));
    assert_eq!(h["profile_store"]["backend"], "memory");
    let (status, _) = app.get_json("/ready").await;
    assert_eq!(status, 200);
    app.get_json("/bucketer?e=checkout_flow_experiment&u=m")
        .await;
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("bucketd_http_requests_total{route=\"bucketer\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(text.contains("bucketd_datafile_revision{project=\"default\"} 1"));
    assert!(text.contains("bucketd_decisions_total"));
    assert!(!text.contains("user_id"), "no user ids in labels");
}

fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    format!("sha1={}", hex::encode(mac.finalize().into_bytes()))
}

async fn revision(app: &common::TestApp) -> String {
    let (_, b) = app.get_json("/bucketer?e=exp&u=r&debug=1").await;
    b["revision"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn webhook_refreshes_a_file_project_only_with_a_valid_signature() {
    let dir = common::scratch("webhook-src");
    let path = dir.join("datafile.json");
    std::fs::write(&path, all_to("a", "1").to_string()).unwrap();
    let app = spawn_app(
        "webhook",
        &[
            ("BUCKETD__DATAFILE__PATH", path.display().to_string()),
            ("BUCKETD__DATAFILE__WEBHOOK_SECRET", "s3cret".into()),
        ],
    )
    .await;
    assert_eq!(revision(&app).await, "1");
    std::fs::write(&path, all_to("b", "2").to_string()).unwrap();
    let body = br#"{"project_id":2,"timestamp":1,"event":"project.datafile_updated","data":{"revision":2}}"#;
    let bad = app
        .client
        .post(app.url("/webhooks/optimizely"))
        .header("x-hub-signature", sign("wrong", body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 401);
    let missing = app
        .client
        .post(app.url("/webhooks/optimizely"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 401);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        revision(&app).await,
        "1",
        "unsigned webhooks change nothing"
    );
    let good = app
        .client
        .post(app.url("/webhooks/optimizely"))
        .header("x-hub-signature", sign("s3cret", body))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(good.status().as_u16(), 204);
    for _ in 0..50 {
        if revision(&app).await == "2" {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the webhook did not refresh the datafile");
}

#[tokio::test]
async fn admin_push_validates_and_swaps_atomically_under_load() {
    let app = spawn_app(
        "admin",
        &[
            ("BUCKETD__ADMIN__TOKEN", "tok".into()),
            ("BUCKETD__PROFILES__TYPE", "none".into()),
        ],
    )
    .await;
    let push = |body: String, token: &'static str| {
        let c = app.client.clone();
        let url = app.url("/admin/datafile");
        async move {
            c.put(url)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(push(all_to("a", "1").to_string(), "bad").await, 401);
    assert_eq!(push(all_to("a", "1").to_string(), "tok").await, 200);
    assert_eq!(
        push("{\"version\": \"4\", \"experiments\": 5}".into(), "tok").await,
        422
    );
    assert_eq!(
        revision(&app).await,
        "1",
        "an invalid datafile never replaces a good one"
    );

    // Swap between two revisions while 8 clients hammer the bucketer: no request fails, and
    // every answer is consistent with the revision it reports (rev 1 → a, rev 2 → b).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..8 {
        let (client, url, stop) = (
            app.client.clone(),
            app.url("/bucketer?e=exp&debug=1&u=load"),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut seen = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = client.get(format!("{url}{c}")).send().await.unwrap();
                assert_eq!(r.status().as_u16(), 200);
                let b: Value = r.json().await.unwrap();
                let expected = if b["revision"] == "1" { "a" } else { "b" };
                assert_eq!(b["variation_key"], expected, "{b}");
                seen += 1;
            }
            seen
        }));
    }
    for i in 0..20 {
        let (v, r) = if i % 2 == 0 { ("b", "2") } else { ("a", "1") };
        assert_eq!(push(all_to(v, r).to_string(), "tok").await, 200);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total > 50, "load clients made {total} requests");

    let disabled = spawn_app("noadmin", &[]).await;
    let r = disabled
        .client
        .put(disabled.url("/admin/datafile"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}

#[tokio::test]
async fn multiple_projects_by_sdk_key() {
    let dir = common::scratch("multi-src");
    let p2 = dir.join("two.json");
    std::fs::write(&p2, all_to("b", "77").to_string()).unwrap();
    let cfg = dir.join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[projects]]\nsdk_key = \"second\"\npath = \"{}\"\n",
            p2.display()
        ),
    )
    .unwrap();
    // The default project has no source configured, so it stays the bundled one.
    let mut env = std::collections::HashMap::new();
    env.insert("BUCKETD__STATE_DIR".to_string(), dir.display().to_string());
    env.insert(
        "BUCKETD__SERVER__LISTEN".to_string(),
        "127.0.0.1:0".to_string(),
    );
    let settings = bucketd::config::load(Some(&cfg), &env).unwrap();
    assert_eq!(
        settings.projects.len(),
        1,
        "only [[projects]] when [datafile] has no source"
    );
    let d = common::start(settings, dir.clone()).await.unwrap();
    let c = reqwest::Client::new();
    let r: Value = c
        .get(format!("http://{}/bucketer?e=exp&u=x", d.addr))
        .header("x-optimizely-sdk-key", "second")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["variation_key"], "b");
    let r = c
        .get(format!("http://{}/bucketer?e=exp&u=x", d.addr))
        .header("x-optimizely-sdk-key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
}
