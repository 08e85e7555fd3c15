//! Flag variables: their declared types, and datafile strings cast to typed JSON as the SDKs
//! cast them.

use serde_json::{Number, Value};

/// The type of a flag variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableType {
    String,
    Integer,
    Double,
    Boolean,
    Json,
    /// A type this engine does not know; its value is returned as a string, as the SDKs do.
    Other,
}

impl VariableType {
    /// The type a datafile declares (`string` with `subType: json` is JSON, as in the SDKs).
    pub fn parse(kind: &str, sub_type: Option<&str>) -> Self {
        match (kind, sub_type) {
            ("string", Some("json")) | ("json", _) => Self::Json,
            ("string", _) => Self::String,
            ("integer", _) => Self::Integer,
            ("double", _) => Self::Double,
            ("boolean", _) => Self::Boolean,
            _ => Self::Other,
        }
    }

    /// The name used in configuration output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String | Self::Other => "string",
            Self::Integer => "integer",
            Self::Double => "double",
            Self::Boolean => "boolean",
            Self::Json => "json",
        }
    }
}

/// Removes `_` digit separators the way Python's `int()`/`float()` accept them (only between
/// two digits); `None` when an underscore is misplaced.
fn strip_digit_separators(s: &str) -> Option<String> {
    if !s.contains('_') {
        return Some(s.to_string());
    }
    let b = s.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if c == b'_' {
            let before = i.checked_sub(1).map(|j| b[j]);
            let after = b.get(i + 1).copied();
            if !before.is_some_and(|x| x.is_ascii_digit())
                || !after.is_some_and(|x| x.is_ascii_digit())
            {
                return None;
            }
        }
    }
    Some(s.replace('_', ""))
}

/// `int(value)`: optional sign, decimal digits, surrounding whitespace allowed.
pub fn parse_integer(raw: &str) -> Option<Value> {
    let s = strip_digit_separators(raw.trim())?;
    let digits = s.strip_prefix(['+', '-']).unwrap_or(&s);
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let s = s.strip_prefix('+').unwrap_or(&s);
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::from(i));
    }
    if let Ok(u) = s.parse::<u64>() {
        return Some(Value::from(u));
    }
    // Beyond 64 bits: the nearest double is the best JSON can carry here.
    s.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
}

/// `float(value)`: decimal or exponent notation, surrounding whitespace allowed. Non-finite
/// results (`inf`, `nan`) have no JSON form and become `null`.
pub fn parse_double(raw: &str) -> Option<Value> {
    let s = strip_digit_separators(raw.trim())?;
    let body = s.strip_prefix(['+', '-']).unwrap_or(&s);
    let lower = body.to_ascii_lowercase();
    let special = matches!(lower.as_str(), "inf" | "infinity" | "nan");
    if !special
        && !body
            .bytes()
            .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'e' | b'E' | b'+' | b'-'))
    {
        return None;
    }
    let f: f64 = s.parse().ok()?;
    Some(Number::from_f64(f).map_or(Value::Null, Value::Number))
}

/// The typed value of a variable; `null` when the datafile's text does not cast.
pub fn typed_value(raw: &str, kind: VariableType) -> Value {
    match kind {
        VariableType::Boolean => Value::Bool(raw == "true"),
        VariableType::Integer => parse_integer(raw).unwrap_or(Value::Null),
        VariableType::Double => parse_double(raw).unwrap_or(Value::Null),
        VariableType::Json => serde_json::from_str(raw).unwrap_or(Value::Null),
        VariableType::String | VariableType::Other => Value::String(raw.to_string()),
    }
}

/// The typed value of a variable that has no value at all (the SDK casts `None`): `false` for a
/// boolean (`None == "true"`), `null` for every other type.
pub fn typed_null(kind: VariableType) -> Value {
    match kind {
        VariableType::Boolean => Value::Bool(false),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn casts_like_the_sdks() {
        assert_eq!(typed_value("true", VariableType::Boolean), json!(true));
        assert_eq!(typed_value("True", VariableType::Boolean), json!(false));
        assert_eq!(typed_value(" 42 ", VariableType::Integer), json!(42));
        assert_eq!(typed_value("-1_000", VariableType::Integer), json!(-1000));
        assert_eq!(typed_value("4.0", VariableType::Integer), Value::Null);
        assert_eq!(typed_value("1__0", VariableType::Integer), Value::Null);
        assert_eq!(typed_value("1", VariableType::Double), json!(1.0));
        assert_eq!(typed_value("1e3", VariableType::Double), json!(1000.0));
        assert_eq!(typed_value(".5", VariableType::Double), json!(0.5));
        assert_eq!(typed_value("abc", VariableType::Double), Value::Null);
        assert_eq!(
            typed_value("{\"a\":[1,2]}", VariableType::Json),
            json!({"a":[1,2]})
        );
        assert_eq!(typed_value("{bad", VariableType::Json), Value::Null);
        assert_eq!(typed_value("x", VariableType::String), json!("x"));
    }

    #[test]
    fn no_value_casts_to_null_or_false() {
        assert_eq!(typed_null(VariableType::Boolean), json!(false));
        for kind in [
            VariableType::String,
            VariableType::Integer,
            VariableType::Double,
            VariableType::Json,
            VariableType::Other,
        ] {
            assert_eq!(typed_null(kind), Value::Null, "{kind:?}");
        }
    }
}
