//! `GET /v1/config` (the SDKs' `OptimizelyConfig`) and `GET /v1/datafile` (the datafile in
//! use, as it was received).

use crate::http::error::ApiError;
use crate::http::params::sdk_key;
use crate::http::response::{json, raw_json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};

/// `GET /v1/config`.
pub async fn config(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let pin = state.service.pin(sdk_key(&req).as_deref())?;
    Ok(json(
        StatusCode::OK,
        &crate::core::optimizely_config::render(pin.config()),
    ))
}

/// `GET /v1/datafile`.
pub async fn datafile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let pin = state.service.pin(sdk_key(&req).as_deref())?;
    Ok(raw_json(pin.config().datafile.clone()))
}
