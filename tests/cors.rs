//! CORS over real TCP: preflights answered (204) before authentication, actual responses
//! decorated for allowed origins only, `*`, and CORS off by default.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use sha2::Digest;

const ORIGIN: &str = "https://app.example.com";
const TOKEN: &str = "cors-test-token";

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn app_with(name: &str, cors: &str) -> common::TestApp {
    let dir = common::scratch(name);
    let file = dir.join("cors.toml");
    std::fs::write(
        &file,
        format!(
            "[api.cors]\n{cors}\n[[api.auth.tokens]]\nsha256 = \"{}\"\n",
            hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
        ),
    )
    .unwrap();
    common::spawn_app_with_file(name, &[], Some(&file)).await
}

#[tokio::test]
async fn preflights_and_actual_requests_of_allowed_origins_get_cors_headers() {
    let app = app_with(
        "cors-list",
        &format!(
            "allowed_origins = [\"{ORIGIN}\"]\nallowed_methods = [\"GET\", \"POST\"]\nallowed_headers = [\"Content-Type\", \"Authorization\", \"X-Optimizely-SDK-Key\"]\nexposed_headers = [\"X-Request-Id\"]\nmax_age = \"10m\"\n"
        ),
    )
    .await;
    let preflight = |origin: &'static str, method: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/v1/decide"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", method)
            .header(
                "Access-Control-Request-Headers",
                "content-type, authorization",
            )
            .send()
    };
    // Answered without a token (auth is on), with the policy.
    let r = preflight(ORIGIN, "POST").await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        header(&r, "access-control-allow-methods").as_deref(),
        Some("GET, POST")
    );
    assert_eq!(
        header(&r, "access-control-allow-headers").as_deref(),
        Some("Content-Type, Authorization, X-Optimizely-SDK-Key")
    );
    assert_eq!(header(&r, "access-control-max-age").as_deref(), Some("600"));
    assert!(header(&r, "vary").unwrap().contains("Origin"));
    // Another origin, or a method not allowed: no CORS headers, so the browser refuses.
    for r in [
        preflight("https://evil.example", "POST").await.unwrap(),
        preflight(ORIGIN, "DELETE").await.unwrap(),
    ] {
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(header(&r, "access-control-allow-origin"), None);
        assert_eq!(header(&r, "access-control-allow-methods"), None);
    }

    // Actual requests: allowed origin decorated (errors too, so the page can read them).
    let get = |origin: &'static str, token: Option<&'static str>| {
        let mut req = app
            .client
            .get(app.url("/v1/config"))
            .header("Origin", origin);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    let r = get(ORIGIN, Some(TOKEN)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    assert_eq!(
        header(&r, "access-control-expose-headers").as_deref(),
        Some("X-Request-Id")
    );
    let r = get(ORIGIN, None).await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some(ORIGIN)
    );
    let r = get("https://evil.example", Some(TOKEN)).await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    assert_eq!(header(&r, "access-control-expose-headers"), None);
    app.stop().await;
}

#[tokio::test]
async fn a_wildcard_allows_every_origin() {
    let app = app_with("cors-any", "allowed_origins = [\"*\"]\n").await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/config"))
        .header("Origin", "https://anyone.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    let r = app
        .client
        .get(app.url("/health"))
        .header("Origin", "https://anyone.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&r, "access-control-allow-origin").as_deref(),
        Some("*")
    );
    app.stop().await;
}

#[tokio::test]
async fn cors_is_off_by_default() {
    let app = common::spawn_app("cors-off", &[]).await;
    let r = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/v1/decide"))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405, "no preflight handling");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    let r = app
        .client
        .get(app.url("/v1/config"))
        .header("Origin", ORIGIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "auth is off by default too");
    assert_eq!(header(&r, "access-control-allow-origin"), None);
    app.stop().await;
}
