//! The configuration as written (TOML / environment), before validation.
//!
//! Backend-specific keys of `profiles` and `events.queue` are collected as a map and handed to
//! the backends crate's tagged config enums, whose `deny_unknown_fields` rejects keys that do not
//! apply to the chosen `type`.

use super::{invalid, ConfigError, EventSettings, ProfileSettings, SaveMode};
use backends::{EventQueueConfig, ProfileStoreConfig};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Built-in defaults, the same text the repository's `config.toml` documents.
const DEFAULTS: &str = r#"
state_dir = "state"
[server]
listen = "127.0.0.1:8080"
trust_forwarded_for = false
shutdown_grace = "10s"
max_body_bytes = 1048576
max_query_bytes = 8192
max_attributes = 100
header_read_timeout = "5s"
[datafile]
url_template = "https://cdn.optimizely.com/datafiles/{sdk_key}.json"
poll_interval = "60s"
fetch_timeout = "10s"
[admin]
[api]
enable_overrides = false
[log]
format = "human"
level = "info"
[profiles]
type = "memory"
timeout = "50ms"
save = "async"
cache_capacity = 0
cache_ttl = "30s"
save_queue = 10000
[events]
channel_capacity = 65536
[events.queue]
type = "disk"
[flusher]
batch_size = 500
flush_interval = "1s"
max_backoff = "60s"
max_request_bytes = 3500000
request_timeout = "10s"
concurrency = 4
metrics_listen = "127.0.0.1:9091"
"#;

/// The configuration file's shape.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    pub state_dir: PathBuf,
    pub server: ServerSection,
    pub datafile: DatafileSection,
    #[serde(default)]
    pub projects: Vec<DatafileSection>,
    pub admin: AdminSection,
    pub api: ApiSection,
    pub log: LogSection,
    pub profiles: ProfilesSection,
    pub events: EventsSection,
    pub flusher: FlusherSection,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

fn default_template() -> String {
    super::DEFAULT_DATAFILE_URL_TEMPLATE.to_string()
}
fn default_poll() -> Duration {
    Duration::from_secs(60)
}
fn default_fetch_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[datafile]` (the default project) and each `[[projects]]` entry.
#[derive(Debug, Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct DatafileSection {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub sdk_key: Option<String>,
    #[serde(default = "default_template")]
    pub url_template: String,
    #[serde(default = "default_poll", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_fetch_timeout", with = "humantime_serde")]
    pub fetch_timeout: Duration,
    #[serde(default)]
    pub cache_path: Option<PathBuf>,
    #[serde(default)]
    pub webhook_secret: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminSection {
    #[serde(default)]
    pub token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub enable_overrides: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: String,
    pub level: String,
}

/// `[profiles]`: service keys, plus the chosen backend's keys (collected in `backend`).
#[derive(Debug, Deserialize)]
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsSection {
    #[serde(default)]
    pub endpoint: Option<String>,
    pub channel_capacity: usize,
    pub queue: Map<String, Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlusherSection {
    #[serde(default)]
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
    pub metrics_listen: String,
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

/// Keys whose environment form must be read as a number / boolean / comma list.
const NUMERIC_KEYS: &[&str] = &["capacity", "pool_size", "max_bytes", "partitions"];
const BOOL_KEYS: &[&str] = &["cluster", "create_schema", "create"];
const LIST_KEYS: &[&str] = &["contact_points"];

pub(super) fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
) -> Result<RawConfig, ConfigError> {
    let mut b = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
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

pub(super) fn profiles(
    p: &ProfilesSection,
    state_dir: &Path,
) -> Result<ProfileSettings, ConfigError> {
    let _ = state_dir;
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
        .unwrap_or("disk")
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
    Ok(EventSettings {
        endpoint,
        queue,
        spool,
        channel_capacity: e.channel_capacity.max(1),
    })
}
