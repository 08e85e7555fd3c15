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
mod reasons;
pub mod reset;
pub mod track;

use super::error::ApiError;
use super::params::{parse_json, sdk_key};
use super::response::{error_line, Resp};
use super::HttpState;
use crate::core::{Attributes, ForcedDecision, ProjectConfig, UserContext};
use crate::service::{PinnedProject, ServiceError};
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
    /// Decide only: fetch the user's qualified ODP segments before deciding.
    #[serde(default)]
    fetch_segments: bool,
    /// Decide only: `IGNORE_CACHE` / `RESET_CACHE` for that fetch.
    #[serde(default)]
    fetch_segments_options: Vec<String>,
}

impl UserBody {
    /// The user the body describes, within the attribute limit.
    fn user(&self, state: &HttpState) -> Result<UserContext, ApiError> {
        let user_id = self
            .user_id
            .clone()
            .filter(|id| !id.is_empty())
            .ok_or_else(|| ApiError::BadRequest(MISSING_USER_ID.into()))?;
        let attributes = self.user_attributes.clone().unwrap_or_default();
        state.limits.check_attributes(attributes.len())?;
        let mut user = UserContext::new(user_id, attributes);
        // The Agent reads `"ruleKey": ""` as no rule: a flag-level forced decision.
        user.forced_decisions = self
            .forced_decisions
            .iter()
            .map(|f| ForcedDecision {
                rule_key: f.rule_key.clone().filter(|r| !r.is_empty()),
                ..f.clone()
            })
            .collect();
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

/// The Agent's answer to a body without a `userId` (or with an empty one).
const MISSING_USER_ID: &str = "missing \"userId\" in request payload";

/// What the Agent answers for an SDK key it cannot fetch a datafile for (the CDN's 403, which
/// clients match on).
const UNKNOWN_SDK_KEY: &str =
    "unable to fetch fresh datafile (consider rechecking SDK key), status code: 403 Forbidden";

/// What the Agent answers for an `X-Optimizely-SDK-Key` header without a key.
const EMPTY_SDK_KEY: &str = "missing required X-Optimizely-SDK-Key header";

/// The request's SDK key: `None` without the header (bucketd then serves its first project);
/// a header that is there but empty is the Agent's 400.
fn sdk_key_of<B>(req: &Request<B>) -> Result<Option<String>, ApiError> {
    match req.headers().get("x-optimizely-sdk-key") {
        None => Ok(None),
        Some(_) => sdk_key(req)
            .map(Some)
            .ok_or_else(|| ApiError::BadRequest(EMPTY_SDK_KEY.into())),
    }
}

/// The project the request's SDK key selects; an unknown key is the Agent's 403, an empty one
/// its 400.
fn pin<B>(state: &HttpState, req: &Request<B>) -> Result<PinnedProject, ApiError> {
    let key = sdk_key_of(req)?;
    state.service.pin(key.as_deref()).map_err(|e| match e {
        ServiceError::UnknownProject(_) => ApiError::Forbidden(UNKNOWN_SDK_KEY.into()),
        other => other.into(),
    })
}

/// One request may make at most `api.max_decisions_per_request` decisions (a huge datafile
/// asked for everything would otherwise make one per flag or experiment, with an impression and
/// a profile entry each); beyond it, a 422 naming the bound.
fn check_decisions(state: &HttpState, decisions: usize) -> Result<(), ApiError> {
    let max = state.agent_api.max_decisions_per_request;
    if decisions > max {
        return Err(ApiError::Unprocessable(format!(
            "the request asks for {decisions} decisions, more than api.max_decisions_per_request \
             ({max}); name fewer keys"
        )));
    }
    Ok(())
}

/// A handler's outcome as the Agent renders it: errors too end in a newline.
fn answer(result: Result<Resp, ApiError>) -> Result<Resp, ApiError> {
    Ok(result.unwrap_or_else(|e| error_line(&e)))
}

/// Where a flag decision's rule comes from, as the Agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleSource {
    /// One of the flag's experiments (a feature test).
    Experiment,
    /// A delivery rule of the flag's rollout; `everyone_else` for its generated last rule.
    Rollout { everyone_else: bool },
    /// No rule (no decision, or an unknown flag).
    None,
}

/// The source of `rule_key` in flag `flag_key`.
fn rule_source(config: &ProjectConfig, flag_key: &str, rule_key: Option<&str>) -> RuleSource {
    let (Some(flag), Some(rule)) = (config.flag_by_key(flag_key), rule_key) else {
        return RuleSource::None;
    };
    let flag = &config.flags[flag];
    if flag
        .experiments
        .iter()
        .any(|&e| config.experiments[e].key == rule)
    {
        return RuleSource::Experiment;
    }
    let rules = flag
        .rollout
        .map(|r| config.rollouts[r].rules.as_slice())
        .unwrap_or_default();
    match rules.iter().find(|&&e| config.experiments[e].key == rule) {
        // The Agent's test for the "Everyone Else" rule: a generated rule, whose key is its id
        // and starts with `default-`.
        Some(&e) => RuleSource::Rollout {
            everyone_else: config.experiments[e].id == rule && rule.starts_with("default-"),
        },
        None => RuleSource::None,
    }
}
