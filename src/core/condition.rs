//! Leaf conditions of an audience (`custom_attribute` / `third_party_dimension`) and their match
//! types, evaluated with three-valued logic: `Some(true)`, `Some(false)` or `None` (unknown).
//!
//! Unknown is what the SDKs return for a missing or `null` attribute, a type mismatch, a number
//! that is not finite or beyond ±2^53, an invalid version, an unknown match type or condition type.

use super::semver;
use super::user::{finite_number, UserContext};
use serde_json::Value;

/// How a condition compares the user's attribute with its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    Exact,
    Exists,
    Substring,
    Gt,
    Ge,
    Lt,
    Le,
    SemverEq,
    SemverGt,
    SemverGe,
    SemverLt,
    SemverLe,
    Qualified,
    /// A match type this engine does not know: always unknown.
    Unsupported,
}

impl MatchType {
    /// Parses the `match` field; a missing or `null` one is the legacy exact match.
    pub fn from_json(v: Option<&Value>) -> Self {
        match v {
            None | Some(Value::Null) => Self::Exact,
            Some(Value::String(s)) => match s.as_str() {
                "exact" => Self::Exact,
                "exists" => Self::Exists,
                "substring" => Self::Substring,
                "gt" => Self::Gt,
                "ge" => Self::Ge,
                "lt" => Self::Lt,
                "le" => Self::Le,
                "semver_eq" => Self::SemverEq,
                "semver_gt" => Self::SemverGt,
                "semver_ge" => Self::SemverGe,
                "semver_lt" => Self::SemverLt,
                "semver_le" => Self::SemverLe,
                "qualified" => Self::Qualified,
                _ => Self::Unsupported,
            },
            Some(_) => Self::Unsupported,
        }
    }
}

/// One compiled leaf condition.
#[derive(Debug, Clone)]
pub struct Condition {
    /// The attribute name; `None` when the datafile's `name` is not a string (never matches).
    pub name: Option<String>,
    pub value: Value,
    /// Whether `type` is one the SDKs evaluate.
    pub known_type: bool,
    pub match_type: MatchType,
}

impl Condition {
    /// Compiles a condition object (`name`, `value`, `type`, `match`).
    pub fn from_object(obj: &serde_json::Map<String, Value>) -> Self {
        let known_type = matches!(
            obj.get("type"),
            Some(Value::String(t)) if t == "custom_attribute" || t == "third_party_dimension"
        );
        Self {
            name: obj.get("name").and_then(Value::as_str).map(str::to_owned),
            value: obj.get("value").cloned().unwrap_or(Value::Null),
            known_type,
            match_type: MatchType::from_json(obj.get("match")),
        }
    }

    /// Evaluates this condition for `user`.
    pub fn evaluate(&self, user: &UserContext) -> Option<bool> {
        if !self.known_type || self.match_type == MatchType::Unsupported {
            return None;
        }
        let attribute = self.name.as_deref().and_then(|n| user.attribute(n));
        match self.match_type {
            MatchType::Exists => return Some(!matches!(attribute, None | Some(Value::Null))),
            MatchType::Qualified => {
                return match &self.value {
                    Value::String(segment) => Some(user.is_qualified_for(segment)),
                    _ => None,
                }
            }
            _ => {}
        }
        let user_value = match attribute {
            None | Some(Value::Null) => return None,
            Some(v) => v,
        };
        match self.match_type {
            MatchType::Exact => exact(&self.value, user_value),
            MatchType::Substring => match (&self.value, user_value) {
                (Value::String(c), Value::String(u)) => Some(u.contains(c.as_str())),
                _ => None,
            },
            MatchType::Gt => numeric(&self.value, user_value, |u, c| u > c),
            MatchType::Ge => numeric(&self.value, user_value, |u, c| u >= c),
            MatchType::Lt => numeric(&self.value, user_value, |u, c| u < c),
            MatchType::Le => numeric(&self.value, user_value, |u, c| u <= c),
            MatchType::SemverEq => semver_match(&self.value, user_value, |o| o == 0),
            MatchType::SemverGt => semver_match(&self.value, user_value, |o| o > 0),
            MatchType::SemverGe => semver_match(&self.value, user_value, |o| o >= 0),
            MatchType::SemverLt => semver_match(&self.value, user_value, |o| o < 0),
            MatchType::SemverLe => semver_match(&self.value, user_value, |o| o <= 0),
            MatchType::Exists | MatchType::Qualified | MatchType::Unsupported => None,
        }
    }
}

fn exact(condition: &Value, user: &Value) -> Option<bool> {
    match condition {
        Value::String(c) => match user {
            Value::String(u) => Some(c == u),
            _ => None,
        },
        Value::Bool(c) => match user {
            Value::Bool(u) => Some(c == u),
            _ => None,
        },
        Value::Number(_) => {
            let c = finite_number(condition)?;
            let u = finite_number(user)?;
            Some(c == u)
        }
        _ => None,
    }
}

fn numeric(condition: &Value, user: &Value, cmp: impl Fn(f64, f64) -> bool) -> Option<bool> {
    let c = finite_number(condition)?;
    let u = finite_number(user)?;
    Some(cmp(u, c))
}

