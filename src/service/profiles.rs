//! The profile gateway between requests and the configured [`ProfileStore`]: one lookup per
//! request with a timeout and a circuit breaker, an optional read cache, and saves that are
//! write-behind (bounded, coalescing per user) unless `profiles.save = "sync"`.
//!
//! An in-process store ([`ProfileStore::in_process`], the memory store) is called inline: no
//! timeout, breaker, read cache or write-behind task, whose bookkeeping (a timer per lookup, a
//! channel send, a map and a spawned task per save) cost more than the store itself.
//!
//! A store that is down or slow never fails a request: the decision proceeds statelessly, the
//! failure is counted, and the breaker stops hammering a dead store until a probe succeeds.

use super::breaker::{Breaker, Permit};
use crate::config::{ProfileSettings, SaveMode};
use crate::core::UserProfile;
use crate::metrics::Metrics;
use backends::profile::ExperimentBucket;
use backends::{BackendError, ProfileStore};
use moka::future::Cache;
use prometheus::{Histogram, IntCounter};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const BREAKER_THRESHOLD: u32 = 5;
const BREAKER_COOLDOWN: Duration = Duration::from_secs(2);
const SAVE_CONCURRENCY: usize = 32;
const LOG_EVERY: Duration = Duration::from_secs(10);

/// Converts the core's profile into the store's schema (entries without a string
/// `variation_id` cannot be stored and are skipped).
pub fn to_store(p: &UserProfile) -> backends::StoredProfile {
    let experiment_bucket_map: BTreeMap<String, ExperimentBucket> = p
        .experiment_bucket_map
        .iter()
        .filter_map(|(k, v)| {
            let id = v.get("variation_id")?.as_str()?;
            Some((
                k.clone(),
                ExperimentBucket {
                    variation_id: id.to_string(),
                },
            ))
        })
        .collect();
    backends::StoredProfile {
        user_id: p.user_id.clone(),
        experiment_bucket_map,
    }
}

/// Converts a stored profile into the core's representation.
pub fn to_core(p: &backends::StoredProfile) -> UserProfile {
    let mut map = Map::new();
    for (k, v) in &p.experiment_bucket_map {
        let mut entry = Map::new();
        entry.insert("variation_id".into(), Value::String(v.variation_id.clone()));
        map.insert(k.clone(), Value::Object(entry));
    }
    UserProfile {
        user_id: p.user_id.clone(),
        experiment_bucket_map: map,
    }
}

/// Health of the profile store as `/health` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreHealth {
    None,
    Ok,
    Degraded,
}

/// Requests' access to the profile store.
pub struct ProfileGateway {
    store: Option<Arc<dyn ProfileStore>>,
    backend: &'static str,
    timeout: Duration,
    mode: SaveMode,
    breaker: Breaker,
    /// The store is in this process: lookups and saves are called inline.
    inline: bool,
    cache: Option<Cache<String, Arc<backends::StoredProfile>>>,
    saver: Option<mpsc::Sender<backends::StoredProfile>>,
    metrics: Arc<Metrics>,
    hot: HotHandles,
    last_log: AtomicU64,
    started: Instant,
}

/// The metric series every request touches, resolved once for this backend.
struct HotHandles {
    lookup_ok: IntCounter,
    lookup_latency: Histogram,
    save_ok: IntCounter,
    save_latency: Histogram,
    cache_hit: IntCounter,
    cache_miss: IntCounter,
}

impl HotHandles {
    fn new(metrics: &Metrics, backend: &str) -> Self {
        let ok = |op: &str| metrics.profile_ops.with_label_values(&[backend, op, "ok"]);
        let latency = |op: &str| metrics.profile_latency.with_label_values(&[backend, op]);
        Self {
            lookup_ok: ok("lookup"),
            lookup_latency: latency("lookup"),
            save_ok: ok("save"),
            save_latency: latency("save"),
            cache_hit: metrics.profile_cache.with_label_values(&["hit"]),
            cache_miss: metrics.profile_cache.with_label_values(&["miss"]),
        }
    }

    /// (ok counter, latency) of `op` ("lookup" or "save").
    fn of(&self, op: &str) -> (&IntCounter, &Histogram) {
        if op == "lookup" {
            (&self.lookup_ok, &self.lookup_latency)
        } else {
            (&self.save_ok, &self.save_latency)
        }
    }
}

