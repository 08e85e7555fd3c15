//! Parsing the Optimizely v1 event payloads SDKs post to the relay into event records.
//!
//! A payload (`{account_id, project_id, revision, client_name, client_version, anonymize_ip,
//! enrich_decisions, visitors: [...]}`, any SDK, one event or a batch) is checked against the
//! v1 shape and split into one [`UserEvent`] per visitor, each carrying the payload's
//! [`RelayEnvelope`] and the visitor object byte for byte as the SDK sent it, so the flusher can
//! aggregate visitors of many SDK instances into one request whose visitors equal what each SDK
//! would have sent. The check only refuses what the event API could not take (missing or
//! mistyped required fields); fields it does not know are kept, not refused.

use super::events::{EventContext, EventKind, RelayEnvelope, RelayedVisitor, UserEvent};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};
use std::sync::Arc;

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RelayError {
    /// Not a v1 payload (the message says where).
    #[error("invalid event payload: {0}")]
    Malformed(String),
    /// More visitors than one request may carry.
    #[error("event payload has {count} visitors (limit {max})")]
    TooManyVisitors { count: usize, max: usize },
}

/// The top level of a payload: the visitors as raw JSON, everything else as the envelope.
#[derive(Deserialize)]
struct Payload<'a> {
    #[serde(borrow)]
    visitors: Vec<&'a RawValue>,
    #[serde(flatten)]
    envelope: RelayEnvelope,
}

/// The parts of a visitor the event API requires (unknown fields are ignored here and kept in
/// the raw visitor).
#[derive(Deserialize)]
struct VisitorShape {
    visitor_id: String,
    #[serde(default, rename = "attributes")]
    _attributes: Option<Vec<AttributeShape>>,
    snapshots: Vec<SnapshotShape>,
}

#[derive(Deserialize)]
struct AttributeShape {
    #[serde(rename = "entity_id")]
    _entity_id: String,
    #[serde(rename = "key")]
    _key: String,
    #[serde(rename = "type")]
    _kind: String,
    #[serde(rename = "value")]
    _value: Value,
}

#[derive(Deserialize)]
struct SnapshotShape {
    #[serde(default, rename = "decisions")]
    _decisions: Option<Vec<DecisionShape>>,
    events: Vec<EventShape>,
}

