//! On-demand projects (`[dynamic_projects]`): an SDK key a request names that no configured
//! project has is loaded from the CDN URL template, cached under `<state_dir>/datafiles`,
//! polled like a configured project, and dropped once no request named it for
//! `idle_timeout`.
//!
//! The first request for a key waits (at most `load_timeout`) for the one fetch that every
//! concurrent first request shares; a key that fails to load is remembered for `failure_ttl`
//! so a stream of requests for it costs one fetch. At most `max_projects` are loaded at once.
//! Entries are keyed by the whole key the request named (`sdkKey` or `sdkKey:token`), so a
//! secure environment's datafile is only served to requests that bear its token. Logs name a
//! project by [`crate::config::short_key`]; metrics share one `project` label.

use crate::config::{
    sdk_key_is_valid, short_key, split_sdk_key, DatafileOrigin, DynamicProjectsSettings,
    ProjectSettings,
};
use crate::core::ForcedVariations;
use crate::metrics::Metrics;
use crate::source::{Project, Published, SourceError};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `project` metric label every on-demand project shares.
pub const ON_DEMAND_LABEL: &str = "on_demand";

/// Why an on-demand key cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DynamicError {
    /// Not an SDK key's shape.
    #[error("invalid SDK key (expected letters, digits, '_' or '-', at most 128)")]
    Malformed,
    /// Refused by `dynamic_projects.allow`.
    #[error("SDK key not allowed (dynamic_projects.allow)")]
    NotAllowed,
    /// The source answered that it has no such datafile (4xx), or the datafile is invalid.
    #[error("unknown SDK key: {0}")]
    Unknown(String),
    /// The source is unreachable, slow or failing (5xx, timeout).
    #[error("datafile for this SDK key unavailable: {0}")]
    Unavailable(String),
    /// `dynamic_projects.max_projects` are loaded and none is idle.
    #[error("too many on-demand projects loaded (dynamic_projects.max_projects = {0})")]
    TooMany(usize),
}

/// A loaded on-demand project.
#[derive(Clone)]
pub struct Loaded {
    pub project: Arc<Project>,
    pub overrides: Arc<RwLock<ForcedVariations>>,
    /// Unique for the life of the process (notifications and ODP caches are keyed by it).
    pub index: usize,
}

enum Slot {
    Loading(watch::Receiver<Option<Result<(), DynamicError>>>),
    Ready {
        loaded: Loaded,
        last_used: Instant,
        stop: CancellationToken,
    },
    Failed {
        error: DynamicError,
        until: Instant,
    },
}

/// The registry of on-demand projects.
pub struct DynamicProjects {
    settings: DynamicProjectsSettings,
    state_dir: PathBuf,
    metrics: Arc<Metrics>,
    slots: Mutex<HashMap<String, Slot>>,
    next_index: AtomicUsize,
    workers: TaskTracker,
    cancel: CancellationToken,
    publish: OnceLockSender,
}

type OnceLockSender = std::sync::OnceLock<tokio::sync::mpsc::Sender<Published>>;

impl DynamicProjects {
    /// An empty registry; indices start after the configured projects'. Its pollers and the
    /// idle sweeper run on `workers` until `cancel`.
    pub fn new(
        settings: DynamicProjectsSettings,
        state_dir: PathBuf,
        first_index: usize,
        metrics: Arc<Metrics>,
        workers: TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let registry = Arc::new(Self {
            settings,
            state_dir,
            metrics,
            slots: Mutex::new(HashMap::new()),
            next_index: AtomicUsize::new(first_index),
            workers,
            cancel,
            publish: OnceLockSender::new(),
        });
        if registry.settings.enabled {
            let sweeper = registry.clone();
            registry.workers.spawn(async move { sweeper.sweep().await });
        }
        registry
    }

    /// Whether on-demand loading is on.
    pub fn enabled(&self) -> bool {
        self.settings.enabled
    }

    /// Announces the on-demand projects' new datafiles on `publish` (`datafile.fanout`).
    pub fn publish_to(&self, publish: tokio::sync::mpsc::Sender<Published>) {
        let _ = self.publish.set(publish);
    }

    /// The loaded project for `full_key`, marked as used; `None` when it is not loaded.
    pub fn get(&self, full_key: &str) -> Option<Loaded> {
        let mut slots = self.slots.lock().ok()?;
        match slots.get_mut(full_key) {
            Some(Slot::Ready {
                loaded, last_used, ..
            }) => {
                *last_used = Instant::now();
                Some(loaded.clone())
            }
            _ => None,
        }
    }

    /// Every loaded project (for the fanout receiver).
    pub fn loaded(&self) -> Vec<Arc<Project>> {
        let Ok(slots) = self.slots.lock() else {
            return Vec::new();
        };
        slots
            .values()
            .filter_map(|s| match s {
                Slot::Ready { loaded, .. } => Some(loaded.project.clone()),
                _ => None,
            })
            .collect()
    }

