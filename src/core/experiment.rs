//! Experiment decisions, in the SDKs' order: running? → forced variation → whitelist → stored
//! profile → audiences → group → traffic allocation (→ record the new assignment).

use super::audience::AudienceRefs;
use super::bucketing::{bucket_value, find_slice};
use super::overrides::ForcedVariations;
use super::profile::ProfileTracker;
use super::project::{Experiment, ExperimentIdx, ProjectConfig};
use super::reasons::Reasons;
use super::user::UserContext;

/// The inputs shared by every decision of one request.
pub struct Decider<'a> {
    pub config: &'a ProjectConfig,
    pub user: &'a UserContext,
    /// Run-time overrides (`None` when the caller keeps none).
    pub forced: Option<&'a ForcedVariations>,
    pub reasons: Reasons,
}

/// Where a bucketing attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BucketOutcome {
    /// Bucketed into this variation index.
    Variation(usize),
    /// In a mutually exclusive group, but another experiment's slice (or none).
    OtherGroupExperiment,
    /// Hashed into a reserved, unknown or unallocated slice.
    NoVariation,
}

impl<'a> Decider<'a> {
    /// A decider without overrides and without reasons.
    pub fn new(config: &'a ProjectConfig, user: &'a UserContext) -> Self {
        Self {
            config,
            user,
            forced: None,
            reasons: Reasons::new(false),
        }
    }

    /// The variation of experiment `idx` for this user, or `None`.
    ///
    /// `profile` is the request's sticky-bucketing state (`None`: no profile store, or ignored).
    pub fn experiment_variation(
        &mut self,
        idx: ExperimentIdx,
        profile: Option<&mut ProfileTracker>,
    ) -> Option<usize> {
        let exp = &self.config.experiments[idx];
        let user_id = self.user.user_id.as_str();
        if !exp.is_running() {
            self.reasons
                .add(|| format!("Experiment \"{}\" is not running.", exp.key));
            return None;
        }
        if let Some(v) = self.forced_variation(exp) {
            return Some(v);
        }
        if let Some(key) = exp.forced_variations.get(user_id) {
            if let Some(v) = exp.variation_by_key(key) {
                self.reasons
                    .add(|| format!("User \"{user_id}\" is forced in variation \"{key}\"."));
                return Some(v);
            }
        }
        if let Some(tracker) = profile.as_deref() {
            if let Some(v) = tracker
                .profile
                .variation_for(&exp.id)
                .and_then(|id| exp.variation_by_id(id))
            {
                self.reasons.add(|| {
                    format!(
                        "Returning previously activated variation \"{}\" of experiment \"{}\" for user \"{user_id}\" from user profile.",
                        exp.variations[v].key, exp.key
                    )
                });
                return Some(v);
            }
        }
        if !self.audiences_allow(exp.audiences.as_ref(), &exp.key.as_str()) {
            self.reasons.add(|| {
                format!(
                    "User \"{user_id}\" does not meet conditions to be in experiment \"{}\".",
                    exp.key
                )
            });
            return None;
        }
        match self.bucket(idx) {
            BucketOutcome::Variation(v) => {
                self.reasons.add(|| {
                    format!(
                        "User \"{user_id}\" is in variation \"{}\" of experiment {}.",
                        exp.variations[v].key, exp.key
                    )
                });
                if let Some(tracker) = profile {
                    tracker.record(&exp.id, &exp.variations[v].id);
                }
                Some(v)
            }
            _ => {
                self.reasons
                    .add(|| format!("User \"{user_id}\" is in no variation."));
                None
            }
        }
    }

    fn forced_variation(&mut self, exp: &Experiment) -> Option<usize> {
        let forced = self.forced?;
        let id = forced.get(&self.user.user_id, &exp.id)?;
        let v = exp.variation_by_id(id)?;
        let user_id = &self.user.user_id;
        self.reasons.add(|| {
            format!(
                "Variation \"{}\" is mapped to experiment \"{}\" and user \"{user_id}\" in the forced variation map",
                exp.variations[v].key, exp.key
            )
        });
        Some(v)
    }

