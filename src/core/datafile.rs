//! The datafile as written by Optimizely: serde structs mirroring the JSON (versions 2, 3, 4).
//!
//! These types are only the wire shape. `project::ProjectConfig` turns them into an
//! index that decisions use; nothing on the decision path reads these structs. Unknown fields are
//! ignored, missing optional fields take the defaults the official SDKs use, and `null` where a
//! list, map or flag is expected counts as absent.

use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::collections::BTreeMap;

/// Datafile versions the official SDKs accept.
pub const SUPPORTED_VERSIONS: [&str; 3] = ["2", "3", "4"];

/// Why a datafile could not be loaded. Every variant names where in the JSON the problem is.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum DatafileError {
    /// The bytes are not JSON, or a field has the wrong shape.
    #[error("invalid datafile at `{path}`: {message}")]
    Malformed { path: String, message: String },
    /// `version` is missing or not one of [`SUPPORTED_VERSIONS`].
    #[error("unsupported datafile version {version:?} at `version` (supported: 2, 3, 4)")]
    UnsupportedVersion { version: String },
    /// A legacy audience's `conditions` string is not valid JSON.
    #[error("invalid audience conditions at `{path}`: {message}")]
    BadConditions { path: String, message: String },
    /// A reference that the SDKs require to resolve does not (e.g. a flag's rollout id).
    #[error("dangling reference at `{path}`: {message}")]
    Dangling { path: String, message: String },
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// The top-level datafile object.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawDatafile {
    #[serde(default, deserialize_with = "version_string")]
    pub version: Option<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub account_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub project_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub revision: String,
    #[serde(default)]
    pub sdk_key: Option<String>,
    #[serde(default)]
    pub environment_key: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default, rename = "anonymizeIP", deserialize_with = "null_as_default")]
    pub anonymize_ip: bool,
    #[serde(default)]
    pub bot_filtering: Option<bool>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub send_flag_decisions: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub experiments: Vec<RawExperiment>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: Vec<RawGroup>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub audiences: Vec<RawAudience>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub typed_audiences: Vec<RawTypedAudience>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub attributes: Vec<RawAttribute>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub events: Vec<RawEvent>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub feature_flags: Vec<RawFeatureFlag>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rollouts: Vec<RawRollout>,
    /// Global holdouts: each applies to every flag, before any of its rules.
    #[serde(default, deserialize_with = "null_as_default")]
    pub holdouts: Vec<RawHoldout>,
    /// Local holdouts: each applies to the rules its `includedRules` names.
    #[serde(default, deserialize_with = "null_as_default")]
    pub local_holdouts: Vec<RawHoldout>,
}

/// `version` is a string in every real datafile; a bare number is accepted and compared as text.
fn version_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Value>::deserialize(d)? {
        Some(Value::String(s)) => Some(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    })
}

/// An experiment, a rollout rule or a grouped experiment.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawExperiment {
    pub id: String,
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub layer_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub audience_ids: Vec<Value>,
    /// Present (even as `[]`) means it replaces `audienceIds`; absent or `null` means use them.
    #[serde(default)]
    pub audience_conditions: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variations: Vec<RawVariation>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub traffic_allocation: Vec<RawTrafficAllocation>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub forced_variations: BTreeMap<String, String>,
    /// `"fr"` (feature rollout) makes the flag's "Everyone Else" variation join this experiment
    /// (the SDK compares `ExperimentTypes.fr`; a comment there says `feature_rollout`).
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    /// The CMAB block (`attributeIds`, `trafficAllocation`); compiled by `decide::cmab`.
    #[serde(default)]
    pub cmab: Option<Value>,
}

/// A variation of an experiment or rule.
#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
pub struct RawVariation {
    pub id: String,
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub feature_enabled: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variables: Vec<RawVariableUsage>,
}

/// A variable value set by a variation.
#[derive(Debug, Deserialize, Clone)]
pub struct RawVariableUsage {
    pub id: String,
    pub value: String,
}

/// One slice of a traffic allocation: buckets below `endOfRange` go to `entityId`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawTrafficAllocation {
    #[serde(default, deserialize_with = "null_as_default")]
    pub entity_id: String,
    #[serde(default)]
    pub end_of_range: Option<f64>,
}

/// A mutual-exclusion (`random`) or `overlapping` group of experiments.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawGroup {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub policy: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub experiments: Vec<RawExperiment>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub traffic_allocation: Vec<RawTrafficAllocation>,
}

/// A legacy audience: `conditions` is JSON encoded in a string.
#[derive(Debug, Deserialize)]
pub struct RawAudience {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    pub conditions: Value,
}

/// A typed audience: `conditions` is a JSON value; it replaces a legacy audience with the same id.
#[derive(Debug, Deserialize)]
pub struct RawTypedAudience {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    pub conditions: Value,
}

/// A user attribute the project declares.
#[derive(Debug, Deserialize)]
pub struct RawAttribute {
    pub id: String,
    pub key: String,
}

/// A conversion event the project declares.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawEvent {
    pub id: String,
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub experiment_ids: Vec<String>,
}

/// A feature flag: its experiments, its rollout and its variables.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawFeatureFlag {
    pub id: String,
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub experiment_ids: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub rollout_id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variables: Vec<RawVariable>,
}

