//! `POST /v1/lookup` and `POST /v1/save`: a user's stored profile, in the Agent's camelCase
//! (`{"userId", "experimentBucketMap"}`), read and written through the profile store.
//!
//! As in the Agent, body keys it does not know are ignored (a save without
//! `experimentBucketMap` stores nothing new) and a missing or empty `userId` is a 400.

use super::{answer, body, MISSING_USER_ID};
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
    let b: ProfileBody = body(state, req).await?;
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

/// `POST /v1/save`: stores a profile and echoes it.
pub async fn save(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    answer(save_profile(state, req).await)
}

async fn save_profile(state: &HttpState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let b: ProfileBody = body(state, req).await?;
    b.user_id()?;
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
    state.service.save_profile(&profile).await?;
    Ok(json_line(
        StatusCode::OK,
        &ProfileBody {
            user_id: profile.user_id,
            experiment_bucket_map: profile.experiment_bucket_map,
        },
    ))
}
