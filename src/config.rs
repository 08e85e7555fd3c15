//! Configuration: built-in defaults → `config.toml` (or `--config FILE`) → environment
//! (`BUCKETD__SECTION__KEY`), validated once into typed [`Settings`].
//!
//! Unknown keys and bad values are errors at start that name the key. Tests inject an
//! environment map instead of mutating the process environment.

mod agent_api;
mod edge;
mod raw;

pub use agent_api::{AgentApiSettings, OdpSettings, SegmentsCacheConfig};
pub use edge::{AuthSettings, CorsSettings, JwksSettings, OAuthClient, StaticToken, TlsSettings};

use backends::{EventQueueConfig, ProfileStoreConfig};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The CDN URL template for `datafile.sdk_key` (`{sdk_key}` is replaced).
pub const DEFAULT_DATAFILE_URL_TEMPLATE: &str =
    "https://cdn.optimizely.com/datafiles/{sdk_key}.json";

/// The URL template of secure environments' datafiles (as the SDKs' authenticated config
/// manager uses it), fetched with `Authorization: Bearer <access token>`.
pub const DEFAULT_AUTHENTICATED_DATAFILE_URL_TEMPLATE: &str =
    "https://config.optimizely.com/datafiles/auth/{sdk_key}.json";

/// A configuration problem, naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("invalid configuration value for `{key}`: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        message: message.to_string(),
    }
}

/// A secret that never prints.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Splits an SDK key as the Agent and SDKs accept it, `sdkKey` or `sdkKey:datafileAccessToken`,
/// into the key and the secure environment's token (`None` without one or when empty).
pub fn split_sdk_key(full: &str) -> (&str, Option<Secret>) {
    match full.split_once(':') {
        Some((key, token)) if !token.is_empty() => (key, Some(Secret::new(token))),
        Some((key, _)) => (key, None),
        None => (full, None),
    }
}

/// Whether `key` is an SDK key's shape: non-empty, at most 128 ASCII letters, digits, `_`, `-`.
pub fn sdk_key_is_valid(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A short, stable form of an SDK key for logs: its first 6 characters and 8 hex digits of its
/// SHA-1 (tokens are never part of it).
pub fn short_key(key: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(key.as_bytes());
    let head: String = key.chars().take(6).collect();
    format!("{head}~{}", &hex::encode(digest)[..8])
}

/// Where a project's datafile comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum DatafileOrigin {
    /// A local file, re-read on SIGHUP and on webhook.
    File(PathBuf),
    /// Polled over HTTP(S).
    Url(url::Url),
    /// The example project bundled in the binary.
    Bundled,
}

/// One project served by the daemon.
#[derive(Debug, Clone)]
pub struct ProjectSettings {
    /// A name for logs and metrics (the SDK key when there is one).
    pub name: String,
    /// Requests with `X-Optimizely-SDK-Key: <sdk_key>` select this project.
    pub sdk_key: Option<String>,
    pub origin: DatafileOrigin,
    pub poll_interval: Duration,
    pub fetch_timeout: Duration,
    /// Where the last good datafile is kept (used at start when the source is unreachable).
    pub cache_path: PathBuf,
    pub webhook_secret: Option<Secret>,
    /// Largest datafile accepted from any source (URL, file, webhook refresh, admin push).
    pub max_bytes: usize,
    /// A secure environment's datafile access token (`Authorization: Bearer` on the fetch;
    /// the mirror serves the datafile only to requests bearing it).
    pub access_token: Option<Secret>,
    /// The `project` label of its metrics: the name for configured projects, one shared label
    /// for on-demand ones (bounded cardinality).
    pub metric_label: String,
}

/// `datafile.fanout`: replicas share new datafiles through Redis pub/sub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FanoutSettings {
    pub redis_url: String,
    pub channel: String,
}

/// `[dynamic_projects]`, validated.
#[derive(Debug, Clone)]
pub struct DynamicProjectsSettings {
    pub enabled: bool,
    /// Anchored: the whole key must match.
    pub allow: Option<regex::Regex>,
    pub max_projects: usize,
    pub idle_timeout: Duration,
    pub load_timeout: Duration,
    pub failure_ttl: Duration,
    pub poll_interval: Duration,
    pub url_template: String,
    pub authenticated_url_template: String,
    pub max_bytes: usize,
}

