//! What the operations surface asks of the projects: their health, a datafile push, a
//! webhook-triggered refresh, a refresh of all (SIGHUP). The HTTP layer reaches the datafile
//! sources only through these.

use super::profiles::StoreHealth;
use super::{Service, ServiceError};

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
        self.project(sdk_key).map(|(index, _)| ProjectId(index))
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

    /// Asks every file-backed or polled project to re-read its datafile (SIGHUP).
    pub fn refresh_datafiles(&self) {
        for p in &self.projects {
            p.request_refresh();
        }
    }
}
