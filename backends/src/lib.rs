//! Storage and queue backends for bucketd.
//!
//! This crate knows nothing of Optimizely: user profiles are the SDKs' user-profile schema
//! ([`StoredProfile`]: user id → experiment id → variation id) and events are opaque records
//! (key + bytes). It defines two traits, [`ProfileStore`] and [`EventQueue`], their shared
//! error type, and one implementation per cargo feature. Config enums ([`ProfileStoreConfig`], [`EventQueueConfig`])
//! are the plugin switch: `build()` turns a validated config into an `Arc<dyn Trait>`.
//! `frame` is the record frame shared by the queues that pack records; `testing` (feature
//! `test-util`) holds the conformance suites every backend's tests run.

pub mod error;
#[cfg(any(feature = "disk", feature = "sqs"))]
mod frame;
pub mod profile;
pub mod queue;
#[cfg(feature = "test-util")]
pub mod testing;

pub use error::BackendError;
pub use profile::{ProfileStore, ProfileStoreConfig, StoredProfile};
pub use queue::{AckToken, Delivery, EventQueue, EventQueueConfig, Record};
