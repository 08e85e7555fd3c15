//! The OpenAPI document (`openapi/bucketd.json`): well-formed OpenAPI 3, every `$ref` resolves,
//! it lists exactly the route table's methods and paths (a route added without documentation
//! fails here), and the daemon serves it at `GET /openapi.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use bucketd::http::ops::openapi::DOCUMENT;
use bucketd::http::routes::ROUTES;
use serde_json::Value;
use std::collections::BTreeSet;

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::from_str(DOCUMENT).expect("openapi/bucketd.json is not JSON")
}

/// Every `(METHOD, path)` the document describes.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for (method, _) in item.as_object().expect("a path item is an object") {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Every `$ref` in `v`, with where it is.
fn refs<'a>(v: &'a Value, at: String, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if k == "$ref" {
                    out.push((at.clone(), child.as_str().expect("a $ref is a string")));
                } else {
                    refs(child, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                refs(child, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_document_is_well_formed_openapi_3() {
    let doc = document();
    let version = doc["openapi"].as_str().expect("no openapi version");
    assert!(version.starts_with("3."), "openapi {version} is not 3.x");
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let mut operation_ids = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(path.starts_with('/'), "path {path} does not start with /");
        for (method, op) in item.as_object().unwrap() {
            assert!(
                METHODS.contains(&method.as_str()),
                "{path}: {method} is no method"
            );
            let id = op["operationId"]
                .as_str()
                .expect("an operation without operationId");
            assert!(operation_ids.insert(id), "operationId {id} twice");
            let responses = op["responses"].as_object().expect("no responses");
            assert!(!responses.is_empty(), "{method} {path} has no responses");
            for (code, r) in responses {
                let status: u16 = code
                    .parse()
                    .unwrap_or_else(|_| panic!("{code} is no status"));
                assert!((100..600).contains(&status), "{method} {path}: {code}");
                assert!(
                    r.get("$ref").is_some() || r["description"].is_string(),
                    "{method} {path} {code}: a response needs a description"
                );
            }
            if status_is_error_only(responses) {
                panic!("{method} {path} documents no success answer");
            }
        }
    }
    let mut found = Vec::new();
    refs(&doc, String::new(), &mut found);
    assert!(!found.is_empty());
    for (at, r) in found {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{at}: external $ref {r}"));
        assert!(
            doc.pointer(pointer).is_some(),
            "{at}: $ref {r} resolves to nothing"
        );
    }
}

fn status_is_error_only(responses: &serde_json::Map<String, Value>) -> bool {
    !responses.keys().any(|c| c.starts_with('2'))
}

#[test]
fn the_document_lists_exactly_the_route_table() {
    let documented = documented(&document());
    // A prefix route (`/datafiles/*`) stands for the documented paths under its prefix; it
    // must have at least one.
    let mut routes: BTreeSet<(String, String)> = BTreeSet::new();
    for r in &ROUTES {
        let method = r.method.to_string();
        match r.path.strip_suffix('*') {
            Some(prefix) => {
                let under: Vec<_> = documented
                    .iter()
                    .filter(|(m, p)| *m == method && p.starts_with(prefix))
                    .cloned()
                    .collect();
                if under.is_empty() {
                    routes.insert((method, r.path.to_string()));
                }
                routes.extend(under);
            }
            None => {
                routes.insert((method, r.path.to_string()));
            }
        }
    }
    let undocumented: Vec<_> = routes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routes).collect();
    assert!(
        undocumented.is_empty() && extra.is_empty(),
        "routes missing from openapi/bucketd.json: {undocumented:?}; \
         documented but not routed: {extra:?}"
    );
}

#[tokio::test]
async fn the_daemon_serves_the_document() {
    let app = common::spawn_app("openapi", &[]).await;
    let resp = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    let served: Value = resp.json().await.unwrap();
    assert_eq!(served, document());
    app.stop().await;
}
