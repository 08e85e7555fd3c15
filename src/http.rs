//! The HTTP server: hyper 1 (HTTP/1.1 and h2c), one router, limits, graceful shutdown.
//!
//! Handlers parse and validate input, call [`crate::service::Service`], and render JSON. Every
//! failure is an [`error::ApiError`] rendered as `{"error": "..."}` with its status.

mod admin;
mod agent;
mod bucketer;
pub mod error;
pub mod params;
pub mod status;

use crate::config::Secret;
use crate::metrics::Route;
use crate::service::Service;
use bytes::Bytes;
use error::ApiError;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde::Serialize;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What handlers need besides the service.
pub struct HttpConfig {
    pub trust_forwarded_for: bool,
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    pub max_attributes: usize,
    pub header_read_timeout: Duration,
    pub admin_token: Option<Secret>,
}

/// Shared state of the HTTP layer.
pub struct App {
    pub service: Arc<Service>,
    pub config: HttpConfig,
}

/// The response type of every handler.
pub type Resp = Response<Full<Bytes>>;

/// A JSON response.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Resp {
    match serde_json::to_vec(body) {
        Ok(bytes) => with_type(status, Bytes::from(bytes), "application/json"),
        Err(e) => error_response(&ApiError::Internal(e.to_string())),
    }
}

fn with_type(status: StatusCode, body: Bytes, content_type: &'static str) -> Resp {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// An empty response with a status.
pub fn empty(status: StatusCode) -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// `{"error": "..."}` with the error's status.
pub fn error_response(e: &ApiError) -> Resp {
    let status = e.status();
    if status.is_server_error() {
        tracing::error!(error = %e, %status, "request failed");
    }
    let body = serde_json::json!({ "error": e.to_string() });
    let bytes =
        serde_json::to_vec(&body).unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    with_type(status, Bytes::from(bytes), "application/json")
}

/// Reads a body up to the configured limit.
pub async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::PayloadTooLarge(limit))
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "cannot read request body: {e}"
        ))),
    }
}

/// Parses a JSON body into `T`, with a message naming the problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("request body required (JSON)".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// The `X-Optimizely-SDK-Key` header.
pub fn sdk_key(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("x-optimizely-sdk-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

async fn route(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> (Route, Result<Resp, ApiError>) {
    if req.uri().query().map_or(0, str::len) > app.config.max_query_bytes {
        return (
            Route::Other,
            Err(ApiError::UriTooLong(app.config.max_query_bytes)),
        );
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let only = |allowed: Method| -> Result<(), ApiError> {
        if method == allowed {
            Ok(())
        } else {
            Err(ApiError::MethodNotAllowed(method.to_string()))
        }
    };
    macro_rules! handle {
        ($name:expr, $method:expr, $call:expr) => {
            (
                $name,
                match only($method) {
                    Ok(()) => $call.await,
                    Err(e) => Err(e),
                },
            )
        };
    }
    match path.as_str() {
        "/bucketer" => handle!(
            Route::Bucketer,
            Method::GET,
            bucketer::bucketer(&app, req, peer)
        ),
        "/v1/decide" => handle!(Route::Decide, Method::POST, agent::decide(&app, req)),
        "/v1/activate" => handle!(Route::Activate, Method::POST, agent::activate(&app, req)),
        "/v1/track" => handle!(Route::Track, Method::POST, agent::track(&app, req)),
        "/v1/override" => handle!(
            Route::Override,
            Method::POST,
            agent::override_variation(&app, req)
        ),
        "/v1/config" => handle!(Route::Config, Method::GET, agent::config(&app, req)),
        "/v1/datafile" => handle!(Route::Datafile, Method::GET, agent::datafile(&app, req)),
        "/v1/lookup" => handle!(Route::Lookup, Method::POST, agent::lookup(&app, req)),
        "/v1/save" => handle!(Route::Save, Method::POST, agent::save(&app, req)),
        "/webhooks/optimizely" => handle!(Route::Webhook, Method::POST, admin::webhook(&app, req)),
        "/admin/datafile" => handle!(
            Route::AdminDatafile,
            Method::PUT,
            admin::push_datafile(&app, req)
        ),
        "/health" => handle!(Route::Health, Method::GET, admin::health(&app)),
        "/ready" => handle!(Route::Ready, Method::GET, admin::ready(&app)),
        "/metrics" => handle!(Route::Metrics, Method::GET, admin::metrics(&app)),
        _ => (
            Route::Other,
            Err(ApiError::NotFound(format!("no route for {path}"))),
        ),
    }
}

/// Handles one request: routes it, renders errors, records metrics.
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, Infallible> {
    let started = Instant::now();
    let metrics = app.service.metrics.clone();
    let (route, result) = route(app, req, peer).await;
    let resp = result.unwrap_or_else(|e| error_response(&e));
    metrics.http_request(
        route,
        resp.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

/// Accepts connections until `cancel`, then lets in-flight requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(app.config.header_read_timeout)
        .keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| handle(app.clone(), req, peer));
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let watched = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting connections; finishing in-flight requests");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over; closing remaining connections");
    }
}
