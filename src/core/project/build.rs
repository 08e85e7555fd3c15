//! Compiling a raw datafile into a [`ProjectConfig`], one step per datafile section: audiences,
//! experiments and groups, rollouts, flags (with the feature-rollout injection), variable usage,
//! holdouts (running ones only, local ones attached to the rules they name), each flag's
//! rendered variable answers, attributes and events, then the project settings. Each step reads the raw datafile and what
//! the earlier steps resolved; where ids or keys repeat, the later entry wins but keeps the first
//! position, as in the official SDKs.

use super::{
    Attribute, Event, Experiment, ExperimentIdx, FeatureFlag, Group, Holdout, HoldoutIdx,
    ProjectConfig, Rollout, Variable, VariableAnswers, Variation,
};
use crate::core::audience::{Audience, AudienceRefs, Tree};
use crate::core::bucketing::Slice;
use crate::core::datafile::{
    DatafileError, RawDatafile, RawExperiment, RawHoldout, RawTrafficAllocation,
};
use crate::core::events::EventContext;
use crate::core::variables::VariableType;
use rustc_hash::FxHashMap;
use serde_json::Value;
use std::sync::Arc;

/// Items indexed by a key with "later wins" semantics that keep the first position.
struct Indexed<T> {
    items: Vec<T>,
    by_key: FxHashMap<String, usize>,
}

impl<T> Indexed<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            by_key: FxHashMap::default(),
        }
    }

    /// Inserts `item` under `key`, replacing (in place) an earlier item with the same key.
    fn upsert(&mut self, key: &str, item: T) -> usize {
        if let Some(&pos) = self.by_key.get(key) {
            self.items[pos] = item;
            pos
        } else {
            self.items.push(item);
            self.by_key.insert(key.to_string(), self.items.len() - 1);
            self.items.len() - 1
        }
    }

    fn get(&self, key: &str) -> Option<usize> {
        self.by_key.get(key).copied()
    }
}

/// What the experiment step resolves: every experiment and rollout rule, and the groups.
struct Rules {
    experiments: Vec<Experiment>,
    experiment_by_id: FxHashMap<String, ExperimentIdx>,
    groups: Vec<Group>,
}

/// Builds the project from a parsed datafile (`text` is kept for `/v1/datafile`).
pub(super) fn build(raw: RawDatafile, text: String) -> Result<ProjectConfig, DatafileError> {
    let audiences = audiences(&raw)?;
    let Rules {
        mut experiments,
        experiment_by_id,
        groups,
    } = experiments_and_groups(&raw, &audiences);
    let experiment_by_key = experiments
        .iter()
        .enumerate()
        .map(|(i, e)| (e.key.clone(), i))
        .collect();
    let rollouts = rollouts(&raw, &mut experiments, &experiment_by_id);
    let mut flags = flags(&raw, &mut experiments, &experiment_by_id, &rollouts)?;
    let variable_usage = variable_usage(&experiments);
    let (holdouts, global_holdouts) =
        holdouts(&raw, &audiences, &mut experiments, &experiment_by_id);
    for flag in &mut flags.items {
        flag.render_answers(&experiments, &variable_usage);
    }
    let attributes = attributes(&raw);
    let events = events(&raw);

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
    Ok(ProjectConfig {
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
        audiences: audiences.items,
        attributes: attributes.items,
        events: events.items,
        flags: flags.items,
        rollouts: rollouts.items,
        holdouts,
        global_holdouts,
        datafile: text,
        experiment_by_id,
        experiment_by_key,
        attribute_by_key: attributes.by_key,
        event_by_key: events.by_key,
        flag_by_key: flags.by_key,
        variable_usage,
        experiment_order,
        event_context,
    })
}

/// Legacy audiences (conditions in a JSON string), then typed ones, which replace them by id.
fn audiences(raw: &RawDatafile) -> Result<Indexed<Audience>, DatafileError> {
    let mut audiences = Indexed::new();
    for (i, a) in raw.audiences.iter().enumerate() {
        let path = format!("audiences[{i}].conditions");
        let Value::String(s) = &a.conditions else {
            return Err(DatafileError::BadConditions {
                path,
                message: "expected a JSON string".into(),
            });
        };
        let parsed: Value = serde_json::from_str(s).map_err(|e| DatafileError::BadConditions {
            path,
            message: e.to_string(),
        })?;
        let audience = Audience::compile(a.id.clone(), a.name.clone(), s.clone(), &parsed);
        audiences.upsert(&a.id, audience);
    }
    for a in &raw.typed_audiences {
        let text = a.conditions.to_string();
        let audience = Audience::compile(a.id.clone(), a.name.clone(), text, &a.conditions);
        audiences.upsert(&a.id, audience);
    }
    Ok(audiences)
}