impl ProfileGateway {
    /// A gateway over `store` (`None`: stateless). Spawns the write-behind saver on `tracker`.
    pub fn new(
        store: Option<Arc<dyn ProfileStore>>,
        settings: &ProfileSettings,
        metrics: Arc<Metrics>,
        tracker: &TaskTracker,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let backend = store.as_ref().map_or("none", |s| s.backend());
        let inline = store.as_ref().is_some_and(|s| s.in_process());
        let cache = (settings.cache_capacity > 0 && store.is_some() && !inline).then(|| {
            Cache::builder()
                .max_capacity(settings.cache_capacity)
                .time_to_live(settings.cache_ttl)
                .build()
        });
        let (tx, rx) = mpsc::channel(settings.save_queue);
        let gateway = Arc::new(Self {
            saver: (store.is_some() && !inline && settings.save == SaveMode::Async).then_some(tx),
            inline,
            store,
            backend,
            timeout: settings.timeout,
            mode: settings.save,
            breaker: Breaker::new(BREAKER_THRESHOLD, BREAKER_COOLDOWN),
            cache,
            hot: HotHandles::new(&metrics, backend),
            metrics,
            last_log: AtomicU64::new(0),
            started: Instant::now(),
        });
        if gateway.saver.is_some() {
            let g = gateway.clone();
            tracker.spawn(async move { g.run_saver(rx, cancel).await });
        }
        gateway
    }

    /// Whether a store is configured.
    pub fn enabled(&self) -> bool {
        self.store.is_some()
    }

    /// How the store looks from here.
    pub fn health(&self) -> StoreHealth {
        match (&self.store, self.breaker.is_open()) {
            (None, _) => StoreHealth::None,
            (Some(_), false) => StoreHealth::Ok,
            (Some(_), true) => StoreHealth::Degraded,
        }
    }

