//! The parsed, indexed project: what a decision reads. Built once per datafile ([`build`] holds
//! the compile steps).
//!
//! Lookups by key and by id are hash-map hits into flat vectors; cross references (traffic
//! slices, group membership, rollout rules, audience ids) are resolved to indexes at build time,
//! so a decision never searches the datafile. Where the datafile is ambiguous (duplicate ids or
//! keys) the later entry wins, as in the official SDKs.

mod build;

use super::audience::{Audience, AudienceRefs};
use super::bucketing::Slice;
use super::datafile::{self, DatafileError};
use super::events::EventContext;
use super::variables::{typed_null, typed_value, VariableType};
use rustc_hash::FxHashMap;
use serde_json::{Map, Value};
use std::sync::Arc;

/// Index of an experiment (or rollout rule) in [`ProjectConfig::experiments`].
pub type ExperimentIdx = usize;

/// Index of a holdout in [`ProjectConfig::holdouts`].
pub type HoldoutIdx = usize;

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
    /// A truthy `cmab` block: decided by a prediction (boxed: most experiments have none).
    pub cmab: Option<Box<crate::core::decide::Cmab>>,
    /// The running local holdouts whose `includedRules` name this rule, in datafile order
    /// (checked in `decide` after the rule's forced decision, before the rule itself).
    pub holdouts: Vec<HoldoutIdx>,
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

/// A running holdout (global or local): users it buckets get its variation instead of the
/// flag's rules. Audiences and traffic as for an experiment; its id salts the hash; no groups.
#[derive(Debug, Clone)]
pub struct Holdout {
    pub id: String,
    pub key: String,
    /// Its variations. Their `variables` are left empty: the SDK never indexes them (a decision's
    /// variables come from the rule variation with the same id, if any).
    pub variations: Vec<Variation>,
    /// Slices resolve to the last variation with the slice's id.
    pub traffic: Vec<Slice<usize>>,
    /// `None` means everyone qualifies.
    pub audiences: Option<AudienceRefs>,
    /// Global holdouts only: a user it holds is still served `td` experiments and the rollout,
    /// and its impression goes out before theirs.
    pub exclude_targeted_deliveries: bool,
}

/// A group of experiments; only `random` groups are mutually exclusive.
#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub policy: String,
    /// Slices resolve to experiment indexes.
    pub traffic: Vec<Slice<ExperimentIdx>>,
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
    /// Its `variables` answers, rendered once per datafile (see `variables_for`).
    pub answers: VariableAnswers,
}

/// A decision's typed variables by key, shared between the decisions that give the same answer.
pub type VariableMap = Arc<Map<String, Value>>;

/// A flag's `variables` answers, rendered when the datafile is built so a decision only clones a
/// pointer: the defaults (a disabled variation), the typed nulls (an enabled variation whose id
/// no rule defines) and, per variation id of the flag's own rules, the values of the rule
/// variation with that id.
#[derive(Debug, Clone, Default)]
pub struct VariableAnswers {
    disabled: VariableMap,
    unset: VariableMap,
    by_variation: FxHashMap<String, VariableMap>,
}

impl FeatureFlag {
    /// The flag's typed variables for a decision served by `variation` (none or a disabled one:
    /// the defaults; see `render_variables`). An enabled variation the build did not see among
    /// the flag's rules (a holdout's) is rendered on the spot, by the same rule.
    pub fn variables_for(
        &self,
        config: &ProjectConfig,
        variation: Option<&Variation>,
    ) -> VariableMap {
        match variation {
            Some(v) if v.feature_enabled => match self.answers.by_variation.get(&v.id) {
                Some(answer) => Arc::clone(answer),
                None => match config.variable_usage(&v.id) {
                    Some(usage) => Arc::new(self.render_variables(true, Some(usage))),
                    None => Arc::clone(&self.answers.unset),
                },
            },
            _ => Arc::clone(&self.answers.disabled),
        }
    }

    /// The typed variables as the SDK casts them: not enabled → each default; enabled → the
    /// value `usage` (the rule variation with the served variation's id) sets, else the default;
    /// enabled without such a variation → each type's cast of `None`.
    pub(crate) fn render_variables(
        &self,
        enabled: bool,
        usage: Option<&Variation>,
    ) -> Map<String, Value> {
        let mut variables = Map::new();
        for var in &self.variables {
            let value = match (enabled, usage) {
                (false, _) => typed_value(&var.default_value, var.kind),
                (true, Some(u)) => typed_value(
                    u.variables.get(&var.id).unwrap_or(&var.default_value),
                    var.kind,
                ),
                (true, None) => typed_null(var.kind),
            };
            variables.insert(var.key.clone(), value);
        }
        variables
    }

    /// Renders `answers` (a build step after the variable index, which it reads).
    pub(crate) fn render_answers(
        &mut self,
        experiments: &[Experiment],
        usage: &FxHashMap<String, (ExperimentIdx, usize)>,
    ) {
        let mut by_variation = FxHashMap::default();
        for &(e, v) in &self.variations {
            let id = &experiments[e].variations[v].id;
            if let Some(&(ue, uv)) = usage.get(id) {
                let u = &experiments[ue].variations[uv];
                by_variation
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(self.render_variables(true, Some(u))));
            }
        }
        self.answers = VariableAnswers {
            disabled: Arc::new(self.render_variables(false, None)),
            unset: Arc::new(self.render_variables(true, None)),
            by_variation,
        };
    }
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
    /// Running holdouts: the global ones in datafile order, then the local ones.
    pub holdouts: Vec<Holdout>,
    /// The global holdouts, in the order `decide` checks them (before any rule of every flag).
    pub global_holdouts: Vec<HoldoutIdx>,
    /// The datafile text this was built from.
    pub datafile: String,
    experiment_by_id: FxHashMap<String, ExperimentIdx>,
    experiment_by_key: FxHashMap<String, ExperimentIdx>,
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

