//! One request = project lookup → profile lookup → core decision → events → profile save.
//!
//! The service owns the projects (datafiles), run-time overrides, the profile gateway and the
//! event sink. HTTP handlers call it; it never blocks on the event queue, and waits on a profile
//! save only in `profiles.save = "sync"` mode.

pub mod breaker;
pub mod profiles;

use crate::core::events::{conversion, EventStamp};
use crate::core::{
    Attributes, DecideOptions, Decider, FlagDecision, ForcedVariations, ProfileTracker,
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
    #[error("unknown flag key {0:?}")]
    UnknownFlag(String),
    #[error("unknown event key {0:?}")]
    UnknownEvent(String),
    #[error("{0}")]
    BadInput(String),
    #[error("overrides are disabled (api.enable_overrides = false)")]
    OverridesDisabled,
    #[error("profile store is not configured (profiles.type = \"none\")")]
    NoProfileStore,
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
    overrides: Vec<RwLock<ForcedVariations>>,
    pub profiles: Arc<ProfileGateway>,
    pub events: Arc<EventSender>,
    pub metrics: Arc<Metrics>,
    pub enable_overrides: bool,
}

/// A project and the datafile it serves right now (one atomic load per request).
pub struct Snapshot {
    pub index: usize,
    pub project: Arc<Project>,
    pub datafile: Arc<LoadedDatafile>,
}

impl Snapshot {
    /// The parsed project.
    pub fn config(&self) -> &ProjectConfig {
        &self.datafile.config
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
            .map(|_| RwLock::new(ForcedVariations::default()))
            .collect();
        Self {
            projects,
            overrides,
            profiles,
            events,
            metrics,
            enable_overrides,
        }
    }

    /// The project an SDK key selects (the first project without one).
    pub fn project(&self, sdk_key: Option<&str>) -> Result<(usize, Arc<Project>), ServiceError> {
        match sdk_key {
            None | Some("") => self
                .projects
                .first()
                .map(|p| (0, p.clone()))
                .ok_or_else(|| ServiceError::UnknownProject(String::new())),
            Some(k) => self
                .projects
                .iter()
                .position(|p| p.settings.sdk_key.as_deref() == Some(k))
                .map(|i| (i, self.projects[i].clone()))
                .ok_or_else(|| ServiceError::UnknownProject(k.to_string())),
        }
    }

    /// The project and its current datafile.
    pub fn snapshot(&self, sdk_key: Option<&str>) -> Result<Snapshot, ServiceError> {
        let (index, project) = self.project(sdk_key)?;
        let datafile = project
            .current()
            .ok_or_else(|| ServiceError::NotReady(project.settings.name.clone()))?;
        Ok(Snapshot {
            index,
            project,
            datafile,
        })
    }

    /// Whether every project has a datafile.
    pub fn ready(&self) -> bool {
        self.projects.iter().all(|p| p.current().is_some())
    }

    async fn load_profile(&self, user_id: &str, ignore: bool) -> Option<ProfileTracker> {
        if !self.profiles.enabled() || ignore {
            return None;
        }
        let loaded = self.profiles.lookup(user_id).await;
        Some(ProfileTracker::new(user_id, loaded))
    }

    async fn finish(&self, tracker: Option<ProfileTracker>, events: Vec<UserEvent>) {
        if !events.is_empty() {
            self.events.send(events);
        }
        if let Some(t) = tracker.filter(|t| t.updated) {
            self.profiles.save(&t.profile).await;
        }
    }

