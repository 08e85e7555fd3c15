//! Operations endpoints: liveness and readiness ([`health`]), Prometheus metrics ([`metrics`]),
//! the admin datafile push ([`admin`]), Optimizely's datafile webhook ([`webhook`]), the
//! OpenAPI document of the whole API ([`openapi`]), the API token endpoint ([`oauth`]), and the
//! flush-only mode's own small server ([`status`]).

pub mod admin;
pub mod health;
pub mod metrics;
pub mod oauth;
pub mod openapi;
pub mod status;
pub mod webhook;
