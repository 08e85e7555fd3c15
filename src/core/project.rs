//! The parsed, indexed project: what a decision reads. Built once per datafile.
//!
//! Lookups by key and by id are hash-map hits into flat vectors; cross references (traffic
//! slices, group membership, rollout rules, audience ids) are resolved to indexes at build time,
//! so a decision never searches the datafile. Where the datafile is ambiguous (duplicate ids or
//! keys) the later entry wins, as in the official SDKs.

use super::audience::{Audience, AudienceRefs, Tree};
use super::bucketing::Slice;
use super::datafile::{self, DatafileError, RawDatafile, RawExperiment, RawTrafficAllocation};
use super::events::EventContext;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::sync::Arc;

/// Index of an experiment (or rollout rule) in [`ProjectConfig::experiments`].
pub type ExperimentIdx = usize;

/// A variation of an experiment.
#[derive(Debug, Clone)]
pub struct Variation {
    pub id: String,
    pub key: String,
    pub feature_enabled: bool,
    /// Variable id → value as written in the datafile.
    pub variables: FxHashMap<String, String>,
}

/// An experiment or a rollout rule.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub id: String,
    pub key: String,
    pub layer_id: String,
    pub status: String,
    pub variations: Vec<Variation>,
    pub traffic: Vec<Slice<usize>>,
    /// `None` means everyone qualifies.
    pub audiences: Option<AudienceRefs>,
    /// The audience ids as written, for configuration output.
    pub audience_ids: Vec<String>,
    /// `audienceConditions` as written, for configuration output.
    pub audience_conditions: Option<Value>,
    /// Whitelist: user id → variation key.
    pub forced_variations: FxHashMap<String, String>,
    /// The mutually exclusive group this experiment belongs to (policy `random` only).
    pub group: Option<usize>,
    pub kind: Option<String>,
    /// Whether a feature flag lists this experiment (a feature test).
    pub is_feature_test: bool,
    /// Whether this is a rollout (delivery) rule rather than an experiment.
    pub is_rollout_rule: bool,
}

impl Experiment {
    /// Only `Running` experiments bucket anyone.
    pub fn is_running(&self) -> bool {
        self.status == "Running"
    }

    /// The variation index with this id.
    pub fn variation_by_id(&self, id: &str) -> Option<usize> {
        self.variations.iter().position(|v| v.id == id)
    }

    /// The variation index with this key (the last one when keys repeat).
    pub fn variation_by_key(&self, key: &str) -> Option<usize> {
        self.variations.iter().rposition(|v| v.key == key)
    }
}

/// A group of experiments; only `random` groups are mutually exclusive.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub policy: String,
    /// Slices resolve to experiment indexes.
    pub traffic: Vec<Slice<ExperimentIdx>>,
}

/// The type of a flag variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableType {
    String,
    Integer,
    Double,
    Boolean,
    Json,
    /// A type this engine does not know; its value is returned as a string, as the SDKs do.
    Other,
}

impl VariableType {
    fn parse(kind: &str, sub_type: Option<&str>) -> Self {
        match (kind, sub_type) {
            ("string", Some("json")) | ("json", _) => Self::Json,
            ("string", _) => Self::String,
            ("integer", _) => Self::Integer,
            ("double", _) => Self::Double,
            ("boolean", _) => Self::Boolean,
            _ => Self::Other,
        }
    }

    /// The name used in configuration output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String | Self::Other => "string",
            Self::Integer => "integer",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::Json => "json",
        }
    }
}

/// A flag variable definition.
#[derive(Debug, Clone)]
pub struct Variable {
    pub id: String,
    pub key: String,
    pub kind: VariableType,
    pub default_value: String,
}

/// A feature flag.
#[derive(Debug, Clone)]
pub struct FeatureFlag {
    pub id: String,
    pub key: String,
    /// Feature-test experiments in order; unknown ids were rejected at build time.
    pub experiments: Vec<ExperimentIdx>,
    pub rollout: Option<usize>,
    pub rollout_id: String,
    /// Variables by key, in first-seen order.
    pub variables: Vec<Variable>,
    /// Every variation of every rule of the flag, first occurrence of each id.
    pub variations: Vec<(ExperimentIdx, usize)>,
}

/// A rollout: delivery rules in order, the last is "Everyone Else".
#[derive(Debug, Clone)]
pub struct Rollout {
    pub id: String,
    pub rules: Vec<ExperimentIdx>,
}

