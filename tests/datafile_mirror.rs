//! The datafile mirror (`GET /datafiles/{sdk_key}.json`) and secure-environment datafiles, end
//! to end over TCP: byte-equal bodies with ETag / Last-Modified / the source's Cache-Control
//! and 304s; a secure datafile fetched with its token, served only to its bearer, the token
//! absent from every log line, `/metrics`, `/health` and `bucketd check`; the official Python
//! SDK polling its datafile from bucketd through its `url_template`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers fail loudly on broken fixtures

mod common;

use common::cdn::{logs, Cdn, CDN_CACHE_CONTROL};
use common::{all_to, spawn_app, spawn_app_with_file};
use std::process::Command;

/// A datafile text with its own spacing and key order, so byte-equality means something.
fn odd_text(variation: &str, revision: &str) -> String {
    format!(
        "{}\n\n",
        serde_json::to_string_pretty(&all_to(variation, revision)).unwrap()
    )
    .replace("  ", "   ")
}

#[tokio::test]
async fn mirror_serves_the_bytes_with_validators_and_304s() {
    let cdn = Cdn::start().await;
    let text = odd_text("a", "7");
    cdn.put("/datafiles/MirrorKey.json", &text);
    let app = spawn_app(
        "mirror",
        &[
            ("BUCKETD__DATAFILE__SDK_KEY", "MirrorKey".into()),
            (
                "BUCKETD__DATAFILE__URL_TEMPLATE",
                cdn.url("/datafiles/{sdk_key}.json"),
            ),
            ("BUCKETD__ADMIN__TOKEN", "admintok".into()),
        ],
    )
    .await;
    let url = app.url("/datafiles/MirrorKey.json");
    let r = app.client.get(&url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let h = r.headers().clone();
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        h["cache-control"], CDN_CACHE_CONTROL,
        "the source's Cache-Control"
    );
    let etag = h["etag"].to_str().unwrap().to_string();
    let last_modified = h["last-modified"].to_str().unwrap().to_string();
    assert!(etag.starts_with('"') && etag.len() > 10, "{etag}");
    assert_eq!(r.bytes().await.unwrap(), text.as_bytes(), "byte for byte");

    let r = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = app
        .client
        .get(&url)
        .header("if-none-match", "\"other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .client
        .get(&url)
        .header("if-modified-since", &last_modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 304);
    let r = app
        .client
        .get(&url)
        .header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A new revision: new bytes, new ETag; the old ETag no longer matches.
    let pushed = odd_text("b", "8");
    let r = app
        .client
        .put(app.url("/admin/datafile"))
        .bearer_auth("admintok")
        .header("x-optimizely-sdk-key", "MirrorKey")
        .body(pushed.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app
        .client
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_ne!(r.headers()["etag"].to_str().unwrap(), etag);
    assert_eq!(r.bytes().await.unwrap(), pushed.as_bytes());

    for (path, status) in [
        ("/datafiles/Unknown.json", 404),
        ("/datafiles/MirrorKey", 404),
        ("/datafiles/bad%20key.json", 400),
    ] {
        let (got, body) = app.get_json(path).await;
        assert_eq!(got, status, "{path}: {body}");
        assert!(body["error"].is_string(), "{path}: {body}");
    }
    app.stop().await;
}

const TOKEN: &str = "tok-S3CRET-5d41402abc4b2a76";
const TOKEN2: &str = "tok-0THER-7e0f1c2b9a";

#[tokio::test]
async fn secure_datafiles_use_their_token_which_never_shows() {
    logs::capture();
    let cdn = Cdn::start().await;
    let text = odd_text("a", "3");
    cdn.put("/datafiles/auth/SecKey.json", &text);
    cdn.require_token("/datafiles/auth/SecKey.json", TOKEN);
    cdn.put("/datafiles/auth/SecKey2.json", &odd_text("b", "4"));
    cdn.require_token("/datafiles/auth/SecKey2.json", TOKEN2);
    let dir = common::scratch("secure-config");
    let file = dir.join("bucketd.toml");
    let template = cdn.url("/datafiles/auth/{sdk_key}.json");
    std::fs::write(
        &file,
        format!(
            "[datafile]\nsdk_key = \"SecKey:{TOKEN}\"\nauthenticated_url_template = \"{template}\"\n\
             [[projects]]\nsdk_key = \"SecKey2\"\naccess_token = \"{TOKEN2}\"\nauthenticated_url_template = \"{template}\"\n"
        ),
    )
    .unwrap();
    let app = spawn_app_with_file("secure", &[], Some(&file)).await;
    let seen = cdn.seen.lock().unwrap().clone();
    assert!(
        seen.contains(&(
            "/datafiles/auth/SecKey.json".into(),
            format!("Bearer {TOKEN}")
        )),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(
            "/datafiles/auth/SecKey2.json".into(),
            format!("Bearer {TOKEN2}")
        )),
        "{seen:?}"
    );
    // Decisions from the secure datafiles.
    // (Each key its own visitor: sticky profiles are shared across projects.)
    for (i, (key, want)) in [
        ("SecKey", "a"),
        ("SecKey2", "b"),
        (&format!("SecKey:{TOKEN}")[..], "a"),
    ]
    .into_iter()
    .enumerate()
    {
        let r = app
            .client
            .get(app.url(&format!("/bucketer?e=exp&u=someone-{i}")))
            .header("x-optimizely-sdk-key", key)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        let (_, health) = app.get_json("/health").await;
        assert_eq!(body["variation_key"], want, "{key}: {body} {health}");
    }
    // The mirror: only with the token.
    for path in ["/datafiles/auth/SecKey.json", "/datafiles/SecKey.json"] {
        let url = app.url(path);
        let none = app.client.get(&url).send().await.unwrap();
        assert_eq!(none.status().as_u16(), 401, "{path}");
        let body: serde_json::Value = none.json().await.unwrap();
        assert!(body["error"].is_string());
        let wrong = app
            .client
            .get(&url)
            .bearer_auth(TOKEN2)
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 403, "{path}");
        let right = app
            .client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status().as_u16(), 200, "{path}");
        assert_eq!(right.bytes().await.unwrap(), text.as_bytes());
    }
    // A refresh (so the poll path logs too), then look everywhere the token could leak.
    app.client.get(app.url("/health")).send().await.unwrap();
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let health = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let settings = bucketd::config::load(Some(&file), &Default::default()).unwrap();
    let (bin, cfg, state) = (
        env!("CARGO_BIN_EXE_bucketd"),
        file.clone(),
        dir.join("check-state"),
    );
    let checked = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .arg("--config")
            .arg(&cfg)
            .arg("check")
            .env("BUCKETD__STATE_DIR", &state)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let check = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(checked.status.success(), "{check}");
    assert!(check.contains("revision 3"), "{check}");
    assert!(check.contains("revision 4"), "{check}");
    let debug = format!("{settings:?}");
    app.stop().await;
    let logged = logs::text();
    assert!(
        logged.contains("datafile in use"),
        "logs were captured: {logged}"
    );
    for (what, text) in [
        ("logs", &logged),
        ("/metrics", &metrics),
        ("/health", &health),
        ("bucketd check", &check),
        ("settings Debug", &debug),
    ] {
        for token in [TOKEN, TOKEN2] {
            assert!(!text.contains(token), "{what} shows the token: {text}");
        }
    }
}

