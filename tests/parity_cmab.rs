//! CMAB parity against the official Python SDK: `tests/parity/oracle.py --cmab` records what
//! `optimizely-sdk` answers when its predictions come from `tests/parity/prediction_server.py`;
//! this test starts the same server and replays every call through the core plus the service's
//! own prediction client, cache and second pass (`service::cmab::resolve`), comparing decisions,
//! impressions (`cmab_uuid` by pattern and by which decisions share one), saved profiles and the
//! prediction requests each call made.
//!
//! Environment: `BUCKETD_PARITY_PYTHON` (a Python with `optimizely-sdk`), `BUCKETD_PARITY_SEED`,
//! `BUCKETD_PARITY_CMAB_DATAFILES` (20), `BUCKETD_PARITY_CMAB_USERS` (100),
//! `BUCKETD_PARITY_ORACLE_DIR` (where `oracle.py` and `prediction_server.py` are; default
//! `tests/parity`). Without a usable Python the test skips locally and fails in CI.
//!
//! The datafiles are the oracle's own, holdouts and `fr` rules included.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

#[path = "parity/support.rs"]
mod support;

use bucketd::core::{
    DecideOptions, Decider, ExternalInputs, ForcedDecision, ForcedVariations, ProjectConfig,
    UserContext, UserProfile,
};
use bucketd::service::cmab::{
    resolve, CacheOptions, CmabService, MemoryCache, PredictionClient, RequestLog, RetryPolicy,
};
use serde_json::{json, Map, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{env_or, ours, python, theirs, write_repro, Mismatch, MAX_REPORTED};

const DEFAULT_SEED: &str = "20261201";
/// The oracle's request timeout (below the server's 1.5 s delay) and backoff.
const TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF: Duration = Duration::from_millis(1);

/// The prediction server, stopped on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_server(python: &Path, dir: &Path, cases: &Path) -> (Server, u16) {
    let mut child = Command::new(python)
        .arg(dir.join("prediction_server.py"))
        .args(["--cases"])
        .arg(cases)
        .args(["--port", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start prediction_server.py");
    let stdout = child.stdout.take().expect("server stdout");
    let server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("server banner");
    // "prediction server on http://127.0.0.1:PORT/<case>/predict/<rule id> (N rules)"
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    (server, port)
}

/// Replaces each `cmab_uuid` by the order in which it first appeared for this user (checking it
/// looks like a UUID), so equal predictions compare equal across runs.
fn normalize_uuids(events: &mut [Value], seen: &mut Vec<String>) -> Result<(), String> {
    for e in events {
        let visitors = e["params"]["visitors"].as_array_mut();
        for v in visitors.into_iter().flatten() {
            for s in v["snapshots"].as_array_mut().into_iter().flatten() {
                for d in s["decisions"].as_array_mut().into_iter().flatten() {
                    let Some(m) = d["metadata"].as_object_mut() else {
                        continue;
                    };
                    let Some(u) = m.get("cmab_uuid").and_then(Value::as_str) else {
                        continue;
                    };
                    let ok = u.len() == 36
                        && u.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
                        && u.matches('-').count() == 4;
                    if !ok {
                        return Err(format!("cmab_uuid {u:?} is not a UUID"));
                    }
                    let n = match seen.iter().position(|s| s == u) {
                        Some(n) => n,
                        None => {
                            seen.push(u.to_string());
                            seen.len() - 1
                        }
                    };
                    m.insert("cmab_uuid".into(), json!(format!("<uuid #{n}>")));
                }
            }
        }
    }
    Ok(())
}

/// The requests a call made, as comparable values, in a canonical order (bucketd fetches the
/// predictions of one pass concurrently; the SDK one after the other).
fn requests_expected(call: &Value) -> Vec<Value> {
    let mut out: Vec<Value> = call["cmab_requests"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            json!({"rule_id": r["rule_id"], "visitor_id": r["visitor_id"],
                   "attributes": r["attributes"], "attempt": r["attempt"]})
        })
        .collect();
    out.sort_by_key(Value::to_string);
    out
}

fn requests_made(log: &RequestLog) -> Vec<Value> {
    let mut out: Vec<Value> = std::mem::take(&mut *log.lock().unwrap())
        .into_iter()
        .map(|(rule, attempt, body)| {
            let i = &body["instances"][0];
            json!({"rule_id": rule, "visitor_id": i["visitorId"],
                   "attributes": i["attributes"], "attempt": attempt})
        })
        .collect();
    out.sort_by_key(Value::to_string);
    out
}

struct Replay<'a> {
    case: &'a str,
    config: &'a ProjectConfig,
    cmab: &'a CmabService,
    log: &'a RequestLog,
}

