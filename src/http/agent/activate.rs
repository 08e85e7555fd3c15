//! `POST /v1/activate?experimentKey=&featureKey=&type=&disableTracking=&enabled=`: decisions
//! for the experiments and features the query names, optionally tracked, with one profile
//! lookup for the whole request. As in the Agent:
//! - each `type` (`experiment` or `feature`, repeatable) adds every key of that kind; any other
//!   value is a 400 `type "…" not supported`; a request naming nothing answers `[]`;
//! - a key is decided once however often it is named; an unknown (or empty) key is one item
//!   with `"error": "experimentKey not found"` / `"featureKey not found"` and `"type": ""`;
//! - `enabled=true` / `enabled=false` keep only enabled / disabled decisions, any other value
//!   filters nothing; `disableTracking` is true only when it is exactly `true`;
//! - experiments carry no `variables`; features carry them when the flag has some, and report
//!   their experiment and variation only when a feature test (not a rollout) served them.

use super::{answer, body, pin, rule_source, RuleSource, UserBody};
use crate::core::project::VariableMap;
use crate::core::ProjectConfig;
use crate::http::error::ApiError;
use crate::http::params::Query;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use crate::service::{ActivateRequest, ActivateScope, Activated};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::Map;

/// An Agent `Decision`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Entry {
    user_id: String,
    experiment_key: String,
    feature_key: String,
    variation_key: String,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Map::is_empty")]
    variables: VariableMap,
    enabled: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Entry {
    fn not_found(user_id: &str, kind: Kind, key: &str) -> Self {
        let (experiment_key, feature_key, error) = match kind {
            Kind::Experiment => (key.to_string(), String::new(), "experimentKey not found"),
            Kind::Feature => (String::new(), key.to_string(), "featureKey not found"),
        };
        Self {
            user_id: user_id.to_string(),
            experiment_key,
            feature_key,
            variation_key: String::new(),
            kind: "",
            variables: VariableMap::default(),
            enabled: false,
            error: Some(error.into()),
        }
    }

    fn new(config: &ProjectConfig, user_id: &str, a: Activated) -> Self {
        let user_id = user_id.to_string();
        match a {
            Activated::Experiment { answer: Ok(a), .. } => Self {
                user_id,
                experiment_key: a.experiment_key,
                feature_key: String::new(),
                enabled: a.variation_key.is_some(),
                variation_key: a.variation_key.unwrap_or_default(),
                kind: "experiment",
                variables: VariableMap::default(),
                error: None,
            },
            Activated::Experiment {
                key,
                answer: Err(_),
            } => Self::not_found(&user_id, Kind::Experiment, &key),
            Activated::Feature {
                decision: Some(d), ..
            } => {
                let test = rule_source(config, &d.flag_key, d.rule_key.as_deref())
                    == RuleSource::Experiment;
                Self {
                    user_id,
                    experiment_key: d.rule_key.filter(|_| test).unwrap_or_default(),
                    variation_key: d.variation_key.filter(|_| test).unwrap_or_default(),
                    feature_key: d.flag_key,
                    kind: "feature",
                    enabled: d.enabled,
                    variables: d.variables,
                    error: None,
                }
            }
            Activated::Feature {
                key,
                decision: None,
            } => Self::not_found(&user_id, Kind::Feature, &key),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Experiment,
    Feature,
}

/// The keys a query names, each once, in the order first named, with whether the datafile has
/// them.
#[derive(Default)]
struct Selection {
    keys: Vec<(Kind, String, bool)>,
}

impl Selection {
    fn add(&mut self, kind: Kind, key: &str, known: bool) {
        if !self.keys.iter().any(|(k, s, _)| *k == kind && s == key) {
            self.keys.push((kind, key.to_string(), known));
        }
    }

    fn parse(q: &Query, config: &ProjectConfig) -> Result<Self, ApiError> {
        let mut s = Self::default();
        for kind in q.values("type") {
            match kind {
                "experiment" => {
                    for e in config.experiments.iter().filter(|e| !e.is_rollout_rule) {
                        s.add(Kind::Experiment, &e.key, true);
                    }
                }
                "feature" => {
                    for f in &config.flags {
                        s.add(Kind::Feature, &f.key, true);
                    }
                }
                other => {
                    return Err(ApiError::BadRequest(format!(
                        "type {other:?} not supported"
                    )))
                }
            }
        }
        for key in q.values("experimentKey") {
            let known = config
                .experiment_by_key(key)
                .is_some_and(|i| !config.experiments[i].is_rollout_rule);
            s.add(Kind::Experiment, key, known);
        }
        for key in q.values("featureKey") {
            s.add(Kind::Feature, key, config.flag_by_key(key).is_some());
        }
        Ok(s)
    }

    fn known(&self, kind: Kind) -> Vec<String> {
        self.keys
            .iter()
            .filter(|(k, _, known)| *k == kind && *known)
            .map(|(_, key, _)| key.clone())
            .collect()
    }
}

/// The handler.
pub async fn activate(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(activate_keys(state, req).await)
}

async fn activate_keys(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let pin = pin(state, &req)?;
    let b: UserBody = body(state, req).await?;
    let user = b.user(state)?;
    let config = pin.config();
    let selection = Selection::parse(&q, config)?;
    super::check_decisions(state, selection.keys.len())?;
    let disable_tracking = q.get("disableTracking") == Some("true");
    let experiment_keys = selection.known(Kind::Experiment);
    let feature_keys = selection.known(Kind::Feature);
    let decided = if experiment_keys.is_empty() && feature_keys.is_empty() {
        Vec::new()
    } else {
        let request = ActivateRequest {
            experiment_keys: &experiment_keys,
            feature_keys: &feature_keys,
            scope: ActivateScope::All,
            track: !disable_tracking,
        };
        state.service.activate(&pin, &user, request).await
    };
    let mut decided = decided.into_iter();
    let (mut experiments, mut features): (Vec<_>, Vec<_>) = (Vec::new(), Vec::new());
    for a in decided.by_ref() {
        match a {
            Activated::Experiment { .. } => experiments.push(a),
            Activated::Feature { .. } => features.push(a),
        }
    }
    let (mut experiments, mut features) = (experiments.into_iter(), features.into_iter());
    let mut out = Vec::with_capacity(selection.keys.len());
    for (kind, key, known) in &selection.keys {
        let next = match (known, kind) {
            (false, _) => None,
            (true, Kind::Experiment) => experiments.next(),
            (true, Kind::Feature) => features.next(),
        };
        out.push(match next {
            Some(a) => Entry::new(config, &user.user_id, a),
            None => Entry::not_found(&user.user_id, *kind, key),
        });
    }
    match q.get("enabled") {
        Some("true") => out.retain(|e| e.enabled),
        Some("false") => out.retain(|e| !e.enabled),
        _ => {}
    }
    Ok(json_line(StatusCode::OK, &out))
}