/// HTTP server settings.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub trust_forwarded_for: bool,
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    pub max_attributes: usize,
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with nothing in flight this long is closed.
    pub idle_timeout: Duration,
    /// Connections open at once, already lowered to the descriptor limit minus `fd_reserve`.
    pub max_connections: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_bytes: u32,
    pub http2_keep_alive_interval: Duration,
    pub http2_keep_alive_timeout: Duration,
    /// `None`: plain TCP.
    pub tls: Option<TlsSettings>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// When a changed profile is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveMode {
    /// Write-behind: bounded, coalescing per user; decisions never wait.
    Async,
    /// The decision waits for the save (bounded by the profile timeout).
    Sync,
}

/// Profile-store settings.
#[derive(Debug, Clone)]
pub struct ProfileSettings {
    pub store: ProfileStoreConfig,
    pub timeout: Duration,
    pub save: SaveMode,
    pub cache_capacity: u64,
    pub cache_ttl: Duration,
    /// Pending write-behind saves before new ones are dropped (and counted).
    pub save_queue: usize,
}

/// Event settings.
#[derive(Debug, Clone)]
pub struct EventSettings {
    /// `None`: the Optimizely endpoint of each event's region.
    pub endpoint: Option<url::Url>,
    pub queue: EventQueueConfig,
    /// The local disk spool used while a remote queue (Kafka, SQS) is unavailable; `None` for
    /// the disk queue, which is local already.
    pub spool: Option<EventQueueConfig>,
    /// In-process buffer between requests and the queue producer.
    pub channel_capacity: usize,
    /// When a request that records events is answered (`events.ack`).
    pub ack: crate::pipeline::AckMode,
    /// Longest wait for the events to be durable before the request answers 503.
    pub ack_timeout: Duration,
    /// Bound on the record bytes in the in-process buffer.
    pub channel_max_bytes: usize,
    /// Bounds of the event relay (`events.relay`).
    pub relay: RelaySettings,
}

/// What one payload posted to the event relay (`POST /v1/events`) may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelaySettings {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Most visitors in one payload (422 above).
    pub max_visitors: usize,
}

/// Flusher settings.
#[derive(Debug, Clone)]
pub struct FlusherSettings {
    pub enabled: bool,
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub max_backoff: Duration,
    pub max_request_bytes: usize,
    pub request_timeout: Duration,
    /// Batches delivered at the same time (the next batch is received while they post).
    pub concurrency: usize,
    /// Where `bucketd flush` serves `/metrics` and `/health`; `None` when set to "".
    pub metrics_listen: Option<SocketAddr>,
    pub dead_letter_path: PathBuf,
}

/// Where CMAB predictions are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CmabCache {
    /// In this process (the SDK's LRU cache).
    Memory,
    /// Shared by every daemon using this Redis URL.
    Redis(String),
}

/// `[cmab]`: the prediction endpoint, its retry policy and the prediction cache.
#[derive(Debug, Clone, PartialEq)]
pub struct CmabSettings {
    /// URL template; `{}` is replaced by the rule id.
    pub prediction_url: String,
    /// Per attempt.
    pub timeout: std::time::Duration,
    pub retry: crate::service::cmab::RetryPolicy,
    pub cache: CmabCache,
    /// Most predictions kept in memory (LRU).
    pub cache_size: u64,
    pub cache_ttl: std::time::Duration,
    /// Key prefix in a Redis cache.
    pub cache_prefix: String,
}

