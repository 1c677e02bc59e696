//! The one place a [`ServiceError`] becomes a gRPC status.

use tonic::{Code, Status};

use crate::service::ServiceError;
use crate::store::StoreError;

impl From<ServiceError> for Status {
    fn from(error: ServiceError) -> Status {
        match error {
            ServiceError::InvalidArgument(e) => Status::invalid_argument(e.to_string()),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::Aborted(m) => Status::aborted(m),
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ServiceError::Store(StoreError::Pool(e)) => {
                tracing::error!(error = %e, "database unavailable");
                Status::unavailable("the database is unavailable; retry shortly")
            }
            other => {
                // The detail may hold internals: log it, send a generic line.
                tracing::error!(error = %other, "internal error");
                Status::new(Code::Internal, "internal error; the server log has the details")
            }
        }
    }
}

/// A request field failed to parse.
pub fn invalid(e: oma_proto::validate::ValidationError) -> Status {
    ServiceError::InvalidArgument(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_do_not_leak() {
        let status = Status::from(ServiceError::Internal("secret detail".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn validation_names_the_field() {
        let status = invalid(oma_proto::validate::ValidationError::new(
            "spec.name",
            "must not be empty",
        ));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "spec.name: must not be empty");
    }
}
