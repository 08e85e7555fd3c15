//! Optimizely-Agent-compatible endpoints (`/v1/...`): same paths, field names and shapes as the
//! Agent's OpenAPI spec, so existing Agent clients work unchanged. One file per endpoint group;
//! the user body most of them share is here.

pub mod activate;
pub mod batch;
pub mod config;
pub mod decide;
pub mod notifications;
pub mod odp;
pub mod overrides;
pub mod profiles;
pub mod reset;
pub mod track;

use super::error::ApiError;
use super::params::parse_json;
use super::HttpState;
use crate::core::{Attributes, ForcedDecision, UserContext};
use hyper::body::Incoming;
use hyper::Request;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `DecideContext` / `ActivateContext` / `TrackContext` bodies.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UserBody {
    user_id: Option<String>,
    #[serde(default)]
    user_attributes: Option<Attributes>,
    #[serde(default)]
    decide_options: Vec<String>,
    #[serde(default)]
    forced_decisions: Vec<ForcedDecision>,
    #[serde(default)]
    event_tags: Option<Map<String, Value>>,
}

impl UserBody {
    /// The user the body describes, within the attribute limit.
    fn user(&self, state: &HttpState) -> Result<UserContext, ApiError> {
        let user_id = self
            .user_id
            .clone()
            .ok_or_else(|| ApiError::BadRequest("`userId` is required".into()))?;
        let attributes = self.user_attributes.clone().unwrap_or_default();
        state.limits.check_attributes(attributes.len())?;
        let mut user = UserContext::new(user_id, attributes);
        user.forced_decisions = self.forced_decisions.clone();
        Ok(user)
    }
}

/// The `userContext` echoed in decisions.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UserContextOut<'a> {
    user_id: &'a str,
    attributes: &'a Attributes,
}

/// Reads and parses a JSON body within the body-size limit.
async fn body<T: serde::de::DeserializeOwned>(
    state: &HttpState,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = state.limits.read_body(req).await?;
    parse_json(&bytes)
}
