//! One request = project lookup → profile lookup → core decision → events → profile save.
//!
//! The service owns the projects (datafiles), run-time overrides, the profile gateway and the
//! event sink. HTTP handlers call it; it never blocks on the event queue, and waits on a profile
//! save only in `profiles.save = "sync"` mode.

mod activate;
pub mod auth_jwks;
pub mod breaker;
pub mod cmab;
pub mod dynamic;
#[cfg(feature = "redis")]
pub mod fanout;
mod notify;
pub mod odp;
pub mod profiles;
mod projects;
#[cfg(feature = "redis")]
mod redis_cache;
mod reset;

pub use activate::{ActivateRequest, ActivateScope, Activated};
pub use notify::ProjectNotifications;
pub use projects::{Health, Installed, MirrorRefusal, ProjectHealth, ProjectId, WebhookOutcome};

use crate::core::emit::conversion;
use crate::core::events::EventStamp;
use crate::core::{
    Attributes, DecideOptions, Decider, ExternalInputs, FlagDecision, ForcedVariations,
    ProjectConfig, UserContext, UserEvent, UserProfile,
};
use crate::metrics::Metrics;
use crate::pipeline::EventSender;
use crate::source::{LoadedDatafile, Project};
use profiles::ProfileGateway;
use serde_json::{Map, Value};
use std::sync::{Arc, RwLock};

/// Why a request cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("unknown SDK key {0:?}")]
    UnknownProject(String),
    #[error("no datafile loaded yet for project {0:?}")]
    NotReady(String),
    #[error("unknown experiment key {0:?}")]
    UnknownExperiment(String),
    #[error("unknown event key {0:?}")]
    UnknownEvent(String),
    #[error("{0}")]
    BadInput(String),
    #[error("overrides are disabled (api.enable_overrides = false)")]
    OverridesDisabled,
    #[error("profile store is not configured (profiles.type = \"none\")")]
    NoProfileStore,
    /// A pushed datafile was refused (the current one stays).
    #[error("{0}")]
    InvalidDatafile(String),
    /// An on-demand project cannot be loaded (refused key, source down, too many loaded).
    #[error(transparent)]
    OnDemand(#[from] dynamic::DynamicError),
}

/// Stamps events with a v4 uuid and the current time.
pub struct Clock;

impl EventStamp for Clock {
    fn stamp(&mut self) -> (String, u64) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        // 122 random bits from a fast thread-local generator: event ids need uniqueness, not
        // secrecy, and a getrandom syscall per event is measurable under load.
        let id = uuid::Builder::from_random_bytes(fastrand::u128(..).to_le_bytes()).into_uuid();
        (id.to_string(), ms)
    }
}

/// The answer to an experiment decision.
#[derive(Debug, Clone)]
pub struct ExperimentAnswer {
    pub experiment_key: String,
    pub experiment_id: String,
    pub variation_key: Option<String>,
    pub variation_id: Option<String>,
    pub reasons: Vec<String>,
    /// (group bucket, experiment bucket) for debug output.
    pub buckets: (Option<u32>, u32),
    pub bucketing_id: String,
}

/// The answer to `track`.
#[derive(Debug, Clone)]
pub struct TrackAnswer {
    pub event_key: String,
}

/// The daemon's state shared by all requests.
pub struct Service {
    pub projects: Vec<Arc<Project>>,
    overrides: Vec<Arc<RwLock<ForcedVariations>>>,
    pub profiles: Arc<ProfileGateway>,
    pub events: Arc<EventSender>,
    pub metrics: Arc<Metrics>,
    pub enable_overrides: bool,
    /// Decision and conversion notifications (off until [`Service::with_notifier`]).
    notify: crate::notify::Notifier,
    /// ODP segments and events (disabled until [`Service::with_odp`]).
    odp: odp::Odp,
    /// CMAB predictions (the SDK's defaults unless [`Self::with_cmab`] says otherwise).
    pub cmab: Arc<cmab::CmabService>,
    /// On-demand projects (`[dynamic_projects]`; `None` when off).
    pub dynamic: Option<Arc<dynamic::DynamicProjects>>,
}