/// A flag variable definition.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawVariable {
    pub id: String,
    pub key: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub default_value: String,
    #[serde(default)]
    pub sub_type: Option<String>,
}

/// A rollout: an ordered list of delivery rules, the last being "Everyone Else".
#[derive(Debug, Deserialize)]
pub struct RawRollout {
    pub id: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub experiments: Vec<RawExperiment>,
}

/// A holdout (an entry of `holdouts` or `localHoldouts`): audiences and traffic like an
/// experiment's, no groups, no whitelist, no layer. `layerId`, `includedFlags` and
/// `excludedFlags` are ignored, as by the SDK.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawHoldout {
    pub id: String,
    pub key: String,
    /// Only `Running` (case-sensitive) counts.
    #[serde(default, deserialize_with = "null_as_default")]
    pub status: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub audience_ids: Vec<Value>,
    /// As for experiments: present (even `[]`) replaces `audienceIds`.
    #[serde(default)]
    pub audience_conditions: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub variations: Vec<RawVariation>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub traffic_allocation: Vec<RawTrafficAllocation>,
    /// Rule ids (experiments and rollout rules) a local holdout applies to. Absent or `null`:
    /// the local holdout is skipped. Ignored on a global holdout.
    #[serde(default)]
    pub included_rules: Option<Vec<Value>>,
    /// On a global holdout: the users it holds are still served `td` experiments and the rollout.
    #[serde(default, deserialize_with = "null_as_default")]
    pub exclude_targeted_deliveries: bool,
}

/// Parses datafile bytes into the raw model, naming the JSON path of any problem.
pub fn parse_raw(bytes: &[u8]) -> Result<RawDatafile, DatafileError> {
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let raw: RawDatafile = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        DatafileError::Malformed {
            path: if path == "." { "$".to_string() } else { path },
            message: e.into_inner().to_string(),
        }
    })?;
    match raw.version.as_deref() {
        Some(v) if SUPPORTED_VERSIONS.contains(&v) => Ok(raw),
        other => Err(DatafileError::UnsupportedVersion {
            version: other.unwrap_or("<missing>").to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_path_of_a_wrong_type() {
        let err = parse_raw(
            br#"{"version":"4","experiments":[{"id":"1","key":"e","trafficAllocation":[{"entityId":"2","endOfRange":"x"}]}]}"#,
        )
        .unwrap_err();
        match err {
            DatafileError::Malformed { path, .. } => {
                assert_eq!(path, "experiments[0].trafficAllocation[0].endOfRange")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn rejects_unsupported_and_missing_versions() {
        assert_eq!(
            parse_raw(br#"{"version":"5"}"#).unwrap_err(),
            DatafileError::UnsupportedVersion {
                version: "5".into()
            }
        );
        assert!(matches!(
            parse_raw(br#"{}"#).unwrap_err(),
            DatafileError::UnsupportedVersion { .. }
        ));
        assert!(parse_raw(br#"{"version":"2"}"#).is_ok());
    }

    #[test]
    fn not_json_is_an_error_not_a_panic() {
        assert!(matches!(
            parse_raw(b"{\"version\": ").unwrap_err(),
            DatafileError::Malformed { .. }
        ));
        assert!(parse_raw(b"[1,2]").is_err());
        assert!(parse_raw(b"").is_err());
    }

    #[test]
    fn nulls_count_as_absent_and_unknown_fields_are_ignored() {
        let raw = parse_raw(
            br#"{"version":"4","experiments":null,"whatever":{"x":1},"anonymizeIP":null,
                 "featureFlags":[{"id":"1","key":"f","rolloutId":null,"experimentIds":null}]}"#,
        )
        .unwrap();
        assert!(raw.experiments.is_empty());
        assert!(!raw.anonymize_ip);
        assert_eq!(raw.feature_flags[0].rollout_id, "");
    }

    #[test]
    fn holdout_sections_and_their_optional_fields() {
        let raw = parse_raw(
            br#"{"version":"4","holdouts":[{"id":"1","key":"g","status":"Running",
                 "excludeTargetedDeliveries":true,"includedFlags":[],"layerId":"x",
                 "variations":[{"id":"9","key":"off"}],
                 "trafficAllocation":[{"entityId":"9","endOfRange":500}]}],
                 "localHoldouts":[{"id":"2","key":"l","includedRules":["7",8]},
                                  {"id":"3","key":"m","includedRules":null,
                                   "excludeTargetedDeliveries":null}]}"#,
        )
        .unwrap();
        let g = &raw.holdouts[0];
        assert!(g.exclude_targeted_deliveries);
        assert_eq!(g.included_rules, None);
        assert_eq!(g.variations[0].key, "off");
        assert_eq!(g.traffic_allocation[0].end_of_range, Some(500.0));
        assert_eq!(
            raw.local_holdouts[0].included_rules,
            Some(vec![Value::from("7"), Value::from(8)])
        );
        assert_eq!(raw.local_holdouts[0].status, "");
        assert_eq!(raw.local_holdouts[1].included_rules, None);
        assert!(!raw.local_holdouts[1].exclude_targeted_deliveries);
        let none = parse_raw(br#"{"version":"4","holdouts":null}"#).unwrap();
        assert!(none.holdouts.is_empty() && none.local_holdouts.is_empty());
    }
}
