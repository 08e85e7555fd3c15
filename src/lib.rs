//! bucketd: Optimizely Feature Experimentation decisions as a self-hosted daemon.
//!
//! `core` is the pure decision engine (no I/O, no async runtime, no backend types). Around it:
//! `config` (typed settings), `source` (datafiles), `service` (one request: profile → core →
//! events), `http` (routes and limits), `pipeline` (producer, spool, queue records, flusher,
//! dead letter), `metrics`, `signal` (shutdown and reload requests) and `app` (the one startup
//! path: assembly, serving and the ordered shutdown).

pub mod app;
pub mod config;
pub mod core;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod pipeline;
pub mod service;
pub mod signal;
pub mod source;
