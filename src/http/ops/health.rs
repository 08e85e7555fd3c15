//! `GET /health` (alive, with the profile store's state and each project's revision) and
//! `GET /ready` (200 once every project has a datafile, else 503).

use crate::http::error::ApiError;
use crate::http::response::{json, Resp};
use crate::http::HttpState;
use crate::service::profiles::StoreHealth;
use hyper::StatusCode;
use serde::Serialize;

#[derive(Debug, Serialize)]
struct HealthOut<'a> {
    status: &'static str,
    profile_store: StoreOut,
    projects: Vec<ProjectOut<'a>>,
}

#[derive(Debug, Serialize)]
struct StoreOut {
    backend: &'static str,
    state: &'static str,
}

#[derive(Debug, Serialize)]
struct ProjectOut<'a> {
    name: &'a str,
    revision: Option<&'a str>,
    source: Option<&'a str>,
}

#[derive(Debug, Serialize)]
struct ReadyOut {
    ready: bool,
}

/// `GET /health`.
pub async fn health(state: &HttpState) -> Result<Resp, ApiError> {
    let h = state.service.health();
    let store = match h.profile_store {
        StoreHealth::None => "none",
        StoreHealth::Ok => "ok",
        StoreHealth::Degraded => "degraded",
    };
    let body = HealthOut {
        status: if h.profile_store == StoreHealth::Degraded {
            "degraded"
        } else {
            "ok"
        },
        profile_store: StoreOut {
            backend: h.profile_backend,
            state: store,
        },
        projects: h
            .projects
            .iter()
            .map(|p| ProjectOut {
                name: &p.name,
                revision: p.revision.as_deref(),
                source: p.origin.as_deref(),
            })
            .collect(),
    };
    Ok(json(StatusCode::OK, &body))
}

/// `GET /ready`.
pub async fn ready(state: &HttpState) -> Result<Resp, ApiError> {
    if state.service.ready() {
        Ok(json(StatusCode::OK, &ReadyOut { ready: true }))
    } else {
        Err(ApiError::Unavailable(
            "not every project has a datafile yet".into(),
        ))
    }
}
