//! Targeting one rule (experiment, rollout rule): its audience combination, then bucketing
//! (the mutually exclusive group step first, then the rule's own traffic).

use super::Decider;
use crate::core::audience::AudienceRefs;
use crate::core::bucketing::{bucket_value, find_slice};
use crate::core::project::{Experiment, ExperimentIdx};
use crate::core::reasons::Reasons;

/// Where a bucketing attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BucketOutcome {
    /// Bucketed into this variation index.
    Variation(usize),
    /// In a mutually exclusive group, but another experiment's slice (or none).
    OtherGroupExperiment,
    /// Hashed into a reserved, unknown or unallocated slice.
    NoVariation,
}

impl Decider<'_> {
    /// Whether the user passes an audience combination (`None` = everyone). Unknown is "no".
    pub(super) fn audiences_allow(
        &self,
        audiences: Option<&AudienceRefs>,
        label: &dyn std::fmt::Display,
        reasons: &mut Reasons,
    ) -> bool {
        let Some(tree) = audiences else {
            reasons.add(|| format!("Audiences for {label} collectively evaluated to TRUE."));
            return true;
        };
        let config = self.config;
        let user = self.user;
        let result = tree
            .evaluate(&mut |a: &Option<usize>| config.audiences.get((*a)?)?.evaluate(user))
            .unwrap_or(false);
        reasons.add(|| {
            format!(
                "Audiences for {label} collectively evaluated to {}.",
                if result { "TRUE" } else { "FALSE" }
            )
        });
        result
    }

    /// Buckets the user in experiment (or rule) `idx`: group step first, then its traffic.
    pub(super) fn bucket(&self, idx: ExperimentIdx, reasons: &mut Reasons) -> BucketOutcome {
        let exp = &self.config.experiments[idx];
        if exp.key.trim().is_empty() {
            return BucketOutcome::NoVariation;
        }
        if !self.group_admits(idx, reasons) {
            return BucketOutcome::OtherGroupExperiment;
        }
        self.bucket_traffic(exp, reasons)
    }

    /// The mutually exclusive group step: whether the group's traffic picks experiment `idx`
    /// (always, outside a `random` group).
    pub(super) fn group_admits(&self, idx: ExperimentIdx, reasons: &mut Reasons) -> bool {
        let exp = &self.config.experiments[idx];
        if let Some(g) = exp.group {
            let group = &self.config.groups[g];
            let bucket = bucket_value(self.user.bucketing_id(), &group.id);
            let chosen = find_slice(&group.traffic, bucket).filter(|s| !s.entity_id.is_empty());
            let user_id = &self.user.user_id;
            match chosen {
                Some(s) if s.entity == Some(idx) => {
                    reasons.add(|| {
                        format!(
                            "User \"{user_id}\" is in experiment {} of group {}.",
                            exp.key, group.id
                        )
                    });
                }
                Some(_) => {
                    reasons.add(|| {
                        format!(
                            "User \"{user_id}\" is not in experiment \"{}\" of group {}.",
                            exp.key, group.id
                        )
                    });
                    return false;
                }
                None => {
                    reasons.add(|| format!("User \"{user_id}\" is in no experiment."));
                    return false;
                }
            }
        }
        true
    }

    /// The rule's own traffic step: its id salts the hash.
    pub(super) fn bucket_traffic(&self, exp: &Experiment, reasons: &mut Reasons) -> BucketOutcome {
        let bucketing_id = self.user.bucketing_id();
        let bucket = bucket_value(bucketing_id, &exp.id);
        reasons.add(|| {
            format!("Assigned bucket {bucket} to user with bucketing ID \"{bucketing_id}\".")
        });
        match find_slice(&exp.traffic, bucket).and_then(|s| s.entity) {
            Some(v) => BucketOutcome::Variation(v),
            None => {
                reasons.add(|| "Bucketed into an empty traffic range. Returning nil.".to_string());
                BucketOutcome::NoVariation
            }
        }
    }
}
