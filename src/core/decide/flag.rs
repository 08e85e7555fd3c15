//! Flag decisions (`decide`): forced decisions, feature-test experiments in order, then rollout
//! rules in order, typed variables, decide options and the impression events they cause. A flag
//! halted at a CMAB rule (see `cmab`) gets the error decision and no impression.

use super::sticky::Sticky;
use super::targeting::BucketOutcome;
use super::{Decider, Outcome};
use crate::core::emit::{impression, Impression};
use crate::core::events::{EventStamp, UserEvent};
use crate::core::profile::UserProfile;
use crate::core::project::{ExperimentIdx, FeatureFlag};
use crate::core::reasons::Reasons;
use crate::core::variables::typed_value;
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

/// What answered one flag: the rule and variation (indexes), and the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlagChoice {
    rule: Option<ExperimentIdx>,
    /// `(experiment index, variation index)`; for a flag-level forced decision the experiment is
    /// the one that defines the variation, but `rule` stays `None`.
    variation: Option<(ExperimentIdx, usize)>,
    source: DecisionSource,
}

impl Default for FlagChoice {
    /// No answer (a flag halted at a CMAB rule).
    fn default() -> Self {
        Self {
            rule: None,
            variation: None,
            source: DecisionSource::FeatureTest,
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
        let mut seen: Vec<&str> = Vec::with_capacity(keys.len());
        let mut out = Vec::with_capacity(keys.len());
        let mut events = Vec::new();
        for &key in keys {
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
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
                Some(v) => FlagChoice {
                    rule: None,
                    variation: Some(v),
                    source: DecisionSource::FeatureTest,
                },
                None => self.flag_choice(flag, &mut sticky, &mut reasons),
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

    /// The decision for one flag after its flag-level forced decision: feature tests, then the
    /// rollout.
    fn flag_choice(
        &self,
        flag: &FeatureFlag,
        sticky: &mut Sticky<'_>,
        reasons: &mut Reasons,
    ) -> FlagChoice {
        let config = self.config;
        for &e in &flag.experiments {
            let rule_key = config.experiments[e].key.as_str();
            if let Some(v) = self.forced_decision(flag, Some(rule_key), reasons) {
                return FlagChoice {
                    rule: Some(e),
                    variation: Some(v),
                    source: DecisionSource::FeatureTest,
                };
            }
            if let Some(v) = self.experiment_variation(e, sticky, reasons) {
                return FlagChoice {
                    rule: Some(e),
                    variation: Some((e, v)),
                    source: DecisionSource::FeatureTest,
                };
            }
            if sticky.cmab.halted() {
                return FlagChoice::default();
            }
        }
        self.rollout_choice(flag, reasons)
    }

    fn rollout_choice(&self, flag: &FeatureFlag, reasons: &mut Reasons) -> FlagChoice {
        let none = FlagChoice {
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
            if let Some(v) = self.forced_decision(flag, Some(&rule.key), reasons) {
                return FlagChoice {
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
                    return FlagChoice {
                        rule: Some(idx),
                        variation: Some((idx, v)),
                        source: DecisionSource::Rollout,
                    };
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

    /// The flag decision for a choice: enabled, typed variables, reasons, and its impression.
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
        let variation = choice
            .variation
            .map(|(e, v)| &config.experiments[e].variations[v]);
        let rule = choice.rule.map(|e| &config.experiments[e]);
        let enabled = variation.is_some_and(|v| v.feature_enabled);
        if !options.disable_decision_event
            && (choice.source == DecisionSource::FeatureTest || config.send_flag_decisions)
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
                    rule_type: choice.source.as_str(),
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
            reasons: reasons.take(),
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
