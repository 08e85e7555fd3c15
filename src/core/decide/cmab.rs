//! CMAB experiments (an experiment with a truthy `cmab` block): after the experiment's audiences
//! and group step, the user is checked against the block's own `trafficAllocation` (the rule id
//! salts the hash), then the variation comes from a prediction the core cannot compute.
//!
//! How a decision pauses and resumes: without a supplied [`Prediction`] for the rule, the
//! decision records a [`Pending::Prediction`] (the attributes filtered to the block's
//! `attributeIds`, keyed by attribute id, in that order) and halts the flag; the caller fetches
//! it and decides again with it in [`ExternalInputs`](super::ExternalInputs). A supplied variation
//! answers the rule (never saved to the profile; its `cmab_uuid` goes into the `decide`
//! impression); a failed prediction halts the flag with the SDK's error decision.

use super::flag::FlagDecision;
use super::{Decider, Pending, Prediction};
use crate::core::bucketing::bucket_value;
use crate::core::events::{EventKind, UserEvent};
use crate::core::project::{ExperimentIdx, FeatureFlag, VariableMap};
use crate::core::reasons::Reasons;
use crate::core::user::Attributes;
use serde_json::{Map, Value};

/// A compiled `cmab` block.
#[derive(Debug, Clone, PartialEq)]
pub struct Cmab {
    /// `attributeIds` in order (unknown ids are skipped when filtering).
    pub attribute_ids: Vec<String>,
    /// `trafficAllocation`: buckets below it are in the experiment (`None`: nobody).
    pub traffic: Option<f64>,
}

impl Cmab {
    /// The block of a raw experiment, when truthy (the SDK tests `if experiment.cmab`, so `null`
    /// and `{}` mean an ordinary experiment).
    pub fn compile(raw: Option<&Value>) -> Option<Box<Self>> {
        let block = raw?.as_object().filter(|o| !o.is_empty())?;
        let attribute_ids = block
            .get("attributeIds")
            .and_then(Value::as_array)
            .map(|ids| {
                ids.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let traffic = block.get("trafficAllocation").and_then(Value::as_f64);
        Some(Box::new(Self {
            attribute_ids,
            traffic,
        }))
    }
}

/// Why a flag's evaluation stopped at a CMAB rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Halt {
    /// The prediction is not known yet (this pass's answer is discarded).
    Pending,
    /// The prediction failed: the flag gets the error decision.
    Failed,
}

/// One request's CMAB state, carried with the sticky profile through every experiment decision.
#[derive(Debug, Default)]
pub(super) struct Trace {
    pub(super) pending: Vec<Pending>,
    halt: Option<Halt>,
    /// The `cmab_uuid` of the prediction that answered the last rule.
    uuid: Option<String>,
}

impl Trace {
    /// Whether the current flag stopped at a CMAB rule.
    pub(super) fn halted(&self) -> bool {
        self.halt.is_some()
    }

    /// Why the current flag stopped, resetting for the next flag.
    pub(super) fn take_halt(&mut self) -> Option<Halt> {
        self.halt.take()
    }

    /// Puts the predicted rule's `cmab_uuid` into the last of a flag's impressions (the rule's).
    pub(super) fn stamp_uuid(&mut self, flag_events: &mut [UserEvent]) {
        let Some(uuid) = self.uuid.take() else { return };
        if let Some(EventKind::Impression(d)) = flag_events.last_mut().map(|e| &mut e.event) {
            d.metadata.cmab_uuid = Some(uuid);
        }
    }
}

impl Decider<'_> {
    /// The CMAB step of experiment `idx` (after audiences): group, CMAB traffic, prediction.
    pub(super) fn cmab_variation(
        &self,
        idx: ExperimentIdx,
        cmab: &Cmab,
        trace: &mut Trace,
        reasons: &mut Reasons,
    ) -> Option<usize> {
        let exp = &self.config.experiments[idx];
        let user_id = &self.user.user_id;
        if !self.group_admits(idx, reasons) {
            return None;
        }
        let bucketing_id = self.user.bucketing_id();
        let bucket = bucket_value(bucketing_id, &exp.id);
        reasons.add(|| {
            format!("Assigned bucket {bucket} to user with bucketing ID \"{bucketing_id}\".")
        });
        if !cmab.traffic.is_some_and(|end| f64::from(bucket) < end) {
            reasons.add(|| {
                format!(
                    "User \"{user_id}\" not in CMAB experiment \"{}\" due to traffic allocation.",
                    exp.key
                )
            });
            return None;
        }
        match self.inputs.prediction(&exp.id) {
            None => {
                if !trace.pending.iter().any(|p| p.rule_id() == exp.id) {
                    trace.pending.push(Pending::Prediction {
                        rule_id: exp.id.clone(),
                        attributes: self.cmab_attributes(cmab),
                    });
                }
                trace.halt = Some(Halt::Pending);
                None
            }
            Some(Prediction::Failed) => {
                reasons.add(|| format!("Failed to fetch CMAB data for experiment {}.", exp.key));
                trace.halt = Some(Halt::Failed);
                None
            }
            Some(Prediction::Variation {
                variation_id,
                cmab_uuid,
            }) => {
                let Some(v) = exp.variation_by_id(variation_id) else {
                    reasons.add(|| format!("User \"{user_id}\" is in no variation."));
                    return None;
                };
                reasons.add(|| {
                    format!(
                        "User \"{user_id}\" is in variation \"{}\" of experiment {}.",
                        exp.variations[v].key, exp.key
                    )
                });
                trace.uuid = Some(cmab_uuid.clone());
                Some(v)
            }
        }
    }

    /// The user's attributes a prediction sees: the block's `attributeIds` that name a declared
    /// attribute the user has, keyed by attribute id, in `attributeIds` order.
    fn cmab_attributes(&self, cmab: &Cmab) -> Attributes {
        let mut out = Map::new();
        for id in &cmab.attribute_ids {
            let declared = self.config.attributes.iter().rev().find(|a| &a.id == id);
            if let Some(value) = declared.and_then(|a| self.user.attributes.get(&a.key)) {
                out.insert(id.clone(), value.clone());
            }
        }
        out
    }
}

impl Pending {
    /// The rule this input is for.
    pub fn rule_id(&self) -> &str {
        match self {
            Self::Prediction { rule_id, .. } => rule_id,
        }
    }
}

/// The SDK's error decision for a flag whose CMAB prediction failed: disabled, no variation, no
/// rule, no variables, no impression.
pub(super) fn error_decision(flag: &FeatureFlag, mut reasons: Reasons) -> FlagDecision {
    FlagDecision {
        flag_key: flag.key.clone(),
        enabled: false,
        variation_key: None,
        rule_key: None,
        variables: VariableMap::default(),
        reasons: reasons.take(),
    }
}
