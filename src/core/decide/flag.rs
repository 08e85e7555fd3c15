//! Flag decisions (`decide`): the flag-level forced decision, the global holdouts, feature-test
//! experiments in order, then rollout rules in order (each rule: its forced decision, its local
//! holdouts, the rule), typed variables, decide options and the impression events they cause. A
//! flag halted at a CMAB rule (see `cmab`) gets the error decision and no impression.
//!
//! A global holdout with `excludeTargetedDeliveries` that holds the user does not answer: only
//! `td` experiments and the rollout may, and the holdout's impression goes out before theirs
//! (unless a local holdout answers).

use super::holdout::{GlobalHoldouts, Held};
use super::sticky::Sticky;
use super::targeting::BucketOutcome;
use super::{Decider, Outcome};
use crate::core::emit::{impression, Impression};
use crate::core::events::{EventStamp, UserEvent};
use crate::core::profile::UserProfile;
use crate::core::project::{ExperimentIdx, FeatureFlag, VariableMap};
use crate::core::reasons::Reasons;
use rustc_hash::FxHashSet;
use serde::{Deserialize, Serialize};

/// The flag keys one `decide` has answered: a key named twice is answered once, at its first
/// position (the SDKs collect decisions in a map by key). A short list is scanned; a long one (a
/// decide-all on a big datafile) is hashed, so the check stays constant per key.
enum SeenKeys<'k> {
    Few(Vec<&'k str>),
    Many(FxHashSet<&'k str>),
}

impl<'k> SeenKeys<'k> {
    /// Lists up to this many keys are scanned.
    const SCAN_LIMIT: usize = 16;

    fn with_capacity(keys: usize) -> Self {
        if keys <= Self::SCAN_LIMIT {
            Self::Few(Vec::with_capacity(keys))
        } else {
            Self::Many(FxHashSet::with_capacity_and_hasher(
                keys,
                Default::default(),
            ))
        }
    }

    /// Records `key`; false when it was already recorded.
    fn insert(&mut self, key: &'k str) -> bool {
        match self {
            Self::Few(seen) if seen.contains(&key) => false,
            Self::Few(seen) => {
                seen.push(key);
                true
            }
            Self::Many(seen) => seen.insert(key),
        }
    }
}

/// How reasons name a rollout rule: its 1-based position, or "Everyone Else" for the last.
struct RuleLabel {
    index: usize,
    everyone_else: bool,
}

impl std::fmt::Display for RuleLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.everyone_else {
            f.write_str("Everyone Else")
        } else {
            write!(f, "{}", self.index + 1)
        }
    }
}

/// Where a flag decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecisionSource {
    FeatureTest,
    Rollout,
    Holdout,
}

impl DecisionSource {
    /// The `rule_type` name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FeatureTest => "feature-test",
            Self::Rollout => "rollout",
            Self::Holdout => "holdout",
        }
    }
}

/// What a flag was served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Served {
    /// `(experiment index, variation index)`; for a flag-level forced decision the experiment is
    /// the one that defines the variation, but the choice's `rule` stays `None`.
    Variation(ExperimentIdx, usize),
    /// A holdout's variation (the choice's `rule` is `None`).
    Holdout(Held),
}

/// What answered one flag: the rule, what it served, and the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlagChoice {
    rule: Option<ExperimentIdx>,
    served: Option<Served>,
    source: DecisionSource,
    /// A global holdout with `excludeTargetedDeliveries` that holds the user: its impression
    /// goes out before this answer's.
    held: Option<Held>,
}

impl Default for FlagChoice {
    /// No answer (a flag halted at a CMAB rule).
    fn default() -> Self {
        Self {
            rule: None,
            served: None,
            source: DecisionSource::FeatureTest,
            held: None,
        }
    }
}

impl FlagChoice {
    /// A rule's (or a forced decision's) variation.
    fn variation(
        rule: Option<ExperimentIdx>,
        (e, v): (ExperimentIdx, usize),
        source: DecisionSource,
    ) -> Self {
        Self {
            rule,
            served: Some(Served::Variation(e, v)),
            source,
            held: None,
        }
    }

    /// A holdout's answer.
    fn holdout(held: Held) -> Self {
        Self {
            rule: None,
            served: Some(Served::Holdout(held)),
            source: DecisionSource::Holdout,
            held: None,
        }
    }
}

