//! What the operations surface asks of the projects: their health, a datafile push, a
//! webhook-triggered refresh, a refresh of all (SIGHUP). The HTTP layer reaches the datafile
//! sources only through these.

use super::dynamic::DynamicError;
use super::profiles::StoreHealth;
use super::{Service, ServiceError};
use crate::config::{sdk_key_is_valid, Secret};
use crate::source::LoadedDatafile;
use std::sync::Arc;

/// Why the datafile mirror does not serve a datafile.
#[derive(Debug, thiserror::Error)]
pub enum MirrorRefusal {
    /// A secure environment's datafile asked without a bearer token.
    #[error("this datafile needs its access token (Authorization: Bearer <token>)")]
    TokenMissing,
    /// A secure environment's datafile asked with another token.
    #[error("the access token does not match this datafile's")]
    TokenWrong,
    #[error(transparent)]
    Service(#[from] ServiceError),
}

/// Whether `presented` is `token`, compared by digest in constant time.
fn token_matches(presented: &str, token: &Secret) -> bool {
    use sha1::Digest;
    use subtle::ConstantTimeEq;
    let a = sha1::Sha1::digest(presented.as_bytes());
    let b = sha1::Sha1::digest(token.expose().as_bytes());
    a.as_slice().ct_eq(b.as_slice()).into()
}

/// A project chosen by SDK key, before any datafile is pinned (what an admin push targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProjectId(usize);

/// A project's state as `/health` reports it.
#[derive(Debug, Clone)]
pub struct ProjectHealth {
    pub name: String,
    /// `None` until a datafile is loaded.
    pub revision: Option<String>,
    pub origin: Option<String>,
}

/// The daemon's state as `/health` reports it.
#[derive(Debug, Clone)]
pub struct Health {
    pub profile_store: StoreHealth,
    pub profile_backend: &'static str,
    pub projects: Vec<ProjectHealth>,
}

/// What a datafile push installed.
#[derive(Debug, Clone)]
pub struct Installed {
    pub project: String,
    pub revision: Option<String>,
}

/// What a datafile-updated webhook did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// No project's secret signed it.
    Unverified,
    /// Signed, and this many projects were asked to refresh (0: none with that project id).
    Refreshing(usize),
}

impl Service {
    /// The profile store's state and every project's revision and origin.
    pub fn health(&self) -> Health {
        Health {
            profile_store: self.profiles.health(),
            profile_backend: self.profiles.backend(),
            projects: self
                .projects
                .iter()
                .map(|p| {
                    let d = p.current();
                    ProjectHealth {
                        name: p.settings.name.clone(),
                        revision: d.as_ref().map(|d| d.config.revision.clone()),
                        origin: d.as_ref().map(|d| d.origin.clone()),
                    }
                })
                .collect(),
        }
    }

    /// The project an SDK key selects, whether or not it has a datafile yet.
    pub fn project_id(&self, sdk_key: Option<&str>) -> Result<ProjectId, ServiceError> {
        self.project(sdk_key).map(|(index, _, _)| ProjectId(index))
    }

    /// Validates and installs a pushed datafile; an invalid one is refused and the current one
    /// stays.
    pub async fn install_datafile(
        &self,
        id: ProjectId,
        bytes: Vec<u8>,
        origin: &str,
    ) -> Result<Installed, ServiceError> {
        let project = self
            .projects
            .get(id.0)
            .ok_or_else(|| ServiceError::UnknownProject(String::new()))?;
        project
            .accept(bytes, origin.to_string())
            .await
            .map_err(|e| ServiceError::InvalidDatafile(e.to_string()))?;
        Ok(Installed {
            project: project.settings.name.clone(),
            revision: project.current().map(|d| d.config.revision.clone()),
        })
    }

    /// A datafile-updated webhook: every project whose webhook secret `signed_by` accepts, and
    /// whose project id is `project_id` (when given and a datafile is loaded), refreshes now.
    pub fn refresh_from_webhook(
        &self,
        project_id: Option<&str>,
        signed_by: impl Fn(&[u8]) -> bool,
    ) -> WebhookOutcome {
        let mut verified = false;
        let mut refreshed = 0;
        for p in &self.projects {
            let Some(secret) = &p.settings.webhook_secret else {
                continue;
            };
            if !signed_by(secret.expose().as_bytes()) {
                continue;
            }
            verified = true;
            let same_project = match (project_id, p.current()) {
                (Some(id), Some(d)) => d.config.project_id == id,
                _ => true,
            };
            if same_project {
                tracing::info!(project = %p.settings.name, "webhook: refreshing datafile");
                p.request_refresh();
                refreshed += 1;
            }
        }
        if verified {
            WebhookOutcome::Refreshing(refreshed)
        } else {
            WebhookOutcome::Unverified
        }
    }

    /// The datafile the mirror serves for `sdk_key` (`authenticated`: asked on the secure
    /// environments' path): a configured project's (its access token must be `bearer` when it
    /// has one), else an on-demand one (loaded with `bearer` as its token on the secure path).
    pub async fn mirrored_datafile(
        &self,
        sdk_key: &str,
        bearer: Option<&str>,
        authenticated: bool,
    ) -> Result<Arc<LoadedDatafile>, MirrorRefusal> {
        if !sdk_key_is_valid(sdk_key) {
            return Err(ServiceError::OnDemand(DynamicError::Malformed).into());
        }
        let bearer = bearer.filter(|b| !b.is_empty());
        if let Some(p) = self
            .projects
            .iter()
            .find(|p| p.settings.sdk_key.as_deref() == Some(sdk_key))
        {
            match (&p.settings.access_token, bearer) {
                (Some(_), None) => return Err(MirrorRefusal::TokenMissing),
                (Some(t), Some(b)) if !token_matches(b, t) => {
                    return Err(MirrorRefusal::TokenWrong)
                }
                _ => {}
            }
            return p
                .current()
                .ok_or_else(|| ServiceError::NotReady(p.settings.name.clone()).into());
        }
        let Some(dynamic) = self.dynamic.as_ref().filter(|d| d.enabled()) else {
            return Err(ServiceError::UnknownProject(sdk_key.to_string()).into());
        };
        let full = match (authenticated, bearer) {
            (false, _) => sdk_key.to_string(),
            (true, None) => return Err(MirrorRefusal::TokenMissing),
            (true, Some(b)) if b.contains(':') => return Err(MirrorRefusal::TokenWrong),
            (true, Some(b)) => format!("{sdk_key}:{b}"),
        };
        let loaded = match dynamic.get_or_load(&full).await {
            Ok(l) => l,
            Err(DynamicError::Unknown(_)) if authenticated => {
                return Err(MirrorRefusal::TokenWrong)
            }
            Err(e) => return Err(ServiceError::OnDemand(e).into()),
        };
        loaded
            .project
            .current()
            .ok_or_else(|| ServiceError::NotReady(loaded.project.settings.name.clone()).into())
    }

    /// Asks every file-backed or polled project to re-read its datafile (SIGHUP).
    pub fn refresh_datafiles(&self) {
        for p in &self.projects {
            p.request_refresh();
        }
    }
}
