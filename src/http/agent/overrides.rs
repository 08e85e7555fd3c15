//! `POST /v1/override` (only with `api.enable_overrides = true`, else a 403 before anything is
//! read or decided): forces, or with an empty
//! `variationKey` clears, a user's variation of an experiment, answering as the Agent: the
//! previous override in `prevVariationKey` (read from the override map; no decision is made)
//! and what happened in `messages` (`null` when there is nothing to say).
//!
//! An unknown experiment is answered 200 with a message and stores nothing (an override of an
//! experiment the datafile lacks could not apply); an unknown variation clears the previous
//! override, which is what the Agent's stored-but-unmatched override amounts to.

use super::{answer, body, pin};
use crate::http::error::ApiError;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};

/// The Agent's 403 when overrides are not enabled, with the setting that enables them.
const OVERRIDES_DISABLED: &str = "Overrides not enabled (api.enable_overrides = false)";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideBody {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    experiment_key: String,
    #[serde(default)]
    variation_key: String,
}

/// An Agent `Override` answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Overridden<'a> {
    user_id: &'a str,
    experiment_key: &'a str,
    variation_key: &'a str,
    prev_variation_key: &'a str,
    messages: Option<Vec<&'static str>>,
}

/// The handler.
pub async fn override_variation(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<Resp, ApiError> {
    answer(set_override(state, req).await)
}

async fn set_override(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    // As the Agent's router: refused before the key, the body or anything else is looked at.
    if !state.service.enable_overrides {
        return Err(ApiError::Forbidden(OVERRIDES_DISABLED.into()));
    }
    let pin = pin(state, &req)?;
    let b: OverrideBody = body(state, req).await?;
    if b.user_id.is_empty() {
        return Err(ApiError::BadRequest("userId cannot be empty".into()));
    }
    if b.experiment_key.is_empty() {
        return Err(ApiError::BadRequest("experimentKey cannot be empty".into()));
    }
    let config = pin.config();
    let experiment = config
        .experiment_by_key(&b.experiment_key)
        .map(|i| &config.experiments[i]);
    let mut messages = Vec::new();
    let previous = match experiment {
        None if b.variation_key.is_empty() => None,
        None => {
            messages.push("experimentKey not found in configuration");
            None
        }
        Some(exp) => {
            let known =
                b.variation_key.is_empty() || exp.variation_by_key(&b.variation_key).is_some();
            if !known {
                messages.push("variationKey not found in configuration");
            }
            let variation = (known && !b.variation_key.is_empty()).then_some(&*b.variation_key);
            state
                .service
                .set_override(&pin, &b.experiment_key, &b.user_id, variation)?
        }
    };
    if b.variation_key.is_empty() {
        messages.push(if previous.is_some() {
            "removing previous override"
        } else {
            "no pre-existing override"
        });
    } else if previous.is_some() {
        messages.push("updating previous override");
    }
    Ok(json_line(
        StatusCode::OK,
        &Overridden {
            user_id: &b.user_id,
            experiment_key: &b.experiment_key,
            variation_key: &b.variation_key,
            prev_variation_key: previous.as_deref().unwrap_or_default(),
            messages: (!messages.is_empty()).then_some(messages),
        },
    ))
}