impl Replay<'_> {
    async fn user(&self, ui: usize, u: &Value) -> Option<Mismatch> {
        let miss = |call: usize, what: &str, expected: Value, got: Value| {
            Some(Mismatch {
                case: self.case.to_string(),
                user: ui,
                call,
                what: what.to_string(),
                expected,
                got,
            })
        };
        let config = self.config;
        let user_id = u["user_id"].as_str().unwrap_or_default().to_string();
        let attributes: Map<String, Value> =
            u["attributes"].as_object().cloned().unwrap_or_default();
        let mut forced = ForcedVariations::default();
        for fv in u["forced_variations"].as_array().into_iter().flatten() {
            let (e, v) = (
                fv["experiment_key"].as_str().unwrap_or(""),
                fv["variation_key"].as_str(),
            );
            if let Err(err) = forced.set(config, e, &user_id, v) {
                return miss(
                    0,
                    "set_forced_variation",
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
        let plain_user = UserContext::new(user_id.clone(), user.attributes.clone());
        user.qualified_segments = u["segments"].as_array().map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        });
        let mut stored: Option<UserProfile> = serde_json::from_value(u["profile"].clone()).ok();
        let mut last_saved: Option<UserProfile> = None;
        let mut n = 0u64;
        let mut stamper = move || {
            n += 1;
            (format!("uuid-{n}"), n)
        };
        let (mut seen_ours, mut seen_theirs) = (Vec::new(), Vec::new());
        self.log.lock().unwrap().clear();

        for (ci, call) in u["calls"].as_array().into_iter().flatten().enumerate() {
            let op = call["op"].as_str().unwrap_or("");
            let profile = stored
                .clone()
                .unwrap_or_else(|| UserProfile::new(user_id.clone()));
            let (events, saved);
            match op {
                "activate" | "get_variation" => {
                    let key = call["experiment_key"].as_str().unwrap_or("");
                    let Some(idx) = config.experiment_by_key(key) else {
                        if !call["variation_key"].is_null() {
                            return miss(ci, key, call["variation_key"].clone(), Value::Null);
                        }
                        continue;
                    };
                    let decide = |inputs: &ExternalInputs| {
                        let d = Decider::new(config, &plain_user)
                            .with_overrides(Some(&forced))
                            .with_inputs(inputs);
                        if op == "activate" {
                            d.activate(idx, Some(&profile), &mut stamper)
                        } else {
                            d.variation(idx, Some(&profile))
                        }
                    };
                    let outcome =
                        resolve(Some(self.cmab), &user_id, CacheOptions::default(), decide).await;
                    let got = outcome.decision.variation.map_or(Value::Null, |v| {
                        json!(config.experiments[idx].variations[v].key)
                    });
                    if got != call["variation_key"] {
                        return miss(
                            ci,
                            &format!("{op} {key}"),
                            call["variation_key"].clone(),
                            got,
                        );
                    }
                    (events, saved) = (outcome.events, outcome.profile);
                }
                "decide" => {
                    let keys: Option<Vec<&str>> = call["keys"]
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).collect());
                    let names = call["options"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str);
                    let mut options = match DecideOptions::parse(names) {
                        Ok(o) => o,
                        Err(e) => return miss(ci, "options", call["options"].clone(), json!(e.0)),
                    };
                    if keys.as_ref().is_some_and(|k| k.len() == 1) {
                        options.enabled_flags_only = false;
                    }
                    let decide = |inputs: &ExternalInputs| {
                        Decider::new(config, &user)
                            .with_overrides(Some(&forced))
                            .with_inputs(inputs)
                            .decide(keys.as_deref(), options, Some(&profile), &mut stamper)
                    };
                    let outcome = resolve(Some(self.cmab), &user_id, options.into(), decide).await;
                    let got: Map<String, Value> = outcome
                        .decision
                        .iter()
                        .map(|d| {
                            (
                                d.flag_key.clone(),
                                json!({"enabled": d.enabled, "variation_key": d.variation_key,
                                       "rule_key": d.rule_key, "variables": d.variables}),
                            )
                        })
                        .collect();
                    if Value::Object(got.clone()) != call["decisions"] {
                        return miss(
                            ci,
                            &format!("decide {:?} {:?}", call["keys"], call["options"]),
                            call["decisions"].clone(),
                            Value::Object(got),
                        );
                    }
                    (events, saved) = (outcome.events, outcome.profile);
                }
                "track" => {
                    let key = call["event_key"].as_str().unwrap_or("");
                    let tags = call["event_tags"].as_object();
                    let e = bucketd::core::emit::conversion(
                        config,
                        key,
                        &user_id,
                        &user.attributes,
                        tags,
                        &mut stamper,
                    );
                    (events, saved) = (e.into_iter().collect(), None);
                }
                other => return miss(ci, "known op", json!("decide|activate|..."), json!(other)),
            }
            let (want, got) = (requests_expected(call), requests_made(self.log));
            if want != got {
                return miss(
                    ci,
                    &format!("{op} prediction requests"),
                    json!(want),
                    json!(got),
                );
            }
            if let Some(p) = saved {
                stored = Some(p.clone());
                last_saved = Some(p);
            }
            if op != "get_variation" {
                let (mut want, mut got) = (theirs(&call["events"]), ours(&events));
                if let Err(e) = normalize_uuids(&mut want, &mut seen_theirs) {
                    return miss(ci, "SDK cmab_uuid", json!(e), Value::Null);
                }
                if let Err(e) = normalize_uuids(&mut got, &mut seen_ours) {
                    return miss(ci, "cmab_uuid", Value::Null, json!(e));
                }
                if want != got {
                    return miss(ci, &format!("{op} events"), json!(want), json!(got));
                }
            }
        }
        let got = last_saved.map_or(Value::Null, |p| serde_json::to_value(p).unwrap());
        if got != u["final_profile"] {
            return miss(usize::MAX, "final profile", u["final_profile"].clone(), got);
        }
        None
    }
}

