//! The pure decision engine: datafile model and index, audiences, bucketing, experiment and flag
//! decisions, and event rendering. No I/O, no async runtime, no backend types: callers hand it a
//! parsed project, a user and (optionally) a loaded profile, and get back decisions, events and
//! whether the profile changed.

pub mod audience;
pub mod bucketing;
pub mod condition;
pub mod datafile;
pub mod events;
pub mod experiment;
pub mod flags;
pub mod optimizely_config;
pub mod overrides;
pub mod payload;
pub mod profile;
pub mod project;
pub mod reasons;
pub mod semver;
pub mod user;
pub mod variables;

pub use datafile::DatafileError;
pub use events::{EventStamp, UserEvent};
pub use experiment::Decider;
pub use flags::{DecideOptions, FlagDecision};
pub use overrides::ForcedVariations;
pub use profile::{ProfileTracker, UserProfile};
pub use project::ProjectConfig;
pub use user::{Attributes, ForcedDecision, UserContext};
