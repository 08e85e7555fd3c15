//! `ApiError`: every failure a client can see, mapped to a status code in one place and
//! rendered as `{"error": "..."}`. 5xx are logged once with context; 4xx are the client's and
//! are not logged as errors.

use crate::service::dynamic::DynamicError;
use crate::service::ServiceError;
use hyper::StatusCode;

/// A request failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("method {0} not allowed here")]
    MethodNotAllowed(String),
    #[error("request body larger than {0} bytes")]
    PayloadTooLarge(usize),
    #[error("query string longer than {0} bytes")]
    UriTooLong(usize),
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let msg = e.to_string();
        match e {
            ServiceError::UnknownProject(_)
            | ServiceError::UnknownExperiment(_)
            | ServiceError::UnknownEvent(_) => Self::NotFound(msg),
            ServiceError::NotReady(_) => Self::Unavailable(msg),
            ServiceError::BadInput(_) => Self::BadRequest(msg),
            ServiceError::OverridesDisabled => Self::Forbidden(msg),
            ServiceError::NoProfileStore => Self::NotFound(msg),
            ServiceError::InvalidDatafile(_) => Self::Unprocessable(msg),
            ServiceError::OnDemand(e) => match e {
                DynamicError::Malformed => Self::BadRequest(msg),
                DynamicError::NotAllowed => Self::Forbidden(msg),
                DynamicError::Unknown(_) => Self::NotFound(msg),
                DynamicError::Unavailable(_) | DynamicError::TooMany(_) => Self::Unavailable(msg),
            },
        }
    }
}