/// A project pinned to the datafile it serves right now: one atomic load per request, so every
/// decision of the request sees the same revision even if a new datafile lands meanwhile.
pub struct PinnedProject {
    index: usize,
    project: Arc<Project>,
    datafile: Arc<LoadedDatafile>,
    overrides: Arc<RwLock<ForcedVariations>>,
}

impl PinnedProject {
    /// The parsed project.
    pub fn config(&self) -> &ProjectConfig {
        &self.datafile.config
    }

    /// The project's configured name.
    pub fn name(&self) -> &str {
        &self.project.settings.name
    }

    /// Where the pinned datafile came from (`file:<path>`, `url:<url>`, `admin`, `bundled`, ...).
    pub fn origin(&self) -> &str {
        &self.datafile.origin
    }

    /// When the pinned datafile was installed.
    pub fn loaded_at(&self) -> std::time::SystemTime {
        self.datafile.loaded_at
    }
}

impl Service {
    /// Builds the service from its parts.
    pub fn new(
        projects: Vec<Arc<Project>>,
        profiles: Arc<ProfileGateway>,
        events: Arc<EventSender>,
        metrics: Arc<Metrics>,
        enable_overrides: bool,
    ) -> Self {
        let overrides = projects
            .iter()
            .map(|_| Arc::new(RwLock::new(ForcedVariations::default())))
            .collect();
        Self {
            projects,
            overrides,
            profiles,
            events,
            metrics,
            enable_overrides,
            notify: crate::notify::Notifier::disabled(),
            odp: odp::Odp::new(
                crate::config::OdpSettings {
                    enabled: false,
                    ..Default::default()
                },
                0,
            ),
            cmab: Arc::new(cmab::CmabService::sdk_default()),
            dynamic: None,
        }
    }

    /// With on-demand projects.
    pub fn with_dynamic(self, dynamic: Arc<dynamic::DynamicProjects>) -> Self {
        Self {
            dynamic: Some(dynamic),
            ..self
        }
    }

    /// The service with ODP reached as `settings` say.
    pub fn with_odp(mut self, settings: crate::config::OdpSettings) -> Self {
        self.odp = odp::Odp::new(settings, self.projects.len());
        self
    }

    /// The service with notifications published to `notify`.
    pub fn with_notifier(mut self, notify: crate::notify::Notifier) -> Self {
        self.notify = notify;
        self
    }

    /// With the CMAB prediction service `[cmab]` configures.
    pub fn with_cmab(self, cmab: Arc<cmab::CmabService>) -> Self {
        Self { cmab, ..self }
    }

    /// The project an SDK key selects (the first project without one): a configured one by
    /// its key (a `key:token` form matches on the key), else a loaded on-demand one.
    #[allow(clippy::type_complexity)]
    fn project(
        &self,
        sdk_key: Option<&str>,
    ) -> Result<(usize, Arc<Project>, Arc<RwLock<ForcedVariations>>), ServiceError> {
        let configured = |i: usize| (i, self.projects[i].clone(), self.overrides[i].clone());
        match sdk_key {
            None | Some("") => (!self.projects.is_empty())
                .then(|| configured(0))
                .ok_or_else(|| ServiceError::UnknownProject(String::new())),
            Some(full) => {
                let (k, _) = crate::config::split_sdk_key(full);
                if let Some(i) = self
                    .projects
                    .iter()
                    .position(|p| p.settings.sdk_key.as_deref() == Some(k))
                {
                    return Ok(configured(i));
                }
                self.dynamic
                    .as_ref()
                    .and_then(|d| d.get(full))
                    .map(|l| (l.index, l.project, l.overrides))
                    .ok_or_else(|| ServiceError::UnknownProject(k.to_string()))
            }
        }
    }

