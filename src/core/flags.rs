//! Flag decisions (`decide`): forced decisions, feature-test experiments in order, then rollout
//! rules in order, typed variables, decide options and the impression events they cause.

use super::events::{impression, EventStamp, Impression, UserEvent};
use super::experiment::{BucketOutcome, Decider};
use super::profile::ProfileTracker;
use super::project::{ExperimentIdx, FeatureFlag, Variation};
use super::variables::typed_value;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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
}

impl DecisionSource {
    /// The `rule_type` name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FeatureTest => "feature-test",
            Self::Rollout => "rollout",
        }
    }
}

/// The raw outcome for one flag: the rule and variation (indexes), and the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagOutcome {
    pub rule: Option<ExperimentIdx>,
    /// `(experiment index, variation index)`; for a flag-level forced decision the experiment is
    /// the one that defines the variation, but `rule` stays `None`.
    pub variation: Option<(ExperimentIdx, usize)>,
    pub source: DecisionSource,
}

/// Decide options (the SDKs' `OptimizelyDecideOption`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecideOptions {
    pub disable_decision_event: bool,
    pub enabled_flags_only: bool,
    pub ignore_user_profile_service: bool,
    pub include_reasons: bool,
    pub exclude_variables: bool,
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
    pub variables: Map<String, Value>,
    pub reasons: Vec<String>,
}

impl FlagDecision {
    fn unknown(flag_key: &str) -> Self {
        Self {
            flag_key: flag_key.to_string(),
            enabled: false,
            variation_key: None,
            rule_key: None,
            variables: Map::new(),
            reasons: Vec::new(),
        }
    }
}