/// A declared attribute.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub id: String,
    pub key: String,
}

/// A declared conversion event.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub key: String,
    pub experiment_ids: Vec<String>,
}

/// A datafile parsed and indexed for decisions.
#[derive(Debug, Clone)]
pub struct ProjectConfig {
    pub version: String,
    pub account_id: String,
    pub project_id: String,
    pub revision: String,
    pub sdk_key: Option<String>,
    pub environment_key: Option<String>,
    /// `US` unless the datafile says otherwise.
    pub region: String,
    pub anonymize_ip: bool,
    pub bot_filtering: Option<bool>,
    pub send_flag_decisions: bool,
    pub experiments: Vec<Experiment>,
    pub groups: Vec<Group>,
    pub audiences: Vec<Audience>,
    pub attributes: Vec<Attribute>,
    pub events: Vec<Event>,
    pub flags: Vec<FeatureFlag>,
    pub rollouts: Vec<Rollout>,
    /// The datafile text this was built from.
    pub datafile: String,
    experiment_by_id: FxHashMap<String, ExperimentIdx>,
    experiment_by_key: FxHashMap<String, ExperimentIdx>,
    audience_by_id: FxHashMap<String, usize>,
    attribute_by_key: FxHashMap<String, usize>,
    event_by_key: FxHashMap<String, usize>,
    flag_by_key: FxHashMap<String, usize>,
    /// Variation id → where its variable values live (the last definition wins).
    variable_usage: FxHashMap<String, (ExperimentIdx, usize)>,
    /// Experiments in the order the SDKs iterate them (top level, rollout rules, groups).
    experiment_order: Vec<ExperimentIdx>,
    /// What every event of this datafile shares, built once (events hold a reference).
    event_context: Arc<EventContext>,
}

/// Builds `(index → position)` with "later wins" semantics while keeping first positions.
fn upsert<T>(items: &mut Vec<T>, index: &mut FxHashMap<String, usize>, id: &str, item: T) -> usize {
    if let Some(&pos) = index.get(id) {
        items[pos] = item;
        pos
    } else {
        items.push(item);
        index.insert(id.to_string(), items.len() - 1);
        items.len() - 1
    }
}

impl ProjectConfig {
    /// Parses and indexes a datafile.
    pub fn parse(bytes: &[u8]) -> Result<Self, DatafileError> {
        let raw = datafile::parse_raw(bytes)?;
        let text = String::from_utf8_lossy(bytes).into_owned();
        Self::build(raw, text)
    }

