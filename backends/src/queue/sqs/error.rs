//! How AWS SDK errors map onto [`BackendError`].

use super::BACKEND;
use crate::BackendError;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// Throttling and server errors are retryable, and so are network failures and timeouts;
/// other answers of the service (access denied, no such queue, bad parameters) are not.
pub(super) fn sdk_err<E>(op: &str, e: SdkError<E>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = format!("{op}: {}", DisplayErrorContext(&e));
    match &e {
        SdkError::ConstructionFailure(_) => BackendError::fatal(BACKEND, message),
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or_default();
            let status = se.raw().status().as_u16();
            let throttled = code.contains("Throttl")
                || matches!(
                    code,
                    "RequestThrottled" | "OverLimit" | "ServiceUnavailable" | "InternalError"
                );
            if throttled || status == 429 || status >= 500 {
                BackendError::unavailable(BACKEND, message)
            } else {
                BackendError::fatal(BACKEND, message)
            }
        }
        _ => BackendError::unavailable(BACKEND, message),
    }
}
