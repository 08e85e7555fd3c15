//! Decision reasons in the Agent's wording.
//!
//! The core writes the reasons the Python SDK writes (its parity tests compare them). The Agent
//! runs the Go SDK, whose reasons differ in wording and in what they mention: no bucket numbers
//! or group steps, `Audiences for experiment <rule key>` for every rule (rollout rules too,
//! which the Python SDK names by their position), an `an error occurred while evaluating nested
//! tree for audience ID "…"` for each audience that could not be evaluated (a missing
//! attribute, say), and `User "…" meets conditions for targeting rule "Everyone Else".` when the
//! last rule is reached. [`agent_reasons`] rewrites one flag decision's reasons that way, from
//! the core's trace of the path taken plus the datafile, for `/v1/decide` only.
//!
//! Reasons it does not recognise (forced decisions, variables, CMAB) are kept as they are.

use crate::core::audience::{AudienceRefs, Tree};
use crate::core::project::ExperimentIdx;
use crate::core::{ProjectConfig, UserContext};

/// The Go SDK's reasons for one flag decision whose core reasons are `reasons`.
pub fn agent_reasons(
    config: &ProjectConfig,
    user: &UserContext,
    flag_key: &str,
    reasons: Vec<String>,
) -> Vec<String> {
    if reasons.is_empty() {
        return reasons;
    }
    let Some(flag) = config.flag_by_key(flag_key).map(|f| &config.flags[f]) else {
        return reasons;
    };
    let rules: &[ExperimentIdx] = flag
        .rollout
        .map(|r| config.rollouts[r].rules.as_slice())
        .unwrap_or_default();
    let mut t = Translator {
        config,
        user,
        tests: &flag.experiments,
        rules,
        next_test: 0,
        out: Vec::with_capacity(reasons.len()),
    };
    for r in reasons {
        t.translate(r);
    }
    t.out
}

struct Translator<'a> {
    config: &'a ProjectConfig,
    user: &'a UserContext,
    /// The flag's feature tests, in evaluation order.
    tests: &'a [ExperimentIdx],
    /// The flag's rollout rules, the last being "Everyone Else".
    rules: &'a [ExperimentIdx],
    /// The first feature test the trace has not reached yet.
    next_test: usize,
    out: Vec<String>,
}

