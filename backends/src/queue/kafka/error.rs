//! How librdkafka errors map onto [`BackendError`].

use super::BACKEND;
use crate::BackendError;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

pub(super) fn kafka_err(e: KafkaError) -> BackendError {
    match e.rdkafka_error_code() {
        Some(code) => classify(code, e),
        None => match e {
            KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => {
                BackendError::fatal(BACKEND, e)
            }
            e => BackendError::unavailable(BACKEND, e),
        },
    }
}

/// Errors that retrying cannot fix: authorisation, configuration, oversize or invalid data, a
/// fenced or fatally failed idempotent producer. Everything else (brokers down, leader moves,
/// timeouts, rebalances) is retryable.
pub(super) fn classify(code: RDKafkaErrorCode, message: impl std::fmt::Display) -> BackendError {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge
        | C::MessageBatchTooLarge
        | C::InvalidMessage
        | C::InvalidMessageSize
        | C::InvalidTopic
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidConfig
        | C::InvalidRequiredAcks
        | C::InvalidGroupId
        | C::InvalidSessionTimeout
        | C::PolicyViolation
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::Authentication
        | C::SSL
        | C::InvalidArgument
        | C::UnsupportedFeature
        | C::UnsupportedVersion
        | C::Fatal
        | C::Fenced
        | C::InvalidProducerEpoch => BackendError::fatal(BACKEND, message),
        C::MessageTimedOut | C::RequestTimedOut | C::OperationTimedOut | C::TimedOutQueue => {
            BackendError::unavailable(BACKEND, format!("timed out: {message}"))
        }
        _ => BackendError::unavailable(BACKEND, message),
    }
}