    /// How many projects are loaded now.
    pub fn len(&self) -> usize {
        self.slots.lock().map_or(0, |s| {
            s.values()
                .filter(|s| matches!(s, Slot::Ready { .. }))
                .count()
        })
    }

    /// Whether none is loaded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The project for `full_key` (`sdkKey` or `sdkKey:token`), loading it first when it is
    /// new: the caller waits for the one shared fetch, at most `load_timeout`.
    pub async fn get_or_load(self: &Arc<Self>, full_key: &str) -> Result<Loaded, DynamicError> {
        let (key, _) = split_sdk_key(full_key);
        if !sdk_key_is_valid(key) {
            return Err(DynamicError::Malformed);
        }
        if self
            .settings
            .allow
            .as_ref()
            .is_some_and(|re| !re.is_match(key))
        {
            return Err(DynamicError::NotAllowed);
        }
        let mut waiting = match self.slot_or_start(full_key)? {
            Ok(loaded) => return Ok(loaded),
            Err(rx) => rx,
        };
        let done = tokio::time::timeout(
            self.settings.load_timeout + Duration::from_millis(500),
            waiting.wait_for(Option::is_some),
        )
        .await;
        match done {
            Ok(Ok(result)) => {
                if let Some(Err(e)) = result.as_ref() {
                    return Err(e.clone());
                }
            }
            Ok(Err(_)) | Err(_) => {
                return Err(DynamicError::Unavailable(
                    "timed out waiting for the datafile".into(),
                ))
            }
        }
        self.get(full_key).ok_or_else(|| {
            DynamicError::Unavailable("the project was dropped while loading".into())
        })
    }