#[derive(Deserialize)]
struct DecisionShape {
    #[serde(rename = "campaign_id")]
    _campaign_id: String,
    #[serde(rename = "experiment_id")]
    _experiment_id: String,
    #[serde(default, rename = "variation_id")]
    _variation_id: Option<String>,
    #[serde(default, rename = "metadata")]
    _metadata: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct EventShape {
    #[serde(rename = "entity_id")]
    _entity_id: String,
    #[serde(rename = "key")]
    _key: String,
    uuid: String,
    timestamp: u64,
    #[serde(default, rename = "revenue")]
    _revenue: Option<Number>,
    #[serde(default, rename = "value")]
    _value: Option<Number>,
    #[serde(default, rename = "tags")]
    _tags: Option<Map<String, Value>>,
}

/// Splits a v1 payload into one relayed event per visitor, in order. `region` picks the
/// flusher's default endpoint for them; at most `max_visitors` visitors are accepted.
pub fn parse(body: &[u8], max_visitors: usize, region: &str) -> Result<Vec<UserEvent>, RelayError> {
    if body.is_empty() {
        return Err(RelayError::Malformed("request body required (JSON)".into()));
    }
    let payload: Payload<'_> =
        serde_json::from_slice(body).map_err(|e| RelayError::Malformed(e.to_string()))?;
    if payload.visitors.is_empty() {
        return Err(RelayError::Malformed("visitors is empty".into()));
    }
    if payload.visitors.len() > max_visitors {
        return Err(RelayError::TooManyVisitors {
            count: payload.visitors.len(),
            max: max_visitors,
        });
    }
    let envelope = Arc::new(payload.envelope);
    let context = Arc::new(EventContext {
        account_id: envelope.account_id.clone(),
        project_id: envelope.project_id.clone().unwrap_or_default(),
        revision: envelope.revision.clone().unwrap_or_default(),
        anonymize_ip: envelope.anonymize_ip.unwrap_or(false),
        region: region.to_string(),
    });
    payload
        .visitors
        .iter()
        .enumerate()
        .map(|(i, raw)| relayed(i, raw, &envelope, &context))
        .collect()
}

/// One visitor, checked, as a relayed event.
fn relayed(
    i: usize,
    raw: &RawValue,
    envelope: &Arc<RelayEnvelope>,
    context: &Arc<EventContext>,
) -> Result<UserEvent, RelayError> {
    let shape: VisitorShape = serde_json::from_str(raw.get())
        .map_err(|e| RelayError::Malformed(format!("visitors[{i}]: {e}")))?;
    let mut first = None;
    for (s, snapshot) in shape.snapshots.iter().enumerate() {
        if snapshot.events.is_empty() {
            return Err(RelayError::Malformed(format!(
                "visitors[{i}].snapshots[{s}].events is empty"
            )));
        }
        first = first.or(snapshot.events.first());
    }
    let Some(first) = first else {
        return Err(RelayError::Malformed(format!(
            "visitors[{i}].snapshots is empty"
        )));
    };
    Ok(UserEvent {
        context: Arc::clone(context),
        visitor_id: shape.visitor_id.clone(),
        attributes: Vec::new(),
        uuid: first.uuid.clone(),
        timestamp: first.timestamp,
        event: EventKind::Relayed(RelayedVisitor {
            envelope: Arc::clone(envelope),
            visitor: raw.to_owned(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VISITOR: &str = r#"{"snapshots": [{"decisions": [{"campaign_id": "1", "experiment_id": "2", "variation_id": null, "metadata": {"flag_key": "f", "rule_key": "r", "rule_type": "experiment", "variation_key": "v", "enabled": true, "cmab_uuid": "c"}}], "events": [{"entity_id": "1", "uuid": "u-1", "key": "campaign_activated", "timestamp": 17}]}], "attributes": [{"entity_id": "$opt_bot_filtering", "key": "$opt_bot_filtering", "type": "custom", "value": false}], "visitor_id": "v\u00e9"}"#;

    fn payload(visitors: &str) -> String {
        format!(
            r#"{{"account_id": "1", "project_id": "2", "revision": "3", "client_name": "python-sdk", "client_version": "5.7.0", "anonymize_ip": true, "enrich_decisions": true, "visitors": [{visitors}], "future": {{"x": 1}}}}"#
        )
    }

    #[test]
    fn splits_into_visitors_kept_byte_for_byte() {
        let conv = r#"{"snapshots":[{"events":[{"entity_id":"9","uuid":"u-2","key":"buy","timestamp":18,"revenue":5,"value":1.5,"tags":{"revenue":5}}]}],"attributes":[],"visitor_id":"w"}"#;
        let events = parse(payload(&format!("{VISITOR}, {conv}")).as_bytes(), 10, "US").unwrap();
        assert_eq!(events.len(), 2);
        let EventKind::Relayed(v) = &events[0].event else {
            panic!("not relayed");
        };
        assert_eq!(v.visitor.get(), VISITOR);
        assert_eq!(v.envelope.client_name.as_deref(), Some("python-sdk"));
        assert_eq!(v.envelope.extra["future"], serde_json::json!({"x": 1}));
        assert_eq!(
            (events[0].visitor_id.as_str(), events[0].uuid.as_str()),
            ("vé", "u-1")
        );
        assert_eq!((events[1].uuid.as_str(), events[1].timestamp), ("u-2", 18));
        assert_eq!(events[0].context.revision, "3");
        assert!(events[0].context.anonymize_ip);
    }

    #[test]
    fn a_record_round_trips_byte_for_byte() {
        let events = parse(payload(VISITOR).as_bytes(), 10, "US").unwrap();
        let bytes = serde_json::to_vec(&events[0]).unwrap();
        let back: UserEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, events[0]);
        let EventKind::Relayed(v) = &back.event else {
            panic!("not relayed");
        };
        assert_eq!(v.visitor.get(), VISITOR);
    }

    #[test]
    fn malformed_payloads_say_what_is_wrong() {
        let cases = [
            ("", "body required"),
            ("[]", "invalid type"),
            (r#"{"visitors": []}"#, "missing field `account_id`"),
            (r#"{"account_id": "1"}"#, "missing field `visitors`"),
            (&payload("")[..], "visitors is empty"),
            (r#"{"visitors": [{}]}"#, "missing field `account_id`"),
            (
                r#"{"account_id": 1, "visitors": [{}]}"#,
                "invalid type: integer",
            ),
            (
                r#"{"account_id": "1", "visitors": [{}]}"#,
                "visitors[0]: missing field `visitor_id`",
            ),
            (
                r#"{"account_id": "1", "visitors": [{"visitor_id": "u", "snapshots": []}]}"#,
                "visitors[0].snapshots is empty",
            ),
            (
                r#"{"account_id": "1", "visitors": [{"visitor_id": "u", "snapshots": [{"events": []}]}]}"#,
                "events is empty",
            ),
            (
                r#"{"account_id": "1", "visitors": [{"visitor_id": "u", "snapshots": [{"events": [{"entity_id": "1", "key": "k", "uuid": "x", "timestamp": "now"}]}]}]}"#,
                "invalid type: string \"now\"",
            ),
            (
                r#"{"account_id": "1", "anonymize_ip": "yes", "visitors": [{}]}"#,
                "invalid type: string \"yes\", expected a boolean",
            ),
            (r#"{"account_id": "1", "visitors": "x"}"#, "invalid type"),
        ];
        for (body, want) in cases {
            let err = parse(body.as_bytes(), 10, "US").unwrap_err();
            assert!(
                matches!(&err, RelayError::Malformed(m) if m.contains(want)),
                "{body}: {err}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_input_is_an_answer_not_a_panic(s in ".{0,300}") {
            let _ = parse(s.as_bytes(), 10, "US");
        }

        #[test]
        fn any_visitor_text_round_trips(id in "[a-zA-Z0-9 _é✓-]{0,20}", ts in 0u64..u64::MAX) {
            let visitor = format!(
                r#"{{"visitor_id": "{id}", "snapshots": [{{"events": [{{"entity_id": "1", "key": "k", "uuid": "u", "timestamp": {ts}}}]}}]}}"#
            );
            let body = format!(r#"{{"account_id": "1", "visitors": [ {visitor} ]}}"#);
            let events = parse(body.as_bytes(), 10, "US").unwrap();
            let EventKind::Relayed(v) = &events[0].event else { panic!("not relayed") };
            proptest::prop_assert_eq!(v.visitor.get(), visitor.as_str());
            proptest::prop_assert_eq!(events[0].timestamp, ts);
        }
    }

    #[test]
    fn too_many_visitors() {
        let two = format!("{VISITOR},{VISITOR}");
        assert_eq!(
            parse(payload(&two).as_bytes(), 1, "US").unwrap_err(),
            RelayError::TooManyVisitors { count: 2, max: 1 }
        );
    }
}
