//! What both parity tests (`tests/parity.rs`, `tests/parity_cmab.rs`) share: finding the oracle's
//! Python, rendering bucketd's events the way the oracle records the SDK's, dropping the fields
//! that legitimately differ, and writing a reproduction for a mismatch.

use bucketd::core::events::UserEvent;
use bucketd::core::payload::{endpoint_for_region, render, Client};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

/// How many mismatches a run prints before it stops looking.
pub const MAX_REPORTED: usize = 5;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// A Python with `optimizely-sdk` installed: `BUCKETD_PARITY_PYTHON`, else the project's venv.
pub fn python() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let candidate = std::env::var_os("BUCKETD_PARITY_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args(["-c", "import optimizely"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}

/// An event payload with the fields that legitimately differ removed.
pub fn normalize(mut params: Value) -> Value {
    if let Some(o) = params.as_object_mut() {
        o.remove("client_name");
        o.remove("client_version");
    }
    if let Some(visitors) = params.get_mut("visitors").and_then(Value::as_array_mut) {
        for v in visitors {
            for s in v["snapshots"].as_array_mut().into_iter().flatten() {
                for e in s["events"].as_array_mut().into_iter().flatten() {
                    if let Some(e) = e.as_object_mut() {
                        e.remove("uuid");
                        e.remove("timestamp");
                    }
                }
            }
        }
    }
    params
}

/// bucketd's events, one payload each, as `{"url", "params"}` like the oracle's records.
pub fn ours(events: &[UserEvent]) -> Vec<Value> {
    let client = Client {
        name: "bucketd",
        version: "test",
    };
    events
        .iter()
        .flat_map(|e| {
            render(std::slice::from_ref(e), &client)
                .into_iter()
                .map(|b| {
                    let body = serde_json::to_value(&b.batch).unwrap_or(Value::Null);
                    json!({"url": endpoint_for_region(&b.context.region), "params": normalize(body)})
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The SDK's recorded events, normalised the same way.
pub fn theirs(expected: &Value) -> Vec<Value> {
    expected
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| json!({"url": e["url"], "params": normalize(e["params"].clone())}))
        .collect()
}

/// The first difference found for one user.
pub struct Mismatch {
    pub case: String,
    pub user: usize,
    pub call: usize,
    pub what: String,
    pub expected: Value,
    pub got: Value,
}

/// Writes the mismatching case's datafile and user to `<target tmp>/<dir>/` and returns that
/// user's recorded input with the file written.
pub fn write_repro(m: &Mismatch, cases: &Value, dir: &str) -> (Option<Value>, PathBuf) {
    let case = cases["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == m.case.as_str());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    let file = dir.join(format!("{}-user{}.json", m.case, m.user));
    if let Some(c) = case {
        let repro = json!({"name": m.case, "datafile": c["datafile"],
                           "user": c["users"][m.user], "call": m.call});
        let _ = std::fs::create_dir_all(&dir);
        let _ = std::fs::write(&file, serde_json::to_vec_pretty(&repro).unwrap_or_default());
    }
    (case.map(|c| c["users"][m.user].clone()), file)
}
