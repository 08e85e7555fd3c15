//! Deterministic bucketing: MurmurHash3 (x86, 32-bit, seed 1) of `bucketing_id + entity_id`,
//! scaled to a bucket in `0..10000`, then the first traffic slice whose end is above the bucket.
//!
//! Nothing here allocates: the two ids are copied into a stack buffer and hashed in place (ids
//! longer than the buffer are hashed as a chained stream by the `murmur3` crate, which is also
//! the reference the fast path is tested against).

use std::io::Read;

/// Buckets range over `0..MAX_TRAFFIC_VALUE`.
pub const MAX_TRAFFIC_VALUE: u32 = 10_000;
const HASH_SEED: u32 = 1;

/// The bucket (`0..10000`) for `bucketing_id` in the entity (experiment or group) `entity_id`.
pub fn bucket_value(bucketing_id: &str, entity_id: &str) -> u32 {
    let hash = hash_pair(bucketing_id.as_bytes(), entity_id.as_bytes());
    let ratio = f64::from(hash) / 4_294_967_296.0;
    (ratio * f64::from(MAX_TRAFFIC_VALUE)).floor() as u32
}

const STACK_KEY: usize = 256;

/// MurmurHash3 x86 32-bit of `a ++ b` with the bucketing seed.
fn hash_pair(a: &[u8], b: &[u8]) -> u32 {
    let len = a.len() + b.len();
    if len <= STACK_KEY {
        let mut buf = [0u8; STACK_KEY];
        buf[..a.len()].copy_from_slice(a);
        buf[a.len()..len].copy_from_slice(b);
        return murmur3_x86_32(&buf[..len], HASH_SEED);
    }
    let mut key = a.chain(b);
    // ok: reading from in-memory slices cannot fail; 0 is unreachable.
    murmur3::murmur3_32(&mut key, HASH_SEED).unwrap_or(0)
}

/// MurmurHash3 x86 32-bit over a slice.
fn murmur3_x86_32(data: &[u8], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mix = |k: u32| k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    let mut h = seed;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        h ^= mix(k);
        h = h.rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    let tail = blocks.remainder();
    if !tail.is_empty() {
        let mut k = 0u32;
        for (i, &byte) in tail.iter().enumerate() {
            k |= u32::from(byte) << (8 * i);
        }
        h ^= mix(k);
    }
    h ^= data.len() as u32;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
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
        fn fast_path_equals_the_murmur3_crate(a in ".{0,200}", b in ".{0,200}") {
            let joined = format!("{a}{b}");
            let reference = murmur3::murmur3_32(&mut joined.as_bytes(), 1).unwrap();
            prop_assert_eq!(hash_pair(a.as_bytes(), b.as_bytes()), reference);
        }

        #[test]
        fn hashing_the_concatenation_is_what_counts(a in "[a-z]{0,8}", b in "[a-z]{0,8}", c in "[0-9]{1,6}") {
            let joined = format!("{a}{b}");
            prop_assert_eq!(bucket_value(&joined, &c), bucket_value(&a, &format!("{b}{c}")));
        }
    }
}