impl Decider<'_> {
    fn flag_variation_by_key(
        &self,
        flag: &FeatureFlag,
        key: &str,
    ) -> Option<(ExperimentIdx, usize)> {
        flag.variations
            .iter()
            .copied()
            .find(|&(e, v)| self.config.experiments[e].variations[v].key == key)
    }

    fn flag_variation_by_id(&self, flag: &FeatureFlag, id: &str) -> Option<&Variation> {
        flag.variations
            .iter()
            .map(|&(e, v)| &self.config.experiments[e].variations[v])
            .find(|v| v.id == id)
    }

    /// A valid forced decision for `flag` and `rule_key` (`None`: flag level).
    fn forced_decision(
        &mut self,
        flag: &FeatureFlag,
        rule_key: Option<&str>,
    ) -> Option<(ExperimentIdx, usize)> {
        let key = self.user.forced_decision(&flag.key, rule_key)?;
        let found = self.flag_variation_by_key(flag, key);
        let user_id = &self.user.user_id;
        self.reasons.add(|| match (found.is_some(), rule_key) {
            (true, Some(r)) => format!(
                "Variation ({key}) is mapped to flag ({}), rule ({r}) and user ({user_id}) in the forced decision map.",
                flag.key
            ),
            (true, None) => format!(
                "Variation ({key}) is mapped to flag ({}) and user ({user_id}) in the forced decision map.",
                flag.key
            ),
            (false, Some(r)) => format!(
                "Invalid variation is mapped to flag ({}), rule ({r}) and user ({user_id}) in the forced decision map.",
                flag.key
            ),
            (false, None) => format!(
                "Invalid variation is mapped to flag ({}) and user ({user_id}) in the forced decision map.",
                flag.key
            ),
        });
        found
    }

    /// The decision for one flag, without the flag-level forced decision (see [`Self::decide`]).
    pub fn flag_outcome(
        &mut self,
        flag_idx: usize,
        mut profile: Option<&mut ProfileTracker>,
    ) -> FlagOutcome {
        let config = self.config;
        let flag = &config.flags[flag_idx];
        for &e in &flag.experiments {
            let rule_key = config.experiments[e].key.as_str();
            if let Some(v) = self.forced_decision(flag, Some(rule_key)) {
                return FlagOutcome {
                    rule: Some(e),
                    variation: Some(v),
                    source: DecisionSource::FeatureTest,
                };
            }
            if let Some(v) = self.experiment_variation(e, profile.as_deref_mut()) {
                return FlagOutcome {
                    rule: Some(e),
                    variation: Some((e, v)),
                    source: DecisionSource::FeatureTest,
                };
            }
        }
        self.rollout_outcome(flag)
    }

    fn rollout_outcome(&mut self, flag: &FeatureFlag) -> FlagOutcome {
        let none = FlagOutcome {
            rule: None,
            variation: None,
            source: DecisionSource::Rollout,
        };
        let Some(r) = flag.rollout else { return none };
        let rules = &self.config.rollouts[r].rules;
        let user_id = &self.user.user_id;
        let mut i = 0;
        while i < rules.len() {
            let idx = rules[i];
            let rule = &self.config.experiments[idx];
            if let Some(v) = self.forced_decision(flag, Some(&rule.key)) {
                return FlagOutcome {
                    rule: Some(idx),
                    variation: Some(v),
                    source: DecisionSource::Rollout,
                };
            }
            let everyone_else = i == rules.len() - 1;
            let label = RuleLabel {
                index: i,
                everyone_else,
            };
            if self.audiences_allow(rule.audiences.as_ref(), &label) {
                self.reasons.add(|| {
                    format!(
                        "User \"{user_id}\" meets audience conditions for targeting rule {label}."
                    )
                });
                if let BucketOutcome::Variation(v) = self.bucket(idx) {
                    self.reasons.add(|| {
                        format!("User \"{user_id}\" bucketed into a targeting rule {label}.")
                    });
                    return FlagOutcome {
                        rule: Some(idx),
                        variation: Some((idx, v)),
                        source: DecisionSource::Rollout,
                    };
                }
                if !everyone_else {
                    self.reasons.add(|| format!(
                        "User \"{user_id}\" not bucketed into a targeting rule {label}. Checking \"Everyone Else\" rule now."
                    ));
                    i = rules.len() - 1;
                    continue;
                }
            } else {
                self.reasons.add(|| format!("User \"{user_id}\" does not meet audience conditions for targeting rule {label}."));
            }
            i += 1;
        }
        none
    }

    /// Decides `keys` (all flags in datafile order when `None`).
    ///
    /// `profile` is the request's loaded profile (`None` when there is no store); it is consulted
    /// and updated unless `IGNORE_USER_PROFILE_SERVICE` is set. Impression events are appended to
    /// `events` in key order.
    pub fn decide(
        &mut self,
        keys: Option<&[&str]>,
        options: DecideOptions,
        profile: Option<&mut ProfileTracker>,
        events: &mut Vec<UserEvent>,
        stamp: &mut dyn EventStamp,
    ) -> Vec<FlagDecision> {
        let config = self.config;
        let mut profile = if options.ignore_user_profile_service {
            None
        } else {
            profile
        };
        let all: Vec<&str>;
        let keys: &[&str] = match keys {
            Some(k) => k,
            None => {
                all = config.flags.iter().map(|f| f.key.as_str()).collect();
                &all
            }
        };
        let mut seen: Vec<&str> = Vec::with_capacity(keys.len());
        let mut out = Vec::with_capacity(keys.len());
        for &key in keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            self.reasons = super::reasons::Reasons::new(options.include_reasons);
            let Some(flag_idx) = config.flag_by_key(key) else {
                let mut d = FlagDecision::unknown(key);
                if options.include_reasons {
                    d.reasons
                        .push(format!("No flag was found for key \"{key}\"."));
                }
                out.push(d);
                continue;
            };
            let flag = &config.flags[flag_idx];
            let outcome = match self.forced_decision(flag, None) {
                Some(v) => FlagOutcome {
                    rule: None,
                    variation: Some(v),
                    source: DecisionSource::FeatureTest,
                },
                None => self.flag_outcome(flag_idx, profile.as_deref_mut()),
            };
            let decision = self.finish(flag, outcome, options, events, stamp);
            if !options.enabled_flags_only || decision.enabled {
                out.push(decision);
            }
        }
        out
    }

    fn finish(
        &mut self,
        flag: &FeatureFlag,
        outcome: FlagOutcome,
        options: DecideOptions,
        events: &mut Vec<UserEvent>,
        stamp: &mut dyn EventStamp,
    ) -> FlagDecision {
        let config = self.config;
        let variation = outcome
            .variation
            .map(|(e, v)| &config.experiments[e].variations[v]);
        let rule = outcome.rule.map(|e| &config.experiments[e]);
        let enabled = variation.is_some_and(|v| v.feature_enabled);
        if !options.disable_decision_event
            && (outcome.source == DecisionSource::FeatureTest || config.send_flag_decisions)
        {
            let recorded = variation.and_then(|v| self.flag_variation_by_id(flag, &v.id));
            events.push(impression(
                config,
                &self.user.user_id,
                &self.user.attributes,
                Impression {
                    experiment: rule,
                    variation: recorded,
                    flag_key: &flag.key,
                    rule_key: rule.map_or("", |r| r.key.as_str()),
                    rule_type: outcome.source.as_str(),
                    enabled,
                },
                stamp,
            ));
        }
        let mut variables = Map::new();
        if !options.exclude_variables {
            let usage = variation.and_then(|v| config.variable_usage(&v.id));
            for var in &flag.variables {
                let raw = match (enabled, usage) {
                    (true, Some(u)) => u.variables.get(&var.id).unwrap_or(&var.default_value),
                    _ => &var.default_value,
                };
                variables.insert(var.key.clone(), typed_value(raw, var.kind));
            }
        }
        FlagDecision {
            flag_key: flag.key.clone(),
            enabled,
            variation_key: variation.map(|v| v.key.clone()),
            rule_key: rule.map(|r| r.key.clone()),
            variables,
            reasons: self.reasons.take(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
