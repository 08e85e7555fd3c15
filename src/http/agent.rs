//! Optimizely-Agent-compatible endpoints (`/v1/...`): same paths, field names and shapes as the
//! Agent's OpenAPI spec, so existing Agent clients work unchanged.

use super::error::ApiError;
use super::params::Query;
use super::{json, parse_json, read_body, sdk_key, App, Resp};
use crate::core::{
    Attributes, DecideOptions, FlagDecision, ForcedDecision, UserContext, UserProfile,
};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Map, Value};

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
    fn user(&self, max_attributes: usize) -> Result<UserContext, ApiError> {
        let user_id = self
            .user_id
            .clone()
            .ok_or_else(|| ApiError::BadRequest("`userId` is required".into()))?;
        let attributes = self.user_attributes.clone().unwrap_or_default();
        if attributes.len() > max_attributes {
            return Err(ApiError::BadRequest(format!(
                "too many attributes (limit {max_attributes})"
            )));
        }
        let mut user = UserContext::new(user_id, attributes);
        user.forced_decisions = self.forced_decisions.clone();
        Ok(user)
    }
}

async fn body<T: serde::de::DeserializeOwned>(
    app: &App,
    req: Request<Incoming>,
) -> Result<T, ApiError> {
    let bytes = read_body(req, app.config.max_body_bytes).await?;
    parse_json(&bytes)
}

fn decision_json(d: FlagDecision, user: &UserContext) -> Value {
    json!({
        "flagKey": d.flag_key,
        "enabled": d.enabled,
        "variationKey": d.variation_key.unwrap_or_default(),
        "ruleKey": d.rule_key.unwrap_or_default(),
        "variables": d.variables,
        "userContext": {"userId": user.user_id, "attributes": user.attributes},
        "reasons": d.reasons,
    })
}

/// `POST /v1/decide?keys=...`: one key → one object; several or none → an array.
pub async fn decide(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let keys: Vec<String> = q.all("keys").into_iter().map(str::to_owned).collect();
    let key = sdk_key(&req);
    let b: UserBody = body(app, req).await?;
    let user = b.user(app.config.max_attributes)?;
    let mut options = DecideOptions::parse(b.decide_options.iter().map(String::as_str))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let snap = app.service.snapshot(key.as_deref())?;
    let key_refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    if key_refs.len() == 1 {
        // As in the SDKs, a single-key decide ignores ENABLED_FLAGS_ONLY.
        options.enabled_flags_only = false;
    }
    let selected = (!key_refs.is_empty()).then_some(key_refs.as_slice());
    let decisions = app.service.decide(&snap, selected, &user, options).await?;
    if key_refs.len() == 1 {
        let d = decisions
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::Internal("decide returned nothing".into()))?;
        return Ok(json(StatusCode::OK, &decision_json(d, &user)));
    }
    let all: Vec<Value> = decisions
        .into_iter()
        .map(|d| decision_json(d, &user))
        .collect();
    Ok(json(StatusCode::OK, &all))
}

/// `POST /v1/activate`: decisions for experiments and/or features, optionally tracked.
pub async fn activate(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let disable_tracking = q
        .flag("disableTracking", false)
        .map_err(ApiError::BadRequest)?;
    let enabled_only = q.flag("enabled", false).map_err(ApiError::BadRequest)?;
    let kind = q.get("type").unwrap_or("");
    if !matches!(kind, "" | "experiment" | "feature") {
        return Err(ApiError::BadRequest(format!(
            "`type` must be experiment or feature, got {kind:?}"
        )));
    }
    let mut experiment_keys: Vec<String> = q
        .all("experimentKey")
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut feature_keys: Vec<String> =
        q.all("featureKey").into_iter().map(str::to_owned).collect();
    let key = sdk_key(&req);
    let b: UserBody = body(app, req).await?;
    let user = b.user(app.config.max_attributes)?;
    let snap = app.service.snapshot(key.as_deref())?;
    let config = snap.config();
    if experiment_keys.is_empty() && feature_keys.is_empty() {
        if kind != "feature" {
            experiment_keys = config
                .experiments
                .iter()
                .filter(|e| !e.is_rollout_rule)
                .map(|e| e.key.clone())
                .collect();
        }
        if kind != "experiment" {
            feature_keys = config.flags.iter().map(|f| f.key.clone()).collect();
        }
    }
    let mut out = Vec::new();
    for k in &experiment_keys {
        let d = match app
            .service
            .experiment(&snap, k, &user, !disable_tracking, false)
            .await
        {
            Ok(a) => json!({
                "experimentKey": a.experiment_key,
                "featureKey": "",
                "variationKey": a.variation_key.clone().unwrap_or_default(),
                "type": "experiment",
                "enabled": a.variation_key.is_some(),
                "variables": {},
            }),
            Err(e) => {
                json!({"experimentKey": k, "featureKey": "", "variationKey": "", "type": "experiment", "enabled": false, "error": e.to_string()})
            }
        };
        out.push(d);
    }
    let options = DecideOptions {
        disable_decision_event: disable_tracking,
        ..DecideOptions::default()
    };
    for k in &feature_keys {
        if config.flag_by_key(k).is_none() {
            out.push(json!({"featureKey": k, "experimentKey": "", "variationKey": "", "type": "feature", "enabled": false, "error": format!("unknown feature key {k:?}")}));
            continue;
        }
        let mut ds = app
            .service
            .decide(&snap, Some(&[k.as_str()]), &user, options)
            .await?;
        if let Some(d) = ds.pop() {
            out.push(json!({
                "featureKey": d.flag_key,
                "experimentKey": d.rule_key.clone().unwrap_or_default(),
                "variationKey": d.variation_key.clone().unwrap_or_default(),
                "type": "feature",
                "enabled": d.enabled,
                "variables": d.variables,
            }));
        }
    }
    if enabled_only {
        out.retain(|d| d["enabled"] == json!(true));
    }
    Ok(json(StatusCode::OK, &out))
}

