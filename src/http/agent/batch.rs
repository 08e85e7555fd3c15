//! `POST /v1/batch`: many Agent operations in one request, each answered with its own status
//! and body (the Agent's `BatchContext` / `BatchResponse`).
//!
//! Each operation is served by the same request path as a request of its own ([`handle`]: routes,
//! limits, errors, metrics), over an in-memory HTTP/1.1 connection, so it behaves exactly as if
//! it had been sent alone. Bounds: at most `api.batch.max_operations` operations (more: 422),
//! at most `api.batch.max_concurrency` served at once, each within [`OPERATION_TIMEOUT`] and
//! [`MAX_OPERATION_RESPONSE_BYTES`]; a batch inside a batch and the event stream (which never
//! ends) are refused per operation.
//!
//! Answers are in request order (the Agent's are in completion order; clients match them by
//! `operationID`, which works with both).

use crate::http::error::ApiError;
use crate::http::response::{json_line, Resp};
use crate::http::{handle, HttpState};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::task::JoinSet;

/// How long one operation may take.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest answer one operation may give (a datafile mirror fits).
pub const MAX_OPERATION_RESPONSE_BYTES: usize = 16 << 20;

/// Paths an operation may not name.
const REFUSED_PATHS: [(&str, &str); 2] = [
    ("/v1/batch", "a batch cannot contain a batch"),
    (
        "/v1/notifications/event-stream",
        "the notification stream cannot be batched",
    ),
];

/// The Agent's `BatchContext`.
#[derive(Debug, Deserialize)]
struct BatchBody {
    operations: Vec<Operation>,
}

/// The Agent's `BatchOperation`.
#[derive(Debug, Deserialize)]
struct Operation {
    #[serde(default)]
    method: String,
    #[serde(default)]
    url: String,
    #[serde(default, rename = "operationID")]
    operation_id: String,
    #[serde(default)]
    body: Option<Value>,
    /// The Agent reads `params`; its OpenAPI spec names them `parameters`.
    #[serde(default, alias = "parameters")]
    params: Map<String, Value>,
    #[serde(default)]
    headers: Map<String, Value>,
}

/// The Agent's `BatchResponseItem`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    status: u16,
    #[serde(rename = "requestID")]
    request_id: String,
    #[serde(rename = "operationID")]
    operation_id: String,
    method: String,
    url: String,
    body: Value,
    started_at: String,
    ended_at: String,
}

/// The Agent's `BatchResponse`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct BatchOut {
    started_at: String,
    ended_at: String,
    error_count: usize,
    response: Vec<Item>,
}

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A JSON value as header or parameter text (strings without their quotes).
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The handler.
pub async fn batch(
    state: &Arc<HttpState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, ApiError> {
    super::answer(run_batch(state, req, peer).await)
}

async fn run_batch(
    state: &Arc<HttpState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, ApiError> {
    let started = SystemTime::now();
    let bytes = state.limits.read_body(req).await?;
    let b: BatchBody = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("cannot decode the operation body: {e}")))?;
    let limits = &state.agent_api;
    if b.operations.len() > limits.batch_max_operations {
        return Err(ApiError::Unprocessable(format!(
            "too many operations, exceeding {} operations",
            limits.batch_max_operations
        )));
    }
    let count = b.operations.len();
    let mut answers: Vec<Option<Item>> = (0..count).map(|_| None).collect();
    let mut running: JoinSet<(usize, Item)> = JoinSet::new();
    let max_running = limits.batch_max_concurrency.max(1);
    for (i, op) in b.operations.into_iter().enumerate() {
        while running.len() >= max_running {
            collect_one(&mut running, &mut answers).await;
        }
        let state = state.clone();
        running.spawn(async move { (i, run(state, peer, op).await) });
    }
    while !running.is_empty() {
        collect_one(&mut running, &mut answers).await;
    }
    let response: Vec<Item> = answers.into_iter().flatten().collect();
    if response.len() != count {
        return Err(ApiError::Internal(
            "a batch operation ended without an answer".into(),
        ));
    }
    let error_count = response.iter().filter(|i| i.status != 200).count();
    Ok(json_line(
        StatusCode::OK,
        &BatchOut {
            started_at: timestamp(started),
            ended_at: timestamp(SystemTime::now()),
            error_count,
            response,
        },
    ))
}

