//! Differential parity against the official Python SDK.
//!
//! `tests/parity/oracle.py` generates random datafiles and users and records what
//! `optimizely-sdk` answers (variations, flag decisions, impression and conversion payloads,
//! saved user profiles). This test replays every call through the core and fails on the first
//! differences, printing a minimal reproduction and writing it to `<target>/tmp/parity-failures/`.
//!
//! Environment: `BUCKETD_PARITY_PYTHON` (a Python with `optimizely-sdk` installed; default
//! `.venv/bin/python`), `BUCKETD_PARITY_SEED` (default fixed), `BUCKETD_PARITY_DATAFILES` (20),
//! `BUCKETD_PARITY_USERS` (500). Without a usable Python the test skips locally and fails in CI.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

#[path = "parity/support.rs"]
mod support;

use bucketd::core::{
    DecideOptions, Decider, ForcedDecision, ForcedVariations, ProjectConfig, UserContext,
    UserProfile,
};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::process::Command;
use support::{env_or, ours, python, theirs, write_repro, Mismatch, MAX_REPORTED};

const DEFAULT_SEED: &str = "20261122";

fn stamp() -> impl FnMut() -> (String, u64) {
    let mut n = 0u64;
    move || {
        n += 1;
        (format!("uuid-{n}"), n)
    }
}

fn parse_profile(v: &Value) -> Option<UserProfile> {
    serde_json::from_value(v.clone()).ok()
}

/// Replays one user; returns the first mismatch.
fn replay_user(case: &str, ui: usize, config: &ProjectConfig, u: &Value) -> Option<Mismatch> {
    let miss = |call: usize, what: &str, expected: Value, got: Value| {
        Some(Mismatch {
            case: case.to_string(),
            user: ui,
            call,
            what: what.to_string(),
            expected,
            got,
        })
    };
    let user_id = u["user_id"].as_str().unwrap_or_default().to_string();
    let attributes: Map<String, Value> = u["attributes"].as_object().cloned().unwrap_or_default();
    let mut forced = ForcedVariations::default();
    for fv in u["forced_variations"].as_array().into_iter().flatten() {
        let (e, v) = (
            fv["experiment_key"].as_str().unwrap_or(""),
            fv["variation_key"].as_str(),
        );
        if let Err(err) = forced.set(config, e, &user_id, v) {
            return miss(
                0,
                "set_forced_variation accepted by the SDK",
                fv.clone(),
                json!(err.to_string()),
            );
        }
    }
    let mut user = UserContext::new(user_id.clone(), attributes);
    for fd in u["forced_decisions"].as_array().into_iter().flatten() {
        user.forced_decisions.push(ForcedDecision {
            flag_key: fd["flag_key"].as_str().unwrap_or("").into(),
            rule_key: fd["rule_key"].as_str().map(str::to_owned),
            variation_key: fd["variation_key"].as_str().unwrap_or("").into(),
        });
    }
    let no_segments_user = UserContext::new(user_id.clone(), user.attributes.clone());
    user.qualified_segments = u["segments"].as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    });
    let mut stored: Option<UserProfile> = parse_profile(&u["profile"]);
    let mut last_saved: Option<UserProfile> = None;
    let mut stamper = stamp();

    for (ci, call) in u["calls"].as_array().into_iter().flatten().enumerate() {
        let op = call["op"].as_str().unwrap_or("");
        let mut events = Vec::new();
        // The oracle's SDK has a profile service: an empty profile when nothing is stored yet.
        let profile = stored
            .clone()
            .unwrap_or_else(|| UserProfile::new(user_id.clone()));
        let mut saved: Option<UserProfile> = None;
        match op {
            "activate" | "get_variation" => {
                let key = call["experiment_key"].as_str().unwrap_or("");
                let decider = Decider::new(config, &no_segments_user).with_overrides(Some(&forced));
                let got = config.experiment_by_key(key).and_then(|idx| {
                    let outcome = if op == "activate" {
                        decider.activate(idx, Some(&profile), &mut stamper)
                    } else {
                        decider.variation(idx, Some(&profile))
                    };
                    events = outcome.events;
                    saved = outcome.profile;
                    let v = outcome.decision.variation;
                    v.map(|v| config.experiments[idx].variations[v].key.clone())
                });
                let got = got.map_or(Value::Null, Value::String);
                if got != call["variation_key"] {
                    return miss(
                        ci,
                        &format!("{op} {key}"),
                        call["variation_key"].clone(),
                        got,
                    );
                }
            }
            "decide" => {
                let keys: Option<Vec<&str>> = call["keys"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect());
                let names: Vec<&str> = call["options"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                let mut options = match DecideOptions::parse(names) {
                    Ok(o) => o,
                    Err(e) => {
                        return miss(
                            ci,
                            "decide options",
                            call["options"].clone(),
                            json!(e.to_string()),
                        )
                    }
                };
                if keys.as_ref().is_some_and(|k| k.len() == 1) {
                    options.enabled_flags_only = false;
                }
                let outcome = Decider::new(config, &user)
                    .with_overrides(Some(&forced))
                    .decide(keys.as_deref(), options, Some(&profile), &mut stamper);
                events = outcome.events;
                saved = outcome.profile;
                let got: Map<String, Value> = outcome
                    .decision
                    .into_iter()
                    .map(|d| {
                        (
                            d.flag_key.clone(),
                            json!({"enabled": d.enabled, "variation_key": d.variation_key,
                                   "rule_key": d.rule_key, "variables": d.variables}),
                        )
                    })
                    .collect();
                let got = Value::Object(got);
                if got != call["decisions"] {
                    return miss(
                        ci,
                        &format!("decide {:?}", call["keys"]),
                        call["decisions"].clone(),
                        got,
                    );
                }
            }
            "track" => {
                let key = call["event_key"].as_str().unwrap_or("");
                let tags = call["event_tags"].as_object();
                if let Some(e) = bucketd::core::emit::conversion(
                    config,
                    key,
                    &user_id,
                    &user.attributes,
                    tags,
                    &mut stamper,
                ) {
                    events.push(e);
                }
            }
            other => {
                return miss(
                    ci,
                    "known op",
                    json!("activate|get_variation|decide|track"),
                    json!(other),
                )
            }
        }
        if let Some(p) = saved {
            stored = Some(p.clone());
            last_saved = Some(p);
        }
        if op != "get_variation" {
            let (want, got) = (theirs(&call["events"]), ours(&events));
            if want != got {
                return miss(
                    ci,
                    &format!("{op} events"),
                    Value::Array(want),
                    Value::Array(got),
                );
            }
        }
    }
    let got = last_saved.map_or(Value::Null, |p| {
        serde_json::to_value(p).unwrap_or(Value::Null)
    });
    if got != u["final_profile"] {
        return miss(
            usize::MAX,
            "final saved profile",
            u["final_profile"].clone(),
            got,
        );
    }
    None
}

