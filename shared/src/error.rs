//! AWS error classification, done once for every gateway.
//!
//! Each gateway converts the SDK's error into an [`AwsError`]: the operation that failed, the
//! resource it was about (bucket/key, image id, task id, …), the region, and a [`ErrorKind`]
//! derived from the service's error code through [`classify`]. Handlers decide on the kind
//! (retry later, report a rejection, fail the invocation), never on raw SDK types.

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use std::fmt;

/// What kind of failure an AWS call had, independent of the service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The resource does not exist (or is not visible to this account).
    NotFound,
    /// The caller is being throttled or a service limit was hit; safe to retry later.
    Throttled,
    /// The request conflicts with the current state (duplicate name, in use, idempotency clash).
    Conflict,
    /// The caller lacks a permission; retrying will not help until IAM changes.
    AccessDenied,
    /// The request was rejected as malformed or invalid.
    InvalidInput,
    /// Anything else: service errors, timeouts, dropped connections, unparseable answers.
    Other,
    /// Not an AWS answer: the invocation stopped its work near the Lambda deadline, with its
    /// progress saved (a checkpoint, given a state bucket) for the next delivery or the scheduled
    /// sweep to continue.
    Stopped,
}

impl ErrorKind {
    /// Whether a later attempt of the same call may succeed without any change by a person.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorKind::Throttled | ErrorKind::Other | ErrorKind::Stopped
        )
    }
}

/// Classifies an AWS error code (and the HTTP status, when there is no code) into an [`ErrorKind`].
///
/// Codes come from the EC2, S3, SNS and STS API references; EC2 uses dotted codes such as
/// `InvalidAMIID.NotFound`, S3 uses `NoSuchKey`/`NoSuchBucket`, and a HEAD request carries no
/// body, so only its status tells "404".
pub fn classify(code: Option<&str>, status: Option<u16>) -> ErrorKind {
    if let Some(code) = code {
        let kind = match code {
            "NoSuchKey"
            | "NoSuchBucket"
            | "NotFound"
            | "NoSuchTagSet"
            | "ResourceNotFoundException" => Some(ErrorKind::NotFound),
            "Throttling"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "SlowDown"
            | "TooManyRequestsException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "ResourceLimitExceeded"
            // EBS direct: the pending-snapshot quota (botocore ebs model,
            // ServiceQuotaExceededException); clears when snapshots complete.
            | "ServiceQuotaExceededException"
            // EBS direct: "You have reached the limit for concurrent API requests" (botocore
            // ebs model, StartSnapshot, HTTP 400); the SDK does not retry it.
            | "ConcurrentLimitExceededException"
            | "ProvisionedThroughputExceededException" => Some(ErrorKind::Throttled),
            "AccessDenied"
            | "AccessDeniedException"
            | "UnauthorizedOperation"
            | "AuthFailure"
            | "AuthorizationError"
            | "InvalidClientTokenId"
            | "SignatureDoesNotMatch"
            | "AllAccessDisabled" => Some(ErrorKind::AccessDenied),
            "IdempotentParameterMismatch"
            | "ConflictException"
            | "IncorrectState"
            | "OperationNotPermitted"
            | "InvalidSnapshot.InUse"
            | "InvalidAMIName.Duplicate"
            | "InvalidAMIID.Unavailable" => Some(ErrorKind::Conflict),
            _ => None,
        };
        if let Some(kind) = kind {
            return kind;
        }
        if code.ends_with(".NotFound") || code.ends_with("NotFound") {
            return ErrorKind::NotFound;
        }
        if code.ends_with(".Malformed")
            || code.starts_with("Invalid")
            || code.starts_with("Missing")
            || code == "ValidationError"
            || code == "ValidationException"
        {
            return ErrorKind::InvalidInput;
        }
    }
    match status {
        Some(404) => ErrorKind::NotFound,
        Some(403) => ErrorKind::AccessDenied,
        Some(429) | Some(503) => ErrorKind::Throttled,
        Some(400) => ErrorKind::InvalidInput,
        _ => ErrorKind::Other,
    }
}

/// A failed AWS call, with what was being done and to what.
#[derive(Debug, Clone, thiserror::Error)]
pub struct AwsError {
    /// The API operation, e.g. `ec2:RegisterImage`.
    pub operation: &'static str,
    /// The resource the call was about, e.g. `s3://bucket/key` or `ami-0123…`.
    pub resource: String,
    /// The classification of the failure.
    pub kind: ErrorKind,
    /// The service's error code, when it sent one.
    pub code: Option<String>,
    /// The service's message, or the transport error's description.
    pub message: String,
    /// The region of the client that made the call (not part of the message, which stays as
    /// the reports and tests know it; logged and matched on).
    pub region: Option<String>,
}

impl fmt::Display for AwsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} failed", self.operation, self.resource)?;
        if let Some(code) = &self.code {
            write!(f, " ({code})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if self.kind == ErrorKind::AccessDenied {
            write!(
                f,
                " — the function's role needs permission `{}`",
                self.operation
            )?;
        }
        Ok(())
    }
}