    /// Loads the on-demand project a request names when it is new (waits for the shared
    /// fetch); a no-op for configured keys and when on-demand projects are off. A key its
    /// source does not know is left for [`Self::pin`] to report as unknown.
    pub async fn prepare(&self, sdk_key: &str) -> Result<(), ServiceError> {
        let (k, _) = crate::config::split_sdk_key(sdk_key);
        let Some(dynamic) = self.dynamic.as_ref().filter(|d| d.enabled()) else {
            return Ok(());
        };
        if k.is_empty()
            || self
                .projects
                .iter()
                .any(|p| p.settings.sdk_key.as_deref() == Some(k))
        {
            return Ok(());
        }
        match dynamic.get_or_load(sdk_key).await {
            Ok(_) | Err(dynamic::DynamicError::Unknown(_)) => Ok(()),
            Err(e) => Err(ServiceError::from(e)),
        }
    }

    /// The project an SDK key selects, pinned to its current datafile.
    pub fn pin(&self, sdk_key: Option<&str>) -> Result<PinnedProject, ServiceError> {
        let (index, project, overrides) = self.project(sdk_key)?;
        let datafile = project
            .current()
            .ok_or_else(|| ServiceError::NotReady(project.settings.name.clone()))?;
        Ok(PinnedProject {
            index,
            project,
            datafile,
            overrides,
        })
    }

    /// Whether every project has a datafile.
    pub fn ready(&self) -> bool {
        self.projects.iter().all(|p| p.current().is_some())
    }

    /// The stored profile (an empty one when the store holds none); `None` without a store.
    async fn load_profile(&self, user_id: &str, ignore: bool) -> Option<UserProfile> {
        if !self.profiles.enabled() || ignore {
            return None;
        }
        let loaded = self.profiles.lookup(user_id).await;
        Some(loaded.unwrap_or_else(|| UserProfile::new(user_id)))
    }

    /// Records the events and saves the profile; returns once the events are durable (in
    /// durable mode; a failure is noted for the HTTP layer, which answers 503).
    async fn finish(&self, changed: Option<UserProfile>, events: Vec<UserEvent>) {
        // Handed over first, so the profile save overlaps the events' fsync / publish.
        self.metrics
            .events_received
            .with_label_values(&["daemon"])
            .inc_by(events.len() as u64);
        let recorded = (!events.is_empty()).then(|| self.events.send(events));
        if let Some(profile) = changed {
            self.profiles.save(&profile).await;
        }
        if let Some(ack) = recorded {
            if let Err(why) = ack.wait().await {
                tracing::debug!(%why, "events of a request not recorded");
            }
        }
    }

    /// Decides an experiment for a user; records the impression when `activate` and bucketed.
    pub async fn experiment(
        &self,
        snap: &PinnedProject,
        experiment_key: &str,
        user: &UserContext,
        activate: bool,
        with_reasons: bool,
    ) -> Result<ExperimentAnswer, ServiceError> {
        let config = snap.config();
        let idx = config
            .experiment_by_key(experiment_key)
            .ok_or_else(|| ServiceError::UnknownExperiment(experiment_key.to_string()))?;
        let profile = self.load_profile(&user.user_id, false).await;
        let decide = |inputs: &ExternalInputs| {
            let overrides = snap.overrides.read().ok();
            let decider = Decider::new(config, user)
                .with_overrides(overrides.as_deref().filter(|o| !o.is_empty()))
                .with_reasons(with_reasons)
                .with_inputs(inputs);
            if activate {
                decider.activate(idx, profile.as_ref(), &mut Clock)
            } else {
                decider.variation(idx, profile.as_ref())
            }
        };
        let no_options = cmab::CacheOptions::default();
        let outcome = cmab::resolve(Some(&self.cmab), &user.user_id, no_options, decide).await;
        let buckets = Decider::new(config, user).buckets(idx);
        let v = outcome.decision.variation;
        let exp = &config.experiments[idx];
        let variation = v.map(|v| &exp.variations[v]);
        let counts = &self.metrics.decision_handles;
        match v {
            Some(_) => counts.experiment_variation.inc(),
            None => counts.experiment_none.inc(),
        }
        self.finish(outcome.profile, outcome.events).await;
        let answer = ExperimentAnswer {
            experiment_key: exp.key.clone(),
            experiment_id: exp.id.clone(),
            variation_key: variation.map(|v| v.key.clone()),
            variation_id: variation.map(|v| v.id.clone()),
            reasons: outcome.decision.reasons,
            buckets,
            bucketing_id: user.bucketing_id().to_string(),
        };
        self.notify_experiment(snap, user, &answer);
        Ok(answer)
    }

