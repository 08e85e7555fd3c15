//! Holdouts in `decide`: whether one holdout holds the user (its audiences, then its own traffic
//! with the holdout id salting the hash; no groups, no whitelist, no forced variations), the
//! answer of the global holdouts (the first in datafile order that holds the user), and the
//! local holdouts of one rule. The global answer depends only on the user, so one `decide` call
//! works it out once and every flag reuses it.
//!
//! Holdouts never read or write the user profile, and `activate` / `get_variation` never look at
//! them: only `flag` calls into this module.

use super::Decider;
use crate::core::emit::{impression, Impression};
use crate::core::events::{EventStamp, UserEvent};
use crate::core::project::{Experiment, FeatureFlag, HoldoutIdx};
use crate::core::reasons::Reasons;
use crate::core::user::BUCKETING_ID_ATTRIBUTE;

/// A holdout that holds the user, and the variation (index in the holdout) it gave them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Held {
    pub(super) holdout: HoldoutIdx,
    pub(super) variation: usize,
}

/// The global holdouts' answer for one `decide` call: worked out on first use, with the reasons
/// that evaluation produced (each flag repeats them, as the SDK evaluates per flag).
#[derive(Debug, Default)]
pub(super) struct GlobalHoldouts {
    answer: Option<Option<Held>>,
    reasons: Vec<String>,
}

/// How reasons name a holdout in the audience messages (the SDK's experiment wording).
struct HoldoutLabel<'a>(&'a str);

impl std::fmt::Display for HoldoutLabel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "experiment \"{}\"", self.0)
    }
}

impl Decider<'_> {
    /// The variation holdout `idx` gives this user, if it holds them.
    fn holdout_variation(&self, idx: HoldoutIdx, reasons: &mut Reasons) -> Option<usize> {
        let holdout = &self.config.holdouts[idx];
        let user_id = self.user.user_id.as_str();
        if self
            .user
            .attribute(BUCKETING_ID_ATTRIBUTE)
            .is_some_and(|v| !v.is_string() && !v.is_null())
        {
            reasons.add(|| "Bucketing ID attribute is not a string. Defaulted to user_id.".into());
        }
        let label = HoldoutLabel(&holdout.key);
        if !self.audiences_allow(holdout.audiences.as_ref(), &label, reasons) {
            reasons.add(|| {
                format!(
                    "User '{user_id}' does not meet the conditions for holdout '{}'.",
                    holdout.key
                )
            });
            return None;
        }
        let variation = if holdout.key.trim().is_empty() {
            None
        } else {
            let bucket =
                crate::core::bucketing::bucket_value(self.user.bucketing_id(), &holdout.id);
            let slice = crate::core::bucketing::find_slice(&holdout.traffic, bucket);
            match slice {
                // An unknown variation id: nothing, and no reason (the SDK logs an error).
                Some(s) if !s.entity_id.is_empty() => s.entity,
                _ => {
                    reasons.add(|| "Bucketed into an empty traffic range. Returning nil.".into());
                    None
                }
            }
        };
        match variation {
            Some(v) => reasons.add(|| {
                format!(
                    "The user '{user_id}' is bucketed into variation '{}' of holdout '{}'.",
                    holdout.variations[v].key, holdout.key
                )
            }),
            None => reasons.add(|| {
                format!(
                    "User '{user_id}' is not bucketed into any variation for holdout '{}'.",
                    holdout.key
                )
            }),
        }
        variation
    }

    /// The first global holdout that holds the user (from `cache` after the first flag).
    pub(super) fn global_holdout(
        &self,
        flag: &FeatureFlag,
        cache: &mut GlobalHoldouts,
        reasons: &mut Reasons,
    ) -> Option<Held> {
        let config = self.config;
        if config.global_holdouts.is_empty() {
            return None;
        }
        let answer = match cache.answer {
            Some(answer) => answer,
            None => {
                let mut own = Reasons::new(reasons.is_enabled());
                let answer = config.global_holdouts.iter().find_map(|&h| {
                    self.holdout_variation(h, &mut own).map(|variation| Held {
                        holdout: h,
                        variation,
                    })
                });
                cache.answer = Some(answer);
                cache.reasons = own.take();
                answer
            }
        };
        reasons.extend(&cache.reasons);
        if let Some(held) = answer {
            let key = &config.holdouts[held.holdout].key;
            let user_id = &self.user.user_id;
            reasons.add(|| {
                format!(
                    "The user '{user_id}' is bucketed into holdout '{key}' for feature flag '{}'.",
                    flag.key
                )
            });
        }
        answer
    }

    /// The first local holdout of `rule` that holds the user. `kind` names the rule in reasons
    /// (`experiment` or `delivery`).
    pub(super) fn local_holdout(
        &self,
        rule: &Experiment,
        kind: &str,
        reasons: &mut Reasons,
    ) -> Option<Held> {
        let held = rule.holdouts.iter().find_map(|&h| {
            self.holdout_variation(h, reasons).map(|variation| Held {
                holdout: h,
                variation,
            })
        })?;
        let user_id = &self.user.user_id;
        reasons.add(|| {
            format!(
                "The user '{user_id}' is bucketed into local holdout '{}' for {kind} rule '{}'.",
                self.config.holdouts[held.holdout].key, rule.key
            )
        });
        Some(held)
    }

    /// The impression of a holdout's answer for `flag`: the holdout id is the campaign and the
    /// experiment, the rule type is `holdout`.
    pub(super) fn holdout_impression(
        &self,
        flag: &FeatureFlag,
        held: Held,
        stamp: &mut dyn EventStamp,
    ) -> UserEvent {
        let holdout = &self.config.holdouts[held.holdout];
        let variation = &holdout.variations[held.variation];
        impression(
            self.config,
            &self.user.user_id,
            &self.user.attributes,
            Impression {
                experiment_id: &holdout.id,
                layer_id: "",
                variation: Some(variation),
                flag_key: &flag.key,
                rule_key: &holdout.key,
                rule_type: "holdout",
                enabled: variation.feature_enabled,
            },
            stamp,
        )
    }
}
