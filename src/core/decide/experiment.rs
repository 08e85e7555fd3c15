//! Experiment decisions, in the SDKs' order: running? → forced variation → whitelist → stored
//! profile → audiences → group → traffic allocation (→ record the new assignment); a CMAB
//! experiment leaves after audiences for `cmab` (group, its traffic, the prediction; never saved).

use super::sticky::Sticky;
use super::targeting::BucketOutcome;
use super::Decider;
use crate::core::project::ExperimentIdx;
use crate::core::reasons::Reasons;

impl Decider<'_> {
    /// The variation of experiment `idx` for this user, or `None`.
    pub(super) fn experiment_variation(
        &self,
        idx: ExperimentIdx,
        sticky: &mut Sticky<'_>,
        reasons: &mut Reasons,
    ) -> Option<usize> {
        let exp = &self.config.experiments[idx];
        let user_id = self.user.user_id.as_str();
        if !exp.is_running() {
            reasons.add(|| format!("Experiment \"{}\" is not running.", exp.key));
            return None;
        }
        if let Some(v) = self.forced_variation(exp, reasons) {
            return Some(v);
        }
        if let Some(key) = exp.forced_variations.get(user_id) {
            if let Some(v) = exp.variation_by_key(key) {
                reasons.add(|| format!("User \"{user_id}\" is forced in variation \"{key}\"."));
                return Some(v);
            }
        }
        if let Some(v) = sticky
            .variation_for(&exp.id)
            .and_then(|id| exp.variation_by_id(id))
        {
            reasons.add(|| {
                format!(
                    "Returning previously activated variation \"{}\" of experiment \"{}\" for user \"{user_id}\" from user profile.",
                    exp.variations[v].key, exp.key
                )
            });
            return Some(v);
        }
        if !self.audiences_allow(exp.audiences.as_ref(), &exp.key.as_str(), reasons) {
            reasons.add(|| {
                format!(
                    "User \"{user_id}\" does not meet conditions to be in experiment \"{}\".",
                    exp.key
                )
            });
            return None;
        }
        if let Some(cmab) = exp.cmab.as_deref() {
            return self.cmab_variation(idx, cmab, &mut sticky.cmab, reasons);
        }
        match self.bucket(idx, reasons) {
            BucketOutcome::Variation(v) => {
                reasons.add(|| {
                    format!(
                        "User \"{user_id}\" is in variation \"{}\" of experiment {}.",
                        exp.variations[v].key, exp.key
                    )
                });
                sticky.record(&exp.id, &exp.variations[v].id);
                Some(v)
            }
            _ => {
                reasons.add(|| format!("User \"{user_id}\" is in no variation."));
                None
            }
        }
    }
}