    /// `decide` for some flags (`None`: all), with one profile lookup for all of them.
    pub async fn decide(
        &self,
        snap: &PinnedProject,
        keys: Option<&[&str]>,
        user: &UserContext,
        options: DecideOptions,
    ) -> Result<Vec<FlagDecision>, ServiceError> {
        let profile = self
            .load_profile(&user.user_id, options.ignore_user_profile_service)
            .await;
        let decide = |inputs: &ExternalInputs| {
            let overrides = snap.overrides.read().ok();
            Decider::new(snap.config(), user)
                .with_overrides(overrides.as_deref().filter(|o| !o.is_empty()))
                .with_inputs(inputs)
                .decide(keys, options, profile.as_ref(), &mut Clock)
        };
        let cache = options.into();
        let outcome = cmab::resolve(Some(&self.cmab), &user.user_id, cache, decide).await;
        let decisions = outcome.decision;
        self.notify_flags(snap, user, &decisions, !outcome.events.is_empty());
        let enabled = decisions.iter().filter(|d| d.enabled).count() as u64;
        let counts = &self.metrics.decision_handles;
        counts.flag_enabled.inc_by(enabled);
        counts
            .flag_disabled
            .inc_by(decisions.len() as u64 - enabled);
        self.finish(outcome.profile, outcome.events).await;
        Ok(decisions)
    }

    /// `track`: records a conversion for a declared event.
    pub async fn track(
        &self,
        snap: &PinnedProject,
        event_key: &str,
        user_id: &str,
        attributes: &Attributes,
        tags: Option<&Map<String, Value>>,
    ) -> Result<TrackAnswer, ServiceError> {
        let event = conversion(
            snap.config(),
            event_key,
            user_id,
            attributes,
            tags,
            &mut Clock,
        )
        .ok_or_else(|| ServiceError::UnknownEvent(event_key.to_string()))?;
        self.finish(None, vec![event]).await;
        self.notify_track(snap, event_key, user_id, attributes, tags);
        Ok(TrackAnswer {
            event_key: event_key.to_string(),
        })
    }

    /// Sets (or clears with `None`) a forced variation; returns the key of the one it replaces.
    ///
    /// Reads only the override map: no decision is made and no profile is touched.
    pub fn set_override(
        &self,
        snap: &PinnedProject,
        experiment_key: &str,
        user_id: &str,
        variation_key: Option<&str>,
    ) -> Result<Option<String>, ServiceError> {
        if !self.enable_overrides {
            return Err(ServiceError::OverridesDisabled);
        }
        let config = snap.config();
        let mut guard = snap
            .overrides
            .write()
            .map_err(|_| ServiceError::BadInput("override table unavailable".into()))?;
        let previous = config.experiment_by_key(experiment_key).and_then(|idx| {
            let exp = &config.experiments[idx];
            let id = guard.get(user_id, &exp.id)?;
            exp.variation_by_id(id)
                .map(|v| exp.variations[v].key.clone())
        });
        guard
            .set(config, experiment_key, user_id, variation_key)
            .map_err(|e| match e {
                crate::core::overrides::OverrideError::UnknownExperiment(k) => {
                    ServiceError::UnknownExperiment(k)
                }
                other => ServiceError::BadInput(other.to_string()),
            })?;
        Ok(previous)
    }

    /// A user's stored profile (`/v1/lookup`).
    pub async fn lookup_profile(&self, user_id: &str) -> Result<Option<UserProfile>, ServiceError> {
        if !self.profiles.enabled() {
            return Err(ServiceError::NoProfileStore);
        }
        Ok(self.profiles.lookup(user_id).await)
    }

    /// Replaces a user's stored profile by `profile` (`/v1/save`, as the Agent); `Ok(false)`
    /// when the store failed.
    pub async fn replace_profile(&self, profile: &UserProfile) -> Result<bool, ServiceError> {
        if !self.profiles.enabled() {
            return Err(ServiceError::NoProfileStore);
        }
        Ok(self.profiles.replace(profile).await)
    }
}