/// Experiments: top level, then rollout rules, then grouped ones (later ids override); groups
/// with their traffic resolved to experiment indexes.
fn experiments_and_groups(raw: &RawDatafile, audiences: &Indexed<Audience>) -> Rules {
    let mut staged: Indexed<(&RawExperiment, Option<usize>)> = Indexed::new();
    for e in &raw.experiments {
        staged.upsert(&e.id, (e, None));
    }
    for r in &raw.rollouts {
        for e in &r.experiments {
            staged.upsert(&e.id, (e, None));
        }
    }
    let mut raw_groups = Indexed::new();
    for g in &raw.groups {
        raw_groups.upsert(&g.id, g);
    }
    for (gi, g) in raw_groups.items.iter().enumerate() {
        let group = (g.policy == "random").then_some(gi);
        for e in &g.experiments {
            staged.upsert(&e.id, (e, group));
        }
    }

    let experiments = staged
        .items
        .iter()
        .map(|(e, group)| compile_experiment(e, *group, audiences))
        .collect();
    let groups = raw_groups
        .items
        .iter()
        .map(|g| Group {
            id: g.id.clone(),
            policy: g.policy.clone(),
            traffic: slices(&g.traffic_allocation, |id| staged.get(id)),
        })
        .collect();
    Rules {
        experiments,
        experiment_by_id: staged.by_key,
        groups,
    }
}

/// Rollouts: their rules in order (each listed once), marked as rollout rules.
fn rollouts(
    raw: &RawDatafile,
    experiments: &mut [Experiment],
    experiment_by_id: &FxHashMap<String, ExperimentIdx>,
) -> Indexed<Rollout> {
    let mut rollouts = Indexed::new();
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
        rollouts.upsert(
            &r.id,
            Rollout {
                id: r.id.clone(),
                rules,
            },
        );
    }
    rollouts
}

/// Flags: feature tests and rollout resolved (a dangling reference is an error), the
/// feature-rollout injection, the flag's variations and its variables.
fn flags(
    raw: &RawDatafile,
    experiments: &mut [Experiment],
    experiment_by_id: &FxHashMap<String, ExperimentIdx>,
    rollouts: &Indexed<Rollout>,
) -> Result<Indexed<FeatureFlag>, DatafileError> {
    let mut flags = Indexed::new();
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
        let rollout = if f.rollout_id.is_empty() {
            None
        } else {
            Some(
                rollouts
                    .get(&f.rollout_id)
                    .ok_or_else(|| DatafileError::Dangling {
                        path: format!("featureFlags[{fi}].rolloutId"),
                        message: format!("no rollout with id {:?}", f.rollout_id),
                    })?,
            )
        };
        let rollout_rules: &[ExperimentIdx] = rollout.map_or(&[], |r| &rollouts.items[r].rules);
        inject_everyone_else(experiments, &rule_idx, rollout_rules);
        let variations = flag_variations(experiments, rule_idx.iter().chain(rollout_rules));
        flags.upsert(
            &f.key,
            FeatureFlag {
                id: f.id.clone(),
                key: f.key.clone(),
                experiments: rule_idx,
                rollout,
                rollout_id: f.rollout_id.clone(),
                variables: flag_variables(f),
                variations,
                answers: VariableAnswers::default(),
            },
        );
    }
    Ok(flags)
}