impl Default for CmabSettings {
    /// The `[cmab]` section's defaults.
    fn default() -> Self {
        let mut s = raw::cmab_defaults();
        s.cache = CmabCache::Memory;
        s
    }
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub server: ServerSettings,
    /// The first project is the default one.
    pub projects: Vec<ProjectSettings>,
    pub admin_token: Option<Secret>,
    pub enable_overrides: bool,
    /// Bounds of `/v1/batch` and the `/v1/notifications` stream.
    pub agent_api: AgentApiSettings,
    /// How ODP is reached (`[api.odp]`).
    pub odp: OdpSettings,
    pub log_format: LogFormat,
    pub log_level: String,
    pub profiles: ProfileSettings,
    pub events: EventSettings,
    pub flusher: FlusherSettings,
    pub cmab: CmabSettings,
    /// `[api.auth]`: who may call the API (off unless a verifier is configured).
    pub auth: AuthSettings,
    /// `[api.cors]` (`None`: off).
    pub cors: Option<CorsSettings>,
    /// `[dynamic_projects]`.
    pub dynamic_projects: DynamicProjectsSettings,
    /// `datafile.fanout` (`None`: each replica on its own).
    pub fanout: Option<FanoutSettings>,
}

/// Loads defaults, the file (when given or when `config.toml` exists) and the environment map.
pub fn load(file: Option<&Path>, env: &HashMap<String, String>) -> Result<Settings, ConfigError> {
    let raw = raw::load(file, env)?;
    validate(raw)
}

/// Loads with the process environment.
pub fn load_from_process_env(file: Option<&Path>) -> Result<Settings, ConfigError> {
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("BUCKETD__"))
        .collect();
    load(file, &env)
}

/// Whether the event queue lives on this machine (the disk queue), so the flusher runs in the
/// daemon by default.
fn queue_is_local(queue: &EventQueueConfig) -> bool {
    #[cfg(feature = "disk")]
    if matches!(queue, EventQueueConfig::Disk(_)) {
        return true;
    }
    let _ = queue;
    false
}

fn nonzero<T: PartialOrd + Default + Copy>(key: &str, v: T) -> Result<T, ConfigError> {
    if v > T::default() {
        Ok(v)
    } else {
        Err(invalid(key, "must be greater than zero"))
    }
}

