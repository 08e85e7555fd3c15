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

/// The holdout rules of `decide`, one test each, on a small project: flag `flag` with an `ab`
/// experiment (`exp_ab`, variation `on`), a `td` experiment (`exp_td`, variation `td_on`) and a
/// rollout rule (`rule`, variation `ro_on`), all on full traffic and without audiences, so that
/// without holdouts every user gets `exp_ab`.
#[cfg(test)]
mod tests {
    use crate::core::events::{EventKind, UserEvent};
    use crate::core::user::ForcedDecision;
    use crate::core::{DecideOptions, Decider, FlagDecision, ProjectConfig, UserContext};
    use crate::core::{Outcome, UserProfile};
    use serde_json::{json, Map, Value};

    fn rule(id: &str, key: &str, kind: &str, var: (&str, &str, &str)) -> Value {
        json!({"id": id, "key": key, "status": "Running", "layerId": format!("layer_{id}"),
               "type": kind, "audienceIds": [],
               "variations": [{"id": var.0, "key": var.1, "featureEnabled": true,
                               "variables": [{"id": "x", "value": var.2}]}],
               "trafficAllocation": [{"entityId": var.0, "endOfRange": 10000}]})
    }

    fn project() -> Value {
        json!({"version": "4", "accountId": "a", "projectId": "p", "revision": "1",
            "sendFlagDecisions": false,
            "experiments": [rule("11", "exp_ab", "ab", ("101", "on", "ab")),
                            rule("12", "exp_td", "td", ("102", "td_on", "td"))],
            "rollouts": [{"id": "ro", "experiments": [rule("13", "rule", "", ("103", "ro_on", "ro"))]}],
            "featureFlags": [{"id": "f", "key": "flag", "experimentIds": ["11", "12"],
                "rolloutId": "ro",
                "variables": [{"id": "x", "key": "x", "type": "string", "defaultValue": "def"},
                              {"id": "b", "key": "b", "type": "boolean", "defaultValue": "true"}]}]})
    }

    /// A holdout with one disabled variation (`<key>_off`, id `<id>0`) on `end` of the traffic.
    fn holdout(id: &str, key: &str, status: &str, end: u32) -> Value {
        json!({"id": id, "key": key, "status": status, "audienceIds": [],
               "variations": [{"id": format!("{id}0"), "key": format!("{key}_off"),
                               "featureEnabled": false}],
               "trafficAllocation": [{"entityId": format!("{id}0"), "endOfRange": end}]})
    }

    fn excluding(mut h: Value) -> Value {
        h["excludeTargetedDeliveries"] = json!(true);
        h
    }

    fn local(mut h: Value, rules: &[&str]) -> Value {
        h["includedRules"] = json!(rules);
        h
    }

    fn config(df: &Value) -> ProjectConfig {
        ProjectConfig::parse(df.to_string().as_bytes()).unwrap()
    }

    fn user() -> UserContext {
        UserContext::new("user-1", Map::new())
    }

    fn decide_with(
        cfg: &ProjectConfig,
        user: &UserContext,
        profile: Option<&UserProfile>,
    ) -> Outcome<Vec<FlagDecision>> {
        Decider::new(cfg, user).decide(
            Some(&["flag"]),
            DecideOptions::default(),
            profile,
            &mut || (String::new(), 0),
        )
    }

    fn decide(df: &Value) -> (Option<String>, Vec<(String, String, String)>) {
        let cfg = config(df);
        let outcome = decide_with(&cfg, &user(), None);
        (
            outcome.decision[0].rule_key.clone(),
            impressions(&outcome.events),
        )
    }