fn report(m: &Mismatch, cases: &Value) -> String {
    let (user, file) = write_repro(m, cases, "parity-cmab-failures");
    let user = user.as_ref();
    format!(
        "MISMATCH {} user #{} call #{}: {}\n  user_id: {}\n  attributes: {}\n  call: {}\n  expected (python sdk): {}\n  got (bucketd):         {}\n  reproduction: {}\n",
        m.case,
        m.user,
        m.call,
        m.what,
        user.map_or(Value::Null, |u| u["user_id"].clone()),
        user.map_or(Value::Null, |u| u["attributes"].clone()),
        user.and_then(|u| u["calls"].get(m.call))
            .map_or(Value::Null, |c| {
                let mut c = c.clone();
                c.as_object_mut().map(|o| o.remove("events"));
                c
            }),
        m.expected,
        m.got,
        file.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cmab_decisions_events_and_requests_match_the_python_sdk() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set but no Python with optimizely-sdk was found (set BUCKETD_PARITY_PYTHON)"
        );
        eprintln!("SKIPPED CMAB parity: no Python with optimizely-sdk (set BUCKETD_PARITY_PYTHON)");
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = std::env::var_os("BUCKETD_PARITY_ORACLE_DIR")
        .map_or_else(|| root.join("tests/parity"), PathBuf::from);
    let seed = env_or("BUCKETD_PARITY_SEED", DEFAULT_SEED);
    let datafiles = env_or("BUCKETD_PARITY_CMAB_DATAFILES", "20");
    let users = env_or("BUCKETD_PARITY_CMAB_USERS", "100");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("parity-cmab-{seed}-{datafiles}x{users}.json"));
    let started = Instant::now();
    let status = Command::new(&python)
        .arg(dir.join("oracle.py"))
        .args([
            "--seed",
            &seed,
            "--datafiles",
            &datafiles,
            "--users",
            &users,
        ])
        .args(["--cmab", "--out"])
        .arg(&out)
        .stderr(Stdio::null())
        .status()
        .expect("run the oracle");
    assert!(status.success(), "oracle.py --cmab failed");
    let oracle_time = started.elapsed();
    let cases: Value =
        serde_json::from_slice(&std::fs::read(&out).expect("oracle output")).expect("JSON");
    let (_server, port) = start_server(&python, &dir, &out);

    let started = Instant::now();
    let (mut mismatches, mut replayed) = (Vec::new(), 0);
    let (mut users_checked, mut requests) = (0usize, 0usize);
    for case in cases["cases"].as_array().expect("cases") {
        let name = case["name"].as_str().unwrap_or("?");
        replayed += 1;
        let text = serde_json::to_vec(&case["datafile"]).unwrap();
        let config = ProjectConfig::parse(&text).expect("datafile the SDK accepted");
        let log: RequestLog = Arc::default();
        let retry = RetryPolicy {
            max_retries: 1,
            initial_backoff: BACKOFF,
            max_backoff: Duration::from_secs(10),
            multiplier: 2.0,
        };
        let url = format!("http://127.0.0.1:{port}/{name}/predict/{{}}");
        let client = PredictionClient::new(url, TIMEOUT, retry).recording(log.clone());
        let cache = MemoryCache::new(10_000, Duration::from_secs(30 * 60));
        let cmab = CmabService::new(client, Arc::new(cache));
        let replay = Replay {
            case: name,
            config: &config,
            cmab: &cmab,
            log: &log,
        };
        for (ui, u) in case["users"].as_array().expect("users").iter().enumerate() {
            users_checked += 1;
            requests += u["calls"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| c["cmab_requests"].as_array().map_or(0, Vec::len))
                .sum::<usize>();
            if let Some(m) = replay.user(ui, u).await {
                mismatches.push(m);
            }
        }
    }
    eprintln!(
        "CMAB parity seed {seed}: {replayed} datafiles, {users_checked} users, {requests} \
         prediction requests, {} mismatching users; oracle {:.1?}, replay {:.1?}",
        mismatches.len(),
        oracle_time,
        started.elapsed()
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
        users_checked >= 100 && requests > 0,
        "too little checked: {users_checked} users"
    );
}