/// Waits for one running operation and files its answer.
async fn collect_one(running: &mut JoinSet<(usize, Item)>, answers: &mut [Option<Item>]) {
    match running.join_next().await {
        Some(Ok((i, item))) => {
            if let Some(slot) = answers.get_mut(i) {
                *slot = Some(item);
            }
        }
        Some(Err(e)) => tracing::error!(error = %e, "batch operation task failed"),
        None => {}
    }
}

/// Serves one operation and describes its answer.
async fn run(state: Arc<HttpState>, peer: SocketAddr, op: Operation) -> Item {
    let started = SystemTime::now();
    let asked_id = op.headers.iter().find_map(|(k, v)| {
        k.eq_ignore_ascii_case("x-request-id")
            .then(|| text(v))
            .filter(|s| !s.is_empty())
    });
    let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, serve(state, peer, &op)).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::Unavailable(format!(
            "operation did not finish within {OPERATION_TIMEOUT:?}"
        ))),
    };
    let (status, answered_id, body) = match outcome {
        Ok(answer) => answer,
        Err(e) => (
            e.status(),
            None,
            serde_json::json!({ "error": e.to_string() }),
        ),
    };
    Item {
        status: status.as_u16(),
        request_id: asked_id
            .or(answered_id)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string()),
        operation_id: op.operation_id,
        method: op.method,
        url: op.url,
        body,
        started_at: timestamp(started),
        ended_at: timestamp(SystemTime::now()),
    }
}

/// The operation as a request of its own.
fn request(op: &Operation) -> Result<Request<Full<Bytes>>, ApiError> {
    let method = match op.method.trim() {
        "" => Method::GET,
        m => Method::from_bytes(m.to_ascii_uppercase().as_bytes())
            .map_err(|_| ApiError::BadRequest(format!("invalid method {m:?}")))?,
    };
    let uri: Uri = op
        .url
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid url {:?}: {e}", op.url)))?;
    let path = uri.path();
    if !path.starts_with('/') || uri.scheme().is_some() {
        return Err(ApiError::BadRequest(format!(
            "url must be a path of this server, got {:?}",
            op.url
        )));
    }
    if let Some((_, why)) = REFUSED_PATHS.iter().find(|(p, _)| *p == path) {
        return Err(ApiError::BadRequest((*why).into()));
    }
    let mut query = form_urlencoded::Serializer::new(uri.query().unwrap_or("").to_string());
    for (k, v) in &op.params {
        query.append_pair(k, &text(v));
    }
    let query = query.finish();
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let body = match &op.body {
        None | Some(Value::Null) => Bytes::new(),
        Some(v) => Bytes::from(
            serde_json::to_vec(v).map_err(|e| ApiError::BadRequest(format!("body: {e}")))?,
        ),
    };
    let mut req = Request::new(Full::new(body.clone()));
    *req.method_mut() = method;
    *req.uri_mut() = target
        .parse()
        .map_err(|e| ApiError::BadRequest(format!("invalid url {:?}: {e}", op.url)))?;
    let headers = req.headers_mut();
    for (k, v) in &op.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ApiError::BadRequest(format!("invalid header name {k:?}")))?;
        let value = HeaderValue::from_str(&text(v))
            .map_err(|_| ApiError::BadRequest(format!("invalid value of header {k:?}")))?;
        headers.insert(name, value);
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if !body.is_empty() && !headers.contains_key(CONTENT_TYPE) {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    Ok(req)
}

/// Serves the operation over an in-memory connection; its status, `X-Request-Id` and JSON body
/// (`null` when the answer is not JSON).
async fn serve(
    state: Arc<HttpState>,
    peer: SocketAddr,
    op: &Operation,
) -> Result<(StatusCode, Option<String>, Value), ApiError> {
    let req = request(op)?;
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        let service = hyper::service::service_fn(move |r| handle(state.clone(), r, peer));
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(server_io), service)
            .await;
    });
    let internal = |what: &str, e: &dyn std::fmt::Display| {
        ApiError::Internal(format!("batch operation {what}: {e}"))
    };
    let answer = async {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client_io))
            .await
            .map_err(|e| internal("connection", &e))?;
        let driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| internal("request", &e))?;
        let status = resp.status();
        let request_id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = Limited::new(resp.into_body(), MAX_OPERATION_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|e| internal("answer", &e))?
            .to_bytes();
        drop(sender);
        driver.abort();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok((status, request_id, body))
    }
    .await;
    server.abort();
    answer
}
