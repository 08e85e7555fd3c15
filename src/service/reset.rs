//! `reset`: puts one project's run-time state back to a fresh start (the Agent's `/v1/reset`,
//! which recreates its client): today that is the forced variations set with `/v1/override`.

use super::{PinnedProject, Service};
use crate::core::ForcedVariations;

impl Service {
    /// Drops the project's forced variations; returns whether there were any.
    pub fn reset(&self, snap: &PinnedProject) -> bool {
        let mut guard = match snap.overrides.write() {
            Ok(g) => g,
            // A writer panicked mid-update: the table is replaced whole, so its state is moot.
            Err(poisoned) => poisoned.into_inner(),
        };
        let had = !guard.is_empty();
        *guard = ForcedVariations::default();
        had
    }
}