    /// `(rule_type, rule_key, campaign_id)` of each impression.
    fn impressions(events: &[UserEvent]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| match &e.event {
                EventKind::Impression(d) => (
                    d.metadata.rule_type.clone(),
                    d.metadata.rule_key.clone(),
                    d.campaign_id.clone(),
                ),
                EventKind::Conversion(_) | EventKind::Relayed(_) => {
                    panic!("a conversion from decide")
                }
            })
            .collect()
    }

    fn imp(kind: &str, key: &str, campaign: &str) -> (String, String, String) {
        (kind.into(), key.into(), campaign.into())
    }

    #[test]
    fn global_holdouts_are_checked_in_datafile_order_before_every_rule() {
        let mut df = project();
        // h_none holds nobody; h_b and h_c hold everyone: the first of those answers.
        df["holdouts"] = json!([
            holdout("1", "h_none", "Running", 0),
            holdout("2", "h_b", "Running", 10000),
            holdout("3", "h_c", "Running", 10000)
        ]);
        assert_eq!(decide(&df).0.as_deref(), Some("h_b"));
        df["holdouts"] = json!([
            holdout("3", "h_c", "Running", 10000),
            holdout("2", "h_b", "Running", 10000)
        ]);
        let (rule_key, events) = decide(&df);
        assert_eq!(rule_key.as_deref(), Some("h_c"));
        assert_eq!(events, [imp("holdout", "h_c", "3")]);
    }

    #[test]
    fn a_flag_level_forced_decision_wins_over_global_holdouts() {
        let mut df = project();
        df["holdouts"] = json!([holdout("1", "h", "Running", 10000)]);
        let cfg = config(&df);
        let mut u = user();
        u.forced_decisions.push(ForcedDecision {
            flag_key: "flag".into(),
            rule_key: None,
            variation_key: "ro_on".into(),
        });
        let d = &decide_with(&cfg, &u, None).decision[0];
        assert_eq!(d.variation_key.as_deref(), Some("ro_on"));
        assert_eq!(d.rule_key, None);
    }

    #[test]
    fn a_local_holdout_comes_after_its_rules_forced_decision_and_before_the_rule() {
        let mut df = project();
        df["localHoldouts"] = json!([local(holdout("9", "h_local", "Running", 10000), &["11"])]);
        let cfg = config(&df);
        assert_eq!(decide(&df).0.as_deref(), Some("h_local"));
        let mut u = user();
        u.forced_decisions.push(ForcedDecision {
            flag_key: "flag".into(),
            rule_key: Some("exp_ab".into()),
            variation_key: "td_on".into(),
        });
        let d = &decide_with(&cfg, &u, None).decision[0];
        assert_eq!(
            (d.rule_key.as_deref(), d.variation_key.as_deref()),
            (Some("exp_ab"), Some("td_on"))
        );

        // A local holdout of a later rule only counts once that rule is reached.
        df["localHoldouts"] = json!([local(holdout("9", "h_local", "Running", 10000), &["13"])]);
        assert_eq!(decide(&df).0.as_deref(), Some("exp_ab"));
        df["experiments"][0]["status"] = json!("Paused");
        df["experiments"][1]["status"] = json!("Paused");
        let (rule_key, events) = decide(&df);
        assert_eq!(rule_key.as_deref(), Some("h_local"));
        // Sent although sendFlagDecisions is false: a holdout is not a rollout answer.
        assert_eq!(events, [imp("holdout", "h_local", "9")]);
    }

    #[test]
    fn exclude_targeted_deliveries_leaves_td_experiments_and_the_rollout_after_its_impression() {
        let mut df = project();
        df["holdouts"] = json!([excluding(holdout("1", "h_ex", "Running", 10000))]);
        let cfg = config(&df);
        // `exp_ab` is skipped, its forced decision too; `exp_td` answers.
        let mut u = user();
        u.forced_decisions.push(ForcedDecision {
            flag_key: "flag".into(),
            rule_key: Some("exp_ab".into()),
            variation_key: "on".into(),
        });
        let outcome = decide_with(&cfg, &u, None);
        assert_eq!(outcome.decision[0].rule_key.as_deref(), Some("exp_td"));
        assert_eq!(
            impressions(&outcome.events),
            [
                imp("holdout", "h_ex", "1"),
                imp("feature-test", "exp_td", "layer_12")
            ]
        );
        // Without a td experiment to serve them, the rollout does (its own impression is off:
        // sendFlagDecisions is false), still after the holdout's impression.
        df["experiments"][1]["status"] = json!("Paused");
        let (rule_key, events) = decide(&df);
        assert_eq!(rule_key.as_deref(), Some("rule"));
        assert_eq!(events, [imp("holdout", "h_ex", "1")]);
        // A local holdout answering instead: no global holdout impression.
        df["localHoldouts"] = json!([local(holdout("9", "h_local", "Running", 10000), &["13"])]);
        assert_eq!(
            decide(&df),
            (Some("h_local".into()), vec![imp("holdout", "h_local", "9")])
        );
    }

    #[test]
    fn only_running_holdouts_hold_anyone() {
        let mut df = project();
        df["holdouts"] = json!([
            holdout("1", "h_draft", "Draft", 10000),
            holdout("2", "h_lower", "running", 10000),
            holdout("3", "h_done", "Concluded", 10000)
        ]);
        df["localHoldouts"] = json!([local(holdout("4", "h_paused", "Paused", 10000), &["11"])]);
        assert_eq!(
            decide(&df),
            (
                Some("exp_ab".into()),
                vec![imp("feature-test", "exp_ab", "layer_11")]
            )
        );
        df["localHoldouts"][0]["status"] = json!("Running");
        assert_eq!(decide(&df).0.as_deref(), Some("h_paused"));
    }

    #[test]
    fn holdouts_never_read_or_write_the_user_profile() {
        let mut stored = UserProfile::new("user-1");
        stored.save_variation("11", "101");
        let mut df = project();
        df["holdouts"] = json!([holdout("1", "h", "Running", 10000)]);
        let cfg = config(&df);
        // The stored assignment does not beat the holdout, and nothing is saved.
        let outcome = decide_with(&cfg, &user(), Some(&stored));
        assert_eq!(outcome.decision[0].rule_key.as_deref(), Some("h"));
        assert_eq!(outcome.profile, None);
        // Held but served a td experiment: only the experiment's assignment is saved.
        df["holdouts"] = json!([excluding(holdout("1", "h", "Running", 10000))]);
        let cfg = config(&df);
        let saved = decide_with(&cfg, &user(), Some(&UserProfile::new("user-1")))
            .profile
            .unwrap();
        assert_eq!(saved.variation_for("12"), Some("102"));
        assert_eq!(saved.variation_for("1"), None);
    }

    #[test]
    fn activate_and_get_variation_ignore_holdouts() {
        let mut df = project();
        df["holdouts"] = json!([holdout("1", "h", "Running", 10000)]);
        df["localHoldouts"] = json!([local(holdout("9", "h_local", "Running", 10000), &["11"])]);
        let cfg = config(&df);
        let u = user();
        let exp = cfg.experiment_by_key("exp_ab").unwrap();
        let d = Decider::new(&cfg, &u);
        assert_eq!(d.variation(exp, None).decision.variation, Some(0));
        let activated = d.activate(exp, None, &mut || (String::new(), 0));
        assert_eq!(activated.decision.variation, Some(0));
        assert_eq!(
            impressions(&activated.events),
            [imp("experiment", "exp_ab", "layer_11")]
        );
        assert_eq!(decide(&df).0.as_deref(), Some("h"));
    }

    #[test]
    fn a_holdout_answer_and_its_impression() {
        let mut df = project();
        df["holdouts"] = json!([holdout("1", "h", "Running", 10000)]);
        df["holdouts"][0]["layerId"] = json!("ignored");
        let cfg = config(&df);
        let outcome = decide_with(&cfg, &user(), None);
        let d = &outcome.decision[0];
        assert!(!d.enabled);
        assert_eq!(d.variation_key.as_deref(), Some("h_off"));
        assert_eq!(
            *d.variables,
            *json!({"x": "def", "b": true}).as_object().unwrap()
        );
        let EventKind::Impression(i) = &outcome.events[0].event else {
            panic!("not an impression")
        };
        assert_eq!(
            (i.campaign_id.as_str(), i.experiment_id.as_str()),
            ("1", "1")
        );
        assert_eq!(i.variation_id.as_deref(), Some("10"));
        assert_eq!(
            (
                i.metadata.flag_key.as_str(),
                i.metadata.variation_key.as_str()
            ),
            ("flag", "h_off")
        );
    }

    #[test]
    fn an_enabled_holdout_takes_variable_values_only_from_a_rule_variation_with_its_id() {
        let mut df = project();
        df["holdouts"] = json!([holdout("1", "h", "Running", 10000)]);
        let var = &mut df["holdouts"][0]["variations"][0];
        var["featureEnabled"] = json!(true);
        var["variables"] = json!([{"id": "x", "value": "own"}]);
        let cfg = config(&df);
        let d = &decide_with(&cfg, &user(), None).decision[0];
        assert!(d.enabled);
        assert_eq!(
            *d.variables,
            *json!({"x": null, "b": false}).as_object().unwrap()
        );
        // The rollout rule's variation has id 103: with that id, its values (and defaults).
        df["holdouts"][0]["variations"][0]["id"] = json!("103");
        df["holdouts"][0]["trafficAllocation"][0]["entityId"] = json!("103");
        let cfg = config(&df);
        let d = &decide_with(&cfg, &user(), None).decision[0];
        assert_eq!(
            *d.variables,
            *json!({"x": "ro", "b": true}).as_object().unwrap()
        );
    }
}
