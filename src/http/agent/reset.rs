//! `POST /v1/reset`: puts the project of the `X-Optimizely-SDK-Key` header back to a fresh
//! start (forced variations dropped), as the Agent's reset recreates its client. As in the
//! Agent, the header is required and a key with nothing to reset still answers
//! `{"result": true}`.

use crate::http::error::ApiError;
use crate::http::params::sdk_key;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use crate::service::ServiceError;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;

#[derive(Debug, Serialize)]
struct ResetOut {
    result: bool,
}

/// The handler.
pub async fn reset(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    super::answer(reset_project(state, req))
}

fn reset_project(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let key =
        sdk_key(&req).ok_or_else(|| ApiError::BadRequest("SDK key required for reset".into()))?;
    match state.service.pin(Some(&key)) {
        Ok(pin) => {
            state.service.reset(&pin);
        }
        // Nothing loaded for that key: nothing to reset.
        Err(ServiceError::UnknownProject(_) | ServiceError::NotReady(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(json_line(StatusCode::OK, &ResetOut { result: true }))
}
