//! `POST /v1/activate?experimentKey=&featureKey=&type=&disableTracking=&enabled=`: decisions
//! for experiments and/or features (all of them when no key is named), optionally tracked, with
//! one profile lookup for the whole request.

use super::{body, UserBody};
use crate::http::error::ApiError;
use crate::http::params::{sdk_key, Query};
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use crate::service::{ActivateRequest, ActivateScope, Activated};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};

/// An Agent `Decision` for an experiment.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ExperimentEntry {
    experiment_key: String,
    feature_key: &'static str,
    variation_key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    variables: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// An Agent `Decision` for a feature (its fields in the Agent's order for features).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FeatureEntry {
    feature_key: String,
    experiment_key: String,
    variation_key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    variables: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Entry {
    Experiment(ExperimentEntry),
    Feature(FeatureEntry),
}

impl Entry {
    fn enabled(&self) -> bool {
        match self {
            Self::Experiment(e) => e.enabled,
            Self::Feature(f) => f.enabled,
        }
    }
}

impl From<Activated> for Entry {
    fn from(a: Activated) -> Self {
        match a {
            Activated::Experiment { answer: Ok(a), .. } => Self::Experiment(ExperimentEntry {
                experiment_key: a.experiment_key,
                feature_key: "",
                enabled: a.variation_key.is_some(),
                variation_key: a.variation_key.unwrap_or_default(),
                kind: "experiment",
                variables: Some(Map::new()),
                error: None,
            }),
            Activated::Experiment {
                key,
                answer: Err(e),
            } => Self::Experiment(ExperimentEntry {
                experiment_key: key,
                feature_key: "",
                variation_key: String::new(),
                kind: "experiment",
                enabled: false,
                variables: None,
                error: Some(e.to_string()),
            }),
            Activated::Feature {
                decision: Some(d), ..
            } => Self::Feature(FeatureEntry {
                feature_key: d.flag_key,
                experiment_key: d.rule_key.unwrap_or_default(),
                variation_key: d.variation_key.unwrap_or_default(),
                kind: "feature",
                enabled: d.enabled,
                variables: Some(d.variables),
                error: None,
            }),
            Activated::Feature {
                key,
                decision: None,
            } => Self::Feature(FeatureEntry {
                error: Some(format!("unknown feature key {key:?}")),
                feature_key: key,
                experiment_key: String::new(),
                variation_key: String::new(),
                kind: "feature",
                enabled: false,
                variables: None,
            }),
        }
    }
}

/// The handler.
pub async fn activate(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let disable_tracking = q
        .flag("disableTracking", false)
        .map_err(ApiError::BadRequest)?;
    let enabled_only = q.flag("enabled", false).map_err(ApiError::BadRequest)?;
    let scope = match q.get("type").unwrap_or("") {
        "" => ActivateScope::All,
        "experiment" => ActivateScope::Experiments,
        "feature" => ActivateScope::Features,
        kind => {
            return Err(ApiError::BadRequest(format!(
                "`type` must be experiment or feature, got {kind:?}"
            )))
        }
    };
    let experiment_keys: Vec<String> = q
        .all("experimentKey")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let feature_keys: Vec<String> = q.all("featureKey").into_iter().map(str::to_owned).collect();
    let key = sdk_key(&req);
    let b: UserBody = body(state, req).await?;
    let user = b.user(state)?;
    let pin = state.service.pin(key.as_deref())?;
    let request = ActivateRequest {
        experiment_keys: &experiment_keys,
        feature_keys: &feature_keys,
        scope,
        track: !disable_tracking,
    };
    let mut out: Vec<Entry> = state
        .service
        .activate(&pin, &user, request)
        .await
        .into_iter()
        .map(Entry::from)
        .collect();
    if enabled_only {
        out.retain(Entry::enabled);
    }
    Ok(json(StatusCode::OK, &out))
}
