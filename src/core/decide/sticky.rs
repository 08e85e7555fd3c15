//! One request's sticky-bucketing state: the stored profile as loaded, and a copy made on the
//! first new assignment, which is what the caller saves; and the request's CMAB state (inputs
//! still pending, the halt of the current flag), which travels the same way.

use super::cmab::Trace;
use super::Pending;
use crate::core::profile::UserProfile;

/// The profile a decision reads and records into.
pub(super) struct Sticky<'p> {
    /// `None`: no profile store (nothing is read or recorded).
    loaded: Option<&'p UserProfile>,
    /// The loaded profile plus this request's new assignments, once there is one.
    updated: Option<UserProfile>,
    /// CMAB predictions asked for and the current flag's halt.
    pub(super) cmab: Trace,
}

impl<'p> Sticky<'p> {
    pub(super) fn new(loaded: Option<&'p UserProfile>) -> Self {
        Self {
            loaded,
            updated: None,
            cmab: Trace::default(),
        }
    }

    /// The stored variation id for an experiment (this request's assignments included).
    pub(super) fn variation_for(&self, experiment_id: &str) -> Option<&str> {
        self.updated
            .as_ref()
            .or(self.loaded)?
            .variation_for(experiment_id)
    }

    /// Records a fresh bucketing result (ignored without a profile store).
    pub(super) fn record(&mut self, experiment_id: &str, variation_id: &str) {
        let Some(loaded) = self.loaded else { return };
        self.updated
            .get_or_insert_with(|| loaded.clone())
            .save_variation(experiment_id, variation_id);
    }

    /// The profile to save, when anything was recorded, and the inputs still pending.
    pub(super) fn into_parts(self) -> (Option<UserProfile>, Vec<Pending>) {
        (self.updated, self.cmab.pending)
    }
}