/// Decide options (the SDKs' `OptimizelyDecideOption`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecideOptions {
    pub disable_decision_event: bool,
    pub enabled_flags_only: bool,
    pub ignore_user_profile_service: bool,
    pub include_reasons: bool,
    pub exclude_variables: bool,
    /// CMAB cache options (read by the service's prediction cache, not by the core).
    pub ignore_cmab_cache: bool,
    pub reset_cmab_cache: bool,
    pub invalidate_user_cmab_cache: bool,
}

/// An unknown decide option name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown decide option {0:?}")]
pub struct UnknownDecideOption(pub String);

impl DecideOptions {
    /// Parses option names as the SDKs and the Agent spell them.
    pub fn parse<'s>(
        names: impl IntoIterator<Item = &'s str>,
    ) -> Result<Self, UnknownDecideOption> {
        let mut o = Self::default();
        for n in names {
            match n {
                "DISABLE_DECISION_EVENT" => o.disable_decision_event = true,
                "ENABLED_FLAGS_ONLY" => o.enabled_flags_only = true,
                "IGNORE_USER_PROFILE_SERVICE" => o.ignore_user_profile_service = true,
                "INCLUDE_REASONS" => o.include_reasons = true,
                "EXCLUDE_VARIABLES" => o.exclude_variables = true,
                "IGNORE_CMAB_CACHE" => o.ignore_cmab_cache = true,
                "RESET_CMAB_CACHE" => o.reset_cmab_cache = true,
                "INVALIDATE_USER_CMAB_CACHE" => o.invalidate_user_cmab_cache = true,
                other => return Err(UnknownDecideOption(other.to_string())),
            }
        }
        Ok(o)
    }
}

/// The answer for one flag, shaped like the SDKs' `OptimizelyDecision`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlagDecision {
    pub flag_key: String,
    pub enabled: bool,
    pub variation_key: Option<String>,
    pub rule_key: Option<String>,
    pub variables: VariableMap,
    pub reasons: Vec<String>,
}

impl FlagDecision {
    fn unknown(flag_key: &str) -> Self {
        Self {
            flag_key: flag_key.to_string(),
            enabled: false,
            variation_key: None,
            rule_key: None,
            variables: VariableMap::default(),
            reasons: Vec::new(),
        }
    }
}