    /// Decides an experiment for a user; records the impression when `activate` and bucketed.
    pub async fn experiment(
        &self,
        snap: &Snapshot,
        experiment_key: &str,
        user: &UserContext,
        activate: bool,
        with_reasons: bool,
    ) -> Result<ExperimentAnswer, ServiceError> {
        let config = snap.config();
        let idx = config
            .experiment_by_key(experiment_key)
            .ok_or_else(|| ServiceError::UnknownExperiment(experiment_key.to_string()))?;
        let mut tracker = self.load_profile(&user.user_id, false).await;
        let (v, buckets, reasons, events) = {
            let overrides = self.overrides[snap.index].read().ok();
            let mut decider = Decider::new(config, user);
            decider.forced = overrides.as_deref().filter(|o| !o.is_empty());
            decider.reasons = crate::core::reasons::Reasons::new(with_reasons);
            let mut events = Vec::new();
            let v = if activate {
                decider.activate(idx, tracker.as_mut(), &mut events, &mut Clock)
            } else {
                decider.experiment_variation(idx, tracker.as_mut())
            };
            (v, decider.buckets(idx), decider.reasons.take(), events)
        };
        let exp = &config.experiments[idx];
        let variation = v.map(|v| &exp.variations[v]);
        let counts = &self.metrics.decision_counts;
        match v {
            Some(_) => counts.experiment_variation.inc(),
            None => counts.experiment_none.inc(),
        }
        self.finish(tracker, events).await;
        Ok(ExperimentAnswer {
            experiment_key: exp.key.clone(),
            experiment_id: exp.id.clone(),
            variation_key: variation.map(|v| v.key.clone()),
            variation_id: variation.map(|v| v.id.clone()),
            reasons,
            buckets,
            bucketing_id: user.bucketing_id().to_string(),
        })
    }

    /// `decide` for some flags (`None`: all), with one profile lookup for all of them.
    pub async fn decide(
        &self,
        snap: &Snapshot,
        keys: Option<&[&str]>,
        user: &UserContext,
        options: DecideOptions,
    ) -> Result<Vec<FlagDecision>, ServiceError> {
        let mut tracker = self
            .load_profile(&user.user_id, options.ignore_user_profile_service)
            .await;
        let mut events = Vec::new();
        let decisions = {
            let overrides = self.overrides[snap.index].read().ok();
            let mut decider = Decider::new(snap.config(), user);
            decider.forced = overrides.as_deref().filter(|o| !o.is_empty());
            decider.decide(keys, options, tracker.as_mut(), &mut events, &mut Clock)
        };
        let enabled = decisions.iter().filter(|d| d.enabled).count() as u64;
        let counts = &self.metrics.decision_counts;
        counts.flag_enabled.inc_by(enabled);
        counts
            .flag_disabled
            .inc_by(decisions.len() as u64 - enabled);
        self.finish(tracker, events).await;
        Ok(decisions)
    }

    /// `track`: records a conversion for a declared event.
    pub async fn track(
        &self,
        snap: &Snapshot,
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
        self.events.send(vec![event]);
        Ok(TrackAnswer {
            event_key: event_key.to_string(),
        })
    }

    /// Sets (or clears with `None`) a forced variation.
    pub fn set_override(
        &self,
        snap: &Snapshot,
        experiment_key: &str,
        user_id: &str,
        variation_key: Option<&str>,
    ) -> Result<(), ServiceError> {
        if !self.enable_overrides {
            return Err(ServiceError::OverridesDisabled);
        }
        let mut guard = self.overrides[snap.index]
            .write()
            .map_err(|_| ServiceError::BadInput("override table unavailable".into()))?;
        guard
            .set(snap.config(), experiment_key, user_id, variation_key)
            .map_err(|e| match e {
                crate::core::overrides::OverrideError::UnknownExperiment(k) => {
                    ServiceError::UnknownExperiment(k)
                }
                other => ServiceError::BadInput(other.to_string()),
            })
    }

    /// A user's stored profile (`/v1/lookup`).
    pub async fn lookup_profile(&self, user_id: &str) -> Result<Option<UserProfile>, ServiceError> {
        if !self.profiles.enabled() {
            return Err(ServiceError::NoProfileStore);
        }
        Ok(self.profiles.lookup(user_id).await)
    }

    /// Stores a profile (`/v1/save`).
    pub async fn save_profile(&self, profile: &UserProfile) -> Result<(), ServiceError> {
        if !self.profiles.enabled() {
            return Err(ServiceError::NoProfileStore);
        }
        self.profiles.save(profile).await;
        Ok(())
    }
}
