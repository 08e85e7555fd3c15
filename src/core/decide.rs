//! Decisions as values. A [`Decider`] is built once per request with everything a decision reads
//! (project, user, run-time overrides, reasons on or off, external inputs); each call returns an
//! [`Outcome`]: the answer, the events to emit, the profile to save when it changed, and the
//! external inputs the decision still needs. Nothing here mutates caller state.
//!
//! One step of the SDKs' flow per submodule: `forced` (forced decisions and variations),
//! `targeting` (audiences and bucketing of one rule), `experiment` (`get_variation` /
//! `activate`), `holdout` (global and local holdouts; `decide` only), `flag` (`decide`),
//! `sticky` (the request's profile, copied on first write). Among themselves they form a DAG:
//! `flag` → `holdout` → `targeting`, and `flag` → `experiment` → `targeting`, `forced`, `sticky`.
//!
//! External inputs (for CMAB predictions): a decision that needs something the core cannot
//! compute lists it in [`Outcome::pending`]; the caller fetches it, adds the answer to
//! [`ExternalInputs`] and decides again with [`Decider::with_inputs`]. Only the final pass (empty
//! `pending`) has events and a profile worth keeping. Only CMAB experiments (`cmab`) ask for one,
//! so a datafile without them never takes a second pass.

mod cmab;
mod experiment;
mod flag;
mod forced;
mod holdout;
mod sticky;
mod targeting;

pub use cmab::Cmab;
pub use flag::{DecideOptions, DecisionSource, FlagDecision, UnknownDecideOption};

use super::bucketing::bucket_value;
use super::emit::{impression, Impression};
use super::events::{EventStamp, UserEvent};
use super::overrides::ForcedVariations;
use super::profile::UserProfile;
use super::project::{ExperimentIdx, ProjectConfig};
use super::reasons::Reasons;
use super::user::{Attributes, UserContext};
use sticky::Sticky;

/// What a decision call produced.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub struct Outcome<T> {
    /// The answer ([`VariationDecision`] or the flag decisions).
    pub decision: T,
    /// Impression events to emit, in decision order.
    pub events: Vec<UserEvent>,
    /// The profile to save: `Some` only when the decision recorded a new assignment.
    pub profile: Option<UserProfile>,
    /// External inputs still needed; when not empty, decide again with them supplied and keep
    /// only that pass's events and profile.
    pub pending: Vec<Pending>,
}

impl<T> Outcome<T> {
    fn new(decision: T, events: Vec<UserEvent>, sticky: Sticky<'_>) -> Self {
        let (profile, pending) = sticky.into_parts();
        Self {
            decision,
            events,
            profile,
            pending,
        }
    }

    /// Whether the profile changed (the caller must save [`Self::profile`]).
    pub fn profile_changed(&self) -> bool {
        self.profile.is_some()
    }
}

/// The answer of an experiment decision (`get_variation` / `activate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariationDecision {
    /// The variation index in the experiment, or `None`.
    pub variation: Option<usize>,
    /// Why, when reasons were asked for.
    pub reasons: Vec<String>,
}

/// An input the core cannot compute itself; the caller obtains it and decides again.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Pending {
    /// A CMAB prediction for the rule with this id, from these (already filtered) attributes.
    Prediction {
        rule_id: String,
        attributes: Attributes,
    },
}

/// The answer to a [`Pending::Prediction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prediction {
    /// The predicted variation, and the id the impression carries.
    Variation {
        variation_id: String,
        cmab_uuid: String,
    },
    /// The prediction could not be obtained (the decision becomes an error decision).
    Failed,
}

/// Answers to earlier [`Pending`] requests, supplied to the next pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalInputs {
    predictions: Vec<(String, Prediction)>,
}

impl ExternalInputs {
    /// No inputs (every first pass).
    pub const fn none() -> Self {
        Self {
            predictions: Vec::new(),
        }
    }

    /// Supplies the prediction for a rule.
    pub fn add_prediction(&mut self, rule_id: impl Into<String>, prediction: Prediction) {
        self.predictions.push((rule_id.into(), prediction));
    }

    /// The prediction supplied for a rule.
    pub fn prediction(&self, rule_id: &str) -> Option<&Prediction> {
        self.predictions
            .iter()
            .find(|(r, _)| r == rule_id)
            .map(|(_, p)| p)
    }
}

static NO_INPUTS: ExternalInputs = ExternalInputs::none();

/// Everything the decisions of one request read, fixed when it is built.
#[derive(Debug, Clone, Copy)]
pub struct Decider<'a> {
    config: &'a ProjectConfig,
    user: &'a UserContext,
    /// Run-time overrides (`None` when the caller keeps none).
    forced: Option<&'a ForcedVariations>,
    /// Collect reasons for every decision (`decide` also follows `INCLUDE_REASONS`).
    reasons: bool,
    inputs: &'a ExternalInputs,
}

impl<'a> Decider<'a> {
    /// A decider for `user` on `config`: no overrides, no reasons, no external inputs.
    pub fn new(config: &'a ProjectConfig, user: &'a UserContext) -> Self {
        Self {
            config,
            user,
            forced: None,
            reasons: false,
            inputs: &NO_INPUTS,
        }
    }

    /// With run-time forced variations (`set_forced_variation`).
    pub fn with_overrides(self, forced: Option<&'a ForcedVariations>) -> Self {
        Self { forced, ..self }
    }

    /// With reasons collected (or not) for every decision.
    pub fn with_reasons(self, reasons: bool) -> Self {
        Self { reasons, ..self }
    }

    /// With answers to the `pending` inputs of an earlier pass.
    pub fn with_inputs(self, inputs: &'a ExternalInputs) -> Self {
        Self { inputs, ..self }
    }

    /// The external inputs this decider was built with.
    pub fn inputs(&self) -> &'a ExternalInputs {
        self.inputs
    }

    /// `get_variation`: the variation of experiment `idx`.
    ///
    /// `profile` is the stored profile when a profile store is in use (an empty one when it holds
    /// nothing for this user), `None` when there is no store.
    pub fn variation(
        &self,
        idx: ExperimentIdx,
        profile: Option<&UserProfile>,
    ) -> Outcome<VariationDecision> {
        let mut reasons = Reasons::new(self.reasons);
        let mut sticky = Sticky::new(profile);
        let variation = self.experiment_variation(idx, &mut sticky, &mut reasons);
        let decision = VariationDecision {
            variation,
            reasons: reasons.take(),
        };
        Outcome::new(decision, Vec::new(), sticky)
    }

    /// `activate`: the experiment decision plus, when bucketed, its impression event.
    pub fn activate(
        &self,
        idx: ExperimentIdx,
        profile: Option<&UserProfile>,
        stamp: &mut dyn EventStamp,
    ) -> Outcome<VariationDecision> {
        let mut outcome = self.variation(idx, profile);
        if let Some(v) = outcome.decision.variation {
            let exp = &self.config.experiments[idx];
            // The SDK's `activate` gets a variation *key* and looks it up again for the
            // impression; with two variations of one key (an `fr` rule whose own variation shares
            // the Everyone Else key) its key map holds the last one, so the impression does too.
            let v = exp.variation_by_key(&exp.variations[v].key).unwrap_or(v);
            outcome.events.push(impression(
                self.config,
                &self.user.user_id,
                &self.user.attributes,
                Impression {
                    experiment_id: &exp.id,
                    layer_id: &exp.layer_id,
                    variation: Some(&exp.variations[v]),
                    flag_key: "",
                    rule_key: &exp.key,
                    rule_type: "experiment",
                    enabled: true,
                },
                stamp,
            ));
        }
        outcome
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
