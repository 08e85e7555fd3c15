//! Rendering user events into Optimizely v1 event-API payloads (`POST /v1/events`).
//!
//! Events are grouped by [`EventContext`] (account, project, revision, anonymize_ip, region) in
//! the order groups first appear; each group becomes one payload with one visitor per event.

use super::events::{EventContext, EventKind, UserEvent, VisitorAttribute, ACTIVATE_EVENT_KEY};
use serde::Serialize;
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
    pub batch: EventBatch<'a>,
    /// Indexes of the events (into the rendered slice) this batch carries.
    pub events: Vec<usize>,
}

fn visitor(event: &UserEvent) -> Visitor<'_> {
    let snapshot = match &event.event {
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
    Visitor {
        snapshots: vec![snapshot],
        attributes: &event.attributes,
        visitor_id: &event.visitor_id,
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
        let pos = match out.iter().position(|b| *b.context == *event.context) {
            Some(p) => p,
            None => {
                let c = &event.context;
                out.push(RenderedBatch {
                    context: c,
                    batch: EventBatch {
                        account_id: &c.account_id,
                        project_id: &c.project_id,
                        revision: &c.revision,
                        client_name: client.name,
                        client_version: client.version,
                        anonymize_ip: c.anonymize_ip,
                        enrich_decisions: true,
                        visitors: Vec::new(),
                    },
                    events: Vec::new(),
                });
                out.len() - 1
            }
        };
        out[pos].batch.visitors.push(visitor(event));
        out[pos].events.push(i);
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

    #[test]
    fn eu_endpoint() {
        assert_eq!(endpoint_for_region("EU"), EU_EVENT_ENDPOINT);
        assert_eq!(endpoint_for_region("US"), US_EVENT_ENDPOINT);
    }
}
