//! `POST /v1/lookup` and `POST /v1/save`: a user's stored profile, in the Agent's camelCase
//! (`{"userId", "experimentBucketMap"}`), read and written through the profile store.
//!
//! As in the Agent:
//! - a save REPLACES the user's profile with the body's map (entries not in it are gone; a
//!   body without `experimentBucketMap` leaves the user with an empty profile);
//! - body keys it does not know are ignored, an empty body is a body without `userId`, and a
//!   missing or empty `userId` is a 400 `missing "userId" in request payload`; a body that is
//!   not JSON is a 400 `error parsing request body`.
//!
//! bucketd's own: an entry that is not `{"variation_id": "<string>"}` is a 400 (the Agent
//! skips or fails on it), a profile beyond `api.max_profile_entries` entries or
//! `api.max_profile_bytes` bytes is a 422, and a store that fails the save is a 503.

use super::{answer, MISSING_USER_ID};
use crate::core::UserProfile;
use crate::http::error::ApiError;
use crate::http::response::{json_line, Resp};
use crate::http::HttpState;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The Agent's `UPSResponseOut`, the body of both calls.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
struct ProfileBody {
    #[serde(default)]
    user_id: String,
    #[serde(default)]
    experiment_bucket_map: Map<String, Value>,
}

impl ProfileBody {
    /// The body as the Agent reads it: empty is the default, anything else must be JSON.
    async fn read(state: &HttpState, req: Request<Incoming>) -> Result<Self, ApiError> {
        let bytes = state.limits.read_body(req).await?;
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(&bytes)
            .map_err(|_| ApiError::BadRequest("error parsing request body".into()))
    }

    fn user_id(&self) -> Result<&str, ApiError> {
        if self.user_id.is_empty() {
            return Err(ApiError::BadRequest(MISSING_USER_ID.into()));
        }
        Ok(&self.user_id)
    }
}

/// `POST /v1/lookup`: the stored profile (an empty one for a user without).
pub async fn lookup(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(lookup_profile(state, req).await)
}

async fn lookup_profile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b = ProfileBody::read(state, req).await?;
    let user_id = b.user_id()?;
    let profile = state.service.lookup_profile(user_id).await?;
    let p = profile.unwrap_or_else(|| UserProfile::new(user_id));
    Ok(json_line(
        StatusCode::OK,
        &ProfileBody {
            user_id: p.user_id,
            experiment_bucket_map: p.experiment_bucket_map,
        },
    ))
}

/// `POST /v1/save`: replaces the user's profile and echoes it.
pub async fn save(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(save_profile(state, req).await)
}

async fn save_profile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b = ProfileBody::read(state, req).await?;
    b.user_id()?;
    check_bounds(state, &b.experiment_bucket_map)?;
    for (exp, entry) in &b.experiment_bucket_map {
        if entry.get("variation_id").and_then(Value::as_str).is_none() {
            return Err(ApiError::BadRequest(format!(
                "experimentBucketMap[{exp:?}] must be {{\"variation_id\": \"...\"}}"
            )));
        }
    }
    let profile = UserProfile {
        user_id: b.user_id,
        experiment_bucket_map: b.experiment_bucket_map,
    };
    if !state.service.replace_profile(&profile).await? {
        return Err(ApiError::Unavailable(
            "the profile store did not take the save; retry later".into(),
        ));
    }
    Ok(json_line(
        StatusCode::OK,
        &ProfileBody {
            user_id: profile.user_id,
            experiment_bucket_map: profile.experiment_bucket_map,
        },
    ))
}

/// A saved profile stays within `api.max_profile_entries` and `api.max_profile_bytes`.
fn check_bounds(state: &HttpState, map: &Map<String, Value>) -> Result<(), ApiError> {
    let limits = &state.agent_api;
    if map.len() > limits.max_profile_entries {
        return Err(ApiError::Unprocessable(format!(
            "experimentBucketMap has {} entries, more than api.max_profile_entries ({})",
            map.len(),
            limits.max_profile_entries
        )));
    }
    let bytes = serde_json::to_vec(map)
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .len();
    if bytes > limits.max_profile_bytes {
        return Err(ApiError::Unprocessable(format!(
            "experimentBucketMap is {bytes} bytes, more than api.max_profile_bytes ({})",
            limits.max_profile_bytes
        )));
    }
    Ok(())
}