/// The official Python SDK polls its datafile from bucketd through `url_template`: its
/// decisions are those of the SDK given the datafile directly, and its unchanged polls get 304.
#[tokio::test]
async fn python_sdk_polls_its_datafile_from_the_mirror() {
    let Some(python) = python() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs BUCKETD_PARITY_PYTHON"
        );
        eprintln!("skipped: no Python with optimizely-sdk");
        return;
    };
    let cdn = Cdn::start().await;
    let datafile = bucketd::source::BUNDLED_DATAFILE;
    cdn.put("/datafiles/SdkKey.json", datafile);
    let app = spawn_app(
        "mirror-sdk",
        &[
            ("BUCKETD__DATAFILE__SDK_KEY", "SdkKey".into()),
            (
                "BUCKETD__DATAFILE__URL_TEMPLATE",
                cdn.url("/datafiles/{sdk_key}.json"),
            ),
        ],
    )
    .await;
    let dir = common::scratch("mirror-sdk-py");
    let direct = dir.join("datafile.json");
    std::fs::write(&direct, datafile).unwrap();
    let script = r#"
import json, sys, time
from optimizely import optimizely
from optimizely.event_dispatcher import EventDispatcher

class Drop:
    def dispatch_event(self, event):
        pass

base, path = sys.argv[1], sys.argv[2]
from optimizely.config_manager import PollingConfigManager

manager = PollingConfigManager(sdk_key="SdkKey", url_template=base + "/datafiles/{sdk_key}.json",
                               update_interval=0.3, blocking_timeout=10)
polled = optimizely.Optimizely(config_manager=manager, event_dispatcher=Drop())
manager.get_config()
time.sleep(1.5)  # several unchanged polls
direct = optimizely.Optimizely(datafile=open(path).read(), event_dispatcher=Drop())
out = {}
for name, client in (("polled", polled), ("direct", direct)):
    rows = []
    for i in range(200):
        user = client.create_user_context("user-%d" % i, {"tier": "gold" if i % 2 else "platinum"})
        for key, d in sorted(user.decide_all().items()):
            rows.append([user.user_id, key, d.variation_key, d.enabled])
    out[name] = rows
out["revision"] = polled.config_manager.get_config().get_revision()
polled.close()
print(json.dumps(out))
"#;
    let base = app.base.clone();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script, &base, direct.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let polled = out["polled"].as_array().unwrap();
    assert!(polled.len() >= 200, "{out}");
    assert_eq!(out["polled"], out["direct"]);
    let bundled: serde_json::Value = serde_json::from_str(datafile).unwrap();
    assert_eq!(out["revision"], bundled["revision"]);
    let not_modified = common::metric(
        &app.base,
        "bucketd_http_requests_total{route=\"datafile_mirror\",status=\"304\"}",
    )
    .await;
    assert!(
        not_modified >= 2.0,
        "unchanged polls answered 304: {not_modified}"
    );
    app.stop().await;
}

fn python() -> Option<std::path::PathBuf> {
    let candidate = std::env::var_os("BUCKETD_PARITY_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")
        });
    let ok = Command::new(&candidate)
        .args(["-c", "import optimizely"])
        .output()
        .is_ok_and(|o| o.status.success());
    ok.then_some(candidate)
}
