//! The SDK-facing surface: what Optimizely SDKs talk to directly — the datafile mirror
//! (`GET /datafiles/{sdk_key}.json`, `datafiles`) and the event relay (`POST /v1/events`).
//! Each is a file here with its routes in [`crate::http::routes`].

pub mod datafiles;
mod events;
pub use events::events;
