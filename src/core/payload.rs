//! Rendering user events into Optimizely v1 event-API payloads (`POST /v1/events`).
//!
//! Events are grouped by [`EventContext`] (account, project, revision, anonymize_ip, region) in
//! the order groups first appear; each group becomes one payload with one visitor per event.
//! Relayed visitors (posted by SDKs, see [`super::relay`]) are grouped by their payload's
//! envelope as well and rendered with that envelope and each visitor verbatim.

use super::events::{
    EventContext, EventKind, RelayEnvelope, UserEvent, VisitorAttribute, ACTIVATE_EVENT_KEY,
};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Number, Value};

/// The US event endpoint.
pub const US_EVENT_ENDPOINT: &str = "https://logx.optimizely.com/v1/events";
/// The EU event endpoint (datafiles with `region: "EU"`).
pub const EU_EVENT_ENDPOINT: &str = "https://eu.logx.optimizely.com/v1/events";

/// The default endpoint for a region.
pub fn endpoint_for_region(region: &str) -> &'static str {
    if region.eq_ignore_ascii_case("EU") {
        EU_EVENT_ENDPOINT
    } else {
        US_EVENT_ENDPOINT
    }
}

/// Who sends the events (`client_name` / `client_version` in the payload).
#[derive(Debug, Clone)]
pub struct Client<'a> {
    pub name: &'a str,
    pub version: &'a str,
}

/// The body of one v1 request.
#[derive(Debug, Serialize)]
pub struct EventBatch<'a> {
    pub account_id: &'a str,
    pub project_id: &'a str,
    pub revision: &'a str,
    pub client_name: &'a str,
    pub client_version: &'a str,
    pub anonymize_ip: bool,
    pub enrich_decisions: bool,
    pub visitors: Vec<Visitor<'a>>,
}

/// The body of one request of relayed visitors: the SDKs' shared envelope, then the visitors
/// exactly as they were posted.
#[derive(Debug, Serialize)]
pub struct RelayedBatch<'a> {
    #[serde(flatten)]
    pub envelope: &'a RelayEnvelope,
    pub visitors: Vec<&'a RawValue>,
}

/// The body of one request: the daemon's own events, or relayed visitors.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Body<'a> {
    Daemon(EventBatch<'a>),
    Relayed(RelayedBatch<'a>),
}

/// One visitor: one snapshot per event.
#[derive(Debug, Serialize)]
pub struct Visitor<'a> {
    pub snapshots: Vec<Snapshot<'a>>,
    pub attributes: &'a [VisitorAttribute],
    pub visitor_id: &'a str,
}

/// A snapshot: the decisions (impressions only) and the events.
#[derive(Debug, Serialize)]
pub struct Snapshot<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<[&'a super::events::ImpressionDecision; 1]>,
    pub events: [SnapshotEvent<'a>; 1],
}

/// One event of a snapshot.
#[derive(Debug, Serialize)]
pub struct SnapshotEvent<'a> {
    pub entity_id: &'a str,
    pub uuid: &'a str,
    pub key: &'a str,
    pub timestamp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revenue: Option<&'a Number>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<&'a Map<String, Value>>,
}

/// A rendered request: where to send it and what.
#[derive(Debug)]
pub struct RenderedBatch<'a> {
    pub context: &'a EventContext,
    pub batch: Body<'a>,
    /// Indexes of the events (into the rendered slice) this batch carries.
    pub events: Vec<usize>,
}

