//! API authentication over real TCP: tokens issued by `POST /oauth/token` and refused
//! (expired, wrong signature, wrong SDK key, missing), static tokens, JWTs verified through a
//! JWKS served by a local server and rotated, and `bucketd check` refusing a bad hash.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use sha2::Digest;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
const HMAC: &[u8] = b"0123456789abcdef0123456789abcdef-test-key";
const CLIENT_SECRET: &[u8] = b"the-client-secret-bytes-32-long!";
const STATIC_TOKEN: &str = "static-token-for-tests";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A config with two projects (k1, k2) and the given `[api.auth]` body.
fn config(dir: &std::path::Path, auth: &str) -> std::path::PathBuf {
    let datafile = dir.join("d.json");
    std::fs::write(&datafile, common::all_to("a", "1").to_string()).unwrap();
    let file = dir.join("auth.toml");
    std::fs::write(
        &file,
        format!(
            "[[projects]]\nsdk_key = \"k1\"\npath = \"{p}\"\n[[projects]]\nsdk_key = \"k2\"\npath = \"{p}\"\n[api.auth]\n{auth}\n",
            p = datafile.display()
        ),
    )
    .unwrap();
    file
}

fn hmac_auth() -> String {
    // Cost 4 keeps the test fast; the format is the Agent's (base64 of the bcrypt hash).
    let hash = B64.encode(bcrypt::hash(CLIENT_SECRET, 4).unwrap());
    let static_sha = hex::encode(sha2::Sha256::digest(STATIC_TOKEN.as_bytes()));
    format!(
        "hmac_secrets = [\"{}\"]\nttl = \"10m\"\n[[api.auth.clients]]\nid = \"web\"\nsecret_hash = \"{hash}\"\nsdk_keys = [\"k1\"]\n[[api.auth.tokens]]\nsha256 = \"{static_sha}\"\n",
        B64.encode(HMAC)
    )
}

async fn get_config(app: &common::TestApp, key: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = app
        .client
        .get(app.url("/v1/config"))
        .header("X-Optimizely-SDK-Key", key);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap()
}

async fn issue(app: &common::TestApp, id: &str, secret: &[u8]) -> (u16, Value) {
    let r = app
        .client
        .post(app.url("/oauth/token"))
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(format!(
            "grant_type=client_credentials&client_id={id}&client_secret={}",
            form_urlencoded::byte_serialize(B64.encode(secret).as_bytes()).collect::<String>()
        ))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn assert_401(r: reqwest::Response, why: &str) {
    assert_eq!(r.status().as_u16(), 401, "{why}");
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(challenge.starts_with("Bearer"), "{why}: {challenge}");
    let body: Value = r.json().await.unwrap();
    assert!(body["error"].is_string(), "{why}: {body}");
}

#[tokio::test]
async fn client_credentials_tokens_are_issued_scoped_and_refused() {
    let dir = common::scratch("auth-hmac");
    let file = config(&dir, &hmac_auth());
    let app = common::spawn_app_with_file("auth-hmac", &[], Some(&file)).await;

    // Without a token the API is closed; operations stay open.
    assert_401(get_config(&app, "k1", None).await, "no token").await;
    let r = app
        .client
        .get(app.url("/bucketer?experiment=exp&user=u"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "/bucketer needs a token too");
    assert_eq!(app.get_json("/health").await.0, 200);

    // The token endpoint: the Agent's form fields and answers.
    let (status, body) = issue(&app, "web", b"wrong secret").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, body) = issue(&app, "nobody", CLIENT_SECRET).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let r = app
        .client
        .post(app.url("/oauth/token"))
        .json(&json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415, "JSON is not the form encoding");
    let (status, body) = issue(&app, "web", CLIENT_SECRET).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["expires_in"], 600);
    let token = body["access_token"].as_str().unwrap().to_string();

    // Scoped to k1: k1 served, k2 forbidden.
    let r = get_config(&app, "k1", Some(&token)).await;
    assert_eq!(r.status().as_u16(), 200);
    let r = get_config(&app, "k2", Some(&token)).await;
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .contains("insufficient_scope"));
    // Without the header the default project (k1) is served, which the token may use.
    let r = app
        .client
        .get(app.url("/v1/config"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // Expired, and signed with another key.
    let claims = |exp: u64| json!({"exp": exp, "sdk_keys": ["k1"]});
    let expired = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(now() - 3600),
        &EncodingKey::from_secret(HMAC),
    )
    .unwrap();
    assert_401(get_config(&app, "k1", Some(&expired)).await, "expired").await;
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(now() + 3600),
        &EncodingKey::from_secret(b"another key, not the configured one"),
    )
    .unwrap();
    assert_401(
        get_config(&app, "k1", Some(&forged)).await,
        "wrong signature",
    )
    .await;
    let unscoped = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": now() + 3600}),
        &EncodingKey::from_secret(HMAC),
    )
    .unwrap();
    assert_401(
        get_config(&app, "k1", Some(&unscoped)).await,
        "no sdk_keys claim",
    )
    .await;
    assert_401(get_config(&app, "k1", Some("garbage")).await, "not a token").await;

    // The static token, unscoped: every key.
    for key in ["k1", "k2"] {
        let r = get_config(&app, key, Some(STATIC_TOKEN)).await;
        assert_eq!(r.status().as_u16(), 200, "static token on {key}");
    }
    assert_401(
        get_config(&app, "k1", Some("static-token-for-tests-not")).await,
        "unknown static token",
    )
    .await;
    app.stop().await;
}