    /// Whether the user passes an audience combination (`None` = everyone). Unknown is "no".
    pub fn audiences_allow(
        &mut self,
        audiences: Option<&AudienceRefs>,
        label: &dyn std::fmt::Display,
    ) -> bool {
        let Some(tree) = audiences else {
            self.reasons
                .add(|| format!("Audiences for {label} collectively evaluated to TRUE."));
            return true;
        };
        let config = self.config;
        let user = self.user;
        let result = tree
            .evaluate(&mut |a: &Option<usize>| config.audiences.get((*a)?)?.evaluate(user))
            .unwrap_or(false);
        self.reasons.add(|| {
            format!(
                "Audiences for {label} collectively evaluated to {}.",
                if result { "TRUE" } else { "FALSE" }
            )
        });
        result
    }

    /// Buckets the user in experiment (or rule) `idx`: group step first, then its traffic.
    pub fn bucket(&mut self, idx: ExperimentIdx) -> BucketOutcome {
        let exp = &self.config.experiments[idx];
        if exp.key.trim().is_empty() {
            return BucketOutcome::NoVariation;
        }
        let bucketing_id = self.user.bucketing_id();
        if let Some(g) = exp.group {
            let group = &self.config.groups[g];
            let bucket = bucket_value(bucketing_id, &group.id);
            let chosen = find_slice(&group.traffic, bucket).filter(|s| !s.entity_id.is_empty());
            let user_id = &self.user.user_id;
            match chosen {
                Some(s) if s.entity == Some(idx) => {
                    self.reasons.add(|| {
                        format!(
                            "User \"{user_id}\" is in experiment {} of group {}.",
                            exp.key, group.id
                        )
                    });
                }
                Some(_) => {
                    self.reasons.add(|| {
                        format!(
                            "User \"{user_id}\" is not in experiment \"{}\" of group {}.",
                            exp.key, group.id
                        )
                    });
                    return BucketOutcome::OtherGroupExperiment;
                }
                None => {
                    self.reasons
                        .add(|| format!("User \"{user_id}\" is in no experiment."));
                    return BucketOutcome::OtherGroupExperiment;
                }
            }
        }
        let bucket = bucket_value(bucketing_id, &exp.id);
        self.reasons.add(|| {
            format!("Assigned bucket {bucket} to user with bucketing ID \"{bucketing_id}\".")
        });
        match find_slice(&exp.traffic, bucket).and_then(|s| s.entity) {
            Some(v) => BucketOutcome::Variation(v),
            None => {
                self.reasons
                    .add(|| "Bucketed into an empty traffic range. Returning nil.".to_string());
                BucketOutcome::NoVariation
            }
        }
    }

    /// The bucket numbers behind a decision (for debug output): (group bucket, experiment bucket).
    pub fn buckets(&self, idx: ExperimentIdx) -> (Option<u32>, u32) {
        let exp = &self.config.experiments[idx];
        let id = self.user.bucketing_id();
        let group = exp
            .group
            .map(|g| bucket_value(id, &self.config.groups[g].id));
        (group, bucket_value(id, &exp.id))
    }
}

impl Decider<'_> {
    /// `activate`: the experiment decision plus, when bucketed, its impression event.
    pub fn activate(
        &mut self,
        idx: ExperimentIdx,
        profile: Option<&mut ProfileTracker>,
        events: &mut Vec<super::events::UserEvent>,
        stamp: &mut dyn super::events::EventStamp,
    ) -> Option<usize> {
        let v = self.experiment_variation(idx, profile)?;
        let exp = &self.config.experiments[idx];
        events.push(super::events::impression(
            self.config,
            &self.user.user_id,
            &self.user.attributes,
            super::events::Impression {
                experiment: Some(exp),
                variation: Some(&exp.variations[v]),
                flag_key: "",
                rule_key: &exp.key,
                rule_type: "experiment",
                enabled: true,
            },
            stamp,
        ));
        Some(v)
    }
}
