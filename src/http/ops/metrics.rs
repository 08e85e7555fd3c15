//! `GET /metrics`: every metric in the Prometheus text format.

use crate::http::error::ApiError;
use crate::http::response::{prometheus, Resp};
use crate::http::HttpState;

/// The handler.
pub async fn metrics(state: &HttpState) -> Result<Resp, ApiError> {
    Ok(prometheus(state.metrics.render()))
}
