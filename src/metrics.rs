//! Prometheus metrics. Labels stay low-cardinality: route, status, outcome, backend, project,
//! reason — never user ids, keys or attribute values.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The HTTP routes, as the `route` label knows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Bucketer,
    Decide,
    Activate,
    Track,
    Override,
    Config,
    Datafile,
    Lookup,
    Save,
    Batch,
    Reset,
    Notifications,
    SendOdpEvent,
    Webhook,
    AdminDatafile,
    Health,
    Ready,
    Metrics,
    Events,
    OAuthToken,
    DatafileMirror,
    OpenApi,
    Other,
}

impl Route {
    /// Every route, in index order.
    pub const ALL: [Route; 23] = [
        Route::Bucketer,
        Route::Decide,
        Route::Activate,
        Route::Track,
        Route::Override,
        Route::Config,
        Route::Datafile,
        Route::Lookup,
        Route::Save,
        Route::Batch,
        Route::Reset,
        Route::Notifications,
        Route::SendOdpEvent,
        Route::Webhook,
        Route::AdminDatafile,
        Route::Health,
        Route::Ready,
        Route::Metrics,
        Route::Events,
        Route::OAuthToken,
        Route::DatafileMirror,
        Route::OpenApi,
        Route::Other,
    ];

    /// The `route` label value.
    pub fn name(self) -> &'static str {
        match self {
            Route::Bucketer => "bucketer",
            Route::Decide => "decide",
            Route::Activate => "activate",
            Route::Track => "track",
            Route::Override => "override",
            Route::Config => "config",
            Route::Datafile => "datafile",
            Route::Lookup => "lookup",
            Route::Save => "save",
            Route::Batch => "batch",
            Route::Reset => "reset",
            Route::Notifications => "notifications",
            Route::SendOdpEvent => "send_odp_event",
            Route::Webhook => "webhook",
            Route::AdminDatafile => "admin_datafile",
            Route::Health => "health",
            Route::Ready => "ready",
            Route::Metrics => "metrics",
            Route::Events => "events",
            Route::OAuthToken => "oauth_token",
            Route::DatafileMirror => "datafile_mirror",
            Route::OpenApi => "openapi",
            Route::Other => "other",
        }
    }
}

// "Handles": labelled metrics resolved once, for the request path (a labelled lookup hashes and
// locks on every call, which showed up in request profiles). `service::profiles` keeps its own
// (`HotHandles`) the same way.

/// The per-route handles.
struct RouteHandles {
    ok: IntCounter,
    latency: Histogram,
}

/// The handles of the `decisions` counters the request path bumps.
pub struct DecisionHandles {
    pub experiment_variation: IntCounter,
    pub experiment_none: IntCounter,
    pub flag_enabled: IntCounter,
    pub flag_disabled: IntCounter,
}

/// Every metric bucketd exports.
pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub decisions: IntCounterVec,
    pub datafile_revision: IntGaugeVec,
    pub datafile_loaded_at: GaugeVec,
    pub datafile_updates: IntCounterVec,
    pub profile_ops: IntCounterVec,
    pub profile_latency: HistogramVec,
    pub profile_saves_dropped: IntCounter,
    pub profile_breaker_open: IntGauge,
    pub profile_cache: IntCounterVec,
    pub events_enqueued: IntCounter,
    /// Events received by source: `daemon` (its own decisions and conversions) or `relay`
    /// (visitors SDKs posted to `POST /v1/events`).
    pub events_received: IntCounterVec,
    /// Relay payloads refused by reason (`malformed`, `too_large`, `too_many_visitors`).
    pub relay_rejected: IntCounterVec,
    pub events_dropped: IntCounterVec,
    pub events_published: IntCounterVec,
    pub events_spooled: IntCounter,
    pub queue_depth: IntGauge,
    pub flusher_batches: IntCounterVec,
    pub flusher_events: IntCounterVec,
    pub flusher_retries: IntCounter,
    pub flusher_dead_lettered: IntCounter,
    pub flusher_request_latency: HistogramVec,
    pub connections_open: IntGauge,
    pub connections_closed: IntCounterVec,
    pub up: Gauge,
    /// On-demand projects loaded now.
    pub dynamic_projects: IntGauge,
    /// On-demand project loads by outcome (loaded, unknown, unavailable, refused_too_many,
    /// evicted).
    pub dynamic_project_loads: IntCounterVec,
    /// Datafiles shared between replicas (`datafile.fanout`) by direction and outcome.
    pub fanout_messages: IntCounterVec,
    routes: Vec<RouteHandles>,
    /// Handles of the `decisions` counters.
    pub decision_handles: DecisionHandles,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5,
];