    /// The ready project, or a receiver for the load in flight (started here when none is).
    #[allow(clippy::type_complexity)]
    fn slot_or_start(
        self: &Arc<Self>,
        full_key: &str,
    ) -> Result<Result<Loaded, watch::Receiver<Option<Result<(), DynamicError>>>>, DynamicError>
    {
        let mut slots = self
            .slots
            .lock()
            .map_err(|_| DynamicError::Unavailable("registry unavailable".into()))?;
        let now = Instant::now();
        match slots.get_mut(full_key) {
            Some(Slot::Ready {
                loaded, last_used, ..
            }) => {
                *last_used = now;
                return Ok(Ok(loaded.clone()));
            }
            Some(Slot::Loading(rx)) => return Ok(Err(rx.clone())),
            Some(Slot::Failed { error, until }) if *until > now => return Err(error.clone()),
            _ => {}
        }
        let busy = slots
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. } | Slot::Loading(_)))
            .count();
        if busy >= self.settings.max_projects && !evict_idlest(&mut slots, self.idle_before(now)) {
            self.count("refused_too_many");
            return Err(DynamicError::TooMany(self.settings.max_projects));
        }
        // Failed entries are bounded too: expired ones go first, and beyond the bound a
        // failure is not remembered.
        slots.retain(|_, s| !matches!(s, Slot::Failed { until, .. } if *until <= now));
        let (tx, rx) = watch::channel(None);
        slots.insert(full_key.to_string(), Slot::Loading(rx.clone()));
        drop(slots);
        let registry = self.clone();
        let full_key = full_key.to_string();
        self.workers.spawn(async move {
            let result = registry.load(&full_key).await;
            let _ = tx.send(Some(result.map(|_| ())));
        });
        Ok(Err(rx))
    }

    /// The instant before which an unused project is idle.
    fn idle_before(&self, now: Instant) -> Instant {
        now.checked_sub(self.settings.idle_timeout).unwrap_or(now)
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .dynamic_project_loads
            .with_label_values(&[outcome])
            .inc();
    }

    fn settings_for(&self, full_key: &str) -> ProjectSettings {
        let (key, token) = split_sdk_key(full_key);
        let template = if token.is_some() {
            &self.settings.authenticated_url_template
        } else {
            &self.settings.url_template
        };
        let name = short_key(key);
        // The cache file of a secure key carries a digest of the whole key, so the copy of one
        // token never serves another.
        let file = match &token {
            Some(_) => format!("on-demand-{}.json", short_key(full_key).replace('~', "-")),
            None => format!("on-demand-{}.json", name.replace('~', "-")),
        };
        // The template was checked at start with a sample key, and the key's characters are
        // URL-safe, so this parses; a failure is reported as the source's.
        let url = template.replace("{sdk_key}", key);
        ProjectSettings {
            name,
            sdk_key: Some(key.to_string()),
            origin: url::Url::parse(&url)
                .map(DatafileOrigin::Url)
                .unwrap_or(DatafileOrigin::Bundled),
            poll_interval: self.settings.poll_interval,
            fetch_timeout: self.settings.load_timeout,
            cache_path: self.state_dir.join("datafiles").join(file),
            webhook_secret: None,
            max_bytes: self.settings.max_bytes,
            access_token: token,
            metric_label: ON_DEMAND_LABEL.to_string(),
        }
    }

    /// Fetches the key's datafile (else its cached copy, when the source is down) and makes
    /// the project ready, or remembers the failure.
    async fn load(self: &Arc<Self>, full_key: &str) -> Result<(), DynamicError> {
        let settings = self.settings_for(full_key);
        let name = settings.name.clone();
        let project = Arc::new(Project::new(settings, self.metrics.clone()));
        let outcome = match project.load_once().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let error = classify(&e);
                // A source that is down (not one that refuses the key) falls back to the cache.
                if matches!(error, DynamicError::Unavailable(_))
                    && project.load_cached().await.unwrap_or(false)
                {
                    Ok(())
                } else {
                    Err(error)
                }
            }
        };
        let Ok(mut slots) = self.slots.lock() else {
            return Err(DynamicError::Unavailable("registry unavailable".into()));
        };
        match outcome {
            Ok(()) => {
                tracing::info!(project = %name, "on-demand project loaded");
                self.count("loaded");
                if let Some(p) = self.publish.get() {
                    project.publish_to(p.clone());
                }
                let stop = self.cancel.child_token();
                self.workers.spawn(project.clone().run(stop.clone()));
                let loaded = Loaded {
                    project,
                    overrides: Arc::new(RwLock::new(ForcedVariations::default())),
                    index: self.next_index.fetch_add(1, Ordering::Relaxed),
                };
                slots.insert(
                    full_key.to_string(),
                    Slot::Ready {
                        loaded,
                        last_used: Instant::now(),
                        stop,
                    },
                );
                self.metrics
                    .dynamic_projects
                    .set(ready_count(&slots) as i64);
                Ok(())
            }
            Err(error) => {
                tracing::warn!(project = %name, %error, "on-demand project failed to load");
                self.count(match error {
                    DynamicError::Unknown(_) => "unknown",
                    _ => "unavailable",
                });
                let failed = slots
                    .values()
                    .filter(|s| matches!(s, Slot::Failed { .. }))
                    .count();
                if failed < self.settings.max_projects && !self.settings.failure_ttl.is_zero() {
                    slots.insert(
                        full_key.to_string(),
                        Slot::Failed {
                            error: error.clone(),
                            until: Instant::now() + self.settings.failure_ttl,
                        },
                    );
                } else {
                    slots.remove(full_key);
                }
                Err(error)
            }
        }
    }

    /// Drops idle projects and expired failures until cancelled.
    async fn sweep(self: Arc<Self>) {
        let every = (self.settings.idle_timeout / 4)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            let now = Instant::now();
            let idle_before = self.idle_before(now);
            let Ok(mut slots) = self.slots.lock() else {
                continue;
            };
            let mut evicted = 0u64;
            slots.retain(|_, slot| match slot {
                Slot::Ready {
                    last_used, stop, ..
                } if *last_used <= idle_before => {
                    stop.cancel();
                    evicted += 1;
                    false
                }
                Slot::Failed { until, .. } => *until > now,
                _ => true,
            });
            if evicted > 0 {
                tracing::info!(evicted, "on-demand projects idle; dropped");
                self.metrics
                    .dynamic_project_loads
                    .with_label_values(&["evicted"])
                    .inc_by(evicted);
            }
            self.metrics
                .dynamic_projects
                .set(ready_count(&slots) as i64);
        }
    }
}

fn ready_count(slots: &HashMap<String, Slot>) -> usize {
    slots
        .values()
        .filter(|s| matches!(s, Slot::Ready { .. }))
        .count()
}

/// Evicts the least recently used ready project when it is idle; whether one was.
fn evict_idlest(slots: &mut HashMap<String, Slot>, idle_before: Instant) -> bool {
    let idlest = slots
        .iter()
        .filter_map(|(k, s)| match s {
            Slot::Ready { last_used, .. } if *last_used <= idle_before => Some((k, *last_used)),
            _ => None,
        })
        .min_by_key(|(_, used)| *used)
        .map(|(k, _)| k.clone());
    match idlest.and_then(|k| slots.remove(&k)) {
        Some(Slot::Ready { stop, .. }) => {
            stop.cancel();
            true
        }
        _ => false,
    }
}

/// A source failure as the client should see it: a refused key is the client's problem, a
/// source that is down is ours.
fn classify(e: &SourceError) -> DynamicError {
    match e {
        SourceError::Fetch { message, .. } if message.starts_with("HTTP 4") => {
            DynamicError::Unknown(format!("the datafile source answered {message}"))
        }
        SourceError::Invalid { source, .. } => {
            DynamicError::Unknown(format!("invalid datafile: {source}"))
        }
        SourceError::TooLarge { max, .. } => {
            DynamicError::Unknown(format!("datafile larger than {max} bytes"))
        }
        SourceError::Fetch { message, .. } => DynamicError::Unavailable(message.clone()),
        SourceError::Read { message, .. } => DynamicError::Unavailable(message.clone()),
    }
}
