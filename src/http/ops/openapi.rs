//! `GET /openapi.json`: the OpenAPI 3 document of bucketd's whole HTTP API
//! (`openapi/bucketd.json`, built into the binary). `tests/openapi.rs` keeps it listing exactly
//! the route table, and `scripts/api-contract` checks the running daemon against it.

use crate::http::response::{with_type, Body, Resp};
use hyper::StatusCode;

/// The document, as committed.
pub const DOCUMENT: &str = include_str!("../../../openapi/bucketd.json");

/// The document as a response.
pub fn document() -> Resp {
    with_type(
        StatusCode::OK,
        Body::full(DOCUMENT.as_bytes()),
        "application/json",
    )
}
