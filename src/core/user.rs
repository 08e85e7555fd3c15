//! Who a decision is for: user id, attributes, qualified segments and per-user overrides.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// User attributes, in the order the caller gave them (the order events list them in).
pub type Attributes = Map<String, Value>;

/// The reserved attribute that, when a string, replaces the user id for bucketing.
pub const BUCKETING_ID_ATTRIBUTE: &str = "$opt_bucketing_id";

/// The reserved prefix of Optimizely control attributes, always sent with events.
pub const RESERVED_ATTRIBUTE_PREFIX: &str = "$opt_";

/// A forced decision set on a user context: `flag_key` (+ optional `rule_key`) → `variation_key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForcedDecision {
    pub flag_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_key: Option<String>,
    pub variation_key: String,
}

/// Everything a decision needs to know about the user.
#[derive(Debug, Clone, Default)]
pub struct UserContext {
    pub user_id: String,
    pub attributes: Attributes,
    /// Segments for `qualified` conditions; `None` means none were fetched (every such condition
    /// is false).
    pub qualified_segments: Option<Vec<String>>,
    pub forced_decisions: Vec<ForcedDecision>,
}

impl UserContext {
    /// A user with attributes and nothing else.
    pub fn new(user_id: impl Into<String>, attributes: Attributes) -> Self {
        Self {
            user_id: user_id.into(),
            attributes,
            ..Self::default()
        }
    }

    /// The value of attribute `name`. Attribute maps are small, so a scan beats hashing the name.
    pub fn attribute(&self, name: &str) -> Option<&Value> {
        if self.attributes.len() <= 24 {
            self.attributes
                .iter()
                .find(|(k, _)| k.as_str() == name)
                .map(|(_, v)| v)
        } else {
            self.attributes.get(name)
        }
    }

    /// The id bucketing hashes: `$opt_bucketing_id` when it is a string, else the user id.
    pub fn bucketing_id(&self) -> &str {
        match self.attribute(BUCKETING_ID_ATTRIBUTE) {
            Some(Value::String(s)) => s,
            _ => &self.user_id,
        }
    }

    /// Whether `segment` is among the user's qualified segments.
    pub fn is_qualified_for(&self, segment: &str) -> bool {
        self.qualified_segments
            .as_ref()
            .is_some_and(|s| s.iter().any(|x| x == segment))
    }

    /// The forced decision for `flag_key` and `rule_key` (`None` = the flag-level one).
    pub fn forced_decision(&self, flag_key: &str, rule_key: Option<&str>) -> Option<&str> {
        self.forced_decisions
            .iter()
            .rev()
            .find(|f| f.flag_key == flag_key && f.rule_key.as_deref() == rule_key)
            .map(|f| f.variation_key.as_str())
    }
}

/// A JSON number that the SDKs accept as a number: finite, not a boolean, |x| ≤ 2^53.
pub fn finite_number(v: &Value) -> Option<f64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    let Value::Number(n) = v else { return None };
    if let Some(i) = n.as_i64() {
        return (i.unsigned_abs() <= 1u64 << 53).then_some(i as f64);
    }
    if let Some(u) = n.as_u64() {
        return (u <= 1u64 << 53).then_some(u as f64);
    }
    n.as_f64().filter(|f| f.is_finite() && f.abs() <= LIMIT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bucketing_id_only_when_a_string() {
        let mut u = UserContext::new("user", Map::new());
        assert_eq!(u.bucketing_id(), "user");
        u.attributes.insert(BUCKETING_ID_ATTRIBUTE.into(), json!(5));
        assert_eq!(u.bucketing_id(), "user");
        u.attributes
            .insert(BUCKETING_ID_ATTRIBUTE.into(), json!("b"));
        assert_eq!(u.bucketing_id(), "b");
    }

    #[test]
    fn finite_number_limits() {
        assert_eq!(
            finite_number(&json!(9007199254740992u64)),
            Some(9007199254740992.0)
        );
        assert_eq!(finite_number(&json!(9007199254740993u64)), None);
        assert_eq!(finite_number(&json!(-9007199254740993i64)), None);
        assert_eq!(finite_number(&json!(1.5)), Some(1.5));
        assert_eq!(finite_number(&json!(1e300)), None);
        assert_eq!(finite_number(&json!(true)), None);
        assert_eq!(finite_number(&json!("1")), None);
    }
}
