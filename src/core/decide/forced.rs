//! Forced answers: run-time forced variations of experiments (`set_forced_variation`) and the
//! user's forced decisions for flags and their rules.

use super::Decider;
use crate::core::project::{Experiment, ExperimentIdx, FeatureFlag, Variation};
use crate::core::reasons::Reasons;

impl Decider<'_> {
    /// The run-time forced variation of `exp` for this user, when it still exists.
    pub(super) fn forced_variation(
        &self,
        exp: &Experiment,
        reasons: &mut Reasons,
    ) -> Option<usize> {
        let forced = self.forced?;
        let id = forced.get(&self.user.user_id, &exp.id)?;
        let v = exp.variation_by_id(id)?;
        let user_id = &self.user.user_id;
        reasons.add(|| {
            format!(
                "Variation \"{}\" is mapped to experiment \"{}\" and user \"{user_id}\" in the forced variation map",
                exp.variations[v].key, exp.key
            )
        });
        Some(v)
    }

    /// The flag variation (any rule's) with this key.
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

    /// The flag variation (any rule's) with this id.
    pub(super) fn flag_variation_by_id(&self, flag: &FeatureFlag, id: &str) -> Option<&Variation> {
        flag.variations
            .iter()
            .map(|&(e, v)| &self.config.experiments[e].variations[v])
            .find(|v| v.id == id)
    }

    /// A valid forced decision for `flag` and `rule_key` (`None`: flag level).
    pub(super) fn forced_decision(
        &self,
        flag: &FeatureFlag,
        rule_key: Option<&str>,
        reasons: &mut Reasons,
    ) -> Option<(ExperimentIdx, usize)> {
        let key = self.user.forced_decision(&flag.key, rule_key)?;
        let found = self.flag_variation_by_key(flag, key);
        let user_id = &self.user.user_id;
        reasons.add(|| match (found.is_some(), rule_key) {
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
}
