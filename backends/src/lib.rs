//! Storage and queue backends for bucketd.
//!
//! This crate knows nothing of Optimizely: user profiles are the seed's `UserProfile` schema and
//! events are opaque records. The traits and their implementations arrive with the profile-store
//! and event-queue work; this crate is the place they live.
