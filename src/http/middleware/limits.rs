//! Request limits: the query string's length (checked before routing, 414), the body's size
//! (checked while reading, 413; a pushed datafile has `datafile.max_bytes` instead), the number of user attributes (400), and how long a client may
//! take to send its headers (enforced by the connection, see [`crate::http::serve`]).

use crate::http::error::ApiError;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::Request;
use std::time::Duration;

/// The limits of the `server` settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_query_bytes: usize,
    pub max_attributes: usize,
    pub header_read_timeout: Duration,
    /// Body bound of a datafile push (`datafile.max_bytes`, the largest of the projects').
    pub max_datafile_bytes: usize,
}

impl Limits {
    /// Refuses a query string longer than `max_query_bytes`.
    pub fn check_query<B>(&self, req: &Request<B>) -> Result<(), ApiError> {
        if req.uri().query().map_or(0, str::len) > self.max_query_bytes {
            return Err(ApiError::UriTooLong(self.max_query_bytes));
        }
        Ok(())
    }

    /// Refuses more than `max_attributes` user attributes.
    pub fn check_attributes(&self, count: usize) -> Result<(), ApiError> {
        if count > self.max_attributes {
            return Err(ApiError::BadRequest(format!(
                "too many attributes (limit {})",
                self.max_attributes
            )));
        }
        Ok(())
    }

    /// Reads the body, refusing one larger than `max_body_bytes`.
    pub async fn read_body(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        self.read_body_up_to(req, self.max_body_bytes).await
    }

    /// Reads a pushed datafile, refusing one larger than `max_datafile_bytes`.
    pub async fn read_datafile(&self, req: Request<Incoming>) -> Result<Bytes, ApiError> {
        self.read_body_up_to(req, self.max_datafile_bytes).await
    }

    /// Reads the body, refusing one larger than `limit` (a route with its own bound).
    pub async fn read_body_up_to(
        &self,
        req: Request<Incoming>,
        limit: usize,
    ) -> Result<Bytes, ApiError> {
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(c) => Ok(c.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(ApiError::PayloadTooLarge(limit))
            }
            Err(e) => Err(ApiError::BadRequest(format!(
                "cannot read request body: {e}"
            ))),
        }
    }
}
