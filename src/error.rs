//! The service error type and its one mapping to `tonic::Status`.
//!
//! The mapping is an exhaustive `match` with no catch-all arm, so adding a variant forces a
//! decision about its status code. Internal details (store errors, replies) are logged here and
//! never sent to the caller.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use crate::store::StoreError;

/// One bad field of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The request field, as named in the proto (`data`, `set["name"]`, …).
    pub field: String,
    /// What is wrong with it, for a person to read.
    pub description: String,
}

impl Violation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or over a limit; nothing was changed.
    #[error("invalid argument: {}", describe(.0))]
    InvalidArgument(Vec<Violation>),
    /// The thing named does not exist (or has expired); the text says what, e.g. `session`.
    #[error("{0} not found")]
    NotFound(String),
    /// A compare-and-set lost: the entity is at another version.
    #[error("version conflict: expected {expected}, current {current}")]
    VersionConflict {
        /// The version the caller said it had.
        expected: u64,
        /// The version the store holds.
        current: u64,
    },
    /// The caller's claim no longer holds: a lock it no longer holds (expired, or never
    /// granted to it). The text says what, for the caller.
    #[error("{0}")]
    FailedPrecondition(String),
    /// A position outside what the store still keeps (an event id older than its topic's
    /// history). The text says where the kept range starts.
    #[error("{0}")]
    OutOfRange(String),
    /// A bound of the service (not of the store) is reached, e.g. a queue holding
    /// `queues.max_jobs`; nothing was changed. The text says which.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The store failed or timed out.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Checks a name (of a lock, a queue): 1 to `max` bytes, no control characters.
pub fn check_name(field: &str, name: &str, max: usize) -> Result<(), Error> {
    if name.is_empty() || name.len() > max {
        return Err(Error::invalid(field, format!("1 to {max} bytes")));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid(field, "no control characters"));
    }
    Ok(())
}

impl Error {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![Violation::new(field, description)])
    }
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| format!("{}: {}", v.field, v.description))
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::InvalidArgument(vec![v])
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        match err {
            Error::InvalidArgument(violations) => {
                let message = describe(&violations);
                let details = ErrorDetails::with_bad_request(
                    violations
                        .into_iter()
                        .map(|v| FieldViolation::new(v.field, v.description))
                        .collect::<Vec<_>>(),
                );
                Status::with_error_details(Code::InvalidArgument, message, details)
            }
            Error::NotFound(what) => Status::not_found(format!("{what} not found")),
            e @ Error::VersionConflict { .. } => Status::aborted(e.to_string()),
            Error::FailedPrecondition(why) => Status::failed_precondition(why),
            Error::OutOfRange(why) => Status::out_of_range(why),
            Error::ResourceExhausted(why) => Status::resource_exhausted(why),
            Error::Store(e) => match e {
                StoreError::Timeout(_) | StoreError::Unavailable(_) => {
                    tracing::warn!(error = %e, "store call failed");
                    Status::unavailable("store unavailable")
                }
                StoreError::Protocol(_) => {
                    tracing::error!(error = %e, "store protocol error");
                    Status::internal("internal error")
                }
                StoreError::Refused(_) => {
                    tracing::error!(
                        error = %e,
                        "the store refused flowstate: check its credentials and ACL"
                    );
                    Status::unavailable("store unavailable")
                }
                StoreError::Full(_) => {
                    tracing::warn!(error = %e, "store full");
                    Status::resource_exhausted("the store is full")
                }
                StoreError::NotReplicated { acked, wanted } => {
                    tracing::warn!(error = %e, "write concern not met");
                    Status::unavailable(format!(
                        "the write was made, but {acked} of the {wanted} replicas the write \
                         concern asks for confirmed it in time: it may not survive a failover"
                    ))
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_carries_field_violations() {
        let status: Status = Error::invalid("user_id", "must not be empty").into();
        assert_eq!(status.code(), Code::InvalidArgument);
        let details = status
            .get_details_bad_request()
            .expect("bad request details");
        assert_eq!(details.field_violations[0].field, "user_id");
    }

    #[test]
    fn store_failures_are_unavailable_without_internal_detail() {
        let status: Status = Error::Store(StoreError::Unavailable(
            "connection refused to 10.0.0.1".into(),
        ))
        .into();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(!status.message().contains("10.0.0.1"));
        let status: Status = Error::VersionConflict {
            expected: 1,
            current: 2,
        }
        .into();
        assert_eq!(status.code(), Code::Aborted);
    }
}
