//! User events as values: impressions (a decision was shown) and conversions (`track`).
//!
//! Each event carries the routing fields of its project (account, project, revision,
//! anonymize_ip, region) so that it can travel through a queue as an opaque record and still be
//! rendered into the right v1 payload later (`payload`). These are plain records: they
//! know no project index; `emit` builds them from one.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};
use std::sync::Arc;

/// The attribute id/key under which bot filtering travels.
pub const BOT_FILTERING_ATTRIBUTE: &str = "$opt_bot_filtering";
/// The snapshot event key of impressions.
pub const ACTIVATE_EVENT_KEY: &str = "campaign_activated";

/// Which project (and datafile revision) an event belongs to. Events with different contexts
/// never share a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EventContext {
    pub account_id: String,
    pub project_id: String,
    pub revision: String,
    pub anonymize_ip: bool,
    pub region: String,
}

/// A visitor attribute as the event API wants it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VisitorAttribute {
    pub entity_id: String,
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub value: Value,
}

/// The `metadata` of an impression decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionMetadata {
    pub flag_key: String,
    pub rule_key: String,
    pub rule_type: String,
    pub variation_key: String,
    pub enabled: bool,
    /// The prediction id of a CMAB answer (`decide` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmab_uuid: Option<String>,
}

/// An impression's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImpressionDecision {
    pub campaign_id: String,
    pub experiment_id: String,
    /// `null` unless the variation id is a numeric id string.
    pub variation_id: Option<String>,
    pub metadata: DecisionMetadata,
}

/// A conversion's event fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversion {
    pub entity_id: String,
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revenue: Option<Number>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventKind {
    Impression(ImpressionDecision),
    Conversion(Conversion),
}

/// One user event, ready to be queued and later rendered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserEvent {
    pub context: Arc<EventContext>,
    pub visitor_id: String,
    pub attributes: Vec<VisitorAttribute>,
    pub uuid: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp: u64,
    pub event: EventKind,
}

/// Supplies the unique id and time of each new event (kept outside the pure core).
pub trait EventStamp {
    /// A fresh uuid and the current time in milliseconds.
    fn stamp(&mut self) -> (String, u64);
}

impl<F: FnMut() -> (String, u64)> EventStamp for F {
    fn stamp(&mut self) -> (String, u64) {
        self()
    }
}