/// A daemon event's visitor (`None` for a relayed one, which is rendered verbatim).
fn visitor(event: &UserEvent) -> Option<Visitor<'_>> {
    let snapshot = match &event.event {
        EventKind::Relayed(_) => return None,
        EventKind::Impression(d) => Snapshot {
            decisions: Some([d]),
            events: [SnapshotEvent {
                entity_id: &d.campaign_id,
                uuid: &event.uuid,
                key: ACTIVATE_EVENT_KEY,
                timestamp: event.timestamp,
                revenue: None,
                value: None,
                tags: None,
            }],
        },
        EventKind::Conversion(c) => Snapshot {
            decisions: None,
            events: [SnapshotEvent {
                entity_id: &c.entity_id,
                uuid: &event.uuid,
                key: &c.key,
                timestamp: event.timestamp,
                revenue: c.revenue.as_ref(),
                value: c.value,
                tags: c.tags.as_ref(),
            }],
        },
    };
    Some(Visitor {
        snapshots: vec![snapshot],
        attributes: &event.attributes,
        visitor_id: &event.visitor_id,
    })
}

/// Whether `event` belongs in `batch`: the same context, and for relayed visitors the same
/// envelope (relayed and daemon events never share a request).
fn same_group(batch: &RenderedBatch<'_>, event: &UserEvent) -> bool {
    if *batch.context != *event.context {
        return false;
    }
    match (&batch.batch, &event.event) {
        (Body::Relayed(b), EventKind::Relayed(v)) => {
            std::ptr::eq(b.envelope, &*v.envelope) || *b.envelope == *v.envelope
        }
        (Body::Daemon(_), EventKind::Relayed(_)) | (Body::Relayed(_), _) => false,
        (Body::Daemon(_), _) => true,
    }
}

/// A new, empty batch for `event`'s group.
fn open_batch<'a>(event: &'a UserEvent, client: &Client<'a>) -> RenderedBatch<'a> {
    let c = &event.context;
    let batch = match &event.event {
        EventKind::Relayed(v) => Body::Relayed(RelayedBatch {
            envelope: &v.envelope,
            visitors: Vec::new(),
        }),
        _ => Body::Daemon(EventBatch {
            account_id: &c.account_id,
            project_id: &c.project_id,
            revision: &c.revision,
            client_name: client.name,
            client_version: client.version,
            anonymize_ip: c.anonymize_ip,
            enrich_decisions: true,
            visitors: Vec::new(),
        }),
    };
    RenderedBatch {
        context: c,
        batch,
        events: Vec::new(),
    }
}

