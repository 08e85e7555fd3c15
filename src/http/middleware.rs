//! What applies to every request before and around its handler. Today: [`limits`] (query
//! length, body size, header read timeout, attribute count). Authentication and CORS will be
//! files of their own here.

pub mod limits;
