//! Sticky bucketing state: the user-profile schema of the SDKs' user profile service. A decision
//! reads one and, when it records new assignments, returns the updated copy to save
//! (`decide::Outcome::profile`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `{"user_id": ..., "experiment_bucket_map": {"<experiment id>": {"variation_id": ...}}}`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserProfile {
    pub user_id: String,
    /// Entries are kept as given so fields this engine does not use survive a round trip.
    #[serde(default)]
    pub experiment_bucket_map: Map<String, Value>,
}

impl UserProfile {
    /// An empty profile.
    pub fn new(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            experiment_bucket_map: Map::new(),
        }
    }

    /// The stored variation id for an experiment, when it is a non-empty string.
    pub fn variation_for(&self, experiment_id: &str) -> Option<&str> {
        self.experiment_bucket_map
            .get(experiment_id)?
            .get("variation_id")?
            .as_str()
            .filter(|s| !s.is_empty())
    }

    /// Records an assignment (replacing the whole entry for that experiment).
    pub fn save_variation(&mut self, experiment_id: &str, variation_id: &str) {
        let mut entry = Map::new();
        entry.insert("variation_id".into(), Value::String(variation_id.into()));
        self.experiment_bucket_map
            .insert(experiment_id.into(), Value::Object(entry));
    }
}