fn report(m: &Mismatch, cases: &Value) -> String {
    let (user, file) = write_repro(m, cases, "parity-failures");
    let user = user.as_ref();
    format!(
        "MISMATCH {} user #{} call #{}: {}\n  user_id: {}\n  attributes: {}\n  segments: {}\n  call: {}\n  expected (python sdk): {}\n  got (bucketd):         {}\n  reproduction (datafile + user): {}\n",
        m.case,
        m.user,
        m.call,
        m.what,
        user.map_or(Value::Null, |u| u["user_id"].clone()),
        user.map_or(Value::Null, |u| u["attributes"].clone()),
        user.map_or(Value::Null, |u| u["segments"].clone()),
        user.and_then(|u| u["calls"].get(m.call)).cloned().unwrap_or(Value::Null),
        m.expected,
        m.got,
        file.display()
    )
}

#[test]
fn decisions_and_events_match_the_python_sdk() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no Python with optimizely-sdk was found (set BUCKETD_PARITY_PYTHON)"
        );
        eprintln!("SKIPPED parity test: no Python with optimizely-sdk (set BUCKETD_PARITY_PYTHON)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let seed = env_or("BUCKETD_PARITY_SEED", DEFAULT_SEED);
    let datafiles = env_or("BUCKETD_PARITY_DATAFILES", "20");
    let users = env_or("BUCKETD_PARITY_USERS", "500");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("parity-{seed}-{datafiles}x{users}.json"));
    let status = Command::new(&python)
        .arg(root.join("tests/parity/oracle.py"))
        .args([
            "--seed",
            &seed,
            "--datafiles",
            &datafiles,
            "--users",
            &users,
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run the oracle");
    assert!(status.success(), "oracle.py failed");
    let cases: Value = serde_json::from_slice(&std::fs::read(&out).expect("read oracle output"))
        .expect("oracle output is JSON");

    let mut mismatches = Vec::new();
    let mut users_checked = 0usize;
    let mut calls_checked = 0usize;
    for case in cases["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap_or("?").to_string();
        let text = serde_json::to_vec(&case["datafile"]).expect("datafile serializes");
        let config = match ProjectConfig::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                mismatches.push(Mismatch {
                    case: name.clone(),
                    user: 0,
                    call: 0,
                    what: "datafile accepted by the SDK".into(),
                    expected: json!("valid"),
                    got: json!(e.to_string()),
                });
                continue;
            }
        };
        for (ui, u) in case["users"].as_array().expect("users").iter().enumerate() {
            users_checked += 1;
            calls_checked += u["calls"].as_array().map_or(0, Vec::len);
            if let Some(m) = replay_user(&name, ui, &config, u) {
                mismatches.push(m);
            }
        }
    }
    eprintln!(
        "parity seed {seed}: {} datafiles, {users_checked} users, {calls_checked} calls, {} mismatching users",
        cases["cases"].as_array().map_or(0, Vec::len),
        mismatches.len()
    );
    let reports: Vec<String> = mismatches
        .iter()
        .take(MAX_REPORTED)
        .map(|m| report(m, &cases))
        .collect();
    assert!(
        mismatches.is_empty(),
        "{} users differ from the Python SDK (first {}):\n{}",
        mismatches.len(),
        reports.len(),
        reports.join("\n")
    );
    assert!(
        users_checked >= 100,
        "too few users checked: {users_checked}"
    );
}
