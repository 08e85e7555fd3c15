//! The HTTP server: hyper 1 (HTTP/1.1 and h2c), one route table, limits, graceful shutdown.
//!
//! Surfaces, one folder each: [`agent`] (the Optimizely-Agent-compatible `/v1/...` API),
//! [`ops`] (health, readiness, metrics, admin push, datafile webhook), [`sdk`] (what SDKs will
//! fetch and post directly), plus the classic [`bucketer`]. [`routes`] is the one table of
//! method, path, metric label and handler; [`middleware`] holds what applies to every request
//! (limits today). Handlers parse and validate input, call [`crate::service::Service`] and
//! answer with typed response structs; every failure is an [`error::ApiError`] rendered as
//! `{"error": "..."}` with its status. [`listener`] bounds the connections (eviction of silent
//! ones, shedding, descriptor exhaustion) and [`conn`] each connection's time without a
//! request; HTTP/2 gets a keep-alive ping, a stream bound and a header-list bound. With
//! `[server.tls]`, [`tls`] terminates TLS on the same listener (the handshake counts against the
//! first-request deadline); [`middleware::cors`] answers preflights before routing and
//! [`middleware::auth`] checks API tokens per route.

pub mod agent;
pub mod bucketer;
pub mod conn;
pub mod error;
pub mod listener;
pub mod middleware;
pub mod ops;
pub mod params;
pub mod response;
pub mod routes;
pub mod sdk;
pub mod tls;

pub use ops::status;

use crate::config::{AgentApiSettings, Secret};
use crate::metrics::Metrics;
use crate::service::Service;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use middleware::auth::{Access, AuthError, Authenticator};
use middleware::cors::Cors;
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
    /// The largest `datafile.max_bytes` of the projects (bounds an admin push's body).
    pub max_datafile_bytes: usize,
    pub admin_token: Option<Secret>,
    /// Bounds of `/v1/batch` (and the notification switch, which the service holds).
    pub agent_api: AgentApiSettings,
    /// Bounds of connections (see [`listener`] and [`conn`]).
    pub connections: ConnectionLimits,
    /// Bounds of the event relay's payloads (`events.relay`).
    pub relay: crate::config::RelaySettings,
    /// `[api.auth]`.
    pub auth: crate::config::AuthSettings,
    /// `[api.cors]` (`None`: off).
    pub cors: Option<crate::config::CorsSettings>,
    /// The listener's TLS (`None`: plain TCP).
    pub tls: Option<Arc<tls::Tls>>,
}

/// How long connections may stay, and how many (from the `server` settings).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Already lowered to fit the descriptor limit.
    pub max_connections: usize,
    pub idle_timeout: Duration,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_bytes: u32,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
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
    pub(crate) connections: ConnectionLimits,
    /// Bounds of `POST /v1/events`.
    pub(crate) relay: crate::config::RelaySettings,
    /// API token checks (`[api.auth]`).
    pub(crate) auth: Authenticator,
    /// `POST /oauth/token`.
    pub(crate) token_issuer: ops::oauth::TokenIssuer,
    pub(crate) cors: Option<Arc<Cors>>,
    pub(crate) tls: Option<Arc<tls::Tls>>,
    /// The SDK key of the project a request without one is served (for token scopes).
    default_sdk_key: Option<String>,
}

impl HttpState {
    /// The state of a server in front of `service`.
    pub fn new(service: Arc<Service>, config: HttpConfig) -> Self {
        let default_sdk_key = service
            .projects
            .first()
            .and_then(|p| p.settings.sdk_key.clone());
        Self {
            default_sdk_key,
            metrics: service.metrics.clone(),
            service,
            limits: Limits {
                max_body_bytes: config.max_body_bytes,
                max_query_bytes: config.max_query_bytes,
                max_attributes: config.max_attributes,
                header_read_timeout: config.header_read_timeout,
                max_datafile_bytes: config.max_datafile_bytes,
            },
            trust_forwarded_for: config.trust_forwarded_for,
            admin_token: config.admin_token,
            agent_api: config.agent_api,
            connections: config.connections,
            relay: config.relay,
            auth: Authenticator::new(&config.auth),
            token_issuer: ops::oauth::TokenIssuer::new(&config.auth),
            cors: config.cors.map(|c| Arc::new(Cors::new(c))),
            tls: config.tls,
        }
    }

    /// The JWKS cache to keep fresh, when `[api.auth] jwks_url` is set.
    pub fn jwks(&self) -> Option<Arc<crate::service::auth_jwks::Jwks>> {
        self.auth.jwks()
    }

    /// The listener's TLS, for reloads.
    pub fn tls(&self) -> Option<Arc<tls::Tls>> {
        self.tls.clone()
    }

