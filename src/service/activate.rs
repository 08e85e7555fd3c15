//! `activate`: several experiment and feature decisions for one user with one profile lookup and
//! at most one profile save (the Agent's `/v1/activate`).

use super::cmab::{resolve, CacheOptions};
use super::{Clock, ExperimentAnswer, PinnedProject, Service, ServiceError};
use crate::core::{
    DecideOptions, Decider, ExternalInputs, FlagDecision, ProjectConfig, UserContext, UserProfile,
};

/// Which decisions `activate` makes when the request names no key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateScope {
    /// Every experiment (not rollout rules) and every flag.
    All,
    Experiments,
    Features,
}

/// What `activate` is asked for.
#[derive(Debug, Clone, Copy)]
pub struct ActivateRequest<'a> {
    pub experiment_keys: &'a [String],
    pub feature_keys: &'a [String],
    /// Used only when both key lists are empty.
    pub scope: ActivateScope,
    /// Record impressions (`disableTracking` off).
    pub track: bool,
}

/// One answer of `activate`, in request order (experiments first, then features).
#[derive(Debug)]
pub enum Activated {
    Experiment {
        key: String,
        answer: Result<ExperimentAnswer, ServiceError>,
    },
    Feature {
        key: String,
        /// `None` for a key the datafile does not declare.
        decision: Option<FlagDecision>,
    },
}

/// The keys `activate` decides when the request names none: every experiment that is not a
/// rollout rule, and every flag, as the scope allows.
fn default_keys(config: &ProjectConfig, scope: ActivateScope) -> (Vec<String>, Vec<String>) {
    let experiments = match scope {
        ActivateScope::Features => Vec::new(),
        _ => config
            .experiments
            .iter()
            .filter(|e| !e.is_rollout_rule)
            .map(|e| e.key.clone())
            .collect(),
    };
    let features = match scope {
        ActivateScope::Experiments => Vec::new(),
        _ => config.flags.iter().map(|f| f.key.clone()).collect(),
    };
    (experiments, features)
}

/// Carries a decision's changed profile into the next decision of the same request.
fn keep_changed(profile: &mut Option<UserProfile>, changed: &mut bool, new: Option<UserProfile>) {
    if let Some(p) = new {
        *profile = Some(p);
        *changed = true;
    }
}

impl Service {
    /// `/v1/activate`: experiment and feature decisions for one user with one profile lookup
    /// and at most one profile save for the whole request.
    ///
    /// Keys are decided in request order (repeats included) and share the request's profile
    /// state; an unknown key is an answer, not a failure of the request.
    pub async fn activate(
        &self,
        snap: &PinnedProject,
        user: &UserContext,
        request: ActivateRequest<'_>,
    ) -> Vec<Activated> {
        let config = snap.config();
        let defaults;
        let (experiment_keys, feature_keys) =
            if request.experiment_keys.is_empty() && request.feature_keys.is_empty() {
                defaults = default_keys(config, request.scope);
                (defaults.0.as_slice(), defaults.1.as_slice())
            } else {
                (request.experiment_keys, request.feature_keys)
            };
        // One lookup for the whole request; each decision sees the assignments the earlier
        // ones recorded, and the last changed copy is saved once.
        let mut profile = self.load_profile(&user.user_id, false).await;
        let mut changed = false;
        let mut events = Vec::new();
        let mut out = Vec::with_capacity(experiment_keys.len() + feature_keys.len());
        let counts = &self.metrics.decision_handles;
        {
            for key in experiment_keys {
                let answer = match config.experiment_by_key(key) {
                    None => Err(ServiceError::UnknownExperiment(key.clone())),
                    Some(idx) => {
                        let decide = |inputs: &ExternalInputs| {
                            let overrides = snap.overrides.read().ok();
                            let decider = Decider::new(config, user)
                                .with_overrides(overrides.as_deref().filter(|o| !o.is_empty()))
                                .with_inputs(inputs);
                            if request.track {
                                decider.activate(idx, profile.as_ref(), &mut Clock)
                            } else {
                                decider.variation(idx, profile.as_ref())
                            }
                        };
                        let no_options = CacheOptions::default();
                        let outcome =
                            resolve(Some(&self.cmab), &user.user_id, no_options, decide).await;
                        let v = outcome.decision.variation;
                        match v {
                            Some(_) => counts.experiment_variation.inc(),
                            None => counts.experiment_none.inc(),
                        }
                        events.extend(outcome.events);
                        keep_changed(&mut profile, &mut changed, outcome.profile);
                        let exp = &config.experiments[idx];
                        let variation = v.map(|v| &exp.variations[v]);
                        Ok(ExperimentAnswer {
                            experiment_key: exp.key.clone(),
                            experiment_id: exp.id.clone(),
                            variation_key: variation.map(|v| v.key.clone()),
                            variation_id: variation.map(|v| v.id.clone()),
                            reasons: outcome.decision.reasons,
                            buckets: Decider::new(config, user).buckets(idx),
                            bucketing_id: user.bucketing_id().to_string(),
                        })
                    }
                };
                out.push(Activated::Experiment {
                    key: key.clone(),
                    answer,
                });
            }
            let options = DecideOptions {
                disable_decision_event: !request.track,
                ..DecideOptions::default()
            };
            for key in feature_keys {
                let decision = match config.flag_by_key(key) {
                    None => None,
                    Some(_) => {
                        let keys = [key.as_str()];
                        let decide = |inputs: &ExternalInputs| {
                            let overrides = snap.overrides.read().ok();
                            Decider::new(config, user)
                                .with_overrides(overrides.as_deref().filter(|o| !o.is_empty()))
                                .with_inputs(inputs)
                                .decide(Some(&keys), options, profile.as_ref(), &mut Clock)
                        };
                        let cache = options.into();
                        let outcome = resolve(Some(&self.cmab), &user.user_id, cache, decide).await;
                        events.extend(outcome.events);
                        keep_changed(&mut profile, &mut changed, outcome.profile);
                        outcome.decision.into_iter().next()
                    }
                };
                if let Some(d) = &decision {
                    self.notify_feature(snap, user, d);
                }
                match decision.as_ref().map(|d| d.enabled) {
                    Some(true) => counts.flag_enabled.inc(),
                    Some(false) => counts.flag_disabled.inc(),
                    None => {}
                }
                out.push(Activated::Feature {
                    key: key.clone(),
                    decision,
                });
            }
        }
        self.finish(profile.filter(|_| changed), events).await;
        out
    }
}