/// Groups `events` by context and renders one batch per group, in first-seen order
/// (`RenderedBatch::events` are positions in the iteration).
pub fn render<'a, I>(events: I, client: &Client<'a>) -> Vec<RenderedBatch<'a>>
where
    I: IntoIterator<Item = &'a UserEvent>,
{
    let mut out: Vec<RenderedBatch<'a>> = Vec::new();
    for (i, event) in events.into_iter().enumerate() {
        let pos = match out.iter().position(|b| same_group(b, event)) {
            Some(p) => p,
            None => {
                out.push(open_batch(event, client));
                out.len() - 1
            }
        };
        let group = &mut out[pos];
        match (&mut group.batch, &event.event) {
            (Body::Relayed(b), EventKind::Relayed(v)) => b.visitors.push(&v.visitor),
            (Body::Daemon(b), _) => b.visitors.extend(visitor(event)),
            // `same_group` never puts a daemon event in a relayed batch.
            (Body::Relayed(_), _) => continue,
        }
        group.events.push(i);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::events::{Conversion, DecisionMetadata, ImpressionDecision};
    use serde_json::json;

    fn ctx(revision: &str) -> EventContext {
        EventContext {
            account_id: "1".into(),
            project_id: "2".into(),
            revision: revision.into(),
            anonymize_ip: true,
            region: "US".into(),
        }
    }

    fn impression(revision: &str, uuid: &str) -> UserEvent {
        UserEvent {
            context: ctx(revision).into(),
            visitor_id: "u".into(),
            attributes: vec![],
            uuid: uuid.into(),
            timestamp: 7,
            event: EventKind::Impression(ImpressionDecision {
                campaign_id: "10".into(),
                experiment_id: "11".into(),
                variation_id: Some("12".into()),
                metadata: DecisionMetadata {
                    flag_key: "".into(),
                    rule_key: "e".into(),
                    rule_type: "experiment".into(),
                    variation_key: "v".into(),
                    enabled: true,
                    cmab_uuid: None,
                },
            }),
        }
    }

    #[test]
    fn groups_by_context_and_shapes_the_v1_body() {
        let mut conv = impression("3", "c");
        conv.event = EventKind::Conversion(Conversion {
            entity_id: "99".into(),
            key: "buy".into(),
            revenue: Some(5.into()),
            value: None,
            tags: Some(json!({"revenue": 5}).as_object().unwrap().clone()),
        });
        let events = vec![impression("3", "a"), impression("4", "b"), conv];
        let client = Client {
            name: "bucketd",
            version: "0.1.0",
        };
        let batches = render(&events, &client);
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].events, vec![0, 2]);
        let body = serde_json::to_value(&batches[0].batch).unwrap();
        assert_eq!(body["enrich_decisions"], json!(true));
        assert_eq!(
            body["visitors"][0]["snapshots"][0]["events"][0]["key"],
            json!("campaign_activated")
        );
        assert_eq!(
            body["visitors"][0]["snapshots"][0]["events"][0]["entity_id"],
            json!("10")
        );
        assert_eq!(
            body["visitors"][0]["snapshots"][0]["decisions"][0]["metadata"]["rule_key"],
            json!("e")
        );
        let conv = &body["visitors"][1]["snapshots"][0];
        assert!(conv.get("decisions").is_none());
        assert_eq!(conv["events"][0]["revenue"], json!(5));
        assert!(conv["events"][0].get("value").is_none());
    }

    fn relayed(client_version: &str, visitor_id: &str) -> Vec<UserEvent> {
        let body = format!(
            r#"{{"account_id": "1", "project_id": "2", "revision": "3", "client_name": "python-sdk", "client_version": "{client_version}", "anonymize_ip": true, "enrich_decisions": true, "visitors": [{{"snapshots": [{{"events": [{{"entity_id": "9", "key": "buy", "uuid": "{visitor_id}", "timestamp": 1, "tags": {{"a": 1.50}}}}]}}], "attributes": [], "visitor_id": "{visitor_id}"}}]}}"#
        );
        super::super::relay::parse(body.as_bytes(), 10, "US").unwrap()
    }

    #[test]
    fn relayed_visitors_group_by_envelope_and_render_verbatim() {
        let mut events = relayed("5.7.0", "a");
        events.extend(relayed("5.6.0", "b"));
        events.extend(relayed("5.7.0", "c"));
        let mut daemon = impression("3", "d");
        daemon.context = events[0].context.clone();
        events.push(daemon);
        let client = Client {
            name: "bucketd",
            version: "0.1.0",
        };
        let batches = render(&events, &client);
        let groups: Vec<Vec<usize>> = batches.iter().map(|b| b.events.clone()).collect();
        assert_eq!(groups, vec![vec![0, 2], vec![1], vec![3]]);
        let body = String::from_utf8(serde_json::to_vec(&batches[0].batch).unwrap()).unwrap();
        assert!(body.starts_with(r#"{"account_id":"1","project_id":"2","revision":"3","client_name":"python-sdk","client_version":"5.7.0","anonymize_ip":true,"enrich_decisions":true,"visitors":[{"snapshots": [{"events": [{"entity_id": "9", "key": "buy", "uuid": "a", "timestamp": 1, "tags": {"a": 1.50}}]}], "attributes": [], "visitor_id": "a"},"#), "{body}");
        let daemon = serde_json::to_value(&batches[2].batch).unwrap();
        assert_eq!(daemon["client_name"], json!("bucketd"));
    }

    #[test]
    fn eu_endpoint() {
        assert_eq!(endpoint_for_region("EU"), EU_EVENT_ENDPOINT);
        assert_eq!(endpoint_for_region("US"), US_EVENT_ENDPOINT);
    }
}
