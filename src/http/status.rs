//! The standalone flusher's own small HTTP endpoint (`bucketd flush`,
//! `flusher.metrics_listen`): `GET /metrics` (Prometheus text) and `GET /health` (whether the
//! event queue answers). Everything else is a 404 with a JSON error.

use super::{empty, json, Resp};
use crate::metrics::Metrics;
use backends::EventQueue;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the status endpoint reports on.
pub struct Status {
    pub metrics: Arc<Metrics>,
    pub queue: Arc<dyn EventQueue>,
}

async fn handle(status: &Status, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"error": "only GET is supported here"}),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
                status.metrics.render(),
            )));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        "/health" => match status.queue.health().await {
            Ok(()) => json(
                StatusCode::OK,
                &json!({"status": "ok", "queue": status.queue.backend()}),
            ),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"status": "degraded", "queue": status.queue.backend(), "error": e.to_string()}),
            ),
        },
        "/favicon.ico" => empty(StatusCode::NOT_FOUND),
        path => json(
            StatusCode::NOT_FOUND,
            &json!({"error": format!("no such endpoint: {path} (try /metrics or /health)")}),
        ),
    }
}

/// Serves until `cancel`.
pub async fn serve(listener: TcpListener, status: Arc<Status>, cancel: CancellationToken) {
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "status endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let status = Arc::clone(&status);
        let service = hyper::service::service_fn(move |req| {
            let status = Arc::clone(&status);
            async move { Ok::<_, std::convert::Infallible>(handle(&status, &req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::select! { _ = cancel.cancelled() => {}, _ = conn => {} }
        });
    }
}