impl ProjectConfig {
    /// Parses and indexes a datafile.
    pub fn parse(bytes: &[u8]) -> Result<Self, DatafileError> {
        let raw = datafile::parse_raw(bytes)?;
        let text = String::from_utf8_lossy(bytes).into_owned();
        build::build(raw, text)
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

    /// A flag with one experiment ("e1") and a rollout of one rule ("r1"), plus the given
    /// holdout sections.
    fn with_holdouts(global: &str, local: &str) -> ProjectConfig {
        let text = format!(
            r#"{{"version":"4",
            "audiences":[{{"id":"a1","name":"a","conditions":"[\"or\"]"}}],
            "experiments":[{{"id":"e1","key":"exp","status":"Running","layerId":"l",
                "variations":[{{"id":"v1","key":"on","featureEnabled":true}}],
                "trafficAllocation":[{{"entityId":"v1","endOfRange":10000}}]}}],
            "rollouts":[{{"id":"ro","experiments":[{{"id":"r1","key":"rule","status":"Running",
                "layerId":"l2","variations":[{{"id":"v2","key":"on2"}}],
                "trafficAllocation":[{{"entityId":"v2","endOfRange":10000}}]}}]}}],
            "featureFlags":[{{"id":"f","key":"flag","experimentIds":["e1"],"rolloutId":"ro"}}],
            "holdouts":{global},"localHoldouts":{local}}}"#
        );
        ProjectConfig::parse(text.as_bytes()).unwrap()
    }

    fn keys(cfg: &ProjectConfig, idx: &[HoldoutIdx]) -> Vec<String> {
        idx.iter().map(|&h| cfg.holdouts[h].key.clone()).collect()
    }

    #[test]
    fn global_holdouts_keep_datafile_order_and_only_running_ones() {
        let cfg = with_holdouts(
            r#"[{"id":"h1","key":"first","status":"Running"},
                {"id":"h2","key":"draft","status":"Draft"},
                {"id":"h3","key":"lower","status":"running"},
                {"id":"h4","key":"second","status":"Running","includedRules":["e1"]}]"#,
            "[]",
        );
        assert_eq!(keys(&cfg, &cfg.global_holdouts), ["first", "second"]);
        // `includedRules` on a global holdout does not make it local.
        let e1 = cfg.experiment_by_id("e1").unwrap();
        assert!(cfg.experiments[e1].holdouts.is_empty());
    }

    #[test]
    fn local_holdouts_attach_to_the_rules_they_name() {
        let cfg = with_holdouts(
            "[]",
            r#"[{"id":"h1","key":"both","status":"Running","includedRules":["r1","e1","nope"]},
                {"id":"h2","key":"no_rules","status":"Running"},
                {"id":"h3","key":"null_rules","status":"Running","includedRules":null},
                {"id":"h4","key":"paused","status":"Paused","includedRules":["e1"]},
                {"id":"h5","key":"exp_only","status":"Running","includedRules":["e1"]},
                {"id":"h6","key":"empty","status":"Running","includedRules":[]}]"#,
        );
        assert!(cfg.global_holdouts.is_empty());
        let e1 = cfg.experiment_by_id("e1").unwrap();
        let r1 = cfg.experiment_by_id("r1").unwrap();
        assert_eq!(
            keys(&cfg, &cfg.experiments[e1].holdouts),
            ["both", "exp_only"]
        );
        assert_eq!(keys(&cfg, &cfg.experiments[r1].holdouts), ["both"]);
        assert_eq!(cfg.holdouts.len(), 3);
    }

    #[test]
    fn holdout_traffic_and_audiences_compile_like_an_experiments() {
        let cfg = with_holdouts(
            r#"[{"id":"h1","key":"h","status":"Running","audienceIds":["a1"],
                 "excludeTargetedDeliveries":true,
                 "variations":[{"id":"9","key":"first","featureEnabled":true,
                                "variables":[{"id":"x","value":"1"}]},
                               {"id":"9","key":"last"}],
                 "trafficAllocation":[{"entityId":"","endOfRange":100},
                                      {"entityId":"9","endOfRange":500},
                                      {"entityId":"77","endOfRange":900}]},
                {"id":"h2","key":"h2","status":"Running","audienceIds":["a1"],
                 "audienceConditions":[]}]"#,
            "[]",
        );
        let h = &cfg.holdouts[0];
        assert!(h.exclude_targeted_deliveries);
        let entities: Vec<_> = h.traffic.iter().map(|s| s.entity).collect();
        assert_eq!(entities, [None, Some(1), None]);
        assert!(h.audiences.is_some());
        assert!(h.variations[0].feature_enabled && !h.variations[1].feature_enabled);
        assert!(h.variations[0].variables.is_empty());
        // `audienceConditions: []` replaces the ids: everyone qualifies.
        assert!(cfg.holdouts[1].audiences.is_none());
        assert!(!cfg.holdouts[1].exclude_targeted_deliveries);
    }
}
