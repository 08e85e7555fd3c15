//! The standalone flusher's own small HTTP server (`bucketd flush`, `flusher.metrics_listen`):
//! `GET /metrics` (Prometheus text) and `GET /health` (whether the event queue answers).
//! Anything but GET/HEAD is a 405 and any other path a 404, both with a JSON error.

use crate::http::response::{empty, json, prometheus, ErrorBody, Resp};
use crate::metrics::Metrics;
use backends::EventQueue;
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What the status server reports on.
pub struct Status {
    pub metrics: Arc<Metrics>,
    pub queue: Arc<dyn EventQueue>,
}

/// The queue's health.
#[derive(Debug, Serialize)]
struct QueueHealth<'a> {
    status: &'static str,
    queue: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

async fn handle(status: &Status, req: &Request<Incoming>) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return json(
            StatusCode::METHOD_NOT_ALLOWED,
            &ErrorBody {
                error: "only GET is supported here",
            },
        );
    }
    match req.uri().path() {
        "/metrics" => prometheus(status.metrics.render()),
        "/health" => {
            let queue = status.queue.backend();
            match status.queue.health().await {
                Ok(()) => json(
                    StatusCode::OK,
                    &QueueHealth {
                        status: "ok",
                        queue,
                        error: None,
                    },
                ),
                Err(e) => json(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &QueueHealth {
                        status: "degraded",
                        queue,
                        error: Some(&e.to_string()),
                    },
                ),
            }
        }
        "/favicon.ico" => empty(StatusCode::NOT_FOUND),
        path => json(
            StatusCode::NOT_FOUND,
            &ErrorBody {
                error: &format!("no such endpoint: {path} (try /metrics or /health)"),
            },
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
