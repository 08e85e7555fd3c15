//! Building user events from a project: the impression a decision emits and the conversion a
//! `track` call emits, with the visitor attributes both record and the SDKs' tag rules.

use super::events::{
    Conversion, DecisionMetadata, EventKind, EventStamp, ImpressionDecision, UserEvent,
    VisitorAttribute, BOT_FILTERING_ATTRIBUTE,
};
use super::project::{Experiment, ProjectConfig, Variation};
use super::user::{finite_number, Attributes, RESERVED_ATTRIBUTE_PREFIX};
use super::variables::parse_double;
use serde_json::{Map, Number, Value};

/// The visitor attributes an event records: valid values of declared attributes (by id), `$opt_`
/// control attributes (by key), then `$opt_bot_filtering` when the datafile sets it.
pub fn visitor_attributes(
    config: &ProjectConfig,
    attributes: &Attributes,
) -> Vec<VisitorAttribute> {
    let mut out = Vec::new();
    for (key, value) in attributes {
        let valid = match value {
            Value::String(_) | Value::Bool(_) => true,
            Value::Number(_) => finite_number(value).is_some(),
            _ => false,
        };
        if !valid {
            continue;
        }
        let entity_id = match config.attribute_by_key(key) {
            Some(a) => a.id.clone(),
            None if key.starts_with(RESERVED_ATTRIBUTE_PREFIX) => key.clone(),
            None => continue,
        };
        out.push(VisitorAttribute {
            entity_id,
            key: key.clone(),
            kind: "custom".into(),
            value: value.clone(),
        });
    }
    if let Some(b) = config.bot_filtering {
        out.push(VisitorAttribute {
            entity_id: BOT_FILTERING_ATTRIBUTE.into(),
            key: BOT_FILTERING_ATTRIBUTE.into(),
            kind: "custom".into(),
            value: Value::Bool(b),
        });
    }
    out
}

fn is_numeric_id(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// What an impression is about.
pub struct Impression<'c> {
    /// The rule's (or holdout's) id; empty for a decision with no rule (e.g. a flag-level forced
    /// decision or no rollout).
    pub experiment_id: &'c str,
    /// The rule's layer id: the campaign when not empty (holdouts have none), else the
    /// experiment id is.
    pub layer_id: &'c str,
    pub variation: Option<&'c Variation>,
    /// Empty for `activate`.
    pub flag_key: &'c str,
    pub rule_key: &'c str,
    /// `experiment`, `feature-test`, `rollout` or `holdout`.
    pub rule_type: &'c str,
    pub enabled: bool,
}

impl<'c> Impression<'c> {
    /// The experiment and layer ids of an impression about `rule` (none: empty ids).
    pub fn ids_of(rule: Option<&'c Experiment>) -> (&'c str, &'c str) {
        rule.map_or(("", ""), |e| (e.id.as_str(), e.layer_id.as_str()))
    }
}

/// Builds an impression event.
pub fn impression(
    config: &ProjectConfig,
    user_id: &str,
    attributes: &Attributes,
    what: Impression<'_>,
    stamp: &mut dyn EventStamp,
) -> UserEvent {
    let (experiment_id, layer_id) = (what.experiment_id, what.layer_id);
    let campaign_id = if !layer_id.is_empty() {
        layer_id
    } else {
        experiment_id
    };
    let (variation_id, variation_key) = what
        .variation
        .map_or(("", ""), |v| (v.id.as_str(), v.key.as_str()));
    let (uuid, timestamp) = stamp.stamp();
    UserEvent {
        context: config.event_context(),
        visitor_id: user_id.to_string(),
        attributes: visitor_attributes(config, attributes),
        uuid,
        timestamp,
        event: EventKind::Impression(ImpressionDecision {
            campaign_id: campaign_id.to_string(),
            experiment_id: experiment_id.to_string(),
            variation_id: is_numeric_id(variation_id).then(|| variation_id.to_string()),
            metadata: DecisionMetadata {
                flag_key: what.flag_key.to_string(),
                rule_key: what.rule_key.to_string(),
                rule_type: what.rule_type.to_string(),
                variation_key: variation_key.to_string(),
                enabled: what.enabled,
                cmab_uuid: None,
            },
        }),
    }
}