impl Translator<'_> {
    fn translate(&mut self, r: String) {
        if let Some((label, passed)) = audiences_line(&r) {
            if self.audiences(label, passed) {
                return;
            }
        } else if let Some(rest) = r.strip_prefix("Returning previously activated variation \"") {
            if let Some((variation, experiment)) = rest
                .strip_suffix(&format!(
                    "\" for user \"{}\" from user profile.",
                    self.user.user_id
                ))
                .and_then(|m| m.split_once("\" of experiment \""))
            {
                self.reach_test(experiment);
                let line = format!(
                    "User \"{}\" was previously bucketed into variation \"{variation}\" of experiment \"{experiment}\".",
                    self.user.user_id
                );
                self.out.push(line);
                return;
            }
        } else if let Some(rest) = r.strip_prefix("Variation \"") {
            let tail = format!(
                "\" and user \"{}\" in the forced variation map",
                self.user.user_id
            );
            if let Some((variation, experiment)) = rest
                .strip_suffix(&tail)
                .and_then(|m| m.split_once("\" is mapped to experiment \""))
            {
                self.reach_test(experiment);
                let line = format!(
                    "Override variation {variation} found for user {}",
                    self.user.user_id
                );
                self.out.push(line);
                return;
            }
        } else if self.about_user(&r) {
            return;
        } else if r.starts_with("Assigned bucket ")
            || r == "Bucketed into an empty traffic range. Returning nil."
            || (r.starts_with("Experiment \"") && r.ends_with("\" is not running."))
        {
            // The Go SDK does not report bucketing steps.
            return;
        }
        self.out.push(r);
    }

    /// Reasons that start with `User "<id>" `: rewritten or dropped (`true`), or kept.
    fn about_user(&mut self, r: &str) -> bool {
        let user_id = self.user.user_id.as_str();
        let Some(rest) = r.strip_prefix(&format!("User \"{user_id}\" ")) else {
            return false;
        };
        if let Some(variation) = rest
            .strip_prefix("is forced in variation \"")
            .and_then(|v| v.strip_suffix("\"."))
        {
            // A datafile whitelist: the Go SDK names the experiment.
            let found = self.tests[self.next_test..].iter().position(|&e| {
                self.config.experiments[e]
                    .forced_variations
                    .get(user_id)
                    .map(String::as_str)
                    == Some(variation)
            });
            let Some(at) = found else { return false };
            let key = &self.config.experiments[self.tests[self.next_test + at]].key;
            self.next_test += at + 1;
            self.out.push(format!(
                "User \"{user_id}\" is whitelisted into variation \"{variation}\" of experiment \"{key}\"."
            ));
            return true;
        }
        // Steps the Go SDK does not report (or reports at the audience step, see `audiences`).
        rest.contains("audience conditions for targeting rule ")
            || rest.contains("bucketed into a targeting rule ")
            || rest.starts_with("is in variation \"")
            || rest == "is in no variation."
            || rest == "is in no experiment."
            || (rest.starts_with("is in experiment ") && rest.contains(" of group "))
            || (rest.starts_with("is not in experiment \"") && rest.contains(" of group "))
    }

    /// Marks the feature test `key` as reached.
    fn reach_test(&mut self, key: &str) {
        if let Some(at) = self.tests[self.next_test..]
            .iter()
            .position(|&e| self.config.experiments[e].key == key)
        {
            self.next_test += at + 1;
        }
    }

    /// An audience combination's result, for a feature test (labelled with its key) or a
    /// rollout rule (labelled `1`, `2`, … or `Everyone Else`); `false` when the label names
    /// neither.
    fn audiences(&mut self, label: &str, passed: bool) -> bool {
        let test = self.tests[self.next_test..]
            .iter()
            .position(|&e| self.config.experiments[e].key == label);
        if let Some(at) = test {
            let idx = self.tests[self.next_test + at];
            self.next_test += at + 1;
            let exp = &self.config.experiments[idx];
            self.nested_errors(exp.audiences.as_ref());
            self.out.push(evaluated(&exp.key, passed));
            return true;
        }
        let last = self.rules.len().checked_sub(1);
        let position = match label {
            "Everyone Else" => last,
            n => n.parse::<usize>().ok().and_then(|n| n.checked_sub(1)),
        };
        let Some(i) = position.filter(|&i| i < self.rules.len()) else {
            return false;
        };
        let everyone_else = Some(i) == last;
        let rule = &self.config.experiments[self.rules[i]];
        // The rollout step evaluates the rule's audiences (when it has any) ...
        self.nested_errors(rule.audiences.as_ref());
        let user_id = &self.user.user_id;
        if !passed {
            if !everyone_else {
                self.out.push(format!(
                    "User \"{user_id}\" does not meet conditions for targeting rule {}.",
                    i + 1
                ));
            }
            return true;
        }
        // ... and bucketing evaluates them again, reporting the result.
        self.nested_errors(rule.audiences.as_ref());
        self.out.push(evaluated(&rule.key, true));
        if everyone_else {
            self.out.push(format!(
                "User \"{user_id}\" meets conditions for targeting rule \"Everyone Else\"."
            ));
        }
        true
    }

    /// One reason per audience of `refs` that could not be evaluated, in the order (and with
    /// the short-circuits) of the Go SDK's evaluation.
    fn nested_errors(&mut self, refs: Option<&AudienceRefs>) {
        let Some(refs) = refs else { return };
        let (config, user) = (self.config, self.user);
        let out = &mut self.out;
        go_evaluate(refs, &mut |a: &Option<usize>| {
            let audience = config.audiences.get((*a)?)?;
            let result = go_evaluate(&audience.tree, &mut |c: &usize| {
                audience.conditions_list.get(*c)?.evaluate(user)
            });
            if result.is_none() {
                out.push(format!(
                    "an error occurred while evaluating nested tree for audience ID \"{}\"",
                    audience.id
                ));
            }
            result
        });
    }
}

/// `Audiences for experiment <key> collectively evaluated to <true|false>.`
fn evaluated(key: &str, passed: bool) -> String {
    format!("Audiences for experiment {key} collectively evaluated to {passed}.")
}

/// The label and result of the core's `Audiences for <label> collectively evaluated to TRUE.`
fn audiences_line(r: &str) -> Option<(&str, bool)> {
    let rest = r.strip_prefix("Audiences for ")?;
    if let Some(label) = rest.strip_suffix(" collectively evaluated to TRUE.") {
        return Some((label, true));
    }
    rest.strip_suffix(" collectively evaluated to FALSE.")
        .map(|label| (label, false))
}

