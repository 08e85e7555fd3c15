//! `GET /bucketer?e=EXPERIMENT&u=USER&a=ATTRS&debug=1` — the classic Lambda bucketer call —
//! and its flag form `f=FLAG`.

use super::error::ApiError;
use super::params::{parse_attributes, Query};
use super::{json, sdk_key, App, Resp};
use crate::core::{DecideOptions, UserContext};
use crate::service::Snapshot;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Map, Value};
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

fn datafile_summary(snap: &Snapshot) -> Value {
    let c = snap.config();
    json!({
        "experiments": c.experiment_count(),
        "flags": c.flags.len(),
        "audiences": c.audiences.len(),
        "events": c.events.len(),
        "rollouts": c.rollouts.len(),
        "sdk_key": c.sdk_key,
        "environment_key": c.environment_key,
        "version": c.version,
        "loaded_at": humantime::format_rfc3339_millis(snap.datafile.loaded_at).to_string(),
        "source": snap.datafile.origin,
        "project": snap.project.settings.name,
    })
}

fn debug_fields(
    out: &mut Map<String, Value>,
    snap: &Snapshot,
    reasons: Vec<String>,
    bucket: Value,
) {
    let c = snap.config();
    out.insert("account_id".into(), json!(c.account_id));
    out.insert("project_id".into(), json!(c.project_id));
    out.insert("revision".into(), json!(c.revision));
    out.insert("bucket".into(), bucket);
    out.insert("reasons".into(), json!(reasons));
    out.insert("datafile".into(), datafile_summary(snap));
}

/// The experiment answer without `debug`.
#[derive(serde::Serialize)]
struct ExperimentOut<'a> {
    experiment_key: &'a str,
    user_id: &'a str,
    variation_key: Option<&'a str>,
}

/// The bucketer handler.
pub async fn bucketer(
    app: &App,
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
        _ => client_ip(&req, peer, app.config.trust_forwarded_for),
    };
    let attributes = match q.get("a") {
        Some(a) => parse_attributes(a, app.config.max_attributes)
            .map_err(|e| ApiError::BadRequest(format!("query parameter `a`: {e}")))?,
        None => Map::new(),
    };
    let snap = app.service.snapshot(sdk_key(&req).as_deref())?;
    let user = UserContext::new(user_id, attributes);
    let user_id = user.user_id.as_str();
    let mut out = Map::new();
    if let Some(key) = experiment {
        let answer = app
            .service
            .experiment(&snap, key, &user, true, debug)
            .await?;
        if !debug {
            // The common answer, written without building a JSON tree.
            return Ok(json(
                StatusCode::OK,
                &ExperimentOut {
                    experiment_key: &answer.experiment_key,
                    user_id,
                    variation_key: answer.variation_key.as_deref(),
                },
            ));
        }
        out.insert("experiment_key".into(), json!(answer.experiment_key));
        out.insert("user_id".into(), json!(user_id));
        out.insert("variation_key".into(), json!(answer.variation_key));
        if debug {
            out.insert("experiment_id".into(), json!(answer.experiment_id));
            out.insert("variation_id".into(), json!(answer.variation_id));
            let bucket = json!({
                "bucketing_id": answer.bucketing_id,
                "group_bucket": answer.buckets.0,
                "experiment_bucket": answer.buckets.1,
            });
            debug_fields(&mut out, &snap, answer.reasons, bucket);
        }
    } else if let Some(key) = flag {
        if snap.config().flag_by_key(key).is_none() {
            return Err(ApiError::NotFound(format!("unknown flag key {key:?}")));
        }
        let options = DecideOptions {
            include_reasons: debug,
            ..DecideOptions::default()
        };
        let mut decisions = app
            .service
            .decide(&snap, Some(&[key]), &user, options)
            .await?;
        let d = decisions
            .pop()
            .ok_or_else(|| ApiError::Internal("decide returned nothing".into()))?;
        out.insert("flag_key".into(), json!(d.flag_key));
        out.insert("user_id".into(), json!(user_id));
        out.insert("enabled".into(), json!(d.enabled));
        out.insert("variation_key".into(), json!(d.variation_key));
        out.insert("rule_key".into(), json!(d.rule_key));
        out.insert("variables".into(), Value::Object(d.variables));
        if debug {
            let bucket = json!({ "bucketing_id": user.bucketing_id() });
            debug_fields(&mut out, &snap, d.reasons, bucket);
        }
    }
    Ok(json(StatusCode::OK, &Value::Object(out)))
}