fn semver_match(condition: &Value, user: &Value, accept: impl Fn(i8) -> bool) -> Option<bool> {
    match (condition, user) {
        (Value::String(target), Value::String(version)) => {
            semver::compare(target, version).map(accept)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cond(v: Value) -> Condition {
        Condition::from_object(v.as_object().unwrap())
    }

    fn user(attrs: Value) -> UserContext {
        UserContext::new("u", attrs.as_object().unwrap().clone())
    }

    // Cases taken from the official SDKs' published condition-evaluator tests.
    #[test]
    fn exact_string_bool_number() {
        let c = cond(
            json!({"name":"browser","value":"chrome","type":"custom_attribute","match":"exact"}),
        );
        assert_eq!(c.evaluate(&user(json!({"browser":"chrome"}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"browser":"firefox"}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"browser":true}))), None);
        assert_eq!(c.evaluate(&user(json!({}))), None);
        assert_eq!(c.evaluate(&user(json!({"browser":null}))), None);

        let c = cond(json!({"name":"n","value":100,"type":"custom_attribute","match":"exact"}));
        assert_eq!(c.evaluate(&user(json!({"n":100.0}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"n":100}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"n":101}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"n":"100"}))), None);
        assert_eq!(c.evaluate(&user(json!({"n":true}))), None);
        assert_eq!(c.evaluate(&user(json!({"n":9007199254740993u64}))), None);

        let c = cond(json!({"name":"b","value":false,"type":"custom_attribute","match":"exact"}));
        assert_eq!(c.evaluate(&user(json!({"b":false}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"b":0}))), None);

        let big = cond(
            json!({"name":"n","value":9007199254740993u64,"type":"custom_attribute","match":"exact"}),
        );
        assert_eq!(big.evaluate(&user(json!({"n":1}))), None);
    }

    #[test]
    fn legacy_missing_match_is_exact() {
        let c = cond(json!({"name":"browser","value":"safari","type":"custom_attribute"}));
        assert_eq!(c.evaluate(&user(json!({"browser":"safari"}))), Some(true));
    }

    #[test]
    fn exists_is_never_unknown() {
        let c = cond(json!({"name":"x","type":"custom_attribute","match":"exists"}));
        assert_eq!(c.evaluate(&user(json!({}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"x":null}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"x":false}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"x":[1]}))), Some(true));
    }

    #[test]
    fn numeric_comparisons() {
        let gt = cond(json!({"name":"n","value":10,"type":"custom_attribute","match":"gt"}));
        let le = cond(json!({"name":"n","value":10.5,"type":"custom_attribute","match":"le"}));
        assert_eq!(gt.evaluate(&user(json!({"n":11}))), Some(true));
        assert_eq!(gt.evaluate(&user(json!({"n":10}))), Some(false));
        assert_eq!(gt.evaluate(&user(json!({"n":"11"}))), None);
        assert_eq!(gt.evaluate(&user(json!({"n":false}))), None);
        assert_eq!(le.evaluate(&user(json!({"n":10.5}))), Some(true));
        assert_eq!(le.evaluate(&user(json!({"n":-1e300}))), None);
        let bad = cond(json!({"name":"n","value":"10","type":"custom_attribute","match":"lt"}));
        assert_eq!(bad.evaluate(&user(json!({"n":1}))), None);
    }

    #[test]
    fn substring_and_unknowns() {
        let c =
            cond(json!({"name":"s","value":"ell","type":"custom_attribute","match":"substring"}));
        assert_eq!(c.evaluate(&user(json!({"s":"hello"}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"s":"bye"}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"s":5}))), None);
        let t = cond(json!({"name":"s","value":"x","type":"weird","match":"exact"}));
        assert_eq!(t.evaluate(&user(json!({"s":"x"}))), None);
        let m = cond(json!({"name":"s","value":"x","type":"custom_attribute","match":"regex"}));
        assert_eq!(m.evaluate(&user(json!({"s":"x"}))), None);
    }

    #[test]
    fn semver_matches() {
        let c =
            cond(json!({"name":"v","value":"2.0","type":"custom_attribute","match":"semver_ge"}));
        assert_eq!(c.evaluate(&user(json!({"v":"2.0.1"}))), Some(true));
        assert_eq!(c.evaluate(&user(json!({"v":"1.9"}))), Some(false));
        assert_eq!(c.evaluate(&user(json!({"v":"x.y"}))), None);
        assert_eq!(c.evaluate(&user(json!({"v":2}))), None);
    }

    #[test]
    fn qualified_uses_segments() {
        let c = cond(
            json!({"name":"odp.audiences","value":"seg1","type":"third_party_dimension","match":"qualified"}),
        );
        let mut u = user(json!({}));
        assert_eq!(c.evaluate(&u), Some(false));
        u.qualified_segments = Some(vec!["seg1".into()]);
        assert_eq!(c.evaluate(&u), Some(true));
        let n = cond(
            json!({"name":"odp.audiences","value":1,"type":"third_party_dimension","match":"qualified"}),
        );
        assert_eq!(n.evaluate(&u), None);
    }
}
