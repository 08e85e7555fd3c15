//! The `OptimizelyConfig` view of a project (what the SDKs' `get_optimizely_config` and the
//! Agent's `GET /v1/config` return): experiments, features with their experiment and delivery
//! rules, variables and audiences, keyed for lookup.

use super::audience::Tree;
use super::project::{Experiment, FeatureFlag, ProjectConfig};
use super::variables::typed_value;
use serde_json::{json, Map, Value};

fn audiences_text(config: &ProjectConfig, e: &Experiment) -> String {
    fn render(config: &ProjectConfig, t: &Tree<Option<usize>>, top: bool) -> String {
        let name = |a: &Option<usize>| match a.and_then(|i| config.audiences.get(i)) {
            Some(aud) => format!("\"{}\"", aud.name),
            None => "\"(unknown audience)\"".to_string(),
        };
        let join = |items: &[Tree<Option<usize>>], op: &str| {
            let parts: Vec<String> = items.iter().map(|i| render(config, i, false)).collect();
            let s = parts.join(&format!(" {op} "));
            if top || parts.len() < 2 {
                s
            } else {
                format!("({s})")
            }
        };
        match t {
            Tree::Leaf(a) => name(a),
            Tree::And(items) => join(items, "AND"),
            Tree::Or(items) => join(items, "OR"),
            Tree::Not(Some(inner)) => format!("NOT {}", render(config, inner, false)),
            Tree::Not(None) | Tree::Invalid => String::new(),
        }
    }
    e.audiences
        .as_ref()
        .map_or(String::new(), |t| render(config, t, true))
}

fn variables_map(
    config: &ProjectConfig,
    flag: Option<&FeatureFlag>,
    variation: &super::project::Variation,
) -> Value {
    let mut out = Map::new();
    if let Some(flag) = flag {
        for var in &flag.variables {
            let raw = if variation.feature_enabled {
                variation
                    .variables
                    .get(&var.id)
                    .unwrap_or(&var.default_value)
            } else {
                &var.default_value
            };
            let _ = typed_value(raw, var.kind);
            out.insert(
                var.key.clone(),
                json!({"id": var.id, "key": var.key, "type": var.kind.as_str(), "value": raw}),
            );
        }
    }
    let _ = config;
    Value::Object(out)
}

fn experiment_json(config: &ProjectConfig, e: &Experiment, flag: Option<&FeatureFlag>) -> Value {
    let variations: Map<String, Value> = e
        .variations
        .iter()
        .map(|v| {
            (
                v.key.clone(),
                json!({
                    "id": v.id,
                    "key": v.key,
                    "featureEnabled": v.feature_enabled,
                    "variablesMap": variables_map(config, flag, v),
                }),
            )
        })
        .collect();
    json!({
        "id": e.id,
        "key": e.key,
        "audiences": audiences_text(config, e),
        "variationsMap": variations,
    })
}

/// Renders the OptimizelyConfig object.
pub fn render(config: &ProjectConfig) -> Value {
    let flag_of = |idx: usize| config.flags.iter().find(|f| f.experiments.contains(&idx));
    let mut experiments = Map::new();
    for (i, e) in config.experiments_in_order() {
        if !e.is_rollout_rule {
            experiments.insert(e.key.clone(), experiment_json(config, e, flag_of(i)));
        }
    }
    let mut features = Map::new();
    for f in &config.flags {
        let rules: Vec<Value> = f
            .experiments
            .iter()
            .map(|&i| experiment_json(config, &config.experiments[i], Some(f)))
            .collect();
        let delivery: Vec<Value> = f
            .rollout
            .map(|r| {
                config.rollouts[r]
                    .rules
                    .iter()
                    .map(|&i| experiment_json(config, &config.experiments[i], Some(f)))
                    .collect()
            })
            .unwrap_or_default();
        let experiments_map: Map<String, Value> = f
            .experiments
            .iter()
            .map(|&i| {
                (
                    config.experiments[i].key.clone(),
                    experiment_json(config, &config.experiments[i], Some(f)),
                )
            })
            .collect();
        let variables: Map<String, Value> = f
            .variables
            .iter()
            .map(|v| {
                (
                    v.key.clone(),
                    json!({"id": v.id, "key": v.key, "type": v.kind.as_str(), "value": v.default_value}),
                )
            })
            .collect();
        features.insert(
            f.key.clone(),
            json!({
                "id": f.id,
                "key": f.key,
                "experimentRules": rules,
                "deliveryRules": delivery,
                "variablesMap": variables,
                "experimentsMap": experiments_map,
            }),
        );
    }
    json!({
        "environmentKey": config.environment_key.clone().unwrap_or_default(),
        "sdkKey": config.sdk_key.clone().unwrap_or_default(),
        "revision": config.revision,
        "experimentsMap": experiments,
        "featuresMap": features,
        "attributes": config.attributes.iter().map(|a| json!({"id": a.id, "key": a.key})).collect::<Vec<_>>(),
        "audiences": config.audiences.iter().map(|a| json!({"id": a.id, "name": a.name, "conditions": a.conditions})).collect::<Vec<_>>(),
        "events": config.events.iter().map(|e| json!({"id": e.id, "key": e.key, "experimentIds": e.experiment_ids})).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_experiments_features_and_audience_text() {
        let cfg = ProjectConfig::parse(include_bytes!("../../examples/datafile.json")).unwrap();
        let v = render(&cfg);
        assert_eq!(v["revision"], json!("1"));
        assert!(
            v["experimentsMap"]["checkout_flow_experiment"]["variationsMap"]["control"].is_object()
        );
        assert!(v["experimentsMap"].get("everyone_else").is_none());
        assert_eq!(
            v["experimentsMap"]["platinum_pricing_test"]["audiences"],
            json!("\"Platinum tier\"")
        );
        let f = &v["featuresMap"]["new_checkout"];
        assert_eq!(f["deliveryRules"].as_array().unwrap().len(), 2);
        assert_eq!(
            f["experimentRules"][0]["variationsMap"]["on"]["variablesMap"]["button_text"]["value"],
            json!("Pay now")
        );
        assert_eq!(f["variablesMap"]["theme"]["type"], json!("json"));
    }
}