macro_rules! register {
    ($registry:expr, $metric:expr) => {{
        let m = $metric;
        // ok: names are static and unique; registering cannot collide.
        let _ = $registry.register(Box::new(m.clone()));
        m
    }};
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    // ok: static, valid metric names and label names.
    IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|_| unreachable_metric())
}

fn unreachable_metric<T>() -> T {
    // Metric construction only fails on invalid static names, which tests would catch.
    panic!("invalid metric definition")
}

fn histogram(name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .unwrap_or_else(|_| unreachable_metric())
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let r = Registry::new();
        let int_counter = |name: &str, help: &str| {
            IntCounter::new(name, help).unwrap_or_else(|_| unreachable_metric())
        };
        let http_requests = register!(
            r,
            counter_vec(
                "bucketd_http_requests_total",
                "HTTP requests by route and status",
                &["route", "status"]
            )
        );
        let http_latency = register!(
            r,
            histogram(
                "bucketd_http_request_duration_seconds",
                "HTTP request latency by route",
                &["route"]
            )
        );
        let decisions = register!(
            r,
            counter_vec(
                "bucketd_decisions_total",
                "Decisions by kind and outcome",
                &["kind", "outcome"]
            )
        );
        let routes = Route::ALL
            .iter()
            .map(|r| RouteHandles {
                ok: http_requests.with_label_values(&[r.name(), "200"]),
                latency: http_latency.with_label_values(&[r.name()]),
            })
            .collect();
        let d = |kind: &str, outcome: &str| decisions.with_label_values(&[kind, outcome]);
        let decision_handles = DecisionHandles {
            experiment_variation: d("experiment", "variation"),
            experiment_none: d("experiment", "none"),
            flag_enabled: d("flag", "enabled"),
            flag_disabled: d("flag", "disabled"),
        };
        Self {
            http_requests,
            http_latency,
            decisions,
            datafile_revision: register!(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "bucketd_datafile_revision",
                        "Revision of the datafile in use (0 if not numeric)"
                    ),
                    &["project"]
                )
                .unwrap_or_else(|_| unreachable_metric())
            ),
            datafile_loaded_at: register!(
                r,
                GaugeVec::new(
                    Opts::new(
                        "bucketd_datafile_loaded_timestamp_seconds",
                        "When the datafile in use was loaded (age = now - this)"
                    ),
                    &["project"]
                )
                .unwrap_or_else(|_| unreachable_metric())
            ),
            datafile_updates: register!(
                r,
                counter_vec(
                    "bucketd_datafile_updates_total",
                    "Datafile load attempts by outcome",
                    &["project", "outcome"]
                )
            ),
            profile_ops: register!(
                r,
                counter_vec(
                    "bucketd_profile_operations_total",
                    "Profile store operations by outcome",
                    &["backend", "op", "outcome"]
                )
            ),
            profile_latency: register!(
                r,
                histogram(
                    "bucketd_profile_operation_duration_seconds",
                    "Profile store latency",
                    &["backend", "op"]
                )
            ),
            profile_saves_dropped: register!(
                r,
                int_counter(
                    "bucketd_profile_saves_dropped_total",
                    "Write-behind profile saves dropped because the save queue was full"
                )
            ),
            profile_breaker_open: register!(
                r,
                IntGauge::new(
                    "bucketd_profile_breaker_open",
                    "1 while the profile store circuit breaker is open"
                )
                .unwrap_or_else(|_| unreachable_metric())
            ),
            profile_cache: register!(
                r,
                counter_vec(
                    "bucketd_profile_cache_total",
                    "Profile read-cache lookups",
                    &["outcome"]
                )
            ),
            events_enqueued: register!(
                r,
                int_counter(
                    "bucketd_events_enqueued_total",
                    "Events handed to the event producer"
                )
            ),
            events_received: register!(
                r,
                counter_vec(
                    "bucketd_events_received_total",
                    "Events received, by source (daemon: its own; relay: posted by SDKs)",
                    &["source"]
                )
            ),
            relay_rejected: register!(
                r,
                counter_vec(
                    "bucketd_relay_payloads_rejected_total",
                    "Event payloads POST /v1/events refused, by reason",
                    &["reason"]
                )
            ),
            events_dropped: register!(
                r,
                counter_vec(
                    "bucketd_events_dropped_total",
                    "Events dropped, by reason",
                    &["reason"]
                )
            ),
            events_published: register!(
                r,
                counter_vec(
                    "bucketd_events_published_total",
                    "Events written to the event queue",
                    &["backend"]
                )
            ),
            events_spooled: register!(
                r,
                int_counter(
                    "bucketd_events_spooled_total",
                    "Events written to the local spool while the queue was unavailable"
                )
            ),
            queue_depth: register!(
                r,
                IntGauge::new(
                    "bucketd_event_queue_depth",
                    "Records waiting in the event queue (when the backend tells)"
                )
                .unwrap_or_else(|_| unreachable_metric())
            ),
            flusher_batches: register!(
                r,
                counter_vec(
                    "bucketd_flusher_batches_total",
                    "Event API requests by outcome",
                    &["outcome"]
                )
            ),
            flusher_events: register!(
                r,
                counter_vec(
                    "bucketd_flusher_events_total",
                    "Events handled by the flusher by outcome",
                    &["outcome"]
                )
            ),
            flusher_retries: register!(
                r,
                int_counter("bucketd_flusher_retries_total", "Event API request retries")
            ),
            flusher_dead_lettered: register!(
                r,
                int_counter(
                    "bucketd_flusher_dead_lettered_total",
                    "Events the endpoint rejected, written to the dead letter"
                )
            ),
            flusher_request_latency: register!(
                r,
                histogram(
                    "bucketd_flusher_request_duration_seconds",
                    "Event API request latency",
                    &["outcome"]
                )
            ),
            connections_open: register!(
                r,
                IntGauge::new("bucketd_connections_open", "HTTP connections open")
                    .unwrap_or_else(|_| unreachable_metric())
            ),
            connections_closed: register!(
                r,
                counter_vec(
                    "bucketd_connections_closed_total",
                    "HTTP connections the server closed or refused, by reason (shed, no_request, idle, evicted)",
                    &["reason"]
                )
            ),
            up: register!(
                r,
                Gauge::new("bucketd_up", "1 while the daemon runs")
                    .unwrap_or_else(|_| unreachable_metric())
            ),
            dynamic_projects: register!(
                r,
                IntGauge::new("bucketd_dynamic_projects", "On-demand projects loaded")
                    .unwrap_or_else(|_| unreachable_metric())
            ),
            dynamic_project_loads: register!(
                r,
                counter_vec(
                    "bucketd_dynamic_project_loads_total",
                    "On-demand project loads and evictions by outcome",
                    &["outcome"]
                )
            ),
            fanout_messages: register!(
                r,
                counter_vec(
                    "bucketd_fanout_messages_total",
                    "Datafile announcements between replicas by direction and outcome",
                    &["direction", "outcome"]
                )
            ),
            registry: r,
            routes,
            decision_handles,
        }
    }

    /// Counts a connection the server closed or refused.
    pub fn connection_closed(&self, reason: &str) {
        self.connections_closed.with_label_values(&[reason]).inc();
    }

    /// Counts one HTTP request and its latency.
    /// `status` is the 3-digit code (`StatusCode::as_str`).
    pub fn http_request(&self, route: Route, status: &str, seconds: f64) {
        let Some(h) = self.routes.get(route as usize) else {
            return;
        };
        if status == "200" {
            h.ok.inc();
        } else {
            self.http_requests
                .with_label_values(&[route.name(), status])
                .inc();
        }
        h.latency.observe(seconds);
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new();
        m.http_requests
            .with_label_values(&["bucketer", "200"])
            .inc();
        m.events_dropped
            .with_label_values(&["channel_full"])
            .inc_by(3);
        let text = m.render();
        assert!(text.contains("bucketd_http_requests_total{route=\"bucketer\",status=\"200\"} 1"));
        assert!(text.contains("bucketd_events_dropped_total{reason=\"channel_full\"} 3"));
    }
}
