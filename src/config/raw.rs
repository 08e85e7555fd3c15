//! The configuration as written (TOML / environment), before validation.
//!
//! Backend-specific keys of `profiles` and `events.queue` are collected as a map and handed to
//! the backends crate's tagged config enums, whose `deny_unknown_fields` rejects keys that do not
//! apply to the chosen `type`.

use super::agent_api::{BatchSection, NotificationsSection, OdpSection};
use super::edge::{AuthSection, CorsSection, TlsSection};
use super::{invalid, ConfigError, EventSettings, ProfileSettings, SaveMode};
use super::{CmabCache, CmabSettings};
use crate::pipeline::AckMode;
use backends::{EventQueueConfig, ProfileStoreConfig};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

// The built-in defaults are the `Default` impls below, one beside each section, and nowhere
// else: a key missing from the file and the environment takes its section's default (serde's
// container `default`), which also covers every `[[projects]]` entry. The repository's
// `config.toml` writes each of them out; a test checks that the two agree.

/// The pub/sub channel `datafile.fanout` publishes on when none is given.
pub(super) const DEFAULT_FANOUT_CHANNEL: &str = "bucketd:datafiles";

/// The `type` of `[events.queue]` when none is given.
pub(super) const DEFAULT_QUEUE_TYPE: &str = "disk";

/// The configuration file's shape.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: PathBuf,
    pub server: ServerSection,
    pub datafile: DatafileSection,
    pub projects: Vec<DatafileSection>,
    pub admin: AdminSection,
    pub api: ApiSection,
    pub log: LogSection,
    pub profiles: ProfilesSection,
    pub events: EventsSection,
    pub flusher: FlusherSection,
    pub cmab: CmabSection,
    pub dynamic_projects: DynamicProjectsSection,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            state_dir: "state".into(),
            server: ServerSection::default(),
            datafile: DatafileSection::default(),
            projects: Vec::new(),
            admin: AdminSection::default(),
            api: ApiSection::default(),
            log: LogSection::default(),
            profiles: ProfilesSection::default(),
            events: EventsSection::default(),
            flusher: FlusherSection::default(),
            cmab: CmabSection::default(),
            dynamic_projects: DynamicProjectsSection::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    pub listen: String,
    pub trust_forwarded_for: bool,
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    pub max_attributes: usize,
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    pub max_connections: usize,
    pub fd_reserve: usize,
    pub http2_max_concurrent_streams: u32,
    pub http2_max_header_list_bytes: u32,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub http2_keep_alive_timeout: Duration,
    pub tls: TlsSection,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            trust_forwarded_for: false,
            shutdown_grace: Duration::from_secs(10),
            max_body_bytes: 1_048_576,
            max_query_bytes: 8192,
            max_attributes: 100,
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            fd_reserve: 256,
            http2_max_concurrent_streams: 100,
            http2_max_header_list_bytes: 16_384,
            http2_keep_alive_interval: Duration::from_secs(20),
            http2_keep_alive_timeout: Duration::from_secs(10),
            tls: TlsSection::default(),
        }
    }
}

/// `[datafile]` (the default project) and each `[[projects]]` entry.
#[derive(Debug, Deserialize, Serialize, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DatafileSection {
    pub name: Option<String>,
    pub path: Option<PathBuf>,
    pub url: Option<String>,
    pub sdk_key: Option<String>,
    pub url_template: String,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub fetch_timeout: Duration,
    pub cache_path: Option<PathBuf>,
    pub webhook_secret: Option<String>,
    pub max_bytes: usize,
    /// A secure environment's datafile access token (sent as `Authorization: Bearer`).
    pub access_token: Option<String>,
    /// The URL template used when the project has an access token.
    pub authenticated_url_template: String,
    /// `[datafile]` only: a `redis://` URL through which replicas share new datafiles.
    pub fanout: Option<String>,
    /// `[datafile]` only: the pub/sub channel of `fanout`.
    pub fanout_channel: String,
}