fn validate(raw: raw::RawConfig) -> Result<Settings, ConfigError> {
    let state_dir = raw.state_dir.clone();
    let listen: SocketAddr = raw.server.listen.parse().map_err(|e| {
        invalid(
            "server.listen",
            format!("{e} (expected host:port, e.g. 127.0.0.1:8080)"),
        )
    })?;
    let server = ServerSettings {
        listen,
        trust_forwarded_for: raw.server.trust_forwarded_for,
        shutdown_grace: raw.server.shutdown_grace,
        max_body_bytes: nonzero("server.max_body_bytes", raw.server.max_body_bytes)?,
        max_query_bytes: nonzero("server.max_query_bytes", raw.server.max_query_bytes)?,
        max_attributes: nonzero("server.max_attributes", raw.server.max_attributes)?,
        header_read_timeout: nonzero_duration(
            "server.header_read_timeout",
            raw.server.header_read_timeout,
        )?,
        idle_timeout: nonzero_duration("server.idle_timeout", raw.server.idle_timeout)?,
        max_connections: crate::http::listener::max_connections(
            nonzero("server.max_connections", raw.server.max_connections)?,
            raw.server.fd_reserve,
        ),
        http2_max_concurrent_streams: nonzero(
            "server.http2_max_concurrent_streams",
            raw.server.http2_max_concurrent_streams,
        )?,
        http2_max_header_list_bytes: nonzero(
            "server.http2_max_header_list_bytes",
            raw.server.http2_max_header_list_bytes,
        )?,
        http2_keep_alive_interval: nonzero_duration(
            "server.http2_keep_alive_interval",
            raw.server.http2_keep_alive_interval,
        )?,
        http2_keep_alive_timeout: nonzero_duration(
            "server.http2_keep_alive_timeout",
            raw.server.http2_keep_alive_timeout,
        )?,
        tls: edge::tls(&raw.server.tls)?,
    };

    let mut projects = Vec::new();
    let default_has_source =
        raw.datafile.path.is_some() || raw.datafile.url.is_some() || raw.datafile.sdk_key.is_some();
    if default_has_source || raw.projects.is_empty() {
        projects.push(project("datafile", &raw.datafile, &state_dir, 0)?);
    }
    for (i, p) in raw.projects.iter().enumerate() {
        projects.push(project(&format!("projects[{i}]"), p, &state_dir, i + 1)?);
    }
    for (i, p) in raw.projects.iter().enumerate() {
        let defaults = raw::DatafileSection::default();
        if p.fanout.is_some() || p.fanout_channel != defaults.fanout_channel {
            return Err(invalid(
                format!("projects[{i}].fanout"),
                "fanout is set once, in [datafile]",
            ));
        }
    }
    let fanout = fanout(&raw.datafile)?;
    let dynamic_projects = dynamic_projects(&raw.dynamic_projects, raw.datafile.max_bytes)?;
    let mut keys = std::collections::HashSet::new();
    for p in &projects {
        if let Some(k) = &p.sdk_key {
            if !keys.insert(k.clone()) {
                return Err(invalid(
                    "projects",
                    format!("sdk_key {k:?} is used by two projects"),
                ));
            }
        }
    }

    let log_format = match raw.log.format.as_str() {
        "human" => LogFormat::Human,
        "json" => LogFormat::Json,
        other => {
            return Err(invalid(
                "log.format",
                format!("{other:?} (expected \"human\" or \"json\")"),
            ))
        }
    };
    let profiles = raw::profiles(&raw.profiles)?;
    let events = raw::events(&raw.events, &state_dir)?;
    let cmab = raw::cmab(&raw.cmab)?;
    let flusher = FlusherSettings {
        enabled: raw.flusher.enabled.unwrap_or(queue_is_local(&events.queue)),
        batch_size: nonzero("flusher.batch_size", raw.flusher.batch_size)?,
        flush_interval: raw.flusher.flush_interval,
        max_backoff: raw.flusher.max_backoff,
        max_request_bytes: nonzero("flusher.max_request_bytes", raw.flusher.max_request_bytes)?,
        request_timeout: raw.flusher.request_timeout,
        concurrency: nonzero("flusher.concurrency", raw.flusher.concurrency)?,
        metrics_listen: match raw.flusher.metrics_listen.trim() {
            "" => None,
            addr => Some(addr.parse().map_err(|e| {
                invalid(
                    "flusher.metrics_listen",
                    format!("{e} (expected host:port, or \"\" for none)"),
                )
            })?),
        },
        dead_letter_path: raw
            .flusher
            .dead_letter_path
            .clone()
            .unwrap_or_else(|| state_dir.join("dead-letter.jsonl")),
    };
    Ok(Settings {
        state_dir,
        server,
        projects,
        admin_token: raw.admin.token.filter(|t| !t.is_empty()).map(Secret),
        enable_overrides: raw.api.enable_overrides,
        agent_api: agent_api::validate(&raw.api)?,
        odp: agent_api::validate_odp(&raw.api.odp)?,
        log_format,
        log_level: raw.log.level,
        profiles,
        events,
        flusher,
        cmab,
        auth: edge::auth(&raw.api.auth)?,
        cors: edge::cors(&raw.api.cors)?,
        dynamic_projects,
        fanout,
    })
}

fn fanout(d: &raw::DatafileSection) -> Result<Option<FanoutSettings>, ConfigError> {
    let Some(url) = d.fanout.as_deref().filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err(invalid(
            "datafile.fanout",
            "expected a redis:// or rediss:// URL",
        ));
    }
    if d.fanout_channel.is_empty() {
        return Err(invalid("datafile.fanout_channel", "must not be empty"));
    }
    Ok(Some(FanoutSettings {
        redis_url: url.to_string(),
        channel: d.fanout_channel.clone(),
    }))
}

fn dynamic_projects(
    d: &raw::DynamicProjectsSection,
    max_bytes: usize,
) -> Result<DynamicProjectsSettings, ConfigError> {
    let allow = match d.allow.as_str() {
        "" => None,
        pattern => Some(
            regex::Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| invalid("dynamic_projects.allow", e))?,
        ),
    };
    for (key, template) in [
        ("dynamic_projects.url_template", &d.url_template),
        (
            "dynamic_projects.authenticated_url_template",
            &d.authenticated_url_template,
        ),
    ] {
        if !template.contains("{sdk_key}") {
            return Err(invalid(key, "must contain {sdk_key}"));
        }
        parse_http_url(key, &template.replace("{sdk_key}", "key"))?;
    }
    Ok(DynamicProjectsSettings {
        enabled: d.enabled,
        allow,
        max_projects: nonzero("dynamic_projects.max_projects", d.max_projects)?,
        idle_timeout: nonzero_duration("dynamic_projects.idle_timeout", d.idle_timeout)?,
        load_timeout: nonzero_duration("dynamic_projects.load_timeout", d.load_timeout)?,
        failure_ttl: d.failure_ttl,
        poll_interval: nonzero_duration("dynamic_projects.poll_interval", d.poll_interval)?,
        url_template: d.url_template.clone(),
        authenticated_url_template: d.authenticated_url_template.clone(),
        max_bytes,
    })
}

