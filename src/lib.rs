//! bucketd: Optimizely Feature Experimentation decisions as a self-hosted daemon.
//!
//! `core` is the pure decision engine (no I/O, no async runtime, no backend types). Around it:
//! `config` (typed settings), `source` (datafiles), `service` (one request: profile → core →
//! events), `http` (routes and limits), `pipeline` (producer, queue records, flusher), `metrics`, and `daemon` (assembly and shutdown).

pub mod config;
pub mod core;
pub mod daemon;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod service;
pub mod source;