/// Feature rollouts: the flag's "Everyone Else" variation (the first variation of its last
/// rollout rule) joins each feature-rollout rule, over the whole remaining range.
fn inject_everyone_else(
    experiments: &mut [Experiment],
    rules: &[ExperimentIdx],
    rollout_rules: &[ExperimentIdx],
) {
    let everyone_else = rollout_rules
        .last()
        .and_then(|&r| experiments[r].variations.first().cloned());
    let Some(ee) = everyone_else else { return };
    for &idx in rules {
        if experiments[idx].kind.as_deref() == Some("fr") {
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

/// Every variation of the given rules, first occurrence of each id.
fn flag_variations<'r>(
    experiments: &[Experiment],
    rules: impl Iterator<Item = &'r ExperimentIdx>,
) -> Vec<(ExperimentIdx, usize)> {
    let mut variations: Vec<(ExperimentIdx, usize)> = Vec::new();
    for &r in rules {
        for (vi, v) in experiments[r].variations.iter().enumerate() {
            if !variations
                .iter()
                .any(|&(e, i)| experiments[e].variations[i].id == v.id)
            {
                variations.push((r, vi));
            }
        }
    }
    variations
}

/// A flag's variables by key, in first-seen order (a repeated key replaces the earlier one).
fn flag_variables(f: &crate::core::datafile::RawFeatureFlag) -> Vec<Variable> {
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
    variables
}

/// Variation id → where its variable values live (the last definition wins).
fn variable_usage(experiments: &[Experiment]) -> FxHashMap<String, (ExperimentIdx, usize)> {
    let mut usage = FxHashMap::default();
    for (ei, e) in experiments.iter().enumerate() {
        for (vi, v) in e.variations.iter().enumerate() {
            usage.insert(v.id.clone(), (ei, vi));
        }
    }
    usage
}

/// Running holdouts: the global ones (`holdouts`, whose `includedRules` is ignored) in order,
/// then the local ones (`localHoldouts`; an entry without `includedRules` is skipped), each local
/// one appended to the holdout list of every known rule it names (once per mention). Returns the
/// holdouts and the indexes of the global ones.
fn holdouts(
    raw: &RawDatafile,
    audiences: &Indexed<Audience>,
    experiments: &mut [Experiment],
    experiment_by_id: &FxHashMap<String, ExperimentIdx>,
) -> (Vec<Holdout>, Vec<HoldoutIdx>) {
    let running = |h: &&RawHoldout| h.status == "Running";
    let mut holdouts: Vec<Holdout> = raw
        .holdouts
        .iter()
        .filter(running)
        .map(|h| compile_holdout(h, audiences))
        .collect();
    let global = (0..holdouts.len()).collect();
    for h in raw.local_holdouts.iter().filter(running) {
        let Some(rules) = &h.included_rules else {
            continue;
        };
        let idx = holdouts.len();
        holdouts.push(compile_holdout(h, audiences));
        for rule in rules.iter().filter_map(Value::as_str) {
            if let Some(&e) = experiment_by_id.get(rule) {
                experiments[e].holdouts.push(idx);
            }
        }
    }
    (holdouts, global)
}

fn compile_holdout(h: &RawHoldout, audiences: &Indexed<Audience>) -> Holdout {
    let variations: Vec<Variation> = h
        .variations
        .iter()
        .map(|v| Variation {
            id: v.id.clone(),
            key: v.key.clone(),
            feature_enabled: v.feature_enabled,
            variables: FxHashMap::default(),
        })
        .collect();
    // The SDK finds a holdout's variation in a map by id: a repeated id means the last one.
    let traffic = slices(&h.traffic_allocation, |id| {
        variations.iter().rposition(|v| v.id == id)
    });
    Holdout {
        id: h.id.clone(),
        key: h.key.clone(),
        variations,
        traffic,
        audiences: audience_refs(&h.audience_ids, h.audience_conditions.as_ref(), audiences),
        exclude_targeted_deliveries: h.exclude_targeted_deliveries,
    }
}

/// The audience combination of a rule or holdout: `audienceConditions` when present and not
/// `null`, else `audienceIds`; `None` (everyone) when that is an empty list.
fn audience_refs(
    audience_ids: &[Value],
    audience_conditions: Option<&Value>,
    audiences: &Indexed<Audience>,
) -> Option<AudienceRefs> {
    let combined = match audience_conditions {
        Some(Value::Null) | None => Value::Array(audience_ids.to_vec()),
        Some(c) => c.clone(),
    };
    match &combined {
        Value::Array(a) if a.is_empty() => None,
        other => Some(Tree::compile(other, &mut |v: &Value| {
            Tree::Leaf(v.as_str().and_then(|id| audiences.get(id)))
        })),
    }
}

/// Declared attributes, by key.
fn attributes(raw: &RawDatafile) -> Indexed<Attribute> {
    let mut attributes = Indexed::new();
    for a in &raw.attributes {
        let attr = Attribute {
            id: a.id.clone(),
            key: a.key.clone(),
        };
        attributes.upsert(&a.key, attr);
    }
    attributes
}

/// Declared conversion events, by key.
fn events(raw: &RawDatafile) -> Indexed<Event> {
    let mut events = Indexed::new();
    for e in &raw.events {
        let ev = Event {
            id: e.id.clone(),
            key: e.key.clone(),
            experiment_ids: e.experiment_ids.clone(),
        };
        events.upsert(&e.key, ev);
    }
    events
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
    audiences: &Indexed<Audience>,
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
    let audiences = audience_refs(&e.audience_ids, e.audience_conditions.as_ref(), audiences);
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
        cmab: crate::core::decide::Cmab::compile(e.cmab.as_ref()),
        holdouts: Vec::new(),
    }
}
