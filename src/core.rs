//! The pure decision engine: datafile model and index, audiences, bucketing, experiment and flag
//! decisions, and event rendering. No I/O, no async runtime, no backend types: callers hand it a
//! parsed project, a user and (optionally) a loaded profile, and get back an
//! [`decide::Outcome`]: decisions, events, the profile to save when it changed, and the external
//! inputs still needed.
//!
//! The modules form a DAG; each imports only from the layers above it in this list:
//!
//! 1. leaves, importing nothing from `core`: `semver`, `bucketing`, `datafile`, `reasons`,
//!    `profile`, `user`, `variables` (variable types and casts), `events` (the event records);
//! 2. `condition` (semver, user) → `audience` (condition, user);
//! 3. `project` (+ `project/build`: the compile steps): datafile, audience, bucketing, variables,
//!    events;
//! 4. over the project: `overrides`, `optimizely_config`, `emit` (builds impression and
//!    conversion records); `payload` renders event records (events only); `relay` parses
//!    the v1 payloads SDKs post into event records (events only);
//! 5. `decide` (+ `decide/*`): everything above; nothing imports it but the crate outside `core`.

pub mod audience;
pub mod bucketing;
pub mod condition;
pub mod datafile;
pub mod decide;
pub mod emit;
pub mod events;
pub mod optimizely_config;
pub mod overrides;
pub mod payload;
pub mod profile;
pub mod project;
pub mod reasons;
pub mod relay;
pub mod semver;
pub mod user;
pub mod variables;

pub use datafile::DatafileError;
pub use decide::{
    DecideOptions, Decider, ExternalInputs, FlagDecision, Outcome, Pending, VariationDecision,
};
pub use events::{EventStamp, UserEvent};
pub use overrides::ForcedVariations;
pub use profile::UserProfile;
pub use project::ProjectConfig;
pub use user::{Attributes, ForcedDecision, UserContext};