    /// Checks the request's API token for a route with `access`.
    pub(crate) async fn authorize<B>(
        &self,
        req: &Request<B>,
        access: Access,
    ) -> Result<(), AuthError> {
        if !self.auth.enabled() || access == Access::Open {
            return Ok(());
        }
        self.auth
            .authorize(req, access, self.default_sdk_key.as_deref())
            .await
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
    // CORS off: nothing is cloned or looked at here.
    let cors = state.cors.clone().map(|policy| {
        let origin = req.headers().get(hyper::header::ORIGIN).cloned();
        let preflight = policy.preflight(&req);
        (policy, preflight, origin)
    });
    if let Some((_, Some(preflight), _)) = cors {
        let label = routes::label_of(req.uri().path());
        metrics.http_request(
            label,
            preflight.status().as_str(),
            started.elapsed().as_secs_f64(),
        );
        return Ok(preflight);
    }
    let ((label, result), unrecorded) = crate::pipeline::ack::track(async {
        match state.limits.check_query(&req) {
            Err(e) => (crate::metrics::Route::Other, Err(e)),
            Ok(()) => routes::dispatch(state, req, peer).await,
        }
    })
    .await;
    let resp = match (result, unrecorded) {
        // Durable acknowledgement: a 2xx promises the request's events are recorded. When
        // they are not, the client gets a retryable 503 instead (decisions are deterministic,
        // so a retry gets the same answer and records the event then).
        (Ok(resp), Some(why)) if resp.status().is_success() => unrecorded_response(why),
        (Ok(resp), _) => resp,
        (Err(e), _) => error_response(&e),
    };
    let mut resp = resp;
    if let Some((policy, _, origin)) = &cors {
        policy.decorate(origin.as_ref(), &mut resp);
    }
    metrics.http_request(
        label,
        resp.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    Ok(resp)
}

/// The 503 of a request whose events could not be made durable.
fn unrecorded_response(why: crate::pipeline::NotRecorded) -> Resp {
    let mut resp = error_response(&error::ApiError::Unavailable(format!("{why}; retry later")));
    resp.headers_mut().insert(
        hyper::header::RETRY_AFTER,
        hyper::header::HeaderValue::from_static("1"),
    );
    resp
}

/// Accepts connections until `cancel`, then lets in-flight requests finish within `grace`.
pub async fn serve(
    listener: TcpListener,
    state: Arc<HttpState>,
    cancel: CancellationToken,
    grace: Duration,
) {
    let limits = state.connections;
    let first_request = state.limits.header_read_timeout;
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(first_request)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.http2_keep_alive_interval))
        .keep_alive_timeout(limits.http2_keep_alive_timeout)
        .max_concurrent_streams(limits.http2_max_concurrent_streams)
        .max_header_list_size(limits.http2_max_header_list_bytes);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let registry = listener::Registry::new(limits.max_connections);
    let mut backoff = listener::AcceptBackoff::default();
    tracing::info!(
        max_connections = limits.max_connections,
        "accepting connections"
    );
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => {
                    backoff.reset();
                    a
                }
                Err(e) => {
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    continue;
                }
            },
        };
        let conn = conn::Conn::new();
        let slot = match registry.admit(&conn) {
            listener::Admission::Open(slot) => slot,
            listener::Admission::Shed => {
                // Best effort, never waiting: the socket buffer of a new connection has room.
                // A TLS client could not read a plain answer: it is just closed.
                if state.tls.is_none() {
                    let _ = stream.try_write(listener::SHED_RESPONSE);
                }
                state.metrics.connection_closed("shed");
                continue;
            }
        };
        state.metrics.connections_open.set(registry.open() as i64);
        let _ = stream.set_nodelay(true);
        let served = conn.clone();
        let handler_state = state.clone();
        let service = hyper::service::service_fn(move |req| {
            let busy = served.request_started();
            let state = handler_state.clone();
            async move {
                let resp = handle(state, req, peer).await?;
                Ok::<_, Infallible>(conn::Conn::request_answered(resp, busy))
            }
        });
        let acceptor = state.tls.as_ref().map(|t| t.acceptor());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        let metrics = state.metrics.clone();
        let registry = registry.clone();
        tokio::spawn(async move {
            // The handshake runs inside the watchdog's first-request deadline too.
            let served = async {
                match acceptor {
                    None => {
                        let c =
                            builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                        watcher.watch(c.into_owned()).await
                    }
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => {
                            let c =
                                builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
                            watcher.watch(c.into_owned()).await
                        }
                        Err(e) => Err(format!("TLS handshake: {e}").into()),
                    },
                }
            };
            tokio::select! {
                r = served => if let Err(e) = r {
                    tracing::debug!(error = %e, %peer, "connection ended with an error");
                },
                why = conn.watch(first_request, limits.idle_timeout) => {
                    tracing::debug!(%peer, reason = why.label(), "connection closed by the server");
                    metrics.connection_closed(why.label());
                }
            }
            drop(slot);
            metrics.connections_open.set(registry.open() as i64);
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
