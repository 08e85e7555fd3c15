//! Datafile sources: a file (re-read on SIGHUP / webhook), a URL polled with ETag and
//! If-Modified-Since, pushes from the admin API, and the bundled example project.
//!
//! The newest valid datafile is swapped in atomically (`arc-swap`): requests in flight finish on
//! the one they loaded. An invalid or unreachable datafile never replaces a good one. Every good
//! datafile is written atomically to the project's cache path, which is used at start when the
//! source cannot be reached (`cache`). URL sources are polled (`poll`). Every source is bounded
//! by `datafile.max_bytes` (a URL body is read up to it and no further), and the cache write
//! and its fsync run on the blocking pool.

mod cache;
mod poll;

use crate::config::{DatafileOrigin, ProjectSettings};
use crate::core::{DatafileError, ProjectConfig};
use crate::metrics::Metrics;
use arc_swap::ArcSwapOption;
pub use cache::write_atomically;
use poll::{FetchFailure, Fetched, Validators};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The example project served when no datafile source is configured.
pub const BUNDLED_DATAFILE: &str = include_str!("../examples/datafile.json");

/// Why a datafile could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("datafile {origin}: {source}")]
    Invalid {
        origin: String,
        source: DatafileError,
    },
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    #[error("cannot fetch {url}: {message}")]
    Fetch { url: String, message: String },
    #[error("datafile {origin}: larger than datafile.max_bytes ({max} bytes)")]
    TooLarge { origin: String, max: usize },
}

/// The origin of a datafile another replica published (`datafile.fanout`); installing one is
/// never published again.
pub const FANOUT_ORIGIN: &str = "fanout";

/// A datafile in use, with where and when it came from.
#[derive(Debug)]
pub struct LoadedDatafile {
    pub config: ProjectConfig,
    pub loaded_at: SystemTime,
    /// `file:<path>`, `url:<url>`, `cache:<path>`, `admin`, `bundled`, `fanout`.
    pub origin: String,
    /// A strong ETag of the datafile's bytes (quoted), computed once at install.
    pub etag: String,
    /// The source's `Cache-Control` when it was fetched over HTTP with one.
    pub cache_control: Option<String>,
    /// The datafile's bytes as received, shared by every mirror response.
    pub bytes: bytes::Bytes,
}

/// A new datafile installed from anywhere but another replica, for `datafile.fanout`.
#[derive(Debug, Clone)]
pub struct Published {
    /// [`Project::fanout_id`].
    pub project: String,
    pub revision: String,
    pub datafile: Arc<str>,
    /// The source's `Cache-Control`, which the other replicas' mirrors repeat.
    pub cache_control: Option<String>,
}

/// One project: its settings and the datafile currently in use.
pub struct Project {
    pub settings: ProjectSettings,
    current: ArcSwapOption<LoadedDatafile>,
    refresh: Notify,
    validators: Mutex<Validators>,
    metrics: Arc<Metrics>,
    /// Where new datafiles are announced to the other replicas (`datafile.fanout`).
    publish: OnceLock<tokio::sync::mpsc::Sender<Published>>,
}

impl Project {
    /// A project with no datafile yet.
    pub fn new(settings: ProjectSettings, metrics: Arc<Metrics>) -> Self {
        Self {
            settings,
            current: ArcSwapOption::empty(),
            refresh: Notify::new(),
            validators: Mutex::new(Validators::default()),
            metrics,
            publish: OnceLock::new(),
        }
    }

    /// Announces every later new datafile (not the first, not one from another replica) on
    /// `publish`; a full channel drops the announcement (the replicas catch up at their poll).
    pub fn publish_to(&self, publish: tokio::sync::mpsc::Sender<Published>) {
        let _ = self.publish.set(publish);
    }

    /// Names this project across replicas without revealing its SDK key's token: a SHA-1 of
    /// the key (with its token when secure), or of the name when it has no key.
    pub fn fanout_id(&self) -> String {
        use sha1::Digest;
        let s = &self.settings;
        let identity = match (&s.sdk_key, &s.access_token) {
            (Some(k), Some(t)) => format!("key:{k}:{}", t.expose()),
            (Some(k), None) => format!("key:{k}"),
            (None, _) => format!("name:{}", s.name),
        };
        hex::encode(sha1::Sha1::digest(identity.as_bytes()))
    }

