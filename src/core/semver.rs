//! Semantic-version comparison for the `semver_*` match types, with the official SDKs' rules.
//!
//! The SDKs do not implement SemVer 2.0 literally: a target with fewer parts matches any user
//! version that starts with those parts (target `"2"` equals user `"2.12"`), a pre-release
//! (`-`) or build (`+`) suffix becomes one extra part compared as text, and a user pre-release
//! is lower than the same release. Versions with spaces, more than three numeric parts or
//! non-numeric release parts are invalid (the condition evaluates to unknown).

use std::cmp::Ordering;

fn is_pre_release(v: &str) -> bool {
    match (v.find('-'), v.find('+')) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(dash), Some(plus)) => dash < plus,
    }
}

fn is_build(v: &str) -> bool {
    match (v.find('+'), v.find('-')) {
        (None, _) => false,
        (Some(_), None) => true,
        (Some(plus), Some(dash)) => plus < dash,
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
}

/// Splits a version into its release parts plus, when present, one pre-release/build part.
fn split(version: &str) -> Option<Parts<'_>> {
    if version.contains(' ') {
        return None;
    }
    let (prefix, suffix) = if is_pre_release(version) {
        let (p, s) = version.split_once('-')?;
        (p, Some(s))
    } else if is_build(version) {
        let (p, s) = version.split_once('+')?;
        (p, Some(s))
    } else {
        (version, None)
    };
    if prefix.matches('.').count() > 2 {
        return None;
    }
    let mut parts = Parts {
        items: [""; 4],
        len: 0,
    };
    for p in prefix.split('.') {
        if !is_digits(p) {
            return None;
        }
        parts.items[parts.len] = p;
        parts.len += 1;
    }
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
    let target_pre = is_pre_release(target);
    let user_pre = is_pre_release(user);
    let target_build = is_build(target);
    let target_parts = split(target)?;
    let user_parts = split(user)?;
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