    fn build(raw: RawDatafile, text: String) -> Result<Self, DatafileError> {
        let mut audiences = Vec::new();
        let mut audience_by_id = FxHashMap::default();
        for (i, a) in raw.audiences.iter().enumerate() {
            let path = format!("audiences[{i}].conditions");
            let Value::String(s) = &a.conditions else {
                return Err(DatafileError::BadConditions {
                    path,
                    message: "expected a JSON string".into(),
                });
            };
            let parsed: Value =
                serde_json::from_str(s).map_err(|e| DatafileError::BadConditions {
                    path,
                    message: e.to_string(),
                })?;
            let audience = Audience::compile(a.id.clone(), a.name.clone(), s.clone(), &parsed);
            upsert(&mut audiences, &mut audience_by_id, &a.id, audience);
        }
        for a in &raw.typed_audiences {
            let text = a.conditions.to_string();
            let audience = Audience::compile(a.id.clone(), a.name.clone(), text, &a.conditions);
            upsert(&mut audiences, &mut audience_by_id, &a.id, audience);
        }

        // Experiments: top level, then rollout rules, then grouped ones (later ids override).
        let mut staged: Vec<(&RawExperiment, Option<usize>)> = Vec::new();
        let mut experiment_by_id: FxHashMap<String, usize> = FxHashMap::default();
        for e in &raw.experiments {
            upsert(&mut staged, &mut experiment_by_id, &e.id, (e, None));
        }
        for r in &raw.rollouts {
            for e in &r.experiments {
                upsert(&mut staged, &mut experiment_by_id, &e.id, (e, None));
            }
        }
        let mut group_by_id: FxHashMap<String, usize> = FxHashMap::default();
        let mut raw_groups = Vec::new();
        for g in &raw.groups {
            upsert(&mut raw_groups, &mut group_by_id, &g.id, g);
        }
        for (gi, g) in raw_groups.iter().enumerate() {
            let group = (g.policy == "random").then_some(gi);
            for e in &g.experiments {
                upsert(&mut staged, &mut experiment_by_id, &e.id, (e, group));
            }
        }

        let resolve_audience = |v: &Value| -> Tree<Option<usize>> {
            Tree::Leaf(v.as_str().and_then(|id| audience_by_id.get(id).copied()))
        };
        let mut experiments: Vec<Experiment> = staged
            .iter()
            .map(|(e, group)| compile_experiment(e, *group, &resolve_audience))
            .collect();

        let groups = raw_groups
            .iter()
            .map(|g| Group {
                id: g.id.clone(),
                policy: g.policy.clone(),
                traffic: slices(&g.traffic_allocation, |id| {
                    experiment_by_id.get(id).copied()
                }),
            })
            .collect();

        let mut experiment_by_key = FxHashMap::default();
        for (i, e) in experiments.iter().enumerate() {
            experiment_by_key.insert(e.key.clone(), i);
        }

        let mut rollouts = Vec::new();
        let mut rollout_by_id: FxHashMap<String, usize> = FxHashMap::default();
        for r in &raw.rollouts {
            let mut rules: Vec<ExperimentIdx> = Vec::new();
            for e in &r.experiments {
                if let Some(&idx) = experiment_by_id.get(&e.id) {
                    if !rules.contains(&idx) {
                        experiments[idx].is_rollout_rule = true;
                        rules.push(idx);
                    }
                }
            }
            upsert(
                &mut rollouts,
                &mut rollout_by_id,
                &r.id,
                Rollout {
                    id: r.id.clone(),
                    rules,
                },
            );
        }

        let mut flags = Vec::new();
        let mut flag_by_key: FxHashMap<String, usize> = FxHashMap::default();
        for (fi, f) in raw.feature_flags.iter().enumerate() {
            let mut rule_idx = Vec::new();
            for (j, id) in f.experiment_ids.iter().enumerate() {
                let idx = *experiment_by_id
                    .get(id)
                    .ok_or_else(|| DatafileError::Dangling {
                        path: format!("featureFlags[{fi}].experimentIds[{j}]"),
                        message: format!("no experiment with id {id:?}"),
                    })?;
                experiments[idx].is_feature_test = true;
                rule_idx.push(idx);
            }
            let rollout =
                if f.rollout_id.is_empty() {
                    None
                } else {
                    Some(*rollout_by_id.get(&f.rollout_id).ok_or_else(|| {
                        DatafileError::Dangling {
                            path: format!("featureFlags[{fi}].rolloutId"),
                            message: format!("no rollout with id {:?}", f.rollout_id),
                        }
                    })?)
                };
            let rollout_rules: &[ExperimentIdx] = rollout.map_or(&[], |r| &rollouts[r].rules);
            // Feature rollouts: the flag's "Everyone Else" variation joins `feature_rollout` rules.
            let everyone_else = rollout_rules
                .last()
                .and_then(|&r| experiments[r].variations.first().cloned());
            if let Some(ee) = everyone_else {
                for &idx in &rule_idx {
                    if experiments[idx].kind.as_deref() == Some("feature_rollout") {
                        let exp = &mut experiments[idx];
                        exp.variations.push(ee.clone());
                        exp.traffic.push(Slice {
                            end: Some(10_000.0),
                            entity_id: ee.id.clone(),
                            entity: Some(exp.variations.len() - 1),
                        });
                    }
                }
            }
            let mut variations: Vec<(ExperimentIdx, usize)> = Vec::new();
            for &r in rule_idx.iter().chain(rollout_rules) {
                for (vi, v) in experiments[r].variations.iter().enumerate() {
                    if !variations
                        .iter()
                        .any(|&(e, i)| experiments[e].variations[i].id == v.id)
                    {
                        variations.push((r, vi));
                    }
                }
            }
            let mut variables: Vec<Variable> = Vec::new();
            for v in &f.variables {
                let var = Variable {
                    id: v.id.clone(),
                    key: v.key.clone(),
                    kind: VariableType::parse(&v.kind, v.sub_type.as_deref()),
                    default_value: v.default_value.clone(),
                };
                match variables.iter_mut().find(|x| x.key == v.key) {
                    Some(existing) => *existing = var,
                    None => variables.push(var),
                }
            }
            upsert(
                &mut flags,
                &mut flag_by_key,
                &f.key,
                FeatureFlag {
                    id: f.id.clone(),
                    key: f.key.clone(),
                    experiments: rule_idx,
                    rollout,
                    rollout_id: f.rollout_id.clone(),
                    variables,
                    variations,
                },
            );
        }

        let mut variable_usage = FxHashMap::default();
        for (ei, e) in experiments.iter().enumerate() {
            for (vi, v) in e.variations.iter().enumerate() {
                variable_usage.insert(v.id.clone(), (ei, vi));
            }
        }

        let mut attributes = Vec::new();
        let mut attribute_by_key = FxHashMap::default();
        for a in &raw.attributes {
            let attr = Attribute {
                id: a.id.clone(),
                key: a.key.clone(),
            };
            upsert(&mut attributes, &mut attribute_by_key, &a.key, attr);
        }
        let mut events = Vec::new();
        let mut event_by_key = FxHashMap::default();
        for e in &raw.events {
            let ev = Event {
                id: e.id.clone(),
                key: e.key.clone(),
                experiment_ids: e.experiment_ids.clone(),
            };
            upsert(&mut events, &mut event_by_key, &e.key, ev);
        }

        let experiment_order = (0..experiments.len()).collect();
        let region = raw
            .region
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| "US".into());
        let event_context = Arc::new(EventContext {
            account_id: raw.account_id.clone(),
            project_id: raw.project_id.clone(),
            revision: raw.revision.clone(),
            anonymize_ip: raw.anonymize_ip,
            region: region.clone(),
        });
        Ok(Self {
            version: raw.version.unwrap_or_default(),
            account_id: raw.account_id,
            project_id: raw.project_id,
            revision: raw.revision,
            sdk_key: raw.sdk_key,
            environment_key: raw.environment_key,
            region,
            anonymize_ip: raw.anonymize_ip,
            bot_filtering: raw.bot_filtering,
            send_flag_decisions: raw.send_flag_decisions,
            experiments,
            groups,
            audiences,
            attributes,
            events,
            flags,
            rollouts,
            datafile: text,
            experiment_by_id,
            experiment_by_key,
            audience_by_id,
            attribute_by_key,
            event_by_key,
            flag_by_key,
            variable_usage,
            experiment_order,
            event_context,
        })
    }

    /// The context of events produced with this datafile (shared, not copied per event).
    pub fn event_context(&self) -> Arc<EventContext> {
        Arc::clone(&self.event_context)
    }

    /// The experiment (or rule) with this key.
    pub fn experiment_by_key(&self, key: &str) -> Option<ExperimentIdx> {
        self.experiment_by_key.get(key).copied()
    }

    /// The experiment (or rule) with this id.
    pub fn experiment_by_id(&self, id: &str) -> Option<ExperimentIdx> {
        self.experiment_by_id.get(id).copied()
    }

    /// The flag with this key.
    pub fn flag_by_key(&self, key: &str) -> Option<usize> {
        self.flag_by_key.get(key).copied()
    }

    /// The audience with this id.
    pub fn audience_by_id(&self, id: &str) -> Option<usize> {
        self.audience_by_id.get(id).copied()
    }

    /// The declared attribute with this key.
    pub fn attribute_by_key(&self, key: &str) -> Option<&Attribute> {
        self.attribute_by_key.get(key).map(|&i| &self.attributes[i])
    }

    /// The declared event with this key.
    pub fn event_by_key(&self, key: &str) -> Option<&Event> {
        self.event_by_key.get(key).map(|&i| &self.events[i])
    }

    /// Where the variable values of the variation with this id live.
    pub fn variable_usage(&self, variation_id: &str) -> Option<&Variation> {
        self.variable_usage
            .get(variation_id)
            .map(|&(e, v)| &self.experiments[e].variations[v])
    }

    /// Experiments (including rollout rules) in the SDKs' iteration order.
    pub fn experiments_in_order(&self) -> impl Iterator<Item = (ExperimentIdx, &Experiment)> {
        self.experiment_order
            .iter()
            .map(|&i| (i, &self.experiments[i]))
    }

    /// Experiments that are not rollout rules.
    pub fn experiment_count(&self) -> usize {
        self.experiments
            .iter()
            .filter(|e| !e.is_rollout_rule)
            .count()
    }
}