/// `POST /v1/track?eventKey=...`.
pub async fn track(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let q = Query::parse(req.uri().query());
    let event_key = q
        .get("eventKey")
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::BadRequest("query parameter `eventKey` is required".into()))?
        .to_string();
    let key = sdk_key(&req);
    let b: UserBody = body(app, req).await?;
    let user = b.user(app.config.max_attributes)?;
    let snap = app.service.snapshot(key.as_deref())?;
    app.service
        .track(
            &snap,
            &event_key,
            &user.user_id,
            &user.attributes,
            b.event_tags.as_ref(),
        )
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"userId": user.user_id, "eventKey": event_key}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverrideBody {
    user_id: String,
    experiment_key: String,
    #[serde(default)]
    variation_key: Option<String>,
}

/// `POST /v1/override` (only with `api.enable_overrides = true`).
pub async fn override_variation(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let key = sdk_key(&req);
    let b: OverrideBody = body(app, req).await?;
    let snap = app.service.snapshot(key.as_deref())?;
    let user = UserContext::new(b.user_id.clone(), Attributes::new());
    let previous = app
        .service
        .experiment(&snap, &b.experiment_key, &user, false, false)
        .await
        .ok()
        .and_then(|a| a.variation_key);
    let variation = b.variation_key.as_deref().filter(|v| !v.is_empty());
    app.service
        .set_override(&snap, &b.experiment_key, &b.user_id, variation)?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "userId": b.user_id,
            "experimentKey": b.experiment_key,
            "variationKey": variation.unwrap_or_default(),
            "prevVariationKey": previous.unwrap_or_default(),
            "messages": [],
        }),
    ))
}

/// `GET /v1/config`.
pub async fn config(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let snap = app.service.snapshot(sdk_key(&req).as_deref())?;
    Ok(json(
        StatusCode::OK,
        &crate::core::optimizely_config::render(snap.config()),
    ))
}

/// `GET /v1/datafile`: the datafile in use, as it was received.
pub async fn datafile(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let snap = app.service.snapshot(sdk_key(&req).as_deref())?;
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
        snap.config().datafile.clone(),
    )));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

#[derive(Debug, Deserialize)]
struct LookupBody {
    #[serde(alias = "userId")]
    user_id: String,
}

/// `POST /v1/lookup`: a user's stored profile (`{"user_id", "experiment_bucket_map"}`).
pub async fn lookup(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b: LookupBody = body(app, req).await?;
    let profile = app.service.lookup_profile(&b.user_id).await?;
    let p = profile.unwrap_or_else(|| UserProfile::new(b.user_id.clone()));
    Ok(json(StatusCode::OK, &p))
}

#[derive(Debug, Deserialize)]
struct SaveBody {
    #[serde(alias = "userId")]
    user_id: String,
    #[serde(alias = "experimentBucketMap", default)]
    experiment_bucket_map: Map<String, Value>,
}

/// `POST /v1/save`: stores (merges) a profile.
pub async fn save(app: &App, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b: SaveBody = body(app, req).await?;
    for (exp, entry) in &b.experiment_bucket_map {
        if entry.get("variation_id").and_then(Value::as_str).is_none() {
            return Err(ApiError::BadRequest(format!(
                "experiment_bucket_map[{exp:?}] must be {{\"variation_id\": \"...\"}}"
            )));
        }
    }
    let profile = UserProfile {
        user_id: b.user_id,
        experiment_bucket_map: b.experiment_bucket_map,
    };
    app.service.save_profile(&profile).await?;
    Ok(json(StatusCode::OK, &profile))
}
