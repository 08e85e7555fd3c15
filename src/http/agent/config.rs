//! `GET /v1/config` (the SDKs' `OptimizelyConfig`) and `GET /v1/datafile` (the datafile in
//! use, as it was received).

use super::{answer, pin};
use crate::http::error::ApiError;
use crate::http::response::{json_line, raw_json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::Value;

/// The audience typed-audience datafiles carry for older SDKs; the Agent's config omits it.
const DUMMY_AUDIENCE_ID: &str = "$opt_dummy_audience";

/// `GET /v1/config`.
pub async fn config(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(pin(state, &req).map(|pin| {
        let mut rendered = crate::core::optimizely_config::render(pin.config());
        if let Some(Value::Array(audiences)) = rendered.get_mut("audiences") {
            audiences.retain(|a| a.get("id").and_then(Value::as_str) != Some(DUMMY_AUDIENCE_ID));
        }
        json_line(StatusCode::OK, &rendered)
    }))
}

/// `GET /v1/datafile`.
pub async fn datafile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(pin(state, &req).map(|pin| raw_json(pin.config().datafile.clone())))
}