/// A JWKS endpoint whose document the test replaces; counts fetches.
struct JwksServer {
    url: String,
    doc: Arc<Mutex<String>>,
    fetches: Arc<std::sync::atomic::AtomicUsize>,
}

async fn jwks_server() -> JwksServer {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    let doc = Arc::new(Mutex::new(String::from("{\"keys\":[]}")));
    let fetches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (served, counted) = (doc.clone(), fetches.clone());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let body = served.lock().unwrap().clone();
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(body.as_bytes()).await;
            });
        }
    });
    JwksServer { url, doc, fetches }
}

/// A P-256 key: its JWK (public) and its signing key.
fn ec_key(kid: &str) -> (Value, EncodingKey) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let point = kp.public_key_raw(); // 0x04 || x || y
    let jwk = json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": B64URL.encode(&point[1..33]), "y": B64URL.encode(&point[33..65]),
    });
    let signing = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    (jwk, signing)
}

fn es256(kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.into());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

#[tokio::test]
async fn jwks_tokens_are_verified_and_a_rotated_key_is_picked_up() {
    let server = jwks_server().await;
    let (jwk1, key1) = ec_key("one");
    let (jwk2, key2) = ec_key("two");
    *server.doc.lock().unwrap() = json!({"keys": [jwk1]}).to_string();
    let dir = common::scratch("auth-jwks");
    let file = config(
        &dir,
        &format!(
            "jwks_url = \"{}\"\njwks_update_interval = \"1h\"\njwks_audience = \"bucketd\"\n",
            server.url
        ),
    );
    let app = common::spawn_app_with_file("auth-jwks", &[], Some(&file)).await;
    let claims = json!({"exp": now() + 600, "aud": "bucketd", "sdk_keys": ["k1", "k2"]});

    let t1 = es256("one", &key1, &claims);
    assert_eq!(
        get_config(&app, "k2", Some(&t1)).await.status().as_u16(),
        200
    );
    let other_aud = es256(
        "one",
        &key1,
        &json!({"exp": now() + 600, "aud": "someone-else", "sdk_keys": ["k1"]}),
    );
    assert_401(
        get_config(&app, "k1", Some(&other_aud)).await,
        "wrong audience",
    )
    .await;
    // Signed by key two but naming key one: a bad signature.
    let mislabelled = es256("one", &key2, &claims);
    assert_401(
        get_config(&app, "k1", Some(&mislabelled)).await,
        "wrong key",
    )
    .await;
    let scoped = es256(
        "one",
        &key1,
        &json!({"exp": now() + 600, "aud": "bucketd", "sdk_keys": ["k2"]}),
    );
    assert_eq!(
        get_config(&app, "k1", Some(&scoped))
            .await
            .status()
            .as_u16(),
        403
    );

    // Rotation: the provider now publishes key two only. The first token naming it makes
    // bucketd fetch the set again (the update interval is an hour away).
    *server.doc.lock().unwrap() = json!({"keys": [jwk2]}).to_string();
    let before = server.fetches.load(std::sync::atomic::Ordering::SeqCst);
    let t2 = es256("two", &key2, &claims);
    assert_eq!(
        get_config(&app, "k1", Some(&t2)).await.status().as_u16(),
        200
    );
    assert_eq!(
        server.fetches.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "the unknown kid caused one fetch"
    );
    // Key one is gone from the set, and unknown kids do not cause a fetch each.
    assert_401(get_config(&app, "k1", Some(&t1)).await, "retired key").await;
    for i in 0..5 {
        let made_up = es256(&format!("made-up-{i}"), &key2, &claims);
        assert_401(get_config(&app, "k1", Some(&made_up)).await, "unknown kid").await;
    }
    assert_eq!(
        server.fetches.load(std::sync::atomic::Ordering::SeqCst),
        before + 1,
        "refetches for unknown kids are rate-limited"
    );
    app.stop().await;
}

#[test]
fn check_refuses_a_bad_secret_hash_with_exit_64() {
    let dir = common::scratch("auth-check");
    let file = config(
        &dir,
        &format!(
            "hmac_secrets = [\"{}\"]\n[[api.auth.clients]]\nid = \"web\"\nsecret_hash = \"{}\"\nsdk_keys = [\"k1\"]\n",
            B64.encode(HMAC),
            B64.encode("not-a-bcrypt-hash")
        ),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_bucketd"))
        .arg("--config")
        .arg(&file)
        .arg("check")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("api.auth.clients[0].secret_hash"),
        "{stderr}"
    );
}