    /// The datafile in use (one atomic load).
    pub fn current(&self) -> Option<Arc<LoadedDatafile>> {
        self.current.load_full()
    }

    /// Asks the poller (or file reader) to refresh now.
    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Writes the cache copy (file write and fsync on the blocking pool, never on a runtime
    /// thread) and swaps the datafile in.
    async fn install(
        &self,
        config: ProjectConfig,
        origin: String,
        write_cache: bool,
        cache_control: Option<String>,
    ) {
        let name = self.settings.name.as_str();
        let label = self.settings.metric_label.as_str();
        if write_cache {
            let path = self.settings.cache_path.clone();
            let bytes = config.datafile.clone();
            let written =
                tokio::task::spawn_blocking(move || write_atomically(&path, bytes.as_bytes()))
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if let Err(e) = written {
                tracing::warn!(project = name, path = %self.settings.cache_path.display(), error = %e, "cannot write datafile cache");
            }
        }
        let revision = config.revision.parse::<i64>().unwrap_or(0);
        let loaded_at = SystemTime::now();
        self.metrics
            .datafile_revision
            .with_label_values(&[label])
            .set(revision);
        self.metrics
            .datafile_loaded_at
            .with_label_values(&[label])
            .set(
                loaded_at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0.0, |d| d.as_secs_f64()),
            );
        tracing::info!(project = name, revision = %config.revision, %origin, "datafile in use");
        let etag = {
            use sha1::Digest;
            format!(
                "\"{}\"",
                hex::encode(sha1::Sha1::digest(config.datafile.as_bytes()))
            )
        };
        let first = self.current().is_none();
        let announce =
            (!first && origin != FANOUT_ORIGIN && !origin.starts_with("cache:")).then(|| {
                Published {
                    project: self.fanout_id(),
                    revision: config.revision.clone(),
                    datafile: Arc::from(config.datafile.as_str()),
                    cache_control: cache_control.clone(),
                }
            });
        let bytes = bytes::Bytes::from(config.datafile.clone());
        self.current.store(Some(Arc::new(LoadedDatafile {
            bytes,
            config,
            loaded_at,
            origin,
            etag,
            cache_control,
        })));
        if let (Some(message), Some(publish)) = (announce, self.publish.get()) {
            if publish.try_send(message).is_err() {
                tracing::warn!(
                    project = name,
                    "fanout: announcement dropped (channel full)"
                );
            }
        }
    }

    /// Validates and installs datafile bytes (admin push, webhook-triggered fetch, file); more
    /// than `max_bytes` is refused before parsing.
    pub async fn accept(&self, bytes: Vec<u8>, origin: String) -> Result<(), SourceError> {
        self.accept_with(bytes, origin, None).await
    }

    /// [`Self::accept`], remembering the source's `Cache-Control` for the mirror.
    pub async fn accept_with(
        &self,
        bytes: Vec<u8>,
        origin: String,
        cache_control: Option<String>,
    ) -> Result<(), SourceError> {
        if bytes.len() > self.settings.max_bytes {
            self.metrics
                .datafile_updates
                .with_label_values(&[&self.settings.metric_label, "too_large"])
                .inc();
            return Err(SourceError::TooLarge {
                origin,
                max: self.settings.max_bytes,
            });
        }
        let parsed = tokio::task::spawn_blocking(move || ProjectConfig::parse(&bytes))
            .await
            .map_err(|e| SourceError::Read {
                path: origin.clone(),
                message: e.to_string(),
            })?;
        match parsed {
            Ok(config) => {
                if self
                    .current()
                    .is_some_and(|c| c.config.datafile == config.datafile)
                {
                    self.metrics
                        .datafile_updates
                        .with_label_values(&[&self.settings.metric_label, "unchanged"])
                        .inc();
                    return Ok(());
                }
                self.metrics
                    .datafile_updates
                    .with_label_values(&[&self.settings.metric_label, "updated"])
                    .inc();
                self.install(config, origin, true, cache_control).await;
                Ok(())
            }
            Err(source) => {
                self.metrics
                    .datafile_updates
                    .with_label_values(&[&self.settings.metric_label, "invalid"])
                    .inc();
                Err(SourceError::Invalid { origin, source })
            }
        }
    }

