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

/// The `reasons` of one decide with `INCLUDE_REASONS`.
async fn reasons_for(app: &common::TestApp, user_id: &str, attributes: Value) -> Vec<String> {
    let body = json!({"userId": user_id, "userAttributes": attributes,
                      "decideOptions": ["INCLUDE_REASONS"]});
    let (status, d) = app.post_json("/v1/decide?keys=new_checkout", &body).await;
    assert_eq!(status, 200, "{d}");
    serde_json::from_value(d["reasons"].clone()).unwrap()
}

#[tokio::test]
async fn decide_reasons_are_worded_as_the_go_sdk_of_the_agent() {
    let app = spawn_app(
        "agent-reasons",
        &[("BUCKETD__API__ENABLE_OVERRIDES", "true".into())],
    )
    .await;
    // The feature test's audience needs `age` and `app_version`: without them it cannot be
    // evaluated, which the Go SDK reports; the platinum rule (rule 1) then takes the user.
    let platinum = reasons_for(&app, "rz-1", json!({"tier": "platinum"})).await;
    assert_eq!(
        platinum,
        [
            "an error occurred while evaluating nested tree for audience ID \"40000002\"",
            "Audiences for experiment new_checkout_test collectively evaluated to false.",
            "User \"rz-1\" does not meet conditions to be in experiment \"new_checkout_test\".",
            "Audiences for experiment platinum_rollout collectively evaluated to true.",
        ]
    );
    // A gold user fails rule 1 (validly: `tier` is there) and lands in Everyone Else.
    let gold = reasons_for(&app, "rz-2", json!({"tier": "gold"})).await;
    assert_eq!(
        gold,
        [
            "an error occurred while evaluating nested tree for audience ID \"40000002\"",
            "Audiences for experiment new_checkout_test collectively evaluated to false.",
            "User \"rz-2\" does not meet conditions to be in experiment \"new_checkout_test\".",
            "User \"rz-2\" does not meet conditions for targeting rule 1.",
            "Audiences for experiment everyone_else collectively evaluated to true.",
            "User \"rz-2\" meets conditions for targeting rule \"Everyone Else\".",
        ]
    );
    // A stored assignment of the feature test.
    let (status, _) = app
        .post_json(
            "/v1/save",
            &json!({"userId": "rz-3", "experimentBucketMap": {"60000003": {"variation_id": "80000007"}}}),
        )
        .await;
    assert_eq!(status, 200);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let sticky = reasons_for(&app, "rz-3", json!({})).await;
    assert_eq!(
        sticky,
        ["User \"rz-3\" was previously bucketed into variation \"on\" of experiment \"new_checkout_test\"."]
    );
    // A forced variation set with /v1/override: the Go SDK's override service answers.
    let (status, _) = app
        .post_json(
            "/v1/override",
            &json!({"userId": "rz-4", "experimentKey": "new_checkout_test", "variationKey": "off"}),
        )
        .await;
    assert_eq!(status, 200);
    let forced = reasons_for(&app, "rz-4", json!({})).await;
    assert_eq!(forced, ["Override variation off found for user rz-4"]);
    app.stop().await;
}

