//! `POST /v1/lookup` and `POST /v1/save`: a user's stored profile
//! (`{"user_id", "experiment_bucket_map"}`), read and merged through the profile store.

use super::body;
use crate::core::UserProfile;
use crate::http::error::ApiError;
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value};

#[derive(Debug, Deserialize)]
struct LookupBody {
    #[serde(alias = "userId")]
    user_id: String,
}

/// `POST /v1/lookup`: the stored profile (an empty one for a user without).
pub async fn lookup(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b: LookupBody = body(state, req).await?;
    let profile = state.service.lookup_profile(&b.user_id).await?;
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

/// `POST /v1/save`: stores (merges) a profile and echoes it.
pub async fn save(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b: SaveBody = body(state, req).await?;
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
    state.service.save_profile(&profile).await?;
    Ok(json(StatusCode::OK, &profile))
}