    /// Loads from the configured source once (no retries).
    pub async fn load_once(&self) -> Result<(), SourceError> {
        match &self.settings.origin {
            DatafileOrigin::Bundled => {
                self.accept(BUNDLED_DATAFILE.as_bytes().to_vec(), "bundled".into())
                    .await
            }
            DatafileOrigin::File(path) => {
                let bytes = read_capped(path, self.settings.max_bytes)
                    .await
                    .map_err(|e| SourceError::Read {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
                self.accept(bytes, format!("file:{}", path.display())).await
            }
            DatafileOrigin::Url(url) => self.fetch(url).await,
        }
    }

    async fn fetch(&self, url: &url::Url) -> Result<(), SourceError> {
        let fetch_err = |message: String| SourceError::Fetch {
            url: url.to_string(),
            message,
        };
        // Conditional only when there is a datafile in use to keep.
        let validators = match self.current() {
            Some(_) => self
                .validators
                .lock()
                .map(|v| v.clone())
                .unwrap_or_default(),
            None => Validators::default(),
        };
        let max = self.settings.max_bytes;
        let token = self.settings.access_token.as_ref();
        match poll::fetch(url, self.settings.fetch_timeout, &validators, max, token).await {
            Ok(Fetched::NotModified) => {
                self.metrics
                    .datafile_updates
                    .with_label_values(&[&self.settings.metric_label, "not_modified"])
                    .inc();
                Ok(())
            }
            Ok(Fetched::Body { bytes, validators }) => {
                let cache_control = validators.cache_control.clone();
                self.accept_with(bytes, format!("url:{url}"), cache_control)
                    .await?;
                if let Ok(mut v) = self.validators.lock() {
                    *v = validators;
                }
                Ok(())
            }
            Err(FetchFailure::Status(status)) => {
                self.metrics
                    .datafile_updates
                    .with_label_values(&[&self.settings.metric_label, "fetch_error"])
                    .inc();
                Err(fetch_err(format!("HTTP {status}")))
            }
            Err(FetchFailure::Transport(message)) => Err(fetch_err(message)),
            Err(FetchFailure::TooLarge) => {
                self.metrics
                    .datafile_updates
                    .with_label_values(&[&self.settings.metric_label, "too_large"])
                    .inc();
                Err(SourceError::TooLarge {
                    origin: format!("url:{url}"),
                    max,
                })
            }
        }
    }

    /// Installs the last good cached datafile; `Ok(false)` when there is none.
    pub async fn load_cached(&self) -> Result<bool, SourceError> {
        let path = &self.settings.cache_path;
        let Some(config) = cache::load(path).await? else {
            return Ok(false);
        };
        self.install(config, format!("cache:{}", path.display()), false, None)
            .await;
        Ok(true)
    }

    /// Start-up: the source, else the last good cached datafile. Errors only when neither works.
    pub async fn load_at_start(&self) -> Result<(), SourceError> {
        match self.load_once().await {
            Ok(()) => Ok(()),
            Err(e) => {
                let path = &self.settings.cache_path;
                tracing::warn!(project = %self.settings.name, error = %e, cache = %path.display(), "datafile source unavailable at start; trying the cache");
                let config = cache::load(path).await?.ok_or(e)?;
                self.install(config, format!("cache:{}", path.display()), false, None)
                    .await;
                Ok(())
            }
        }
    }

    /// Keeps the datafile fresh until cancelled: polls URLs every `poll_interval` (backing off
    /// on errors) and re-reads on refresh requests (webhook, SIGHUP).
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let polled = matches!(self.settings.origin, DatafileOrigin::Url(_));
        let mut failures: u32 = 0;
        loop {
            let wait = if !polled {
                Duration::from_secs(3600 * 24 * 365)
            } else if failures == 0 {
                self.settings.poll_interval
            } else {
                poll::backoff(failures, self.settings.poll_interval)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
                _ = self.refresh.notified() => {}
            }
            match self.load_once().await {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(project = %self.settings.name, error = %e, failures, "datafile refresh failed; keeping the current one");
                }
            }
        }
    }
}

/// Reads at most `max + 1` bytes of the file at `path` (one more than allowed is enough to
/// refuse it), on the blocking pool.
async fn read_capped(path: &std::path::Path, max: usize) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_datafile_parses() {
        let c = ProjectConfig::parse(BUNDLED_DATAFILE.as_bytes()).unwrap();
        assert!(c.experiment_by_key("checkout_flow_experiment").is_some());
        assert!(c.flag_by_key("new_checkout").is_some());
    }
}
