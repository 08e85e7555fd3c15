//! The `[api.batch]`, `[api.notifications]` and `[api.odp]` sections: the bounds of
//! `POST /v1/batch`, the switch and subscriber bound of `GET /v1/notifications/event-stream`,
//! and how ODP (segments for decide, `POST /v1/send-odp-event`) is reached, as written and as
//! validated; plus the per-request bounds of `[api]` (decisions per request, profile size).

use super::raw::ApiSection;
use super::{invalid, ConfigError};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// `[api.batch]` as written.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSection {
    /// Most operations one batch may carry (more: 422).
    pub max_operations: usize,
    /// Operations of one batch served at the same time.
    pub max_concurrency: usize,
}

impl Default for BatchSection {
    fn default() -> Self {
        // The Agent's defaults (`server.batchRequests`).
        Self {
            max_operations: 500,
            max_concurrency: 10,
        }
    }
}

/// `[api.notifications]` as written.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NotificationsSection {
    /// Serve the event stream (off, as in the Agent: it shows user ids and attributes).
    pub enabled: bool,
    /// Most event-stream clients connected at once (more: 503).
    pub max_subscribers: usize,
    /// Notifications a slow client may fall behind by before it misses some.
    pub buffer: usize,
}

impl Default for NotificationsSection {
    fn default() -> Self {
        Self {
            enabled: false,
            max_subscribers: 64,
            buffer: 1024,
        }
    }
}

/// `[api.odp]` as written.
#[derive(Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OdpSection {
    /// Use the ODP integration a datafile declares (off: ODP calls answer "ODP is not enabled").
    pub enabled: bool,
    /// Send ODP requests here instead of the datafile's host ("" = the datafile's).
    pub host: String,
    /// Where fetched segments are kept: "memory" (per daemon) or a `redis://` / `rediss://` URL
    /// (shared by daemons and Agents on that Redis; keys `fs_user_id-$-<user>` as the Agent's).
    pub segments_cache: String,
    /// A prefix for the Redis segment keys ("" = the Agent's keys exactly).
    pub segments_cache_prefix: String,
    /// Users whose qualified segments are kept in memory.
    pub segments_cache_size: u64,
    #[serde(with = "humantime_serde")]
    pub segments_cache_timeout: Duration,
    /// ODP events waiting to be sent (more: 503).
    pub events_queue: usize,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for OdpSection {
    fn default() -> Self {
        // The Agent's `client.odp` defaults.
        Self {
            enabled: true,
            host: String::new(),
            segments_cache: "memory".into(),
            segments_cache_prefix: String::new(),
            segments_cache_size: 10_000,
            segments_cache_timeout: Duration::from_secs(600),
            events_queue: 10_000,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// The validated `[api.odp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OdpSettings {
    pub enabled: bool,
    pub host: Option<String>,
    pub segments_cache: SegmentsCacheConfig,
    pub segments_cache_size: u64,
    pub segments_cache_timeout: Duration,
    pub events_queue: usize,
    pub request_timeout: Duration,
}

impl Default for OdpSettings {
    fn default() -> Self {
        let o = OdpSection::default();
        Self {
            enabled: o.enabled,
            host: None,
            segments_cache: SegmentsCacheConfig::Memory,
            segments_cache_size: o.segments_cache_size,
            segments_cache_timeout: o.segments_cache_timeout,
            events_queue: o.events_queue,
            request_timeout: o.request_timeout,
        }
    }
}

/// Where fetched ODP segments are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SegmentsCacheConfig {
    Memory,
    Redis { url: String, prefix: String },
}

/// Validates `[api.odp]`.
pub fn validate_odp(o: &OdpSection) -> Result<OdpSettings, ConfigError> {
    let host = o.host.trim().trim_end_matches('/');
    if !(host.is_empty() || host.starts_with("http://") || host.starts_with("https://")) {
        return Err(invalid("api.odp.host", "must be an http(s) URL or \"\""));
    }
    let cache = o.segments_cache.trim();
    let segments_cache = if cache == "memory" {
        SegmentsCacheConfig::Memory
    } else if url::Url::parse(cache)
        .is_ok_and(|u| matches!(u.scheme(), "redis" | "rediss") && u.host_str().is_some())
    {
        SegmentsCacheConfig::Redis {
            url: cache.to_string(),
            prefix: o.segments_cache_prefix.clone(),
        }
    } else {
        return Err(invalid(
            "api.odp.segments_cache",
            "must be \"memory\" or a redis:// or rediss:// URL",
        ));
    };
    Ok(OdpSettings {
        enabled: o.enabled,
        host: (!host.is_empty()).then(|| host.to_string()),
        segments_cache,
        segments_cache_size: o.segments_cache_size,
        segments_cache_timeout: o.segments_cache_timeout,
        events_queue: positive("api.odp.events_queue", o.events_queue)?,
        request_timeout: o.request_timeout,
    })
}

/// The validated bounds of the Agent endpoints that take many operations or hold connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentApiSettings {
    pub batch_max_operations: usize,
    pub batch_max_concurrency: usize,
    pub notifications_enabled: bool,
    pub notifications_max_subscribers: usize,
    pub notifications_buffer: usize,
    /// Most decisions one activate or decide request may make.
    pub max_decisions_per_request: usize,
    /// Most entries of a profile written with `/v1/save`.
    pub max_profile_entries: usize,
    /// Most bytes (as JSON) of a profile written with `/v1/save`.
    pub max_profile_bytes: usize,
}