    /// The backend name (`none` without a store).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn log_failure(&self, op: &str, error: &dyn std::fmt::Display) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_log.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64
            && self
                .last_log
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(backend = self.backend, op, %error, "profile store failure; deciding without it (logged at most every 10s)");
        }
    }

    /// Counts and logs a failed inline call.
    fn inline_failure(&self, op: &'static str, error: &BackendError) {
        self.metrics
            .profile_ops
            .with_label_values(&[self.backend, op, "error"])
            .inc();
        self.log_failure(op, error);
    }

    async fn guarded<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Option<T> {
        let permit = self.breaker.permit();
        if permit == Permit::Rejected {
            self.metrics
                .profile_ops
                .with_label_values(&[self.backend, op, "skipped"])
                .inc();
            return None;
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, fut).await;
        let (ok, latency) = self.hot.of(op);
        latency.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(Ok(v)) => {
                self.breaker.success();
                self.metrics.profile_breaker_open.set(0);
                ok.inc();
                Some(v)
            }
            Ok(Err(e)) => {
                self.breaker.failure();
                self.metrics
                    .profile_breaker_open
                    .set(i64::from(self.breaker.is_open()));
                self.metrics
                    .profile_ops
                    .with_label_values(&[self.backend, op, "error"])
                    .inc();
                self.log_failure(op, &e);
                None
            }
            Err(_) => {
                self.breaker.failure();
                self.metrics
                    .profile_breaker_open
                    .set(i64::from(self.breaker.is_open()));
                self.metrics
                    .profile_ops
                    .with_label_values(&[self.backend, op, "timeout"])
                    .inc();
                self.log_failure(op, &"timed out");
                None
            }
        }
    }

    /// The user's stored profile; `None` when there is none or the store failed.
    pub async fn lookup(&self, user_id: &str) -> Option<UserProfile> {
        let store = self.store.as_ref()?;
        if self.inline {
            return match store.lookup(user_id).await {
                Ok(found) => {
                    self.hot.lookup_ok.inc();
                    found.map(|p| to_core(&p))
                }
                Err(e) => {
                    self.inline_failure("lookup", &e);
                    None
                }
            };
        }
        if let Some(cache) = &self.cache {
            if let Some(p) = cache.get(user_id).await {
                self.hot.cache_hit.inc();
                return Some(to_core(&p));
            }
            self.hot.cache_miss.inc();
        }
        let found = self
            .guarded("lookup", store.lookup(user_id))
            .await
            .flatten()?;
        if let Some(cache) = &self.cache {
            cache
                .insert(user_id.to_string(), Arc::new(found.clone()))
                .await;
        }
        Some(to_core(&found))
    }

    /// Saves a changed profile: queued (write-behind) or awaited (`save = "sync"`).
    pub async fn save(&self, profile: &UserProfile) {
        let Some(store) = &self.store else { return };
        let p = to_store(profile);
        if self.inline {
            match store.save(&p).await {
                Ok(()) => self.hot.save_ok.inc(),
                Err(e) => self.inline_failure("save", &e),
            }
            return;
        }
        if let Some(cache) = &self.cache {
            let merged = match cache.get(&p.user_id).await {
                Some(old) => {
                    let mut m = (*old).clone();
                    m.experiment_bucket_map
                        .extend(p.experiment_bucket_map.clone());
                    m
                }
                None => p.clone(),
            };
            cache.insert(p.user_id.clone(), Arc::new(merged)).await;
        }
        match (&self.saver, self.mode) {
            (Some(tx), SaveMode::Async) => {
                if tx.try_send(p).is_err() {
                    self.metrics.profile_saves_dropped.inc();
                    self.log_failure("save", &"write-behind queue full; save dropped");
                }
            }
            _ => {
                let _ = self.guarded("save", store.save(&p)).await;
            }
        }
    }

    /// Replaces the user's stored profile by `profile` (no entries: deletes it), awaited in
    /// every save mode; `false` when the store failed or timed out. The read cache forgets the
    /// user. (A decision's merge still queued for the user lands on top of the replacement.)
    pub async fn replace(&self, profile: &UserProfile) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let p = to_store(profile);
        if let Some(cache) = &self.cache {
            cache.invalidate(&p.user_id).await;
        }
        self.guarded("save", store.replace(&p)).await.is_some()
    }

    /// The write-behind loop: coalesces queued saves per user and writes them concurrently;
    /// on cancel, drains what is queued once.
    async fn run_saver(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<backends::StoredProfile>,
        cancel: CancellationToken,
    ) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut buf = Vec::with_capacity(256);
        loop {
            let n = tokio::select! {
                n = rx.recv_many(&mut buf, 1024) => n,
                _ = cancel.cancelled() => {
                    rx.close();
                    rx.recv_many(&mut buf, 1 << 20).await
                }
            };
            if n == 0 {
                return;
            }
            let mut pending: HashMap<String, backends::StoredProfile> = HashMap::new();
            for p in buf.drain(..) {
                match pending.get_mut(&p.user_id) {
                    Some(existing) => existing
                        .experiment_bucket_map
                        .extend(p.experiment_bucket_map),
                    None => {
                        pending.insert(p.user_id.clone(), p);
                    }
                }
            }
            let mut set = tokio::task::JoinSet::new();
            for p in pending.into_values() {
                while set.len() >= SAVE_CONCURRENCY {
                    let _ = set.join_next().await;
                }
                let (g, s) = (self.clone(), store.clone());
                set.spawn(async move {
                    let _ = g.guarded("save", s.save(&p)).await;
                });
            }
            while set.join_next().await.is_some() {}
            if cancel.is_cancelled() && rx.is_closed() && rx.is_empty() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_between_core_and_store_profiles() {
        let mut core = UserProfile::new("u");
        core.save_variation("e1", "v1");
        core.experiment_bucket_map
            .insert("bad".into(), serde_json::json!({"variation_id": 5}));
        let store = to_store(&core);
        assert_eq!(store.experiment_bucket_map.len(), 1);
        assert_eq!(store.experiment_bucket_map["e1"].variation_id, "v1");
        assert_eq!(to_core(&store).variation_for("e1"), Some("v1"));
    }

    /// The in-process store is written inline: a lookup right after a save sees it, with no
    /// write-behind task to wait for (the old path queued the save for a spawned saver).
    #[tokio::test(flavor = "current_thread")]
    async fn an_in_process_store_is_saved_inline() {
        let config = backends::profile::memory::MemoryConfig::default();
        let store: Arc<dyn ProfileStore> =
            Arc::new(backends::profile::memory::MemoryStore::new(&config));
        let settings = ProfileSettings {
            store: backends::ProfileStoreConfig::Memory(config),
            timeout: Duration::from_millis(50),
            save: SaveMode::Async,
            cache_capacity: 0,
            cache_ttl: Duration::from_secs(30),
            save_queue: 16,
        };
        let tracker = TaskTracker::new();
        let gateway = ProfileGateway::new(
            Some(store),
            &settings,
            Arc::new(Metrics::new()),
            &tracker,
            CancellationToken::new(),
        );
        let mut profile = UserProfile::new("u");
        profile.save_variation("e1", "v1");
        gateway.save(&profile).await;
        let found = gateway.lookup("u").await;
        assert_eq!(
            found.and_then(|p| p.variation_for("e1").map(str::to_owned)),
            Some("v1".into())
        );
        assert!(
            tracker.is_empty(),
            "no write-behind task for an in-process store"
        );
    }
}