/// A tree evaluated as the Go SDK does (`None`: invalid): `and` stops at the first invalid or
/// false operand, `or` at the first true one (an invalid one seen before makes a false result
/// invalid), `not` negates its first operand.
fn go_evaluate<L>(tree: &Tree<L>, leaf: &mut impl FnMut(&L) -> Option<bool>) -> Option<bool> {
    match tree {
        Tree::And(items) => {
            for item in items {
                match go_evaluate(item, leaf) {
                    Some(true) => {}
                    other => return other,
                }
            }
            Some(true)
        }
        Tree::Or(items) => {
            let mut invalid = false;
            for item in items {
                match go_evaluate(item, leaf) {
                    Some(true) => return Some(true),
                    None => invalid = true,
                    Some(false) => {}
                }
            }
            (!invalid).then_some(false)
        }
        Tree::Not(inner) => go_evaluate(inner.as_deref()?, leaf).map(|b| !b),
        Tree::Leaf(l) => leaf(l),
        Tree::Invalid => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Attributes;

    /// The example datafile, with a whitelist entry on the `new_checkout` feature test.
    fn config() -> ProjectConfig {
        let mut df: serde_json::Value =
            serde_json::from_str(include_str!("../../../examples/datafile.json")).unwrap();
        for e in df["experiments"].as_array_mut().unwrap() {
            if e["key"] == "new_checkout_test" {
                e["forcedVariations"] = serde_json::json!({"wl": "on"});
            }
        }
        ProjectConfig::parse(df.to_string().as_bytes()).unwrap()
    }

    fn translate(user: &str, reasons: &[&str]) -> Vec<String> {
        let user = UserContext::new(user, Attributes::default());
        let reasons = reasons.iter().map(|r| r.to_string()).collect();
        agent_reasons(&config(), &user, "new_checkout", reasons)
    }

    #[test]
    fn a_whitelisted_user_is_named_with_the_experiment() {
        assert_eq!(
            translate("wl", &["User \"wl\" is forced in variation \"on\"."]),
            ["User \"wl\" is whitelisted into variation \"on\" of experiment \"new_checkout_test\"."]
        );
    }

    #[test]
    fn bucketing_steps_go_and_unknown_reasons_stay() {
        assert_eq!(
            translate(
                "u",
                &[
                    "User \"u\" is in experiment x of group 7.",
                    "Assigned bucket 5 to user with bucketing ID \"u\".",
                    "User \"u\" is in variation \"on\" of experiment new_checkout_test.",
                    "Variable value for key \"k\" is invalid or wrong type.",
                ]
            ),
            ["Variable value for key \"k\" is invalid or wrong type."]
        );
    }

    #[test]
    fn a_rule_the_user_has_no_attribute_for_reports_its_audience() {
        // Rule 1's audience tests `tier`, which this user lacks: invalid, not just false.
        assert_eq!(
            translate(
                "u",
                &[
                    "Audiences for 1 collectively evaluated to FALSE.",
                    "User \"u\" does not meet audience conditions for targeting rule 1.",
                ]
            ),
            [
                "an error occurred while evaluating nested tree for audience ID \"40000001\"",
                "User \"u\" does not meet conditions for targeting rule 1.",
            ]
        );
    }

    fn leaves(tree: &Tree<Option<bool>>) -> (Option<bool>, usize) {
        let mut seen = 0;
        let r = go_evaluate(tree, &mut |l: &Option<bool>| {
            seen += 1;
            *l
        });
        (r, seen)
    }

    #[test]
    fn trees_short_circuit_as_in_the_go_sdk() {
        use Tree::{And, Leaf, Not, Or};
        // `and` stops at the first invalid operand (the Python SDK would look on and answer
        // false for the false one).
        assert_eq!(leaves(&And(vec![Leaf(None), Leaf(Some(false))])), (None, 1));
        assert_eq!(
            leaves(&And(vec![Leaf(Some(false)), Leaf(None)])),
            (Some(false), 1)
        );
        assert_eq!(
            leaves(&Or(vec![Leaf(None), Leaf(Some(false))])),
            (None, 2),
            "an invalid operand makes a false `or` invalid"
        );
        assert_eq!(
            leaves(&Or(vec![Leaf(None), Leaf(Some(true)), Leaf(None)])),
            (Some(true), 2)
        );
        assert_eq!(
            leaves(&Not(Some(Box::new(Leaf(Some(false)))))),
            (Some(true), 1)
        );
        assert_eq!(leaves(&Not(None)), (None, 0));
    }

    #[test]
    fn only_audience_lines_parse() {
        assert_eq!(
            audiences_line("Audiences for Everyone Else collectively evaluated to TRUE."),
            Some(("Everyone Else", true))
        );
        assert_eq!(
            audiences_line("Audiences for exp collectively evaluated to FALSE."),
            Some(("exp", false))
        );
        assert_eq!(
            audiences_line("Audiences for experiment exp collectively evaluated to true."),
            None
        );
    }
}