fn project(
    key: &str,
    d: &raw::DatafileSection,
    state_dir: &Path,
    index: usize,
) -> Result<ProjectSettings, ConfigError> {
    if d.path.is_some() && d.url.is_some() {
        return Err(invalid(
            format!("{key}.path"),
            "set either a path or a url, not both",
        ));
    }
    let (sdk_key, key_token) = match d.sdk_key.as_deref() {
        Some(full) => {
            let (k, t) = split_sdk_key(full);
            (Some(k.to_string()), t)
        }
        None => (None, None),
    };
    let access_token = match (
        key_token,
        d.access_token.as_deref().filter(|t| !t.is_empty()),
    ) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                format!("{key}.access_token"),
                "set either access_token or sdk_key = \"KEY:TOKEN\", not both",
            ))
        }
        (Some(t), None) => Some(t),
        (None, Some(t)) => Some(Secret::new(t)),
        (None, None) => None,
    };
    let origin = if let Some(p) = &d.path {
        DatafileOrigin::File(p.clone())
    } else if let Some(u) = &d.url {
        DatafileOrigin::Url(parse_http_url(&format!("{key}.url"), u)?)
    } else if let Some(k) = &sdk_key {
        if !sdk_key_is_valid(k) {
            return Err(invalid(
                format!("{key}.sdk_key"),
                "must be a non-empty alphanumeric key",
            ));
        }
        let (template_key, template) = if access_token.is_some() {
            ("authenticated_url_template", &d.authenticated_url_template)
        } else {
            ("url_template", &d.url_template)
        };
        DatafileOrigin::Url(parse_http_url(
            &format!("{key}.{template_key}"),
            &template.replace("{sdk_key}", k),
        )?)
    } else {
        DatafileOrigin::Bundled
    };
    let name = d
        .name
        .clone()
        .or_else(|| sdk_key.clone())
        .unwrap_or_else(|| {
            if index == 0 {
                "default".into()
            } else {
                format!("project-{index}")
            }
        });
    let cache_path = d.cache_path.clone().unwrap_or_else(|| {
        state_dir
            .join("datafiles")
            .join(format!("{}.json", sanitize(&name)))
    });
    Ok(ProjectSettings {
        metric_label: name.clone(),
        name,
        sdk_key,
        access_token,
        origin,
        poll_interval: nonzero_duration(&format!("{key}.poll_interval"), d.poll_interval)?,
        fetch_timeout: nonzero_duration(&format!("{key}.fetch_timeout"), d.fetch_timeout)?,
        cache_path,
        webhook_secret: d
            .webhook_secret
            .clone()
            .filter(|s| !s.is_empty())
            .map(Secret),
        max_bytes: nonzero(&format!("{key}.max_bytes"), d.max_bytes)?,
    })
}