impl Default for DatafileSection {
    fn default() -> Self {
        Self {
            name: None,
            path: None,
            url: None,
            sdk_key: None,
            url_template: super::DEFAULT_DATAFILE_URL_TEMPLATE.into(),
            poll_interval: Duration::from_secs(60),
            fetch_timeout: Duration::from_secs(10),
            cache_path: None,
            webhook_secret: None,
            max_bytes: 64 << 20,
            access_token: None,
            authenticated_url_template: super::DEFAULT_AUTHENTICATED_DATAFILE_URL_TEMPLATE.into(),
            fanout: None,
            fanout_channel: DEFAULT_FANOUT_CHANNEL.into(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    pub token: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSection {
    pub enable_overrides: bool,
    pub batch: BatchSection,
    pub notifications: NotificationsSection,
    pub odp: OdpSection,
    /// Most decisions one `/v1/activate` or `/v1/decide` request may make (more: 422).
    pub max_decisions_per_request: usize,
    /// Most entries of a profile written with `/v1/save` (more: 422).
    pub max_profile_entries: usize,
    /// Most bytes (as JSON) of a profile written with `/v1/save` (more: 422).
    pub max_profile_bytes: usize,
    pub auth: AuthSection,
    pub cors: CorsSection,
}

impl Default for ApiSection {
    fn default() -> Self {
        Self {
            enable_overrides: false,
            batch: BatchSection::default(),
            notifications: NotificationsSection::default(),
            odp: OdpSection::default(),
            max_decisions_per_request: 1000,
            max_profile_entries: 1000,
            max_profile_bytes: 64 * 1024,
            auth: AuthSection::default(),
            cors: CorsSection::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    pub format: String,
    pub level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

/// `[profiles]`: service keys, plus the chosen backend's keys (collected in `backend`).
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ProfilesSection {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub save: String,
    pub cache_capacity: u64,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    pub save_queue: usize,
    #[serde(flatten)]
    pub backend: Map<String, Value>,
}

/// `profiles.type` when unset.
pub const DEFAULT_PROFILE_STORE: &str = "none";

impl Default for ProfilesSection {
    fn default() -> Self {
        Self {
            // No store by default, as in the SDKs: measured, the in-process store cost far more
            // than the 10 % budget against `none`, and its stickiness ends at a restart (see
            // README, Performance).
            kind: DEFAULT_PROFILE_STORE.into(),
            timeout: Duration::from_millis(50),
            save: "async".into(),
            cache_capacity: 0,
            cache_ttl: Duration::from_secs(30),
            save_queue: 10_000,
            backend: Map::new(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EventsSection {
    pub endpoint: Option<String>,
    pub channel_capacity: usize,
    /// `"durable"`: answer once the events are fsynced / acknowledged; `"fast"`: at once.
    pub ack: String,
    #[serde(with = "humantime_serde")]
    pub ack_timeout: Duration,
    pub channel_max_bytes: usize,
    /// The queue backend's keys, `type` included (the backends crate validates them).
    pub queue: Map<String, Value>,
    /// Bounds of the event relay (`POST /v1/events`).
    pub relay: RelaySection,
}

/// `[events.relay]`: what one payload an SDK posts may hold.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySection {
    /// Largest request body (413 above).
    pub max_body_bytes: usize,
    /// Most visitors in one payload (422 above).
    pub max_visitors: usize,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_visitors: 1000,
        }
    }
}

impl Default for EventsSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            channel_capacity: 65_536,
            ack: "durable".into(),
            ack_timeout: Duration::from_secs(5),
            channel_max_bytes: 64 << 20,
            queue: Map::from_iter([("type".into(), Value::from(DEFAULT_QUEUE_TYPE))]),
            relay: RelaySection::default(),
        }
    }
}

#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct FlusherSection {
    /// `None`: on for the disk queue, off otherwise (`bucketd flush` runs it).
    pub enabled: Option<bool>,
    pub batch_size: usize,
    #[serde(with = "humantime_serde")]
    pub flush_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub max_request_bytes: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub concurrency: usize,
    /// `""`: no status endpoint.
    pub metrics_listen: String,
    /// `None`: `<state_dir>/dead-letter.jsonl`.
    pub dead_letter_path: Option<PathBuf>,
}

impl Default for FlusherSection {
    fn default() -> Self {
        Self {
            enabled: None,
            batch_size: 500,
            flush_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            max_request_bytes: 3_500_000,
            request_timeout: Duration::from_secs(10),
            concurrency: 4,
            metrics_listen: "127.0.0.1:9091".into(),
            dead_letter_path: None,
        }
    }
}

/// `[cmab]`: CMAB predictions (defaults: the SDK's).
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CmabSection {
    pub prediction_url: String,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_retries: u32,
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    /// `"memory"` or a `redis://` / `rediss://` URL.
    pub cache: String,
    pub cache_size: u64,
    #[serde(with = "humantime_serde")]
    pub cache_ttl: Duration,
    pub cache_prefix: String,
}

impl Default for CmabSection {
    fn default() -> Self {
        Self {
            prediction_url: crate::service::cmab::DEFAULT_PREDICTION_URL.into(),
            timeout: Duration::from_secs(10),
            max_retries: 1,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            backoff_multiplier: 2.0,
            cache: "memory".into(),
            cache_size: 10_000,
            cache_ttl: Duration::from_secs(30 * 60),
            cache_prefix: "bucketd:cmab:".into(),
        }
    }
}

/// `[dynamic_projects]`: SDK keys loaded when a request names them (off by default).
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicProjectsSection {
    pub enabled: bool,
    /// A regular expression the whole SDK key must match (`""`: any key).
    pub allow: String,
    /// Most on-demand projects loaded at once.
    pub max_projects: usize,
    /// An on-demand project no request named for this long is dropped.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest wait of the first request for a new key (the fetch's timeout).
    #[serde(with = "humantime_serde")]
    pub load_timeout: Duration,
    /// How long a key that failed to load is answered from memory before it is tried again.
    #[serde(with = "humantime_serde")]
    pub failure_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    pub url_template: String,
    pub authenticated_url_template: String,
}

impl Default for DynamicProjectsSection {
    fn default() -> Self {
        Self {
            enabled: false,
            allow: String::new(),
            max_projects: 100,
            idle_timeout: Duration::from_secs(3600),
            load_timeout: Duration::from_secs(10),
            failure_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_secs(60),
            url_template: super::DEFAULT_DATAFILE_URL_TEMPLATE.into(),
            authenticated_url_template: super::DEFAULT_AUTHENTICATED_DATAFILE_URL_TEMPLATE.into(),
        }
    }
}

/// The validated defaults of `[cmab]`.
pub(super) fn cmab_defaults() -> CmabSettings {
    let d = CmabSection::default();
    CmabSettings {
        prediction_url: d.prediction_url,
        timeout: d.timeout,
        retry: crate::service::cmab::RetryPolicy {
            max_retries: d.max_retries,
            initial_backoff: d.initial_backoff,
            max_backoff: d.max_backoff,
            multiplier: d.backoff_multiplier,
        },
        cache: CmabCache::Memory,
        cache_size: d.cache_size,
        cache_ttl: d.cache_ttl,
        cache_prefix: d.cache_prefix,
    }
}

/// Validates `[cmab]`.
pub(super) fn cmab(c: &CmabSection) -> Result<CmabSettings, ConfigError> {
    if !c.prediction_url.contains("{}") {
        return Err(invalid(
            "cmab.prediction_url",
            "must contain {} (replaced by the rule id)",
        ));
    }
    url::Url::parse(&c.prediction_url.replace("{}", "rule"))
        .map_err(|e| invalid("cmab.prediction_url", e))?;
    if c.timeout.is_zero() {
        return Err(invalid("cmab.timeout", "must be greater than zero"));
    }
    if !(c.backoff_multiplier.is_finite() && c.backoff_multiplier >= 1.0) {
        return Err(invalid("cmab.backoff_multiplier", "must be at least 1"));
    }
    let cache = match c.cache.as_str() {
        "memory" => CmabCache::Memory,
        u if u.starts_with("redis://") || u.starts_with("rediss://") => CmabCache::Redis(u.into()),
        other => {
            return Err(invalid(
                "cmab.cache",
                format!("{other:?} (expected \"memory\" or a redis:// URL)"),
            ))
        }
    };
    Ok(CmabSettings {
        prediction_url: c.prediction_url.clone(),
        timeout: c.timeout,
        retry: crate::service::cmab::RetryPolicy {
            max_retries: c.max_retries,
            initial_backoff: c.initial_backoff,
            max_backoff: c.max_backoff,
            multiplier: c.backoff_multiplier,
        },
        cache,
        cache_size: c.cache_size,
        cache_ttl: c.cache_ttl,
        cache_prefix: c.cache_prefix.clone(),
    })
}

/// Keys whose environment form must be read as a number / boolean / comma list.
const NUMERIC_KEYS: &[&str] = &["capacity", "pool_size", "max_bytes", "partitions"];
const BOOL_KEYS: &[&str] = &["cluster", "create_schema", "create"];
const LIST_KEYS: &[&str] = &["contact_points"];

pub(super) fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<RawConfig, ConfigError> {
    let mut b = config::Config::builder();
    match file {
        Some(f) => {
            if !f.exists() {
                return Err(ConfigError::Load(format!("{}: no such file", f.display())));
            }
            b = b.add_source(config::File::from(f).format(config::FileFormat::Toml));
        }
        None => {
            b = b.add_source(
                config::File::with_name("config.toml")
                    .format(config::FileFormat::Toml)
                    .required(false),
            );
        }
    }
    let env_source = config::Environment::with_prefix("BUCKETD")
        .separator("__")
        .try_parsing(true)
        .source(Some(
            env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ));
    let built = b
        .add_source(env_source)
        .build()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    built.try_deserialize::<RawConfig>().map_err(|e| {
        let msg = e.to_string();
        // The config crate names the key in its message ("... for key `server.listen`").
        ConfigError::Invalid {
            key: msg
                .split("for key `")
                .nth(1)
                .and_then(|s| s.split('`').next())
                .unwrap_or("(config)")
                .to_string(),
            message: msg,
        }
    })
}

fn normalize_backend_keys(section: &str, kind: &str, map: &Map<String, Value>) -> Value {
    let mut out = Map::new();
    out.insert("type".into(), Value::String(kind.to_string()));
    for (k, v) in map {
        let v = match v {
            Value::String(s) if NUMERIC_KEYS.contains(&k.as_str()) => {
                s.parse::<u64>().map_or(v.clone(), Value::from)
            }
            Value::String(s) if BOOL_KEYS.contains(&k.as_str()) => {
                s.parse::<bool>().map_or(v.clone(), Value::Bool)
            }
            Value::String(s) if LIST_KEYS.contains(&k.as_str()) => Value::Array(
                s.split(',')
                    .map(|x| Value::String(x.trim().to_string()))
                    .collect(),
            ),
            Value::Number(n)
                if !NUMERIC_KEYS.contains(&k.as_str()) && !section.is_empty() && k != "type" =>
            {
                // Environment values like `key_prefix=123` arrive as numbers; keep them text.
                if ["timeout", "ttl", "cache_ttl", "visibility_timeout", "wait"]
                    .contains(&k.as_str())
                {
                    v.clone()
                } else {
                    Value::String(n.to_string())
                }
            }
            _ => v.clone(),
        };
        out.insert(k.clone(), v);
    }
    Value::Object(out)
}

fn backend_error(section: &str, e: serde_json::Error) -> ConfigError {
    let msg = e.to_string();
    let key = msg
        .split('`')
        .nth(1)
        .map(|f| format!("{section}.{f}"))
        .unwrap_or_else(|| format!("{section}.type"));
    invalid(key, msg)
}

pub(super) fn profiles(p: &ProfilesSection) -> Result<ProfileSettings, ConfigError> {
    let save = match p.save.as_str() {
        "async" => SaveMode::Async,
        "sync" => SaveMode::Sync,
        other => {
            return Err(invalid(
                "profiles.save",
                format!("{other:?} (expected \"async\" or \"sync\")"),
            ))
        }
    };
    let value = normalize_backend_keys("profiles", &p.kind, &p.backend);
    let store: ProfileStoreConfig =
        serde_json::from_value(value).map_err(|e| backend_error("profiles", e))?;
    if p.timeout.is_zero() {
        return Err(invalid("profiles.timeout", "must be longer than zero"));
    }
    Ok(ProfileSettings {
        store,
        timeout: p.timeout,
        save,
        cache_capacity: p.cache_capacity,
        cache_ttl: p.cache_ttl,
        save_queue: p.save_queue.max(1),
    })
}

pub(super) fn events(e: &EventsSection, state_dir: &Path) -> Result<EventSettings, ConfigError> {
    let endpoint = e
        .endpoint
        .as_deref()
        .filter(|s| !s.is_empty())
        .map(|s| super::parse_http_url("events.endpoint", s))
        .transpose()?;
    let kind = e
        .queue
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or(DEFAULT_QUEUE_TYPE)
        .to_string();
    let mut map = e.queue.clone();
    map.remove("type");
    if kind == "disk" && !map.contains_key("path") {
        map.insert(
            "path".into(),
            Value::String(state_dir.join("events").to_string_lossy().into_owned()),
        );
    }
    let value = normalize_backend_keys("events.queue", &kind, &map);
    let queue: EventQueueConfig =
        serde_json::from_value(value).map_err(|err| backend_error("events.queue", err))?;
    let spool = if kind == "disk" {
        None
    } else {
        let value = serde_json::json!({
            "type": "disk",
            "path": state_dir.join("spool").to_string_lossy(),
        });
        Some(serde_json::from_value(value).map_err(|err| backend_error("events.queue", err))?)
    };
    let ack = match e.ack.as_str() {
        "durable" => AckMode::Durable,
        "fast" => AckMode::Fast,
        other => {
            return Err(invalid(
                "events.ack",
                format!("{other:?} (expected \"durable\" or \"fast\")"),
            ))
        }
    };
    if e.ack_timeout.is_zero() {
        return Err(invalid("events.ack_timeout", "must be longer than zero"));
    }
    if e.relay.max_body_bytes == 0 {
        return Err(invalid("events.relay.max_body_bytes", "must be at least 1"));
    }
    if e.relay.max_visitors == 0 {
        return Err(invalid("events.relay.max_visitors", "must be at least 1"));
    }
    Ok(EventSettings {
        endpoint,
        queue,
        spool,
        channel_capacity: e.channel_capacity.max(1),
        ack,
        ack_timeout: e.ack_timeout,
        channel_max_bytes: e.channel_max_bytes.max(1),
        relay: super::RelaySettings {
            max_body_bytes: e.relay.max_body_bytes,
            max_visitors: e.relay.max_visitors,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The repository's documented configuration file.
    fn documented() -> config::Config {
        let text = include_str!("../../config.toml");
        config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .unwrap()
    }

    /// The dotted paths of every key with a value (unset options and empty lists left out).
    fn key_paths(prefix: &str, v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    key_paths(&path, v, out);
                }
            }
            Value::Null => {}
            Value::Array(a) if a.is_empty() => {}
            _ => {
                out.insert(prefix.to_string());
            }
        }
    }

    #[test]
    fn config_toml_shows_exactly_the_built_in_defaults() {
        let parsed: RawConfig = documented().try_deserialize().unwrap();
        assert_eq!(
            parsed,
            RawConfig::default(),
            "a value in config.toml differs from its built-in default"
        );
        let (mut written, mut defaults) = (BTreeSet::new(), BTreeSet::new());
        key_paths("", &documented().try_deserialize().unwrap(), &mut written);
        key_paths(
            "",
            &serde_json::to_value(RawConfig::default()).unwrap(),
            &mut defaults,
        );
        assert_eq!(
            written, defaults,
            "config.toml shows every key that has a built-in default, and only those"
        );
    }
}
