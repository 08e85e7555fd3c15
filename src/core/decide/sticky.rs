//! One request's sticky-bucketing state: the stored profile as loaded, and a copy made on the
//! first new assignment, which is what the caller saves.

use crate::core::profile::UserProfile;

/// The profile a decision reads and records into.
pub(super) struct Sticky<'p> {
    /// `None`: no profile store (nothing is read or recorded).
    loaded: Option<&'p UserProfile>,
    /// The loaded profile plus this request's new assignments, once there is one.
    updated: Option<UserProfile>,
}

impl<'p> Sticky<'p> {
    pub(super) fn new(loaded: Option<&'p UserProfile>) -> Self {
        Self {
            loaded,
            updated: None,
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

    /// The profile to save, when anything was recorded.
    pub(super) fn into_changed(self) -> Option<UserProfile> {
        self.updated
    }
}