fn nonzero_duration(key: &str, d: Duration) -> Result<Duration, ConfigError> {
    if d.is_zero() {
        Err(invalid(key, "must be longer than zero"))
    } else {
        Ok(d)
    }
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Parses an `http(s)://` URL.
pub fn parse_http_url(key: &str, s: &str) -> Result<url::Url, ConfigError> {
    let u = url::Url::parse(s).map_err(|e| invalid(key, format!("{e}: {s:?}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(invalid(key, format!("expected an http(s) URL, got {s:?}")));
    }
    Ok(u)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flusher_status_endpoint_and_concurrency() {
        let s = load(None, &env(&[])).unwrap();
        assert_eq!(
            s.flusher.metrics_listen.map(|a| a.to_string()).as_deref(),
            Some("127.0.0.1:9091")
        );
        assert_eq!(s.flusher.concurrency, 4);
        let off = load(None, &env(&[("BUCKETD__FLUSHER__METRICS_LISTEN", "")])).unwrap();
        assert_eq!(off.flusher.metrics_listen, None);
        let bad = load(None, &env(&[("BUCKETD__FLUSHER__METRICS_LISTEN", "nine")])).unwrap_err();
        assert!(bad.to_string().contains("flusher.metrics_listen"), "{bad}");
        let zero = load(None, &env(&[("BUCKETD__FLUSHER__CONCURRENCY", "0")])).unwrap_err();
        assert!(zero.to_string().contains("flusher.concurrency"), "{zero}");
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_serve_the_bundled_project_on_localhost() {
        let s = load(None, &env(&[])).unwrap();
        assert_eq!(s.server.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.projects.len(), 1);
        assert_eq!(s.projects[0].origin, DatafileOrigin::Bundled);
        assert!(matches!(s.events.queue, EventQueueConfig::Disk(_)));
        assert!(s.admin_token.is_none());
        // No profile store unless one is configured (as the SDKs; README, Performance).
        assert!(matches!(s.profiles.store, ProfileStoreConfig::None));
    }

    #[test]
    fn env_overrides_and_names_bad_keys() {
        let s = load(
            None,
            &env(&[
                ("BUCKETD__SERVER__LISTEN", "0.0.0.0:9000"),
                ("BUCKETD__DATAFILE__PATH", "/tmp/x.json"),
            ]),
        )
        .unwrap();
        assert_eq!(s.server.listen.port(), 9000);
        assert_eq!(
            s.projects[0].origin,
            DatafileOrigin::File("/tmp/x.json".into())
        );

        let e = load(None, &env(&[("BUCKETD__SERVER__LISTEN", "nope")])).unwrap_err();
        assert!(e.to_string().contains("server.listen"), "{e}");
        let e = load(None, &env(&[("BUCKETD__SERVER__LISTN", "1")])).unwrap_err();
        assert!(e.to_string().contains("listn"), "{e}");
        let e = load(None, &env(&[("BUCKETD__SERVER__SHUTDOWN_GRACE", "soon")])).unwrap_err();
        assert!(e.to_string().contains("shutdown_grace"), "{e}");
        let e = load(None, &env(&[("BUCKETD__LOG__FORMAT", "xml")])).unwrap_err();
        assert!(e.to_string().contains("log.format"), "{e}");
    }

    #[test]
    fn sdk_key_builds_the_cdn_url_and_secrets_do_not_print() {
        let s = load(
            None,
            &env(&[
                ("BUCKETD__DATAFILE__SDK_KEY", "Abc123"),
                ("BUCKETD__DATAFILE__WEBHOOK_SECRET", "hush"),
            ]),
        )
        .unwrap();
        match &s.projects[0].origin {
            DatafileOrigin::Url(u) => assert_eq!(
                u.as_str(),
                "https://cdn.optimizely.com/datafiles/Abc123.json"
            ),
            other => panic!("{other:?}"),
        }
        assert!(!format!("{:?}", s.projects[0]).contains("hush"));
    }

    #[test]
    fn config_file_projects() {
        let dir = std::env::temp_dir().join(format!("bucketd-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("c.toml");
        std::fs::write(
            &f,
            "state_dir = \"/tmp/bd\"\n[[projects]]\nsdk_key = \"k1\"\npath = \"/a.json\"\n[[projects]]\nsdk_key = \"k2\"\nurl = \"http://127.0.0.1:1/d.json\"\n",
        )
        .unwrap();
        let s = load(Some(&f), &env(&[])).unwrap();
        assert_eq!(s.projects.len(), 2);
        assert_eq!(s.projects[1].sdk_key.as_deref(), Some("k2"));
        assert_eq!(
            s.projects[0].cache_path,
            PathBuf::from("/tmp/bd/datafiles/k1.json")
        );
        std::fs::write(&f, "[server]\nlisten = 5\nbogus = 1\n").unwrap();
        assert!(load(Some(&f), &env(&[])).is_err());
    }
}