#[tokio::test]
async fn an_empty_sdk_key_header_is_the_agents_400() {
    let app = spawn_app("agent-empty-key", &[]).await;
    for path in [
        "/v1/decide",
        "/v1/activate?type=feature",
        "/v1/send-odp-event",
    ] {
        let (status, text) = post_text(&app, path, Some(""), &user()).await;
        assert_eq!(
            (status, text.as_str()),
            (
                400,
                "{\"error\":\"missing required X-Optimizely-SDK-Key header\"}\n"
            ),
            "{path}"
        );
    }
    let r = app
        .client
        .get(app.url("/v1/config"))
        .header("X-Optimizely-SDK-Key", "")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // In a batch too, as that operation's answer.
    let (status, out) = app
        .post_json(
            "/v1/batch",
            &json!({"operations": [{"method": "GET", "url": "/v1/config", "operationID": "1",
                                    "headers": {"X-Optimizely-SDK-Key": ""}}]}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(out["errorCount"], 1);
    assert_eq!(out["response"][0]["status"], 400);
    assert_eq!(
        out["response"][0]["body"]["error"],
        "missing required X-Optimizely-SDK-Key header"
    );
    // No header at all still selects the first project.
    let (status, _) = post_text(&app, "/v1/decide?keys=new_checkout", None, &user()).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn save_replaces_the_profile_as_the_agent_does_within_bounds() {
    let app = spawn_app(
        "agent-save-replace",
        &[
            ("BUCKETD__API__MAX_PROFILE_ENTRIES", "2".into()),
            ("BUCKETD__API__MAX_PROFILE_BYTES", "120".into()),
        ],
    )
    .await;
    let save = |map: Value| json!({"userId": "sr", "experimentBucketMap": map});
    let lookup = || async {
        app.post_json("/v1/lookup", &json!({"userId": "sr"}))
            .await
            .1
    };
    let (status, _) = app
        .post_json(
            "/v1/save",
            &save(json!({"e1": {"variation_id": "v1"}, "e2": {"variation_id": "v2"}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        lookup().await["experimentBucketMap"],
        json!({"e1": {"variation_id": "v1"}, "e2": {"variation_id": "v2"}})
    );
    // A second save replaces: e1 is gone.
    let (status, _) = app
        .post_json("/v1/save", &save(json!({"e2": {"variation_id": "v3"}})))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        lookup().await["experimentBucketMap"],
        json!({"e2": {"variation_id": "v3"}})
    );
    // Beyond the bounds: a clear 422, and the stored profile stays.
    let three = save(
        json!({"a": {"variation_id": "1"}, "b": {"variation_id": "2"}, "c": {"variation_id": "3"}}),
    );
    let (status, text) = post_text(&app, "/v1/save", None, &three).await;
    assert_eq!(status, 422, "{text}");
    assert_eq!(
        text,
        "{\"error\":\"experimentBucketMap has 3 entries, more than api.max_profile_entries (2)\"}\n"
    );
    let long = save(json!({"e9": {"variation_id": "x".repeat(200)}}));
    let (status, text) = post_text(&app, "/v1/save", None, &long).await;
    assert_eq!(status, 422, "{text}");
    assert!(text.contains("api.max_profile_bytes (120)"), "{text}");
    assert_eq!(
        lookup().await["experimentBucketMap"],
        json!({"e2": {"variation_id": "v3"}})
    );
    // A save without a map (a misspelt key, say) leaves the user with an empty profile.
    let (status, _) = app
        .post_json(
            "/v1/save",
            &json!({"userId": "sr", "experimentBucketMaps": {"e5": {"variation_id": "v5"}}}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(lookup().await["experimentBucketMap"], json!({}));
    // An empty body is a body without userId; a body that is not JSON cannot be parsed.
    for path in ["/v1/save", "/v1/lookup"] {
        let r = app.client.post(app.url(path)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert_eq!(
            r.text().await.unwrap(),
            "{\"error\":\"missing \\\"userId\\\" in request payload\"}\n",
            "{path}"
        );
        let r = app
            .client
            .post(app.url(path))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{path}");
        assert_eq!(
            r.text().await.unwrap(),
            "{\"error\":\"error parsing request body\"}\n",
            "{path}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn disabled_overrides_are_refused_before_anything_else() {
    let app = spawn_app(
        "agent-override-off",
        &[("BUCKETD__API__ENABLE_OVERRIDES", "false".into())],
    )
    .await;
    let body = json!({"userId": "ov", "experimentKey": "checkout_flow_experiment", "variationKey": "control"});
    let want = (
        403,
        "{\"error\":\"Overrides not enabled (api.enable_overrides = false)\"}\n".to_string(),
    );
    assert_eq!(post_text(&app, "/v1/override", None, &body).await, want);
    assert_eq!(
        post_text(&app, "/v1/override", Some("no-such-key"), &body).await,
        want,
        "the key is not looked at"
    );
    assert_eq!(
        post_text(&app, "/v1/override", None, &json!({})).await,
        want,
        "nor the body"
    );
    let (_, p) = app.post_json("/v1/lookup", &json!({"userId": "ov"})).await;
    assert_eq!(p["experimentBucketMap"], json!({}), "no profile was saved");
    app.stop().await;
}

#[tokio::test]
async fn one_request_makes_at_most_max_decisions_per_request() {
    let app = spawn_app(
        "agent-max-decisions",
        &[("BUCKETD__API__MAX_DECISIONS_PER_REQUEST", "2".into())],
    )
    .await;
    // The example datafile has three experiments (besides rollout rules).
    let (status, text) = post_text(&app, "/v1/activate?type=experiment", None, &user()).await;
    assert_eq!(status, 422, "{text}");
    assert!(
        text.contains("3 decisions, more than api.max_decisions_per_request (2)"),
        "{text}"
    );
    let (_, p) = app
        .post_json("/v1/lookup", &json!({"userId": "agent-user"}))
        .await;
    assert_eq!(p["experimentBucketMap"], json!({}), "nothing was decided");
    let (status, _) = post_text(
        &app,
        "/v1/activate?experimentKey=checkout_flow_experiment&experimentKey=platinum_pricing_test",
        None,
        &user(),
    )
    .await;
    assert_eq!(status, 200, "the bound itself is allowed");
    let (status, _) = post_text(&app, "/v1/decide?keys=a&keys=b&keys=c", None, &user()).await;
    assert_eq!(status, 422);
    let (status, _) = post_text(&app, "/v1/decide?keys=a&keys=a&keys=a", None, &user()).await;
    assert_eq!(status, 200, "a key named twice is decided once");
    let (status, _) = post_text(&app, "/v1/decide", None, &user()).await;
    assert_eq!(status, 200, "one flag in all");
    app.stop().await;
}