/// `revenue` counts only when it is an integer (not a boolean, not a float, not a string).
pub fn revenue_of(tags: &Map<String, Value>) -> Option<Number> {
    match tags.get("revenue") {
        Some(Value::Number(n)) if !n.is_f64() => Some(n.clone()),
        _ => None,
    }
}

/// `value` counts when it is a number or a numeric string and is finite.
pub fn numeric_value_of(tags: &Map<String, Value>) -> Option<f64> {
    let f = match tags.get("value")? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => match parse_double(s)? {
            Value::Number(n) => n.as_f64()?,
            _ => return None,
        },
        _ => return None,
    };
    f.is_finite().then_some(f)
}

/// The SDKs drop `null` values of the keys `revenue`, `value`, `tags` and `decisions` from every
/// object of the payload, tags included.
fn clean_tags(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, x| {
                !(x.is_null() && matches!(k.as_str(), "revenue" | "value" | "tags" | "decisions"))
            });
            m.values_mut().for_each(clean_tags);
        }
        Value::Array(a) => a.iter_mut().for_each(clean_tags),
        _ => {}
    }
}

/// Builds a conversion event for a declared event; `None` for an unknown event key.
pub fn conversion(
    config: &ProjectConfig,
    event_key: &str,
    user_id: &str,
    attributes: &Attributes,
    tags: Option<&Map<String, Value>>,
    stamp: &mut dyn EventStamp,
) -> Option<UserEvent> {
    let event = config.event_by_key(event_key)?;
    let tags = tags.map(|t| {
        let mut v = Value::Object(t.clone());
        clean_tags(&mut v);
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    });
    let (uuid, timestamp) = stamp.stamp();
    Some(UserEvent {
        context: config.event_context(),
        visitor_id: user_id.to_string(),
        attributes: visitor_attributes(config, attributes),
        uuid,
        timestamp,
        event: EventKind::Conversion(Conversion {
            entity_id: event.id.clone(),
            key: event.key.clone(),
            revenue: tags.as_ref().and_then(revenue_of),
            value: tags.as_ref().and_then(numeric_value_of),
            tags,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tags(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn revenue_and_value_rules() {
        assert_eq!(
            revenue_of(&tags(json!({"revenue": 4200}))),
            Some(4200.into())
        );
        assert_eq!(revenue_of(&tags(json!({"revenue": 42.5}))), None);
        assert_eq!(revenue_of(&tags(json!({"revenue": "42"}))), None);
        assert_eq!(revenue_of(&tags(json!({"revenue": true}))), None);
        assert_eq!(numeric_value_of(&tags(json!({"value": 3}))), Some(3.0));
        assert_eq!(numeric_value_of(&tags(json!({"value": "1.5"}))), Some(1.5));
        assert_eq!(numeric_value_of(&tags(json!({"value": "1,234"}))), None);
        assert_eq!(numeric_value_of(&tags(json!({"value": "nan"}))), None);
        assert_eq!(numeric_value_of(&tags(json!({"value": false}))), None);
    }

    #[test]
    fn control_and_declared_attributes_only() {
        let cfg = ProjectConfig::parse(
            br#"{"version":"4","botFiltering":false,"attributes":[{"id":"111","key":"tier"}]}"#,
        )
        .unwrap();
        let attrs = json!({"tier":"gold","unknown":1,"$opt_bucketing_id":"b","tier2":[1],"x":null})
            .as_object()
            .unwrap()
            .clone();
        let list = visitor_attributes(&cfg, &attrs);
        let keys: Vec<_> = list
            .iter()
            .map(|a| (a.entity_id.as_str(), a.key.as_str()))
            .collect();
        assert_eq!(
            keys,
            vec![
                ("111", "tier"),
                ("$opt_bucketing_id", "$opt_bucketing_id"),
                ("$opt_bot_filtering", "$opt_bot_filtering")
            ]
        );
        assert_eq!(list[2].value, json!(false));
    }
}