fn slices<T>(raw: &[RawTrafficAllocation], resolve: impl Fn(&str) -> Option<T>) -> Vec<Slice<T>> {
    raw.iter()
        .map(|t| Slice {
            end: t.end_of_range,
            entity_id: t.entity_id.clone(),
            entity: if t.entity_id.is_empty() {
                None
            } else {
                resolve(&t.entity_id)
            },
        })
        .collect()
}

fn compile_experiment(
    e: &RawExperiment,
    group: Option<usize>,
    resolve_audience: &impl Fn(&Value) -> Tree<Option<usize>>,
) -> Experiment {
    let variations: Vec<Variation> = e
        .variations
        .iter()
        .map(|v| Variation {
            id: v.id.clone(),
            key: v.key.clone(),
            feature_enabled: v.feature_enabled,
            variables: v
                .variables
                .iter()
                .map(|u| (u.id.clone(), u.value.clone()))
                .collect(),
        })
        .collect();
    let traffic = slices(&e.traffic_allocation, |id| {
        variations.iter().position(|v| v.id == id)
    });
    let combined = match &e.audience_conditions {
        Some(Value::Null) | None => Value::Array(e.audience_ids.clone()),
        Some(c) => c.clone(),
    };
    let audiences = match &combined {
        Value::Array(a) if a.is_empty() => None,
        other => Some(Tree::compile(other, &mut |v: &Value| resolve_audience(v))),
    };
    Experiment {
        id: e.id.clone(),
        key: e.key.clone(),
        layer_id: e.layer_id.clone(),
        status: e.status.clone(),
        variations,
        traffic,
        audiences,
        audience_ids: e
            .audience_ids
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        audience_conditions: e.audience_conditions.clone().filter(|v| !v.is_null()),
        forced_variations: e
            .forced_variations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        group,
        kind: e.kind.clone(),
        is_feature_test: false,
        is_rollout_rule: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dangling_flag_references_name_their_path() {
        let err = ProjectConfig::parse(
            br#"{"version":"4","featureFlags":[{"id":"1","key":"f","experimentIds":["9"],"rolloutId":""}]}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            DatafileError::Dangling {
                path: "featureFlags[0].experimentIds[0]".into(),
                message: "no experiment with id \"9\"".into()
            }
        );
        let err = ProjectConfig::parse(
            br#"{"version":"4","featureFlags":[{"id":"1","key":"f","rolloutId":"77"}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, DatafileError::Dangling { path, .. } if path == "featureFlags[0].rolloutId")
        );
    }

    #[test]
    fn bad_legacy_conditions_are_an_error() {
        let err = ProjectConfig::parse(
            br#"{"version":"4","audiences":[{"id":"1","name":"a","conditions":"[\"and\", "}]}"#,
        )
        .unwrap_err();
        assert!(
            matches!(err, DatafileError::BadConditions { path, .. } if path == "audiences[0].conditions")
        );
    }

    #[test]
    fn typed_audiences_replace_legacy_ones() {
        let cfg = ProjectConfig::parse(
            br#"{"version":"4",
                "audiences":[{"id":"1","name":"legacy","conditions":"[\"or\"]"}],
                "typedAudiences":[{"id":"1","name":"typed","conditions":["and"]}]}"#,
        )
        .unwrap();
        assert_eq!(cfg.audiences.len(), 1);
        assert_eq!(cfg.audiences[0].name, "typed");
    }

    #[test]
    fn groups_bind_experiments_only_when_random() {
        let cfg = ProjectConfig::parse(
            br#"{"version":"4","groups":[
                {"id":"g1","policy":"random","trafficAllocation":[{"entityId":"e1","endOfRange":10000}],
                 "experiments":[{"id":"e1","key":"k1","status":"Running","layerId":"l"}]},
                {"id":"g2","policy":"overlapping","trafficAllocation":[],
                 "experiments":[{"id":"e2","key":"k2","status":"Running","layerId":"l"}]}]}"#,
        )
        .unwrap();
        let e1 = cfg.experiment_by_key("k1").unwrap();
        let e2 = cfg.experiment_by_key("k2").unwrap();
        assert_eq!(cfg.experiments[e1].group, Some(0));
        assert_eq!(cfg.experiments[e2].group, None);
        assert_eq!(cfg.groups[0].traffic[0].entity, Some(e1));
    }
}
