//! The SDK-facing surface (no routes yet): what Optimizely SDKs will talk to directly once
//! bucketd mirrors their endpoints — the datafile mirror (`GET /datafiles/{sdk_key}.json`, with
//! the ETag computed once per installed datafile and `304` on a match) and the event relay
//! (`POST /v1/events`, v1 payloads parsed by the core and handed to the event pipeline). Each
//! will be a file here with its routes added to [`crate::http::routes`].

mod events;
pub use events::events;
