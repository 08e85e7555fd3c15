//! Operations endpoints: liveness and readiness ([`health`]), Prometheus metrics ([`metrics`]),
//! the admin datafile push ([`admin`]), Optimizely's datafile webhook ([`webhook`]), and the
//! flush-only mode's own small server ([`status`]), and the API token endpoint ([`oauth`]).

pub mod admin;
pub mod health;
pub mod metrics;
pub mod oauth;
pub mod status;
pub mod webhook;