impl AwsError {
    /// Converts any SDK error into an [`AwsError`] for `operation` on `resource`.
    pub fn from_sdk<E, R>(
        operation: &'static str,
        resource: impl Into<String>,
        err: SdkError<E, R>,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: fmt::Debug + HttpStatus,
    {
        let status = err.raw_response().and_then(HttpStatus::status_code);
        let (code, message) = match &err {
            SdkError::ServiceError(service) => {
                let e = service.err();
                (
                    e.code().map(str::to_owned),
                    e.message().unwrap_or_default().to_owned(),
                )
            }
            other => (None, describe_chain(other)),
        };
        // A HEAD request's error has no body, so neither code nor message (S3 API reference,
        // "Error responses": HEAD responses carry no body): the status is all there is to say.
        let message = match (&code, message.is_empty(), status) {
            (None, true, Some(status)) => format!("HTTP status {status}, no error body"),
            (_, _, _) => message,
        };
        AwsError {
            operation,
            resource: resource.into(),
            kind: classify(code.as_deref(), status),
            code,
            message,
            region: None,
        }
    }

    /// The same error, naming the region of the client that made the call.
    pub fn in_region(mut self, region: Option<&aws_config::Region>) -> Self {
        self.region = region.map(ToString::to_string);
        self
    }

    /// True when the resource the call was about does not exist.
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// True when the service code is exactly `code`.
    pub fn has_code(&self, code: &str) -> bool {
        self.code.as_deref() == Some(code)
    }
}

/// The HTTP status of a raw response, when the SDK error kept one.
pub trait HttpStatus {
    /// The status code, if a response was received.
    fn status_code(&self) -> Option<u16>;
}

impl HttpStatus for aws_smithy_runtime_api::http::Response {
    fn status_code(&self) -> Option<u16> {
        Some(self.status().as_u16())
    }
}

fn describe_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_codes_from_each_service() {
        let cases = [
            (Some("InvalidAMIID.NotFound"), None, ErrorKind::NotFound),
            (Some("InvalidSnapshot.NotFound"), None, ErrorKind::NotFound),
            (Some("NoSuchKey"), Some(404), ErrorKind::NotFound),
            (Some("NoSuchBucket"), Some(404), ErrorKind::NotFound),
            (None, Some(404), ErrorKind::NotFound),
            (
                Some("RequestLimitExceeded"),
                Some(503),
                ErrorKind::Throttled,
            ),
            (Some("ThrottlingException"), Some(400), ErrorKind::Throttled),
            (Some("SlowDown"), Some(503), ErrorKind::Throttled),
            // EBS direct's concurrency limit comes as HTTP 400, not as a validation error.
            (
                Some("ConcurrentLimitExceededException"),
                Some(400),
                ErrorKind::Throttled,
            ),
            (
                Some("UnauthorizedOperation"),
                Some(403),
                ErrorKind::AccessDenied,
            ),
            (Some("AccessDenied"), Some(403), ErrorKind::AccessDenied),
            (None, Some(403), ErrorKind::AccessDenied),
            (Some("InvalidAMIName.Duplicate"), None, ErrorKind::Conflict),
            (Some("InvalidSnapshot.InUse"), None, ErrorKind::Conflict),
            (
                Some("IdempotentParameterMismatch"),
                None,
                ErrorKind::Conflict,
            ),
            (
                Some("InvalidAMIID.Malformed"),
                None,
                ErrorKind::InvalidInput,
            ),
            (Some("InvalidParameterValue"), None, ErrorKind::InvalidInput),
            (Some("InternalError"), Some(500), ErrorKind::Other),
            (None, None, ErrorKind::Other),
        ];
        for (code, status, want) in cases {
            assert_eq!(
                classify(code, status),
                want,
                "code {code:?} status {status:?}"
            );
        }
    }

    #[test]
    fn an_error_without_code_or_message_names_its_status() {
        use aws_sdk_s3::operation::head_object::HeadObjectError;
        use aws_smithy_runtime_api::http::{Response, StatusCode};
        use aws_smithy_types::body::SdkBody;
        use aws_smithy_types::error::ErrorMetadata;
        let status = StatusCode::try_from(499u16).unwrap_or_else(|e| panic!("{e}"));
        let err = SdkError::service_error(
            HeadObjectError::generic(ErrorMetadata::builder().build()),
            Response::new(status, SdkBody::empty()),
        );
        let e = AwsError::from_sdk("s3:GetObject", "s3://b/k", err);
        assert_eq!(e.code, None);
        assert_eq!(
            e.to_string(),
            "s3:GetObject on s3://b/k failed: HTTP status 499, no error body"
        );
    }

    #[test]
    fn display_names_operation_resource_and_missing_permission() {
        let e = AwsError {
            region: None,
            operation: "ec2:ImportSnapshot",
            resource: "s3://b/k.raw".into(),
            kind: ErrorKind::AccessDenied,
            code: Some("UnauthorizedOperation".into()),
            message: "You are not authorized".into(),
        };
        let text = e.to_string();
        assert!(
            text.contains("ec2:ImportSnapshot on s3://b/k.raw failed (UnauthorizedOperation)"),
            "{text}"
        );
        assert!(
            text.contains("needs permission `ec2:ImportSnapshot`"),
            "{text}"
        );
        assert!(!ErrorKind::AccessDenied.is_transient());
        assert!(ErrorKind::Throttled.is_transient());
        assert!(ErrorKind::Stopped.is_transient());
        assert!(!ErrorKind::InvalidInput.is_transient());
    }

    #[test]
    fn the_error_carries_the_region_of_its_client_without_changing_its_message() {
        let e = AwsError {
            operation: "ec2:DeregisterImage",
            resource: "ami-1".into(),
            kind: ErrorKind::Other,
            code: None,
            message: "boom".into(),
            region: None,
        };
        let text = e.to_string();
        let e = e.in_region(Some(&aws_config::Region::new("eu-west-1")));
        assert_eq!(e.region.as_deref(), Some("eu-west-1"));
        assert_eq!(e.to_string(), text);
    }
}
