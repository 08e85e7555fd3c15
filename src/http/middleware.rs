//! What applies to every request before and around its handler: [`limits`] (query length,
//! body size, header read timeout, attribute count), [`auth`] (API tokens, per route's
//! [`auth::Access`]) and [`cors`] (browser origins; preflights answered before auth).

pub mod auth;
pub mod cors;
pub mod limits;