impl Decider<'_> {
    /// `decide` for `keys` (all flags in datafile order when `None`; repeated keys once).
    ///
    /// `profile` is the stored profile when a profile store is in use (see [`Self::variation`]);
    /// it is ignored under `IGNORE_USER_PROFILE_SERVICE`. Events come in key order.
    pub fn decide(
        &self,
        keys: Option<&[&str]>,
        options: DecideOptions,
        profile: Option<&UserProfile>,
        stamp: &mut dyn EventStamp,
    ) -> Outcome<Vec<FlagDecision>> {
        let config = self.config;
        let mut sticky = Sticky::new(if options.ignore_user_profile_service {
            None
        } else {
            profile
        });
        let all: Vec<&str>;
        let keys: &[&str] = match keys {
            Some(k) => k,
            None => {
                all = config.flags.iter().map(|f| f.key.as_str()).collect();
                &all
            }
        };
        let mut seen = SeenKeys::with_capacity(keys.len());
        let mut out = Vec::with_capacity(keys.len());
        let mut events = Vec::new();
        let mut globals = GlobalHoldouts::default();
        for &key in keys {
            if !seen.insert(key) {
                continue;
            }
            let mut reasons = Reasons::new(self.reasons || options.include_reasons);
            let Some(flag_idx) = config.flag_by_key(key) else {
                let mut d = FlagDecision::unknown(key);
                reasons.add(|| format!("No flag was found for key \"{key}\"."));
                d.reasons = reasons.take();
                out.push(d);
                continue;
            };
            let flag = &config.flags[flag_idx];
            let choice = match self.forced_decision(flag, None, &mut reasons) {
                Some(v) => FlagChoice::variation(None, v, DecisionSource::FeatureTest),
                None => self.flag_choice(flag, &mut sticky, &mut globals, &mut reasons),
            };
            let (first_event, halt) = (events.len(), sticky.cmab.take_halt());
            let decision = match halt {
                Some(_) => super::cmab::error_decision(flag, reasons),
                None => self.answer(flag, choice, options, reasons, &mut events, stamp),
            };
            sticky.cmab.stamp_uuid(&mut events[first_event..]);
            if !options.enabled_flags_only || decision.enabled || halt.is_some() {
                out.push(decision);
            }
        }
        Outcome::new(out, events, sticky)
    }

    /// The decision for one flag after its flag-level forced decision: global holdouts, feature
    /// tests, then the rollout.
    fn flag_choice(
        &self,
        flag: &FeatureFlag,
        sticky: &mut Sticky<'_>,
        globals: &mut GlobalHoldouts,
        reasons: &mut Reasons,
    ) -> FlagChoice {
        let config = self.config;
        let held = self.global_holdout(flag, globals, reasons);
        if let Some(h) = held {
            let holdout = &config.holdouts[h.holdout];
            if !holdout.exclude_targeted_deliveries {
                return FlagChoice::holdout(h);
            }
            reasons.add(|| {
                format!(
                    "Holdout '{}' excludes targeted deliveries. Targeted delivery rules will be evaluated.",
                    holdout.key
                )
            });
        }
        for &e in &flag.experiments {
            let exp = &config.experiments[e];
            if held.is_some() && exp.kind.as_deref() != Some("td") {
                continue;
            }
            if let Some(v) = self.forced_decision(flag, Some(&exp.key), reasons) {
                return FlagChoice {
                    held,
                    ..FlagChoice::variation(Some(e), v, DecisionSource::FeatureTest)
                };
            }
            if let Some(h) = self.local_holdout(exp, "experiment", reasons) {
                return FlagChoice::holdout(h);
            }
            if let Some(v) = self.experiment_variation(e, sticky, reasons) {
                return FlagChoice {
                    held,
                    ..FlagChoice::variation(Some(e), (e, v), DecisionSource::FeatureTest)
                };
            }
            if sticky.cmab.halted() {
                return FlagChoice::default();
            }
        }
        if let Some(h) = held {
            reasons.add(|| {
                format!(
                    "Holdout \"{}\" has excludeTargetedDeliveries enabled, continuing to rollout evaluation.",
                    config.holdouts[h.holdout].key
                )
            });
        }
        FlagChoice {
            held,
            ..self.rollout_choice(flag, reasons)
        }
    }

    fn rollout_choice(&self, flag: &FeatureFlag, reasons: &mut Reasons) -> FlagChoice {
        let none = FlagChoice {
            source: DecisionSource::Rollout,
            ..FlagChoice::default()
        };
        let Some(r) = flag.rollout else { return none };
        let rules = &self.config.rollouts[r].rules;
        let user_id = &self.user.user_id;
        let mut i = 0;
        while i < rules.len() {
            let idx = rules[i];
            let rule = &self.config.experiments[idx];
            if let Some(v) = self.forced_decision(flag, Some(&rule.key), reasons) {
                return FlagChoice::variation(Some(idx), v, DecisionSource::Rollout);
            }
            if let Some(h) = self.local_holdout(rule, "delivery", reasons) {
                return FlagChoice::holdout(h);
            }
            let everyone_else = i == rules.len() - 1;
            let label = RuleLabel {
                index: i,
                everyone_else,
            };
            if self.audiences_allow(rule.audiences.as_ref(), &label, reasons) {
                reasons.add(|| {
                    format!(
                        "User \"{user_id}\" meets audience conditions for targeting rule {label}."
                    )
                });
                if let BucketOutcome::Variation(v) = self.bucket(idx, reasons) {
                    reasons.add(|| {
                        format!("User \"{user_id}\" bucketed into a targeting rule {label}.")
                    });
                    return FlagChoice::variation(Some(idx), (idx, v), DecisionSource::Rollout);
                }
                if !everyone_else {
                    reasons.add(|| format!(
                        "User \"{user_id}\" not bucketed into a targeting rule {label}. Checking \"Everyone Else\" rule now."
                    ));
                    i = rules.len() - 1;
                    continue;
                }
            } else {
                reasons.add(|| format!("User \"{user_id}\" does not meet audience conditions for targeting rule {label}."));
            }
            i += 1;
        }
        none
    }

    /// The flag decision for a choice: enabled, typed variables, reasons, and its impressions
    /// (an excluded-deliveries holdout's first, then the answer's).
    fn answer(
        &self,
        flag: &FeatureFlag,
        choice: FlagChoice,
        options: DecideOptions,
        mut reasons: Reasons,
        events: &mut Vec<UserEvent>,
        stamp: &mut dyn EventStamp,
    ) -> FlagDecision {
        let config = self.config;
        let rule = choice.rule.map(|e| &config.experiments[e]);
        let (variation, holdout) = match choice.served {
            Some(Served::Variation(e, v)) => (Some(&config.experiments[e].variations[v]), None),
            Some(Served::Holdout(h)) => {
                let holdout = &config.holdouts[h.holdout];
                (Some(&holdout.variations[h.variation]), Some(holdout))
            }
            None => (None, None),
        };
        let rule_key = holdout.map(|h| &h.key).or(rule.map(|r| &r.key));
        let enabled = variation.is_some_and(|v| v.feature_enabled);
        if !options.disable_decision_event {
            if let Some(h) = choice.held.filter(|_| holdout.is_none()) {
                events.push(self.holdout_impression(flag, h, stamp));
            }
            if choice.source != DecisionSource::Rollout || config.send_flag_decisions {
                let event = match choice.served {
                    Some(Served::Holdout(h)) => self.holdout_impression(flag, h, stamp),
                    _ => {
                        let recorded =
                            variation.and_then(|v| self.flag_variation_by_id(flag, &v.id));
                        let (experiment_id, layer_id) = Impression::ids_of(rule);
                        impression(
                            config,
                            &self.user.user_id,
                            &self.user.attributes,
                            Impression {
                                experiment_id,
                                layer_id,
                                variation: recorded,
                                flag_key: &flag.key,
                                rule_key: rule_key.map_or("", String::as_str),
                                rule_type: choice.source.as_str(),
                                enabled,
                            },
                            stamp,
                        )
                    }
                };
                events.push(event);
            }
        }
        // Values come from the variation with this id wherever the datafile defines one (a
        // holdout's own are never indexed); none at all casts like the SDK casts `None`.
        let variables = if options.exclude_variables {
            VariableMap::default()
        } else {
            flag.variables_for(config, variation)
        };
        FlagDecision {
            flag_key: flag.key.clone(),
            enabled,
            variation_key: variation.map(|v| v.key.clone()),
            rule_key: rule_key.cloned(),
            variables,
            reasons: reasons.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::project::ProjectConfig;
    use crate::core::user::UserContext;
    use serde_json::{json, Map, Value};

    /// A project of `n` flags `f0`..`f{n-1}`, each with a rollout serving `on` to everyone.
    fn flags(n: usize) -> ProjectConfig {
        let rollouts: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("r{i}"), "experiments": [{"id": format!("e{i}"),
                    "key": format!("rule{i}"), "status": "Running", "layerId": format!("l{i}"),
                    "audienceIds": [], "forcedVariations": {},
                    "variations": [{"id": format!("v{i}"), "key": "on", "featureEnabled": true}],
                    "trafficAllocation": [{"entityId": format!("v{i}"), "endOfRange": 10000}]}]})
            })
            .collect();
        let flags: Vec<Value> = (0..n)
            .map(|i| {
                json!({"id": format!("f{i}"), "key": format!("f{i}"), "experimentIds": [],
                            "rolloutId": format!("r{i}"), "variables": []})
            })
            .collect();
        let df = json!({"version": "4", "accountId": "a", "projectId": "p", "revision": "1",
            "experiments": [], "rollouts": rollouts, "featureFlags": flags});
        ProjectConfig::parse(df.to_string().as_bytes()).unwrap()
    }

    /// The keys `decide` answers for `keys`, in order.
    fn answered(config: &ProjectConfig, keys: &[&str]) -> Vec<String> {
        let user = UserContext::new("u", Map::new());
        Decider::new(config, &user)
            .decide(Some(keys), DecideOptions::default(), None, &mut || {
                (String::new(), 0)
            })
            .decision
            .into_iter()
            .map(|d| d.flag_key)
            .collect()
    }

    #[test]
    fn a_key_named_twice_is_answered_once_at_its_first_position() {
        let config = flags(40);
        // Short lists are scanned, long ones hashed: both keep first positions, unknown keys too.
        let few = ["f3", "nope", "f1", "f3", "nope"];
        assert_eq!(answered(&config, &few), ["f3", "nope", "f1"]);
        let names: Vec<String> = (0..40).rev().map(|i| format!("f{i}")).collect();
        let mut many: Vec<&str> = names.iter().map(String::as_str).collect();
        many.extend(["f39", "nope", "f0", "nope", "f7"]);
        let expected: Vec<&str> = names.iter().map(String::as_str).chain(["nope"]).collect();
        assert_eq!(answered(&config, &many), expected);
    }

    #[test]
    fn options_parse_and_reject_unknown() {
        let o = DecideOptions::parse(["ENABLED_FLAGS_ONLY", "INCLUDE_REASONS"]).unwrap();
        assert!(o.enabled_flags_only && o.include_reasons && !o.exclude_variables);
        assert_eq!(
            DecideOptions::parse(["NOPE"]).unwrap_err(),
            UnknownDecideOption("NOPE".into())
        );
    }
}
