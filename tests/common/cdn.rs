//! A stand-in for the Optimizely CDN: serves datafiles by path with an ETag and its own
//! `Cache-Control`, answers `304` to a matching `If-None-Match`, requires a bearer token on
//! `/datafiles/auth/...`, and counts what it was asked.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The `Cache-Control` this stand-in sends (the mirror must repeat it).
pub const CDN_CACHE_CONTROL: &str = "public, max-age=97";

pub struct Cdn {
    pub addr: std::net::SocketAddr,
    /// path → (body, version)
    files: Mutex<HashMap<String, (String, u64)>>,
    /// path → the bearer token it requires
    tokens: Mutex<HashMap<String, String>>,
    /// Every request: (path, Authorization header or "").
    pub seen: Mutex<Vec<(String, String)>>,
    pub not_modified: AtomicUsize,
    /// Delay before each answer.
    pub delay_ms: AtomicUsize,
}

impl Cdn {
    pub async fn start() -> Arc<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let cdn = Arc::new(Cdn {
            addr: listener.local_addr().unwrap(),
            files: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
            seen: Mutex::new(Vec::new()),
            not_modified: AtomicUsize::new(0),
            delay_ms: AtomicUsize::new(0),
        });
        let c = cdn.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let c = c.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let c = c.clone();
                            async move {
                                let delay = c.delay_ms.load(Ordering::Relaxed) as u64;
                                if delay > 0 {
                                    tokio::time::sleep(Duration::from_millis(delay)).await;
                                }
                                Ok::<_, std::convert::Infallible>(c.answer(&req))
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        cdn
    }

    /// `http://127.0.0.1:port` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Serves `body` at `path` (a new version each call).
    pub fn put(&self, path: &str, body: &str) {
        let mut files = self.files.lock().unwrap();
        let version = files.get(path).map_or(1, |(_, v)| v + 1);
        files.insert(path.to_string(), (body.to_string(), version));
    }

    /// `path` answers only requests with `Authorization: Bearer <token>`.
    pub fn require_token(&self, path: &str, token: &str) {
        self.tokens
            .lock()
            .unwrap()
            .insert(path.to_string(), token.to_string());
    }

    /// Requests for `path` so far.
    pub fn requests(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == path)
            .count()
    }

    fn answer(&self, req: &Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_string();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        self.seen.lock().unwrap().push((path.clone(), auth.clone()));
        let status = |s: StatusCode| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = s;
            r
        };
        if let Some(token) = self.tokens.lock().unwrap().get(&path) {
            if auth != format!("Bearer {token}") {
                return status(StatusCode::FORBIDDEN);
            }
        }
        let Some((body, version)) = self.files.lock().unwrap().get(&path).cloned() else {
            return status(StatusCode::FORBIDDEN);
        };
        let etag = format!("\"v{version}\"");
        if req
            .headers()
            .get("if-none-match")
            .and_then(|v| v.to_str().ok())
            == Some(etag.as_str())
        {
            self.not_modified.fetch_add(1, Ordering::Relaxed);
            return status(StatusCode::NOT_MODIFIED);
        }
        let mut r = Response::new(Full::new(Bytes::from(body)));
        r.headers_mut().insert("etag", etag.parse().unwrap());
        r.headers_mut()
            .insert("cache-control", CDN_CACHE_CONTROL.parse().unwrap());
        r
    }
}

/// Captures every log line of this test process (installed once).
pub mod logs {
    use std::io::Write;
    use std::sync::{Mutex, OnceLock};

    static LINES: Mutex<Vec<u8>> = Mutex::new(Vec::new());
    static INSTALLED: OnceLock<()> = OnceLock::new();

    struct Capture;

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            LINES.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Installs the capturing subscriber at `debug` for every target.
    pub fn capture() {
        INSTALLED.get_or_init(|| {
            tracing_subscriber::fmt()
                .with_max_level(tracing::Level::DEBUG)
                .with_ansi(false)
                .with_writer(|| Capture)
                .init();
        });
    }

    /// Everything logged so far.
    pub fn text() -> String {
        String::from_utf8_lossy(&LINES.lock().unwrap()).into_owned()
    }
}
