//! Deterministic bucketing: MurmurHash3 (x86, 32-bit, seed 1) of `bucketing_id + entity_id`,
//! scaled to a bucket in `0..10000`, then the first traffic slice whose end is above the bucket.
//!
//! Nothing here allocates: the two ids are hashed as one chained byte stream.

use std::io::Read;

/// Buckets range over `0..MAX_TRAFFIC_VALUE`.
pub const MAX_TRAFFIC_VALUE: u32 = 10_000;
const HASH_SEED: u32 = 1;

/// The bucket (`0..10000`) for `bucketing_id` in the entity (experiment or group) `entity_id`.
pub fn bucket_value(bucketing_id: &str, entity_id: &str) -> u32 {
    let mut key = bucketing_id.as_bytes().chain(entity_id.as_bytes());
    // ok: reading from in-memory slices cannot fail; 0 is unreachable.
    let hash = murmur3::murmur3_32(&mut key, HASH_SEED).unwrap_or(0);
    let ratio = f64::from(hash) / 4_294_967_296.0;
    (ratio * f64::from(MAX_TRAFFIC_VALUE)).floor() as u32
}

/// One slice of a traffic allocation, resolved to an entity index when the id is known.
#[derive(Debug, Clone)]
pub struct Slice<T> {
    /// Buckets strictly below this end belong to the slice; `None` never matches.
    pub end: Option<f64>,
    /// The entity id as written (empty = a reserved slice that buckets nobody).
    pub entity_id: String,
    /// The resolved entity, `None` when the id is empty or unknown.
    pub entity: Option<T>,
}

/// The slice `bucket` falls in, if any (a slice, not its entity: the caller decides what an
/// unresolved entity means).
pub fn find_slice<T>(slices: &[Slice<T>], bucket: u32) -> Option<&Slice<T>> {
    let b = f64::from(bucket);
    slices.iter().find(|s| s.end.is_some_and(|end| b < end))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Known vectors published with the official SDKs' bucketer tests.
    #[test]
    fn known_bucket_vectors() {
        assert_eq!(bucket_value("ppid1", "1886780721"), 5254);
        assert_eq!(bucket_value("ppid2", "1886780721"), 4299);
        assert_eq!(bucket_value("ppid2", "1886780722"), 2434);
        assert_eq!(bucket_value("ppid3", "1886780721"), 5439);
        assert_eq!(
            bucket_value(
                "a very very very very very very very very very very very very very very very long ppd string",
                "1886780721"
            ),
            6128
        );
    }

    #[test]
    fn slices_pick_first_end_above_bucket() {
        let s = |end: Option<f64>, id: &str| Slice {
            end,
            entity_id: id.to_string(),
            entity: Some(id.to_string()),
        };
        let slices = vec![
            s(Some(0.0), "a"),
            s(None, "x"),
            s(Some(5000.0), "b"),
            s(Some(10000.0), "c"),
        ];
        assert_eq!(find_slice(&slices, 0).unwrap().entity_id, "b");
        assert_eq!(find_slice(&slices, 4999).unwrap().entity_id, "b");
        assert_eq!(find_slice(&slices, 5000).unwrap().entity_id, "c");
        assert!(find_slice(&slices[..3], 5000).is_none());
    }

    proptest! {
        #[test]
        fn bucket_is_always_in_range(a in ".*", b in "[0-9]{0,12}") {
            prop_assert!(bucket_value(&a, &b) < MAX_TRAFFIC_VALUE);
        }

        #[test]
        fn hashing_the_concatenation_is_what_counts(a in "[a-z]{0,8}", b in "[a-z]{0,8}", c in "[0-9]{1,6}") {
            let joined = format!("{a}{b}");
            prop_assert_eq!(bucket_value(&joined, &c), bucket_value(&a, &format!("{b}{c}")));
        }
    }
}
