//! `GET /bucketer?e=EXPERIMENT&u=USER&a=ATTRS&debug=1` — the classic Lambda bucketer call —
//! and its flag form `f=FLAG`. With `debug`, the answer adds the ids, bucket numbers, reasons
//! and a summary of the datafile it came from.

use super::error::ApiError;
use super::params::{parse_attributes, sdk_key, Query};
use super::response::{json, Resp};
use super::HttpState;
use crate::core::{DecideOptions, UserContext};
use crate::service::PinnedProject;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::SocketAddr;

/// The caller's address: the first `X-Forwarded-For` hop when trusted, else the peer.
fn client_ip(req: &Request<Incoming>, peer: SocketAddr, trust_forwarded_for: bool) -> String {
    if trust_forwarded_for {
        if let Some(first) = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            return first.to_string();
        }
    }
    peer.ip().to_string()
}

/// The datafile a debug answer came from.
#[derive(Serialize)]
struct DatafileSummary<'a> {
    experiments: usize,
    flags: usize,
    audiences: usize,
    events: usize,
    rollouts: usize,
    sdk_key: &'a Option<String>,
    environment_key: &'a Option<String>,
    version: &'a str,
    loaded_at: String,
    source: &'a str,
    project: &'a str,
}

/// The fields `debug=1` adds, after the answer's own.
#[derive(Serialize)]
struct Debug<'a, B> {
    account_id: &'a str,
    project_id: &'a str,
    revision: &'a str,
    bucket: B,
    reasons: Vec<String>,
    datafile: DatafileSummary<'a>,
}

impl<'a, B> Debug<'a, B> {
    fn new(pin: &'a PinnedProject, bucket: B, reasons: Vec<String>) -> Self {
        let c = pin.config();
        Self {
            account_id: &c.account_id,
            project_id: &c.project_id,
            revision: &c.revision,
            bucket,
            reasons,
            datafile: DatafileSummary {
                experiments: c.experiment_count(),
                flags: c.flags.len(),
                audiences: c.audiences.len(),
                events: c.events.len(),
                rollouts: c.rollouts.len(),
                sdk_key: &c.sdk_key,
                environment_key: &c.environment_key,
                version: &c.version,
                loaded_at: humantime::format_rfc3339_millis(pin.loaded_at()).to_string(),
                source: pin.origin(),
                project: pin.name(),
            },
        }
    }
}

/// An experiment answer.
#[derive(Serialize)]
struct ExperimentOut<'a> {
    experiment_key: &'a str,
    user_id: &'a str,
    variation_key: Option<&'a str>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    debug: Option<ExperimentDebug<'a>>,
}

#[derive(Serialize)]
struct ExperimentDebug<'a> {
    experiment_id: &'a str,
    variation_id: Option<&'a str>,
    #[serde(flatten)]
    rest: Debug<'a, ExperimentBucket<'a>>,
}

#[derive(Serialize)]
struct ExperimentBucket<'a> {
    bucketing_id: &'a str,
    group_bucket: Option<u32>,
    experiment_bucket: u32,
}

/// A flag answer.
#[derive(Serialize)]
struct FlagOut<'a> {
    flag_key: &'a str,
    user_id: &'a str,
    enabled: bool,
    variation_key: Option<&'a str>,
    rule_key: Option<&'a str>,
    variables: &'a Map<String, Value>,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    debug: Option<Debug<'a, FlagBucket<'a>>>,
}

#[derive(Serialize)]
struct FlagBucket<'a> {
    bucketing_id: &'a str,
}

/// The handler.
pub async fn bucketer(
    state: &HttpState,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let debug = q.flag("debug", false).map_err(ApiError::BadRequest)?;
    let experiment = q.get("e").filter(|s| !s.is_empty());
    let flag = q.get("f").filter(|s| !s.is_empty());
    if experiment.is_none() && flag.is_none() {
        return Err(ApiError::BadRequest(
            "missing query parameter `e` (experiment key) or `f` (flag key)".into(),
        ));
    }
    let user_id = match q.get("u") {
        Some(u) if !u.is_empty() => u.to_string(),
        _ => client_ip(&req, peer, state.trust_forwarded_for),
    };
    let attributes = match q.get("a") {
        Some(a) => parse_attributes(a, state.limits.max_attributes)
            .map_err(|e| ApiError::BadRequest(format!("query parameter `a`: {e}")))?,
        None => Map::new(),
    };
    let pin = state.service.pin(sdk_key(&req).as_deref())?;
    let user = UserContext::new(user_id, attributes);
    let user_id = user.user_id.as_str();
    if let Some(key) = experiment {
        let answer = state
            .service
            .experiment(&pin, key, &user, true, debug)
            .await?;
        let debug = debug.then(|| ExperimentDebug {
            experiment_id: &answer.experiment_id,
            variation_id: answer.variation_id.as_deref(),
            rest: Debug::new(
                &pin,
                ExperimentBucket {
                    bucketing_id: &answer.bucketing_id,
                    group_bucket: answer.buckets.0,
                    experiment_bucket: answer.buckets.1,
                },
                answer.reasons.clone(),
            ),
        });
        return Ok(json(
            StatusCode::OK,
            &ExperimentOut {
                experiment_key: &answer.experiment_key,
                user_id,
                variation_key: answer.variation_key.as_deref(),
                debug,
            },
        ));
    }
    let key = flag.unwrap_or_default();
    if pin.config().flag_by_key(key).is_none() {
        return Err(ApiError::NotFound(format!("unknown flag key {key:?}")));
    }
    let options = DecideOptions {
        include_reasons: debug,
        ..DecideOptions::default()
    };
    let mut decisions = state
        .service
        .decide(&pin, Some(&[key]), &user, options)
        .await?;
    let d = decisions
        .pop()
        .ok_or_else(|| ApiError::Internal("decide returned nothing".into()))?;
    let debug = debug.then(|| {
        Debug::new(
            &pin,
            FlagBucket {
                bucketing_id: user.bucketing_id(),
            },
            d.reasons.clone(),
        )
    });
    Ok(json(
        StatusCode::OK,
        &FlagOut {
            flag_key: &d.flag_key,
            user_id,
            enabled: d.enabled,
            variation_key: d.variation_key.as_deref(),
            rule_key: d.rule_key.as_deref(),
            variables: &d.variables,
            debug,
        },
    ))
}
