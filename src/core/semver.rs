//! Semantic-version comparison for the `semver_*` match types, with the official SDKs' rules.
//!
//! The SDKs do not implement SemVer 2.0 literally: a target with fewer parts matches any user
//! version that starts with those parts (target `"2"` equals user `"2.12"`), a pre-release
//! (`-`) or build (`+`) suffix becomes one extra part compared as text, and a user pre-release
//! is lower than the same release. Versions with spaces, more than three numeric parts or
//! non-numeric release parts are invalid (the condition evaluates to unknown).

use std::cmp::Ordering;

/// Where a version's first `-` and first `+` are and whether it has a space, found in one pass
/// over its bytes (all three are ASCII, so the positions are char boundaries).
struct Shape {
    dash: Option<usize>,
    plus: Option<usize>,
    space: bool,
}

impl Shape {
    fn of(version: &str) -> Self {
        let mut shape = Self {
            dash: None,
            plus: None,
            space: false,
        };
        for (i, b) in version.bytes().enumerate() {
            match b {
                b' ' => shape.space = true,
                b'-' if shape.dash.is_none() => shape.dash = Some(i),
                b'+' if shape.plus.is_none() => shape.plus = Some(i),
                _ => {}
            }
        }
        shape
    }

    /// A `-` before any `+`.
    fn is_pre_release(&self) -> bool {
        match (self.dash, self.plus) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(dash), Some(plus)) => dash < plus,
        }
    }

    /// A `+` before any `-`.
    fn is_build(&self) -> bool {
        match (self.plus, self.dash) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(plus), Some(dash)) => plus < dash,
        }
    }

    /// Where the release parts end and the pre-release/build part starts (after this byte).
    fn cut(&self) -> Option<usize> {
        if self.is_pre_release() {
            self.dash
        } else if self.is_build() {
            self.plus
        } else {
            None
        }
    }
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// At most three release parts plus one pre-release/build part, without allocating.
struct Parts<'a> {
    items: [&'a str; 4],
    len: usize,
}

impl<'a> Parts<'a> {
    fn get(&self, i: usize) -> Option<&&'a str> {
        self.items[..self.len].get(i)
    }

    fn iter(&self) -> impl Iterator<Item = &&'a str> {
        self.items[..self.len].iter()
    }

    /// Adds a release part: `None` past three parts or for a part that is not all digits.
    fn release(&mut self, part: &'a str) -> Option<()> {
        if self.len == 3 || !is_digits(part) {
            return None;
        }
        self.items[self.len] = part;
        self.len += 1;
        Some(())
    }
}

/// Splits a version into its release parts plus, when present, one pre-release/build part.
fn split<'a>(version: &'a str, shape: &Shape) -> Option<Parts<'a>> {
    if shape.space {
        return None;
    }
    let (prefix, suffix) = match shape.cut() {
        Some(at) => (&version[..at], Some(&version[at + 1..])),
        None => (version, None),
    };
    let mut parts = Parts {
        items: [""; 4],
        len: 0,
    };
    let mut start = 0;
    for (i, b) in prefix.bytes().enumerate() {
        if b == b'.' {
            parts.release(&prefix[start..i])?;
            start = i + 1;
        }
    }
    parts.release(&prefix[start..])?;
    if let Some(s) = suffix {
        parts.items[parts.len] = s;
        parts.len += 1;
    }
    Some(parts)
}

/// Compares decimal digit strings of any length as integers.
fn cmp_digits(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Compares `user` against `target`: `Some(1)` user is greater, `Some(0)` equal, `Some(-1)` less;
/// `None` when either version is invalid.
pub fn compare(target: &str, user: &str) -> Option<i8> {
    let (target_shape, user_shape) = (Shape::of(target), Shape::of(user));
    let target_pre = target_shape.is_pre_release();
    let user_pre = user_shape.is_pre_release();
    let target_build = target_shape.is_build();
    let target_parts = split(target, &target_shape)?;
    let user_parts = split(user, &user_shape)?;
    for (idx, target_part) in target_parts.iter().enumerate() {
        let Some(user_part) = user_parts.get(idx) else {
            return Some(if target_pre || target_build { 1 } else { -1 });
        };
        if !is_digits(user_part) {
            match (*user_part).cmp(target_part) {
                Ordering::Less => return Some(if target_pre && !user_pre { 1 } else { -1 }),
                Ordering::Greater => return Some(if !target_pre && user_pre { -1 } else { 1 }),
                Ordering::Equal => {}
            }
        } else {
            // A numeric user part against a textual target part has no defined order.
            if !is_digits(target_part) {
                return None;
            }
            match cmp_digits(user_part, target_part) {
                Ordering::Greater => return Some(1),
                Ordering::Less => return Some(-1),
                Ordering::Equal => {}
            }
        }
    }
    if user_pre && !target_pre {
        return Some(-1);
    }
    Some(0)
}

#[cfg(test)]
mod tests {
    use super::compare;

    // Cases from the official SDKs' published semver tests (target, user, expected).
    #[test]
    fn equal_cases() {
        for (t, u) in [
            ("2.0", "2.0.0"),
            ("2.0", "2.0"),
            ("2", "2.12"),
            ("2.9", "2.9.1"),
            ("2.9.1", "2.9.1"),
            ("2.9.1-beta", "2.9.1-beta"),
            ("2.9.1+build", "2.9.1+build"),
        ] {
            assert_eq!(compare(t, u), Some(0), "target {t} user {u}");
        }
    }

    #[test]
    fn user_greater_cases() {
        for (t, u) in [
            ("2.0.0", "2.0.1"),
            ("2.0", "3.0.1"),
            ("2.1.2", "2.1.3-beta"),
            ("2.1.2-beta", "2.1.2-release"),
            ("2.1.3-beta", "2.1.3"),
            ("2.9.0", "2.9.1+beta"),
            ("2.1.2-beta", "2.1.3"),
            ("1.7.0", "1.10.0"),
        ] {
            assert_eq!(compare(t, u), Some(1), "target {t} user {u}");
        }
    }

    #[test]
    fn user_less_cases() {
        for (t, u) in [
            ("2.0.1", "2.0.0"),
            ("3.0", "2.9.1"),
            ("2.1.3", "2.1.3-beta"),
            ("2.1.2-release", "2.1.2-beta"),
            ("2.1.3-beta", "2.1.2"),
            ("2.9.1", "2.9"),
            ("1.10.0", "1.7.0"),
        ] {
            assert_eq!(compare(t, u), Some(-1), "target {t} user {u}");
        }
    }

    #[test]
    fn invalid_versions_are_unknown() {
        for bad in [
            "-",
            ".",
            "..",
            "+",
            "+test",
            " ",
            "2 .3. 0",
            "2.",
            ".2.2",
            "3.7.2.2",
            "3.x",
            ",",
            "+build-prerelease",
            "2..0",
        ] {
            assert_eq!(compare("2.1.0", bad), None, "user {bad:?}");
            assert_eq!(compare(bad, "2.1.0"), None, "target {bad:?}");
        }
    }

    #[test]
    fn huge_numeric_parts_compare_as_integers() {
        assert_eq!(
            compare("99999999999999999999", "100000000000000000000"),
            Some(1)
        );
        assert_eq!(compare("007", "7"), Some(0));
    }
}
