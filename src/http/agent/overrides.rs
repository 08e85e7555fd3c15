//! `POST /v1/override` (only with `api.enable_overrides = true`): forces, or with an empty
//! `variationKey` clears, a user's variation of an experiment. The previous variation reported
//! is the previous override, read from the override map; no decision is made.

use super::body;
use crate::http::error::ApiError;
use crate::http::params::sdk_key;
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideBody {
    user_id: String,
    experiment_key: String,
    #[serde(default)]
    variation_key: Option<String>,
}

/// An Agent `Override` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Overridden<'a> {
    user_id: &'a str,
    experiment_key: &'a str,
    variation_key: &'a str,
    prev_variation_key: &'a str,
    messages: &'static [&'static str],
}

/// The handler.
pub async fn override_variation(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    let key = sdk_key(&req);
    let b: OverrideBody = body(state, req).await?;
    let pin = state.service.pin(key.as_deref())?;
    let variation = b.variation_key.as_deref().filter(|v| !v.is_empty());
    let previous = state
        .service
        .set_override(&pin, &b.experiment_key, &b.user_id, variation)?;
    Ok(json(
        StatusCode::OK,
        &Overridden {
            user_id: &b.user_id,
            experiment_key: &b.experiment_key,
            variation_key: variation.unwrap_or_default(),
            prev_variation_key: previous.as_deref().unwrap_or_default(),
            messages: &[],
        },
    ))
}