impl Default for AgentApiSettings {
    fn default() -> Self {
        let api = ApiSection::default();
        let (b, n) = (&api.batch, &api.notifications);
        Self {
            batch_max_operations: b.max_operations,
            batch_max_concurrency: b.max_concurrency,
            notifications_enabled: n.enabled,
            notifications_max_subscribers: n.max_subscribers,
            notifications_buffer: n.buffer,
            max_decisions_per_request: api.max_decisions_per_request,
            max_profile_entries: api.max_profile_entries,
            max_profile_bytes: api.max_profile_bytes,
        }
    }
}

fn positive(key: &str, v: usize) -> Result<usize, ConfigError> {
    if v > 0 {
        Ok(v)
    } else {
        Err(invalid(key, "must be greater than zero"))
    }
}

/// Validates the bounds of `[api]` and its batch and notification sections.
pub fn validate(api: &ApiSection) -> Result<AgentApiSettings, ConfigError> {
    let (batch, notifications) = (&api.batch, &api.notifications);
    Ok(AgentApiSettings {
        batch_max_operations: positive("api.batch.max_operations", batch.max_operations)?,
        batch_max_concurrency: positive("api.batch.max_concurrency", batch.max_concurrency)?,
        notifications_enabled: notifications.enabled,
        notifications_max_subscribers: positive(
            "api.notifications.max_subscribers",
            notifications.max_subscribers,
        )?,
        notifications_buffer: positive("api.notifications.buffer", notifications.buffer)?,
        max_decisions_per_request: positive(
            "api.max_decisions_per_request",
            api.max_decisions_per_request,
        )?,
        max_profile_entries: positive("api.max_profile_entries", api.max_profile_entries)?,
        max_profile_bytes: positive("api.max_profile_bytes", api.max_profile_bytes)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_bounds_are_refused_by_name() {
        let api = ApiSection {
            batch: BatchSection {
                max_concurrency: 0,
                ..BatchSection::default()
            },
            ..ApiSection::default()
        };
        let e = validate(&api).unwrap_err();
        assert!(e.to_string().contains("api.batch.max_concurrency"), "{e}");
        let api = ApiSection {
            notifications: NotificationsSection {
                max_subscribers: 0,
                ..NotificationsSection::default()
            },
            ..ApiSection::default()
        };
        let e = validate(&api).unwrap_err();
        assert!(
            e.to_string().contains("api.notifications.max_subscribers"),
            "{e}"
        );
        let api = ApiSection {
            max_decisions_per_request: 0,
            ..ApiSection::default()
        };
        let e = validate(&api).unwrap_err();
        assert!(
            e.to_string().contains("api.max_decisions_per_request"),
            "{e}"
        );
        assert_eq!(
            validate(&ApiSection::default()).unwrap(),
            AgentApiSettings::default()
        );
    }
}
