//! User events as values: impressions (a decision was shown) and conversions (`track`).
//!
//! Each event carries the routing fields of its project (account, project, revision,
//! anonymize_ip, region) so that it can travel through a queue as an opaque record and still be
//! rendered into the right v1 payload later (`payload`). These are plain records: they
//! know no project index; `emit` builds them from one.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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
    /// A visitor an SDK posted to the event relay, kept as it was sent (see [`super::relay`]).
    Relayed(RelayedVisitor),
}

/// The fields of a relayed v1 payload other than its visitors, as the SDK sent them: relayed
/// visitors share a request only when these are equal (and never with the daemon's own).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayEnvelope {
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymize_ip: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrich_decisions: Option<bool>,
    /// Any other top-level field, kept in the SDK's order.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One relayed visitor: its payload's envelope and the visitor object byte for byte as the SDK
/// sent it (stored as a JSON string in the record, checked to be JSON again when read back,
/// rendered verbatim).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RelayedVisitor {
    pub envelope: Arc<RelayEnvelope>,
    #[serde(with = "verbatim")]
    pub visitor: Box<RawValue>,
}

impl PartialEq for RelayedVisitor {
    fn eq(&self, other: &Self) -> bool {
        self.envelope == other.envelope && self.visitor.get() == other.visitor.get()
    }
}

/// A raw JSON value stored as a string (so it survives any container, internally tagged enums
/// included, byte for byte).
mod verbatim {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_json::value::RawValue;

    pub fn serialize<S: Serializer>(raw: &RawValue, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(raw.get())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<RawValue>, D::Error> {
        RawValue::from_string(String::deserialize(d)?).map_err(D::Error::custom)
    }
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
