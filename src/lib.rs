//! bucketd: Optimizely Feature Experimentation decisions as a self-hosted daemon.
//!
//! `core` is the pure decision engine (no I/O, no async runtime, no backend types). Everything
//! that talks to the outside world is layered around it.

pub mod core;
