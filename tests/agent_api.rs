//! The Optimizely Agent's contract on `/v1/*`, as its own acceptance suite states it, checked
//! against bucketd with the bundled example datafile: exact bodies and status codes where
//! clients depend on them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::spawn_app;
use serde_json::{json, Value};

/// Status and raw text of a POST with an optional SDK key.
async fn post_text(
    app: &common::TestApp,
    path: &str,
    sdk_key: Option<&str>,
    body: &Value,
) -> (u16, String) {
    let mut req = app.client.post(app.url(path)).json(body);
    if let Some(k) = sdk_key {
        req = req.header("X-Optimizely-SDK-Key", k);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

fn user() -> Value {
    json!({"userId": "agent-user", "userAttributes": {"tier": "platinum"}})
}

#[tokio::test]
async fn unknown_sdk_keys_are_403_with_the_agent_wording_and_bodies_end_in_newlines() {
    let app = spawn_app("agent-403", &[]).await;
    for path in [
        "/v1/decide",
        "/v1/activate?type=feature",
        "/v1/track?eventKey=purchase",
    ] {
        let (status, text) = post_text(&app, path, Some("no-such-key"), &user()).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(
            text,
            "{\"error\":\"unable to fetch fresh datafile (consider rechecking SDK key), status code: 403 Forbidden\"}\n",
            "{path}"
        );
    }
    let (status, text) = post_text(&app, "/v1/decide?keys=new_checkout", None, &user()).await;
    assert_eq!(status, 200);
    assert!(text.ends_with("}\n"), "{text:?}");
}

#[tokio::test]
async fn activate_answers_as_the_agent() {
    let app = spawn_app("agent-activate", &[]).await;
    let (_, text) = post_text(
        &app,
        "/v1/activate?experimentKey=checkout_flow_experiment",
        None,
        &user(),
    )
    .await;
    let v: Value = serde_json::from_str(&text).unwrap();
    let e = &v[0];
    assert_eq!(e["userId"], "agent-user");
    assert_eq!(e["type"], "experiment");
    assert!(
        e.get("variables").is_none(),
        "experiments carry no variables: {e}"
    );

    for (query, error, exp, feat) in [
        ("experimentKey=", "experimentKey not found", "", ""),
        ("experimentKey=nope", "experimentKey not found", "nope", ""),
        ("featureKey=nope", "featureKey not found", "", "nope"),
    ] {
        let (status, v) = app
            .post_json(&format!("/v1/activate?{query}"), &user())
            .await;
        assert_eq!(status, 200);
        assert_eq!(
            v,
            json!([{"userId": "agent-user", "experimentKey": exp, "featureKey": feat,
                    "variationKey": "", "type": "", "enabled": false, "error": error}]),
            "{query}"
        );
    }
    let (status, v) = app.post_json("/v1/activate?type=", &user()).await;
    assert_eq!(
        (status, v),
        (400, json!({"error": "type \"\" not supported"}))
    );
    let (status, v) = app.post_json("/v1/activate", &user()).await;
    assert_eq!((status, v), (200, json!([])), "no key named, no decision");
    let (status, _) = app
        .post_json("/v1/activate?experimentKey=checkout_flow_experiment&disableTracking=maybe&enabled=maybe", &user())
        .await;
    assert_eq!(status, 200, "invalid booleans are ignored");

    let (_, all) = app
        .post_json("/v1/activate?type=experiment&type=feature", &user())
        .await;
    let all = all.as_array().unwrap().clone();
    let (_, on) = app
        .post_json(
            "/v1/activate?type=experiment&type=feature&enabled=true",
            &user(),
        )
        .await;
    let (_, off) = app
        .post_json(
            "/v1/activate?type=experiment&type=feature&enabled=false",
            &user(),
        )
        .await;
    let (on, off) = (on.as_array().unwrap(), off.as_array().unwrap());
    assert!(on.iter().all(|d| d["enabled"] == true));
    assert!(off.iter().all(|d| d["enabled"] == false));
    assert_eq!(on.len() + off.len(), all.len());
}

#[tokio::test]
async fn activate_reports_rollout_served_features_with_empty_keys() {
    let app = spawn_app("agent-rollout", &[]).await;
    // Find a user the feature test does not take, served by the rollout.
    for i in 0..200 {
        let u = json!({"userId": format!("r{i}"), "userAttributes": {"tier": "platinum"}});
        let (_, d) = app.post_json("/v1/decide?keys=new_checkout", &u).await;
        if d["ruleKey"] != "platinum_rollout" && d["ruleKey"] != "everyone_else" {
            continue;
        }
        let (_, a) = app
            .post_json("/v1/activate?featureKey=new_checkout", &u)
            .await;
        assert_eq!(a[0]["experimentKey"], "", "{a}");
        assert_eq!(a[0]["variationKey"], "", "{a}");
        assert_eq!(a[0]["type"], "feature");
        return;
    }
    panic!("no user served by the rollout");
}

#[tokio::test]
async fn decide_has_the_agent_fields_and_flag_level_forced_decisions_win() {
    let app = spawn_app("agent-decide", &[]).await;
    let (_, d) = app.post_json("/v1/decide?keys=nope", &user()).await;
    assert_eq!(d["isEveryoneElseVariation"], false);
    assert!(d.get("variables").is_none(), "no variables, no field: {d}");
    // Force the variation the user would not get, so the answer shows whether it won.
    let (_, plain) = app.post_json("/v1/decide?keys=new_checkout", &user()).await;
    let want = if plain["variationKey"] == "on" {
        "off"
    } else {
        "on"
    };
    let forced = json!({"userId": "agent-user", "userAttributes": {"tier": "platinum"},
        "forcedDecisions": [{"flagKey": "new_checkout", "ruleKey": "", "variationKey": want}]});
    let (_, d) = app.post_json("/v1/decide?keys=new_checkout", &forced).await;
    assert_eq!(
        (d["variationKey"].clone(), d["ruleKey"].clone()),
        (json!(want), json!("")),
        "{d}"
    );
}

#[tokio::test]
async fn track_and_override_answer_as_the_agent() {
    let app = spawn_app(
        "agent-track-override",
        &[("BUCKETD__API__ENABLE_OVERRIDES", "true".into())],
    )
    .await;
    let (status, text) = post_text(&app, "/v1/track?eventKey=nope", None, &user()).await;
    assert_eq!(status, 200);
    assert_eq!(text, "{\"userId\":\"agent-user\",\"eventKey\":\"nope\",\"error\":\"event with key \\\"nope\\\" not found\"}\n");
    let (status, text) = post_text(&app, "/v1/track?eventKey=", None, &user()).await;
    assert_eq!(
        (status, text.as_str()),
        (
            400,
            "{\"error\":\"missing required path parameter: eventKey\"}\n"
        )
    );

    let o = |u: &str, e: &str, v: &str| json!({"userId": u, "experimentKey": e, "variationKey": v});
    let (status, text) = post_text(
        &app,
        "/v1/override",
        None,
        &o("", "checkout_flow_experiment", "control"),
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (400, "{\"error\":\"userId cannot be empty\"}\n")
    );
    let (status, text) = post_text(&app, "/v1/override", None, &o("q", "", "control")).await;
    assert_eq!(
        (status, text.as_str()),
        (400, "{\"error\":\"experimentKey cannot be empty\"}\n")
    );
    let (status, v) = app
        .post_json("/v1/override", &o("q", "nope", "control"))
        .await;
    assert_eq!(
        (status, v["messages"].clone()),
        (200, json!(["experimentKey not found in configuration"]))
    );
    let (_, v) = app
        .post_json("/v1/override", &o("q", "checkout_flow_experiment", ""))
        .await;
    assert_eq!(v["messages"], json!(["no pre-existing override"]));
    app.post_json(
        "/v1/override",
        &o("q", "checkout_flow_experiment", "control"),
    )
    .await;
    let (_, v) = app
        .post_json("/v1/override", &o("q", "checkout_flow_experiment", ""))
        .await;
    assert_eq!(
        (v["prevVariationKey"].clone(), v["messages"].clone()),
        (json!("control"), json!(["removing previous override"]))
    );
}

#[tokio::test]
async fn profiles_are_camel_case() {
    let app = spawn_app("agent-profiles", &[]).await;
    let (status, _) = app
        .post_json("/v1/save", &json!({"userId": "pc", "experimentBucketMap": {"60000001": {"variation_id": "80000001"}}}))
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (_, p) = app.post_json("/v1/lookup", &json!({"userId": "pc"})).await;
    assert_eq!(
        p,
        json!({"userId": "pc", "experimentBucketMap": {"60000001": {"variation_id": "80000001"}}})
    );
    let (status, _) = app.post_json("/v1/lookup", &json!({"userId": ""})).await;
    assert_eq!(status, 400);
}
