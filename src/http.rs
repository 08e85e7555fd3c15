//! The HTTP server: hyper 1 (HTTP/1.1 and h2c), one route table, limits, graceful shutdown.
//!
//! Surfaces, one folder each: [`agent`] (the Optimizely-Agent-compatible `/v1/...` API),
//! [`ops`] (health, readiness, metrics, admin push, datafile webhook), [`sdk`] (what SDKs will
//! fetch and post directly), plus the classic [`bucketer`]. [`routes`] is the one table of
//! method, path, metric label and handler; [`middleware`] holds what applies to every request
//! (limits today). Handlers parse and validate input, call [`crate::service::Service`] and
//! answer with typed response structs; every failure is an [`error::ApiError`] rendered as
//! `{"error": "..."}` with its status.

pub mod agent;
pub mod bucketer;
pub mod error;
pub mod middleware;
pub mod ops;
pub mod params;
pub mod response;
pub mod routes;
pub mod sdk;

pub use ops::status;

use crate::config::{AgentApiSettings, Secret};
use crate::metrics::Metrics;
use crate::service::Service;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use middleware::limits::Limits;
use response::{error_response, Resp};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// How the HTTP layer is configured (from the `server`, `api` and `admin` settings).
pub struct HttpConfig {
    pub trust_forwarded_for: bool,
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    pub max_attributes: usize,
    pub header_read_timeout: Duration,
    pub admin_token: Option<Secret>,
    /// Bounds of `/v1/batch` (and the notification switch, which the service holds).
    pub agent_api: AgentApiSettings,
}

/// What every handler can reach: the service, and the HTTP layer's own settings split by who
/// uses them.
pub struct HttpState {
    pub(crate) service: Arc<Service>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) limits: Limits,
    /// The bucketer's default user id is the first `X-Forwarded-For` hop.
    pub(crate) trust_forwarded_for: bool,
    /// Bearer token of `PUT /admin/datafile` (`None`: the admin API is off).
    pub(crate) admin_token: Option<Secret>,
    /// Bounds of `/v1/batch`.
    pub(crate) agent_api: AgentApiSettings,
}

impl HttpState {
    /// The state of a server in front of `service`.
    pub fn new(service: Arc<Service>, config: HttpConfig) -> Self {
        Self {
            metrics: service.metrics.clone(),
            service,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_query_bytes: config.max_query_bytes,
                max_attributes: config.max_attributes,
                header_read_timeout: config.header_read_timeout,
            },
            trust_forwarded_for: config.trust_forwarded_for,
            admin_token: config.admin_token,
            agent_api: config.agent_api,
        }
    }
}

/// Handles one request: checks the limits, routes it, renders errors, records metrics.
pub async fn handle(
    state: Arc<HttpState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, Infallible> {
    let started = Instant::now();
    let metrics = state.metrics.clone();
    let (label, result) = match state.limits.check_query(&req) {
        Err(e) => (crate::metrics::Route::Other, Err(e)),
        Ok(()) => routes::dispatch(state, req, peer).await,
    };
    let resp = result.unwrap_or_else(|e| error_response(&e));
    metrics.http_request(
        label,
        resp.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

/// Accepts connections until `cancel`, then lets in-flight requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(state.limits.header_read_timeout)
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
        let state = state.clone();
        let service = hyper::service::service_fn(move |req| handle(state.clone(), req, peer));
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
