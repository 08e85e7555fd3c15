//! `POST /v1/decide?keys=...`: flag decisions; one key → one object, several or none → an
//! array. Shapes as the Agent's `DecideOut`: `variables` only when the flag has some,
//! `isEveryoneElseVariation` on every decision.

use super::{answer, body, pin, rule_source, RuleSource, UserBody, UserContextOut};
use crate::core::project::VariableMap;
use crate::core::{DecideOptions, FlagDecision, ProjectConfig, UserContext};
use crate::http::error::ApiError;
use crate::http::params::Query;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::Map;

/// An Agent `DecideOut`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Decision<'a> {
    variation_key: String,
    enabled: bool,
    rule_key: String,
    flag_key: String,
    user_context: UserContextOut<'a>,
    reasons: Vec<String>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    variables: VariableMap,
    is_everyone_else_variation: bool,
}

impl<'a> Decision<'a> {
    fn new(config: &ProjectConfig, d: FlagDecision, user: &'a UserContext) -> Self {
        let source = rule_source(config, &d.flag_key, d.rule_key.as_deref());
        let reasons = super::reasons::agent_reasons(config, user, &d.flag_key, d.reasons);
        Self {
            is_everyone_else_variation: source
                == RuleSource::Rollout {
                    everyone_else: true,
                },
            flag_key: d.flag_key,
            enabled: d.enabled,
            variation_key: d.variation_key.unwrap_or_default(),
            rule_key: d.rule_key.unwrap_or_default(),
            variables: d.variables,
            user_context: UserContextOut {
                user_id: &user.user_id,
                attributes: &user.attributes,
            },
            reasons,
        }
    }
}

/// The handler.
pub async fn decide(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(decide_flags(state, req).await)
}

async fn decide_flags(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let keys: Vec<String> = q.all("keys").into_iter().map(str::to_owned).collect();
    let pin = pin(state, &req)?;
    let mut distinct: Vec<&str> = keys.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    let asked = if distinct.is_empty() {
        pin.config().flags.len()
    } else {
        distinct.len()
    };
    super::check_decisions(state, asked)?;
    let b: UserBody = body(state, req).await?;
    let mut user = b.user(state)?;
    if b.fetch_segments {
        if let Err(answer) =
            super::odp::qualify(state, &pin, &mut user, &b.fetch_segments_options).await
        {
            return Ok(answer);
        }
    }
    let mut options = DecideOptions::parse(b.decide_options.iter().map(String::as_str))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if key_refs.len() == 1 {
        // As in the SDKs, a single-key decide ignores ENABLED_FLAGS_ONLY.
        options.enabled_flags_only = false;
    }
    let selected = (!key_refs.is_empty()).then_some(key_refs.as_slice());
    let decisions = state.service.decide(&pin, selected, &user, options).await?;
    let config = pin.config();
    if key_refs.len() == 1 {
        let d = decisions
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("decide returned nothing".into()))?;
        return Ok(json_line(StatusCode::OK, &Decision::new(config, d, &user)));
    }
    // The Go SDK filters a multi-flag answer after deciding, so a decision that ends up
    // disabled (an error decision too) is never listed under ENABLED_FLAGS_ONLY.
    let all: Vec<Decision<'_>> = decisions
        .into_iter()
        .filter(|d| !options.enabled_flags_only || d.enabled)
        .map(|d| Decision::new(config, d, &user))
        .collect();
    Ok(json_line(StatusCode::OK, &all))
}
