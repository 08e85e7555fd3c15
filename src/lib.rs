//! bucketd: Optimizely Feature Experimentation decisions as a self-hosted daemon.
//!
//! `core` is the pure decision engine (no I/O, no async runtime, no backend types). Around it:
//! `config` (typed settings), `source` (datafiles), `service` (one request: profile → core →
//! events), `http` (routes and limits), `flusher` (queue → bulk event requests), `metrics`, and `daemon` (assembly and shutdown).

pub mod config;
pub mod core;
pub mod daemon;
pub mod flusher;
pub mod http;
pub mod metrics;
pub mod service;
pub mod source;
