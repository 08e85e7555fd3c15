//! Forced variations set at run time (`set_forced_variation` in the SDKs; `/v1/override` here).
//!
//! A plain map owned by the caller: user id → experiment id → variation id. Setting validates
//! against the current project; reading re-validates, so an override whose variation vanished
//! from a newer datafile is ignored.

use super::project::ProjectConfig;
use rustc_hash::FxHashMap;

/// Why an override was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OverrideError {
    #[error("unknown experiment key {0:?}")]
    UnknownExperiment(String),
    #[error("unknown variation key {variation:?} for experiment {experiment:?}")]
    UnknownVariation {
        experiment: String,
        variation: String,
    },
}

/// Forced variations for many users.
#[derive(Debug, Default, Clone)]
pub struct ForcedVariations {
    by_user: FxHashMap<String, FxHashMap<String, String>>,
}

impl ForcedVariations {
    /// Forces (or with `None`, clears) a user's variation of an experiment.
    pub fn set(
        &mut self,
        config: &ProjectConfig,
        experiment_key: &str,
        user_id: &str,
        variation_key: Option<&str>,
    ) -> Result<(), OverrideError> {
        let idx = config
            .experiment_by_key(experiment_key)
            .ok_or_else(|| OverrideError::UnknownExperiment(experiment_key.into()))?;
        let experiment = &config.experiments[idx];
        match variation_key {
            None => {
                if let Some(m) = self.by_user.get_mut(user_id) {
                    m.remove(&experiment.id);
                    if m.is_empty() {
                        self.by_user.remove(user_id);
                    }
                }
                Ok(())
            }
            Some(key) => {
                let v = experiment
                    .variation_by_key(key)
                    .filter(|_| !key.is_empty())
                    .ok_or_else(|| OverrideError::UnknownVariation {
                        experiment: experiment_key.into(),
                        variation: key.into(),
                    })?;
                self.by_user
                    .entry(user_id.into())
                    .or_default()
                    .insert(experiment.id.clone(), experiment.variations[v].id.clone());
                Ok(())
            }
        }
    }

    /// The forced variation id of a user for an experiment id.
    pub fn get(&self, user_id: &str, experiment_id: &str) -> Option<&str> {
        self.by_user
            .get(user_id)?
            .get(experiment_id)
            .map(String::as_str)
    }

    /// Whether any override exists (lets the hot path skip the lookup).
    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}
