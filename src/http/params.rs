//! Request parameters: query strings, the `X-Optimizely-SDK-Key` header, JSON bodies, and the
//! classic bucketer's `a=` attribute syntax.
//!
//! `a` is either a JSON object (`{"tier":"platinum","age":31}`, types kept) or the classic list
//! `tier:"platinum",zip:07020,beta:true,age:31`: a double-quoted value is a string (with `\"`
//! and `\\` escapes), `true`/`false` are booleans, a JSON number without a leading zero is a
//! number, anything else is a string (so `zip:07020` is the string `"07020"`).

use super::error::ApiError;
use crate::core::Attributes;
use hyper::Request;
use serde_json::Value;

/// The `X-Optimizely-SDK-Key` header, which selects the project (absent: the first one).
pub fn sdk_key<B>(req: &Request<B>) -> Option<String> {
    req.headers()
        .get("x-optimizely-sdk-key")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Parses a JSON body into `T`, with a message naming the problem.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadRequest("request body required (JSON)".into()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// A parsed query string (repeated keys kept in order).
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses `a=1&b=2` (percent-decoding, `+` as space).
    pub fn parse(raw: Option<&str>) -> Self {
        Self(
            raw.map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
                .unwrap_or_default(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key` exactly as given (empty ones included, commas not split), as the
    /// Agent reads its repeatable parameters.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Every value of `key`, comma-separated values split.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// A boolean flag: `1`/`true`/`yes` (case-insensitive) are true; absent is `default`.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "" => Ok(true),
                "0" | "false" | "no" => Ok(false),
                _ => Err(format!(
                    "query parameter `{key}` must be true or false, got {v:?}"
                )),
            },
        }
    }
}

/// Why an attribute list could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttrError {
    #[error("invalid attributes JSON: {0}")]
    Json(String),
    #[error("attributes JSON must be an object")]
    NotAnObject,
    #[error("attribute {index}: expected name:value")]
    MissingColon { index: usize },
    #[error("attribute {index}: empty name")]
    EmptyName { index: usize },
    #[error("attribute {index}: unterminated quoted value")]
    Unterminated { index: usize },
    #[error("attribute {index}: unexpected text after the quoted value")]
    TrailingText { index: usize },
    #[error("too many attributes (limit {0})")]
    TooMany(usize),
}

/// Parses the `a` parameter (JSON object or classic list), allowing at most `max` attributes.
pub fn parse_attributes(raw: &str, max: usize) -> Result<Attributes, AttrError> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Ok(Attributes::new());
    }
    let attrs = if trimmed.starts_with('{') {
        match serde_json::from_str::<Value>(trimmed).map_err(|e| AttrError::Json(e.to_string()))? {
            Value::Object(m) => m,
            _ => return Err(AttrError::NotAnObject),
        }
    } else {
        parse_classic(trimmed, max)?
    };
    if attrs.len() > max {
        return Err(AttrError::TooMany(max));
    }
    Ok(attrs)
}

fn classic_scalar(text: &str) -> Value {
    match text {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    let digits = text.strip_prefix('-').unwrap_or(text);
    let leading_zero = digits.len() > 1 && digits.starts_with('0') && !digits[1..].starts_with('.');
    if !leading_zero && digits.starts_with(|c: char| c.is_ascii_digit()) {
        if let Ok(Value::Number(n)) = serde_json::from_str::<Value>(text) {
            return Value::Number(n);
        }
    }
    Value::String(text.to_string())
}

fn parse_classic(s: &str, max: usize) -> Result<Attributes, AttrError> {
    let mut out = Attributes::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut index = 0;
    while i < chars.len() {
        if out.len() >= max {
            return Err(AttrError::TooMany(max));
        }
        let name_start = i;
        while i < chars.len() && chars[i] != ':' && chars[i] != ',' {
            i += 1;
        }
        if i >= chars.len() || chars[i] == ',' {
            return Err(AttrError::MissingColon { index });
        }
        let name: String = chars[name_start..i]
            .iter()
            .collect::<String>()
            .trim()
            .to_string();
        if name.is_empty() {
            return Err(AttrError::EmptyName { index });
        }
        i += 1; // the colon
        let value = if chars.get(i) == Some(&'"') {
            i += 1;
            let mut v = String::new();
            loop {
                match chars.get(i) {
                    None => return Err(AttrError::Unterminated { index }),
                    Some('\\') => {
                        match chars.get(i + 1) {
                            Some(c @ ('"' | '\\')) => v.push(*c),
                            Some(c) => {
                                v.push('\\');
                                v.push(*c);
                            }
                            None => return Err(AttrError::Unterminated { index }),
                        }
                        i += 2;
                    }
                    Some('"') => {
                        i += 1;
                        break;
                    }
                    Some(c) => {
                        v.push(*c);
                        i += 1;
                    }
                }
            }
            if i < chars.len() && chars[i] != ',' {
                return Err(AttrError::TrailingText { index });
            }
            Value::String(v)
        } else {
            let start = i;
            while i < chars.len() && chars[i] != ',' {
                i += 1;
            }
            classic_scalar(&chars[start..i].iter().collect::<String>())
        };
        out.insert(name, value);
        index += 1;
        if i < chars.len() {
            i += 1; // the comma
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn classic_list_types() {
        let a = parse_attributes(r#"tier:"platinum",zip:07020,beta:true,age:31"#, 100).unwrap();
        assert_eq!(
            Value::Object(a),
            json!({"tier":"platinum","zip":"07020","beta":true,"age":31})
        );
        let a = parse_attributes(
            r#"q:"a \"quoted\" \\ value, with comma",x:-1.5,y:0,z:0.5,w:abc"#,
            100,
        )
        .unwrap();
        assert_eq!(
            Value::Object(a),
            json!({"q":"a \"quoted\" \\ value, with comma","x":-1.5,"y":0,"z":0.5,"w":"abc"})
        );
        let a = parse_attributes("n:1e3,t:TRUE,e:", 100).unwrap();
        assert_eq!(Value::Object(a), json!({"n":1000.0,"t":"TRUE","e":""}));
    }

    #[test]
    fn json_object_keeps_types() {
        let a = parse_attributes(r#"{"tier":"platinum","age":31,"f":1.0}"#, 100).unwrap();
        assert_eq!(a["age"], json!(31));
        assert_eq!(a["f"], json!(1.0));
        assert!(matches!(
            parse_attributes(r#"{"a":"#, 100),
            Err(AttrError::Json(_))
        ));
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            parse_attributes("novalue", 100).unwrap_err(),
            AttrError::MissingColon { index: 0 }
        );
        assert_eq!(
            parse_attributes("a:1,:2", 100).unwrap_err(),
            AttrError::EmptyName { index: 1 }
        );
        assert_eq!(
            parse_attributes(r#"a:"x"#, 100).unwrap_err(),
            AttrError::Unterminated { index: 0 }
        );
        assert_eq!(
            parse_attributes(r#"a:"x"y"#, 100).unwrap_err(),
            AttrError::TrailingText { index: 0 }
        );
        assert_eq!(
            parse_attributes("a:1,b:2,c:3", 2).unwrap_err(),
            AttrError::TooMany(2)
        );
        assert_eq!(
            parse_attributes(r#"{"a":1,"b":2,"c":3}"#, 2).unwrap_err(),
            AttrError::TooMany(2)
        );
    }

    #[test]
    fn query_helpers() {
        let q = Query::parse(Some("keys=a,b&keys=c&debug=1&x=%22y%22+z"));
        assert_eq!(q.all("keys"), vec!["a", "b", "c"]);
        assert!(q.flag("debug", false).unwrap());
        assert_eq!(q.get("x"), Some("\"y\" z"));
        assert!(q.flag("nope", false).is_ok_and(|b| !b));
        assert!(Query::parse(Some("d=maybe")).flag("d", false).is_err());
    }

    proptest! {
        #[test]
        fn any_input_is_an_answer_not_a_panic(s in ".{0,200}") {
            let _ = parse_attributes(&s, 10);
        }

        #[test]
        fn quoted_strings_round_trip(name in "[a-z_]{1,10}", value in "[^\\\\\"]{0,30}") {
            let raw = format!("{name}:\"{}\"", value);
            let a = parse_attributes(&raw, 10).unwrap();
            prop_assert_eq!(a[&name].as_str(), Some(value.as_str()));
        }

        #[test]
        fn integers_without_leading_zero_are_numbers(n in 1u32..1_000_000) {
            let a = parse_attributes(&format!("n:{n}"), 10).unwrap();
            prop_assert_eq!(a["n"].as_u64(), Some(u64::from(n)));
            let z = parse_attributes(&format!("n:0{n}"), 10).unwrap();
            prop_assert_eq!(z["n"].as_str().map(str::to_owned), Some(format!("0{n}")));
        }
    }
}
